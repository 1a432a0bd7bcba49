"""Object storage through libcloud's storage drivers (DESIGN.md 3.6), and URLs signed by the gateway.

The local driver (files under `<data dir>/storage`) is the default. A signed URL carries its expiry
and an HMAC of the object key, so downloads work without a bearer token (the CLI downloads outputs
with a plain GET) and only for the objects the service chose to hand out.
"""
import hashlib
import hmac
import os
import stat
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

from libcloud.storage.base import StorageDriver
from libcloud.storage.drivers.local import LocalStorageDriver
from libcloud.storage.types import ContainerDoesNotExistError, ObjectDoesNotExistError

CONTAINER = "prominence"
OUTPUT_URL_LIFETIME = 7 * 86400  # as the real server's output URLs
_CHUNK = 1 << 16
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class StorageError(ValueError):
    """A key the store refuses (a `..`, a link on its way...), or a store URL that cannot work."""


def check_key(key: str) -> list[str]:
    """The parts of a store key: no NUL, no empty, `.` or `..` part (so no key leaves the container)."""
    parts = key.split("/")
    if "\x00" in key or len(key.encode()) > 4096 or any(part in ("", ".", "..") for part in parts):
        raise StorageError(f"invalid object key {key!r}")
    return parts


def s3_driver(url: str, credentials: dict[str, str]) -> tuple[StorageDriver, str]:
    """A libcloud S3 driver and bucket for `s3://BUCKET[?region=R]` (AWS) or
    `s3+http(s)://HOST[:PORT]/BUCKET[?region=R]` (an S3-compatible store: MinIO, Ceph, moto...).
    `credentials` holds `key` and `secret` (docs/api-decisions.md, Data)."""
    from libcloud.storage.drivers.s3 import S3StorageDriver

    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    region = query.get("region", "us-east-1")
    if parts.scheme == "s3":
        bucket, host, port, secure = parts.netloc, None, None, True
    elif parts.scheme in ("s3+http", "s3+https"):
        bucket, host, port, secure = parts.path.strip("/"), parts.hostname, parts.port, parts.scheme == "s3+https"
    else:
        raise StorageError("the storage URL must be local, s3://BUCKET or s3+http(s)://HOST[:PORT]/BUCKET")
    if not bucket or "/" in bucket:
        raise StorageError("the storage URL must name one bucket")
    if not credentials.get("key") or not credentials.get("secret"):
        raise StorageError("the S3 store needs credentials (`prominence-server storage set-credentials`: "
                           "key and secret)")
    try:
        driver = S3StorageDriver(credentials["key"], credentials["secret"], secure=secure, host=host, port=port,
                                 region=region)
    except ValueError as error:  # an unknown region: the message names it, never a credential
        raise StorageError(f"the storage URL: {error}") from None
    return driver, bucket


class ObjectStore:
    """`driver`/`container`: another libcloud storage driver and its container (bucket), e.g. from
    `s3_driver`; by default the local driver under `root`. Keys are checked at every use; on the
    local driver no link on a key's way is followed (nor written through)."""

    def __init__(self, root: Path, secret: bytes, public_url: str, driver: StorageDriver | None = None,
                 container: str = CONTAINER):
        if driver is None:
            root.mkdir(parents=True, exist_ok=True)
            driver = LocalStorageDriver(str(root))
            self._local_base: str | None = str(root / container)
        else:
            self._local_base = None
        self._driver = driver
        self._container_name = container
        try:
            self._container = self._driver.get_container(container)
        except ContainerDoesNotExistError:
            self._container = self._driver.create_container(container)
        self._secret = secret
        self._public_url = public_url

    @property
    def kind(self) -> str:
        return "local" if self._local_base is not None else self._driver.name

    def _checked(self, key: str) -> str:
        """The key, if it is valid and (local driver) no part of its way on disk is a link."""
        parts = check_key(key)
        if self._local_base is not None:
            path = self._local_base
            for part in parts:
                path = os.path.join(path, part)
                try:
                    mode = os.lstat(path).st_mode
                except FileNotFoundError:
                    break
                if stat.S_ISLNK(mode):
                    raise StorageError(f"object key {key!r} goes through a link")
        return key

    def put(self, key: str, chunks: Iterable[bytes]) -> int:
        """Store an object from an iterator of bytes; returns its size."""
        return self._driver.upload_object_via_stream(iter(chunks), self._container, self._checked(key)).size

    def put_file(self, key: str, path: str, meta: dict[str, str] | None = None) -> None:
        """Store an object from a file (the driver sends it from disk, never whole in memory)."""
        extra = {"meta_data": meta} if meta else None
        self._driver.upload_object(path, self._container, self._checked(key), extra=extra, verify_hash=False)

    def delete(self, key: str) -> bool:
        """Delete an object; False when there was none."""
        try:
            obj = self._driver.get_object(self._container_name, self._checked(key))
        except ObjectDoesNotExistError:
            return False
        return bool(self._driver.delete_object(obj))

    def get(self, key: str) -> Iterator[bytes] | None:
        self._checked(key)
        if self._local_base is not None:
            return self._local_get(key)
        try:
            obj = self._driver.get_object(self._container_name, key)
        except ObjectDoesNotExistError:
            return None
        return self._driver.download_object_as_stream(obj, chunk_size=_CHUNK)

    def _local_get(self, key: str) -> Iterator[bytes] | None:
        """The local file, opened one part at a time without following any link (at the moment
        of use: a link made after the check would still not be followed); only a regular file."""
        parts = key.split("/")
        try:
            fd = os.open(self._local_base, _DIRECTORY)
        except FileNotFoundError:
            return None
        try:
            for number, part in enumerate(parts):
                last = number == len(parts) - 1
                flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK if last else _DIRECTORY
                parent, fd = fd, -1
                try:
                    fd = os.open(part, flags, dir_fd=parent)
                finally:
                    os.close(parent)
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise StorageError(f"object key {key!r} is not a file")
        except (FileNotFoundError, NotADirectoryError):
            if fd >= 0:
                os.close(fd)
            return None
        except OSError as error:  # ELOOP: a link on the way
            if fd >= 0:
                os.close(fd)
            raise StorageError(f"object key {key!r}: {error.strerror}") from None
        os.set_blocking(fd, True)
        handle = os.fdopen(fd, "rb")

        def chunks() -> Iterator[bytes]:
            with handle:
                while piece := handle.read(_CHUNK):
                    yield piece
        return chunks()

    def _signature(self, key: str, expires: int) -> str:
        return hmac.new(self._secret, f"{key}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def _upload_signature(self, key: str, expires: int, fields: dict[str, str]) -> str:
        # A NUL (which no key holds) keeps upload signatures apart from download ones.
        message = f"upload\x00{key}\x00{expires}\x00{urlencode(sorted(fields.items()))}"
        return hmac.new(self._secret, message.encode(), hashlib.sha256).hexdigest()

    def signed_upload_url(self, key: str, lifetime: int, fields: dict[str, str]) -> tuple[str, int]:
        """A URL to PUT `key` to without a bearer token, until it expires; `fields` (the expected
        checksum, the uploader...) travel in it, signed. Returns the URL and its expiry."""
        expires = int(time.time()) + lifetime
        query = urlencode({**fields, "expires": expires, "signature": self._upload_signature(key, expires, fields)})
        return f"{self._public_url}/v1/storage/{quote(key)}?{query}", expires

    def check_upload(self, key: str, params: dict[str, str], names: Iterable[str]) -> dict[str, str] | None:
        """The signed fields (`names`) of an upload URL's query, if it is one this store signed
        for `key` and it has not expired; else None."""
        raw = params.get("expires", "")
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 19) or int(raw) < time.time():
            return None
        fields = {name: params.get(name, "") for name in names}
        good = self._upload_signature(key, int(raw), fields)
        return fields if hmac.compare_digest(good.encode(), params.get("signature", "").encode()) else None

    def signed_url(self, key: str, lifetime: int = OUTPUT_URL_LIFETIME) -> str:
        expires = int(time.time()) + lifetime
        query = urlencode({"expires": expires, "signature": self._signature(key, expires)})
        return f"{self._public_url}/v1/storage/{quote(key)}?{query}"

    def check_signature(self, key: str, expires: int | None, signature: str) -> bool:
        """Whether a download URL is one this store signed and has not expired (`expires`: None
        when the URL's value is not an integer)."""
        if expires is None or expires < time.time():
            return False
        return hmac.compare_digest(self._signature(key, expires).encode(), signature.encode())
