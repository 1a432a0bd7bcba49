"""Object storage through libcloud's storage drivers (DESIGN.md 3.6), and URLs signed by the gateway.

The local driver (files under `<data dir>/storage`) is the default. A signed URL carries its expiry
and an HMAC of the object key, so downloads work without a bearer token (the CLI downloads outputs
with a plain GET) and only for the objects the service chose to hand out.
"""
import hashlib
import hmac
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from urllib.parse import quote, urlencode

from libcloud.storage.drivers.local import LocalStorageDriver
from libcloud.storage.types import ContainerDoesNotExistError, ObjectDoesNotExistError

CONTAINER = "prominence"
OUTPUT_URL_LIFETIME = 7 * 86400  # as the real server's output URLs


class ObjectStore:
    def __init__(self, root: Path, secret: bytes, public_url: str):
        root.mkdir(parents=True, exist_ok=True)
        self._driver = LocalStorageDriver(str(root))
        try:
            self._container = self._driver.get_container(CONTAINER)
        except ContainerDoesNotExistError:
            self._container = self._driver.create_container(CONTAINER)
        self._secret = secret
        self._public_url = public_url

    def put(self, key: str, chunks: Iterable[bytes]) -> int:
        """Store an object from an iterator of bytes; returns its size."""
        return self._driver.upload_object_via_stream(iter(chunks), self._container, key).size

    def get(self, key: str) -> Iterator[bytes] | None:
        try:
            obj = self._driver.get_object(CONTAINER, key)
        except ObjectDoesNotExistError:
            return None
        return self._driver.download_object_as_stream(obj, chunk_size=1 << 16)

    def _signature(self, key: str, expires: int) -> str:
        return hmac.new(self._secret, f"{key}\n{expires}".encode(), hashlib.sha256).hexdigest()

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
