"""The key-value store (DESIGN.md 3.6; reference 1.4 and 6): each user's own keys, with values of
any bytes, prefix listing and deletion, and compare-and-swap. REST (/v1/kv) and GraphQL both call
this; the rules are in docs/api-decisions.md, "Key-value store".

Keys are kept as `/<path>`: the path as the caller gave it, its leading slashes removed (so the
CLI's `GET /kv//a/b` and `GET /kv/a/b` are the same key), one slash put back in front, which is
how listings show them. Every write is one SQL statement, so compare-and-swap cannot race on
SQLite or PostgreSQL.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from anyio import to_thread
from sqlalchemy import Engine, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite

from schema.db import reading
from schema.errors import Conflict, InvalidInput, NotFound
from schema.identity import Identity
from schema.tables import kv_pairs

MAX_VALUE_BYTES = 16000  # the real server's KV_MAX_BYTES; here it counts the value's bytes exactly
MAX_KEY_BYTES = 1024  # the path (without its leading slashes), in UTF-8
HIDDEN = "_internal_"  # keys containing it are left out of listings (the MPI helper's keys)


class KvConflict(Conflict):
    """A compare-and-swap whose `prev` did not match (REST answers it with the real server's 400)."""

    def __init__(self) -> None:
        super().__init__("Atomic replacement not successful")


@dataclass(frozen=True)
class KvItem:
    key: str  # "/a/b"
    value: bytes
    updated_at: float


def _bad_character(path: str) -> str | None:
    for char in path:
        code = ord(char)
        if code < 0x20 or 0x7F <= code <= 0x9F:
            return f"U+{code:04X}"
        if 0xD800 <= code <= 0xDFFF:
            return "a lone surrogate"
    return None


def normalize_key(path: str, allow_empty: bool = False) -> str:
    """The stored form of a key (or of a listing's prefix): `/` and the path without its leading
    slashes. InvalidInput for an empty key (unless `allow_empty`), one that is too long, or one
    with control characters (NUL included: PostgreSQL cannot store it)."""
    path = path.lstrip("/")
    if not path and not allow_empty:
        raise InvalidInput("Key not specified")
    if (bad := _bad_character(path)) is not None:
        raise InvalidInput(f"Invalid key: it must not contain control characters ({bad})")
    if len(path.encode()) > MAX_KEY_BYTES:
        raise InvalidInput(f"Invalid key: it must be at most {MAX_KEY_BYTES} bytes of UTF-8")
    return "/" + path


def check_value(value: bytes) -> None:
    if not value:
        raise InvalidInput("No value provided")
    if len(value) > MAX_VALUE_BYTES:
        raise InvalidInput("Content of value too large")


def _after_prefix(prefix: str) -> str | None:
    """The least string greater than every string that starts with `prefix` (None: no bound), in
    code point order, which is UTF-8 byte order and so the keys' order on both databases."""
    while prefix:
        code = ord(prefix[-1]) + 1
        if code <= 0x10FFFF:
            if 0xD800 <= code <= 0xDFFF:
                code = 0xE000
            return prefix[:-1] + chr(code)
        prefix = prefix[:-1]
    return None


def _under(prefix: str) -> list:
    """Keys starting with `prefix`, as one range of the primary key."""
    conditions = [kv_pairs.c.key >= prefix]
    if (bound := _after_prefix(prefix)) is not None:
        conditions.append(kv_pairs.c.key < bound)
    return conditions


class KvService:
    def __init__(self, engine: Engine):
        self._engine = engine
        self._insert = (postgresql if engine.dialect.name == "postgresql" else sqlite).insert

    async def get(self, identity: Identity, key: str) -> KvItem:
        """NotFound ("No such key") when the caller has no such key."""
        stored = normalize_key(key)
        return await to_thread.run_sync(self.get_sync, identity, stored)

    def get_sync(self, identity: Identity, stored: str) -> KvItem:
        with reading(self._engine) as connection:
            row = connection.execute(select(kv_pairs.c.key, kv_pairs.c.value, kv_pairs.c.updated_at).where(
                kv_pairs.c.owner == identity.username, kv_pairs.c.key == stored)).first()
        if row is None:
            raise NotFound("No such key")
        return KvItem(row.key, bytes(row.value), row.updated_at)

    async def list(self, identity: Identity, prefix: str = "", values: bool = False) -> list[KvItem]:
        """The caller's keys that start with `/<prefix>` (a plain string prefix: `/a` lists `/a/b` and
        `/ab`), in code point order, without the keys containing `_internal_`; their values too
        with `values` (else the items' values are empty)."""
        stored = normalize_key(prefix, allow_empty=True)

        def run() -> list[KvItem]:
            columns = [kv_pairs.c.key, kv_pairs.c.updated_at] + ([kv_pairs.c.value] if values else [])
            with reading(self._engine) as connection:
                rows = connection.execute(select(*columns).where(kv_pairs.c.owner == identity.username,
                                                                 *_under(stored)).order_by(kv_pairs.c.key)).all()
            return [KvItem(row.key, bytes(row.value) if values else b"", row.updated_at)
                    for row in rows if HIDDEN not in row.key]
        return await to_thread.run_sync(run)

    async def set(self, identity: Identity, key: str, value: bytes, prev: bytes | None = None) -> KvItem:
        """Sets the key. With `prev`, only if its value is exactly `prev` now (an empty `prev`: only
        if there is no such key yet), else KvConflict; the check and the write are one statement."""
        stored = normalize_key(key)
        check_value(value)
        return await to_thread.run_sync(self.set_sync, identity, stored, value, prev)

    def set_sync(self, identity: Identity, stored: str, value: bytes, prev: bytes | None) -> KvItem:
        now = time.time()
        row = {"owner": identity.username, "key": stored, "value": value, "updated_at": now}
        with self._engine.begin() as connection:
            if prev is None:  # an upsert
                insert = self._insert(kv_pairs).values(**row)
                connection.execute(insert.on_conflict_do_update(
                    index_elements=[kv_pairs.c.owner, kv_pairs.c.key],
                    set_={"value": insert.excluded.value, "updated_at": insert.excluded.updated_at}))
            elif not prev:  # create only
                # (an INSERT's rowcount is -1 with psycopg: RETURNING says whether it inserted)
                done = connection.execute(self._insert(kv_pairs).values(**row).on_conflict_do_nothing(
                    index_elements=[kv_pairs.c.owner, kv_pairs.c.key]).returning(kv_pairs.c.key))
                if done.first() is None:
                    raise KvConflict()
            else:  # the row is locked by the UPDATE, which checks the value again once it has it
                done = connection.execute(update(kv_pairs).where(
                    kv_pairs.c.owner == identity.username, kv_pairs.c.key == stored, kv_pairs.c.value == prev,
                ).values(value=value, updated_at=now))
                if done.rowcount != 1:
                    raise KvConflict()
        return KvItem(stored, value, now)

    async def delete(self, identity: Identity, key: str, prefix: bool = False) -> int:
        """Deletes the key, or with `prefix` every key of the caller starting with `/<key>` (hidden
        ones too; an empty key then means all of them). How many were deleted: deleting a key that
        does not exist is not an error."""
        stored = normalize_key(key, allow_empty=prefix)

        def run() -> int:
            where = _under(stored) if prefix else [kv_pairs.c.key == stored]
            with self._engine.begin() as connection:
                return connection.execute(delete(kv_pairs).where(kv_pairs.c.owner == identity.username,
                                                                 *where)).rowcount
        return await to_thread.run_sync(run)
