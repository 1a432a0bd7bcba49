"""Uploaded data objects (DESIGN.md 3.6; reference 1.3 and 5): list, upload by signed URL, delete,
and their use by jobs (artifacts, archive images).

Names: a name without `/` is the caller's own object, `uploads/users/<user>/<name>` in the store;
a name `<group>/<path>` is in the area of a group the caller belongs to,
`uploads/groups/<group>/<path>`. Users and groups have separate areas, so a group named like a
user never reaches into that user's objects. The table `data_objects` indexes the store's
`uploads/...` keys (listings are one query) and keeps each object's size and sha256.

An upload goes through the gateway: `upload_url` signs a PUT URL (no bearer token needed, as the
CLI sends none) that carries the expected sha256 (when the client gave one) and the uploader; the
body is spooled to a file under the data dir while its sha256 and size are computed, refused when
either is wrong, and only then handed to the store: a refused upload never replaces an object.
"""
from __future__ import annotations

import email.utils
import hashlib
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anyio import to_thread
from sqlalchemy import Engine, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from gateway.storage import ObjectStore, StorageError
from schema.db import reading
from schema.errors import Forbidden, InvalidInput, NotFound
from schema.identity import Identity
from schema.jobspec import check_object_name, is_archive_image, is_object_artifact
from schema.tables import data_objects

log = logging.getLogger("prominence.data")

UPLOAD_URL_LIFETIME = 600  # seconds, as the real server's upload URLs
MAX_OBJECT_BYTES = 5 * 1024**3  # "a limit of 5 GB for a single file" (reference 1.3)
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_UPLOAD_FIELDS = ("sha256", "user")


class ObjectNotFound(NotFound):
    """A named object does not exist (REST answers 400: the CLI reads a 404 as a wrong URL)."""


@dataclass(frozen=True)
class DataObject:
    name: str
    size: int
    modified: float  # epoch seconds
    sha256: str

    def view(self) -> dict[str, Any]:
        """As `GET /v1/data` shows it (reference 1.3: lastModified as an HTTP date)."""
        return {"name": self.name, "size": self.size,
                "lastModified": email.utils.formatdate(self.modified, usegmt=True), "sha256": self.sha256}


@dataclass(frozen=True)
class UploadUrl:
    name: str
    url: str
    expires: int


def _name(value: Any, what: str = "name") -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be a string")
    try:
        return check_object_name(value)
    except ValueError as error:
        raise InvalidInput(f"{what} {error}") from None


def user_key(username: str, name: str) -> str:
    """The store key of a user's own object (a name without `/`)."""
    return f"uploads/users/{username}/{name}"


def _place(identity: Identity, name: str) -> tuple[str, str]:
    """(store key, area) of `name` for the caller; Forbidden for a group the caller is not in."""
    if "/" not in name:
        return user_key(identity.username, name), f"users/{identity.username}"
    group = name.split("/", 1)[0]
    if group not in identity.groups:
        raise Forbidden("Not authorized to access this object")
    return f"uploads/groups/{name}", f"groups/{group}"


def _area_of(key: str) -> tuple[str, str]:
    """(area, name as users see it) of an `uploads/...` key."""
    _, kind, owner, rest = key.split("/", 3)
    return f"{kind}/{owner}", rest if kind == "users" else f"{owner}/{rest}"


def _starts_with(column, prefix: str):
    # Not LIKE: SQLite's LIKE ignores case, and `%`/`_` in names would be wildcards.
    return func.substr(column, 1, len(prefix)) == prefix


def job_object_key(owner: str, groups: Iterable[str], name: str) -> str | None:
    """The store key of an object a job names (artifact url, archive image): the owner's own
    object for a name without `/`, `<group>/<path>` in that group's area when the job's recorded
    groups (its submitter's token's, at submission) include it; None otherwise."""
    if "/" not in name:
        return user_key(owner, name)
    group = name.split("/", 1)[0]
    return f"uploads/groups/{name}" if group in groups else None


def resolve_for_job(store: ObjectStore, owner: str, spec: dict[str, Any], lifetime: int,
                    groups: Iterable[str] = ()) -> tuple[dict[str, Any], dict[str, str]]:
    """What a node gets for a job: its artifacts that name uploaded objects become signed download
    URLs, and each archive image a signed URL in the returned map (image name -> URL), which the
    agent fetches and `podman load`s. Another user's objects are never reachable: a name without
    `/` is resolved in the owner's own area, `<group>/...` only in a group the job was submitted
    with (else the owner's area, where no name with `/` exists: the stage-in fails)."""
    groups = tuple(groups)

    def url(name: str) -> str:
        return store.signed_url(job_object_key(owner, groups, name) or user_key(owner, name), lifetime)

    artifacts = spec.get("artifacts")
    if artifacts:
        spec = {**spec, "artifacts": [{**artifact, "url": url(artifact["url"])}
                                      if is_object_artifact(artifact["url"]) else artifact for artifact in artifacts]}
    images = {task["image"]: url(task["image"])
              for task in spec.get("tasks", []) if is_archive_image(task.get("image", ""))}
    return spec, images


def job_object_names(spec: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    """(field, name) of every uploaded object a stored job description names: artifact urls that
    are not http(s), and archive images."""
    for number, artifact in enumerate(spec.get("artifacts") or ()):
        if is_object_artifact(artifact["url"]):
            yield f"{prefix}artifacts[{number}].url", artifact["url"]
    for number, task in enumerate(spec.get("tasks") or ()):
        if is_archive_image(task.get("image", "")):
            yield f"{prefix}tasks[{number}].image", task["image"]


# A factory job's artifact urls may hold its parameters ($x): the names of this many of its
# instances are checked at submission (the first ones, and the last); the others' at stage-in.
MAX_CHECKED_INSTANCES = 10_000


def workflow_object_names(spec: Any) -> Iterator[tuple[str, str]]:
    """(field, name) of every uploaded object the jobs of a workflow (schema.workflowspec's
    WorkflowSpec) name, with a factory's parameters substituted in artifact urls per instance."""
    from schema.workflowspec import _substitute, _text, instance_parameters

    for number, template in enumerate(spec.jobs):
        stored = template.to_stored()
        prefix = f"jobs[{number}]."
        factory = spec.factory_of(template.name)
        parameterized = [(n, a["url"]) for n, a in enumerate(stored.get("artifacts") or ())
                         if "$" in a["url"]]
        if factory is None or not parameterized:
            yield from job_object_names(stored, prefix)
            continue
        varying = {f"{prefix}artifacts[{n}].url" for n, _ in parameterized}
        yield from ((field, name) for field, name in job_object_names(stored, prefix) if field not in varying)
        count = factory.count()
        indices = range(count) if count <= MAX_CHECKED_INSTANCES else \
            [*range(MAX_CHECKED_INSTANCES - 1), count - 1]
        for index in indices:
            values = {key: _text(value) for key, value in (instance_parameters(spec, template.name, index) or {}).items()}
            for n, raw in parameterized:
                name = _substitute(raw, values)
                if is_object_artifact(name):
                    yield (f"{prefix}artifacts[{n}].url (instance {index} of factory {factory.name})", name)


def check_job_objects(engine: Engine, owner: str, groups: Iterable[str], names: Iterable[tuple[str, str]],
                      what: str = "job description") -> None:
    """Every uploaded object a submission names exists, in an area the job may read (the owner's,
    or a group's among `groups`, the submitting token's): InvalidInput naming the first field that
    breaks this. One indexed query per 500 distinct objects; none when nothing is named."""
    groups = tuple(groups)
    keys: dict[str, tuple[str, str]] = {}
    for field, name in names:
        key = job_object_key(owner, groups, name)
        if key is None:
            raise InvalidInput(f"Invalid {what}: {field}: {name} is in the area of group {name.split('/', 1)[0]}, "
                               "and the submitting token is not in that group")
        keys.setdefault(key, (field, name))
    if not keys:
        return
    wanted, found = list(keys), set()
    with reading(engine) as connection:
        for start in range(0, len(wanted), 500):
            found.update(connection.execute(select(data_objects.c.key).where(
                data_objects.c.key.in_(wanted[start:start + 500]))).scalars())
    for key, (field, name) in keys.items():
        if key not in found:
            raise InvalidInput(f"Invalid {what}: {field}: no uploaded object named {name}")


class DataService:
    def __init__(self, engine: Engine, store: ObjectStore, data_dir: Path, max_object_bytes: int = MAX_OBJECT_BYTES,
                 upload_lifetime: int = UPLOAD_URL_LIFETIME):
        self._engine = engine
        self._store = store
        self._spool = data_dir / "tmp" / "uploads"
        self._spool.mkdir(parents=True, exist_ok=True)
        self.max_object_bytes = max_object_bytes
        self._upload_lifetime = upload_lifetime
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()

    # -- listing ---------------------------------------------------------------------------------

    def _rows(self, area: str, prefix: str = "") -> list[DataObject]:
        conditions = [data_objects.c.area == area]
        if prefix:
            conditions.append(_starts_with(data_objects.c.name, prefix))
        with reading(self._engine) as connection:
            rows = connection.execute(select(data_objects.c.name, data_objects.c.size, data_objects.c.modified,
                                             data_objects.c.sha256).where(*conditions)
                                      .order_by(data_objects.c.name)).all()
        return [DataObject(row.name, row.size, row.modified, row.sha256) for row in rows]

    async def list(self, identity: Identity, prefix: str | None = None) -> list[DataObject]:
        """The caller's own objects whose names start with `prefix`; a prefix with `/` lists the
        area of the group it starts with (the caller must belong to it)."""
        prefix = prefix or ""
        if "\x00" in prefix:
            raise InvalidInput("prefix must not contain NUL characters")
        if "/" in prefix:
            group = prefix.split("/", 1)[0]
            if group not in identity.groups:
                raise Forbidden("Not authorized to access this path")
            return await to_thread.run_sync(self._rows, f"groups/{group}", prefix)
        return await to_thread.run_sync(self._rows, f"users/{identity.username}", prefix)

    async def list_path(self, identity: Identity, path: str) -> list[DataObject]:
        """`GET /v1/data/<path>`: the objects of a group area under `path` (`<group>[/dir...]`),
        names keeping the `<path>/` prefix."""
        path = _name(path.rstrip("/") if path != "/" else "", "path")
        group = path.split("/", 1)[0]
        if group not in identity.groups:
            raise Forbidden("Not authorized to access this path")
        return await to_thread.run_sync(self._rows, f"groups/{group}", "" if path == group else path + "/")

    # -- upload ----------------------------------------------------------------------------------

    async def upload_url(self, identity: Identity, name: Any, checksum: Any = None) -> UploadUrl:
        """A signed URL to PUT the object `name` to (no token needed), valid UPLOAD_URL_LIFETIME s."""
        if name is None or name == "":
            raise InvalidInput("An object name must be specified")
        name = _name(name)
        if checksum in (None, ""):
            checksum = ""
        elif not isinstance(checksum, str) or not _SHA256.fullmatch(checksum):
            raise InvalidInput("checksum must be the sha256 of the file: 64 hexadecimal digits")
        try:
            key, _ = _place(identity, name)
        except Forbidden:
            raise Forbidden("Not authorized to access upload with this path") from None
        url, expires = self._store.signed_upload_url(key, self._upload_lifetime,
                                                     {"sha256": checksum.lower(), "user": identity.username})
        return UploadUrl(name, url, expires)

    def upload_fields(self, key: str, params: dict[str, str]) -> dict[str, str] | None:
        """The signed fields of an upload URL for `key`; None when it is forged or expired."""
        if not key.startswith("uploads/") or len(key.split("/")) < 4:
            return None
        return self._store.check_upload(key, params, _UPLOAD_FIELDS)

    async def receive(self, key: str, fields: dict[str, str], body: AsyncIterator[bytes]) -> DataObject:
        """Store the body of a signed upload: spooled while its sha256 and size are computed, then
        (when both are right) given to the store and indexed."""
        fd, spooled = tempfile.mkstemp(dir=self._spool, prefix="upload-")
        try:
            digest, size = hashlib.sha256(), 0
            with os.fdopen(fd, "wb") as handle:
                async for chunk in body:
                    size += len(chunk)
                    if size > self.max_object_bytes:
                        raise InvalidInput(f"The object is larger than the limit of {self.max_object_bytes} bytes")
                    digest.update(chunk)
                    await to_thread.run_sync(handle.write, chunk)
            sha256 = digest.hexdigest()
            if fields["sha256"] and fields["sha256"] != sha256:
                raise InvalidInput(f"Checksum mismatch: the upload URL expects sha256 {fields['sha256']}, "
                                   f"the body received has {sha256}")
            return await to_thread.run_sync(self._store_and_index, key, spooled, size, sha256, fields["user"])
        finally:
            os.unlink(spooled)

    def _lock(self, key: str) -> threading.Lock:
        with self._locks_lock:
            return self._locks.setdefault(key, threading.Lock())

    def _store_and_index(self, key: str, spooled: str, size: int, sha256: str, uploader: str) -> DataObject:
        area, name = _area_of(key)
        now = time.time()
        values = {"area": area, "name": name, "size": size, "sha256": sha256, "modified": now, "uploader": uploader}
        with self._lock(key):  # the object and its row change together
            try:
                self._store.put_file(key, spooled, {"sha256": sha256})
            except StorageError as error:
                raise InvalidInput(str(error)) from None
            for _ in range(2):
                try:
                    with self._engine.begin() as connection:
                        if not connection.execute(update(data_objects).where(data_objects.c.key == key)
                                                  .values(**values)).rowcount:
                            connection.execute(insert(data_objects).values(key=key, **values))
                    break
                except IntegrityError:  # another gateway indexed it meanwhile: update it
                    continue
        return DataObject(name, size, now, sha256)

    # -- delete ----------------------------------------------------------------------------------

    async def delete(self, identity: Identity, name: Any) -> None:
        name = _name(name)
        key, _ = _place(identity, name)

        def run() -> None:
            with self._lock(key):
                with self._engine.begin() as connection:
                    if not connection.execute(delete(data_objects).where(data_objects.c.key == key)).rowcount:
                        raise ObjectNotFound(f"Object {name} does not exist")
                try:
                    self._store.delete(key)
                except Exception:  # noqa: BLE001 - the index no longer shows it; the bytes are only left over
                    log.exception("could not delete %s from the store", key)
        await to_thread.run_sync(run)

    async def exists(self, owner: str, name: str) -> bool:
        """Whether `owner` has an own object called `name`."""
        def run() -> bool:
            with reading(self._engine) as connection:
                return connection.execute(select(data_objects.c.key).where(
                    data_objects.c.key == user_key(owner, name))).first() is not None
        return await to_thread.run_sync(run)


# -- the store itself: local, or S3-compatible with write-only keys --------------------------------

def set_storage_credentials(engine: Engine, box: Any, credentials: Any) -> None:
    """Keep the object store's keys (`key`, `secret`), sealed; they are never shown back."""
    from schema.credentials import check_credentials
    from schema.tables import storage_credentials

    try:
        credentials = check_credentials(credentials)
    except ValueError as error:
        raise InvalidInput(str(error)) from None
    if set(credentials) != {"key", "secret"}:
        raise InvalidInput("the storage credentials are a mapping with exactly `key` and `secret`")
    sealed, now = box.seal(credentials), time.time()
    with engine.begin() as connection:
        if not connection.execute(update(storage_credentials).where(storage_credentials.c.name == "default")
                                  .values(credentials=sealed, updated_at=now)).rowcount:
            connection.execute(insert(storage_credentials).values(name="default", credentials=sealed, updated_at=now))


def storage_credentials_updated(engine: Engine) -> float | None:
    """When the store's keys were last set (None: never); the keys themselves are not readable here."""
    from schema.tables import storage_credentials

    with engine.connect() as connection:
        return connection.execute(select(storage_credentials.c.updated_at)
                                  .where(storage_credentials.c.name == "default")).scalar()


def open_store(settings: Any, engine: Engine, box: Any) -> ObjectStore:
    """The object store the settings name: local files under the data dir, or an S3 bucket whose
    keys were set with `prominence-server storage set-credentials`."""
    from gateway.storage import s3_driver
    from schema.tables import storage_credentials

    root = settings.data_dir / "storage"
    if settings.storage_url == "local":
        return ObjectStore(root, settings.secret, settings.public_url)
    with engine.connect() as connection:
        sealed = connection.execute(select(storage_credentials.c.credentials)
                                    .where(storage_credentials.c.name == "default")).scalar()
    credentials = box.open(sealed)
    driver, bucket = s3_driver(settings.storage_url, credentials)
    try:
        return ObjectStore(root, settings.secret, settings.public_url, driver=driver, container=bucket)
    except Exception as error:  # noqa: BLE001 - any failure; the message with credential values taken out
        text = str(error)
        for value in credentials.values():
            text = text.replace(value, "***")
        raise StorageError(f"the object store {settings.storage_url} cannot be used: "
                           f"{type(error).__name__}: {text}") from None
