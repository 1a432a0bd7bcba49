"""The caller's key-value store in GraphQL: `kv(key)`, `kvKeys(prefix)`, `kvEntries(prefix)`, and the
mutations `setKv` and `deleteKv`, through KvService as /v1/kv uses it (the same keys, rules and
messages). Values are bytes: GraphQL shows them as UTF-8 text (`value`) and as base64
(`valueBase64`), which any value has."""
from __future__ import annotations

import base64
import binascii
import datetime

import strawberry

from gateway.graphql.context import caller, services
from gateway.services.kv import KvItem, KvService
from schema.errors import InvalidInput, InvalidState, NotFound


def _kv(info: strawberry.Info) -> KvService:
    return services(info).kv


@strawberry.type(description="A key of the caller's key-value store, and its value")
class KvEntry:
    key: str = strawberry.field(description="The key as listings show it: a leading `/`, then its path")
    size: int = strawberry.field(description="The value's length in bytes (1 to 16,000)")
    updated_at: datetime.datetime = strawberry.field(description="When it was last set")
    raw: strawberry.Private[bytes]

    @classmethod
    def of(cls, item: KvItem) -> KvEntry:
        return cls(key=item.key, size=len(item.value), raw=item.value,
                   updated_at=datetime.datetime.fromtimestamp(item.updated_at, datetime.UTC))

    @strawberry.field(description="The value as text. A value that is not UTF-8 is null here, with an "
                                  "INVALID_STATE error: read valueBase64")
    def value(self) -> str | None:
        try:
            return self.raw.decode()
        except UnicodeDecodeError:
            raise InvalidState(f"The value of {self.key} is not UTF-8 text: read valueBase64") from None

    @strawberry.field(description="The value's bytes in base64 (any value)")
    def value_base64(self) -> str:
        return base64.b64encode(self.raw).decode()


def _bytes(name: str, text: str | None, encoded: str | None) -> bytes | None:
    """A value given as text (`name`) or base64 (`nameBase64`): at most one of them."""
    if text is not None and encoded is not None:
        raise InvalidInput(f"Give {name} or {name}Base64, not both")
    if encoded is not None:
        try:
            return base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInput(f"{name}Base64: not base64") from None
    if text is not None:
        try:
            return text.encode()
        except UnicodeEncodeError:  # a lone surrogate ("\ud800" in JSON)
            raise InvalidInput(f"{name}: not valid Unicode text") from None
    return None


@strawberry.type
class KvQueries:
    @strawberry.field(description="One key of the caller's key-value store; null when there is no such key")
    async def kv(self, info: strawberry.Info, key: str) -> KvEntry | None:
        who = await caller(info)
        try:
            return KvEntry.of(await _kv(info).get(who, key))
        except NotFound:
            return None

    @strawberry.field(description="The caller's keys that start with `/` + prefix (a plain string prefix: "
                                  "`a` lists `/a/b` and `/ab`), in order, without those containing `_internal_`")
    async def kv_keys(self, info: strawberry.Info, prefix: str = "") -> list[str]:
        return [item.key for item in await _kv(info).list(await caller(info), prefix)]

    @strawberry.field(description="kvKeys with their values")
    async def kv_entries(self, info: strawberry.Info, prefix: str = "") -> list[KvEntry]:
        return [KvEntry.of(item) for item in await _kv(info).list(await caller(info), prefix, values=True)]


@strawberry.type
class KvMutations:
    @strawberry.mutation(description="Set a key to a value given as text (`value`, stored as UTF-8) or as base64 "
                                     "(`valueBase64`), 1 to 16,000 bytes. With `prev` (or `prevBase64`): only if "
                                     "its value is exactly that now (an empty prev: only if the key does not exist "
                                     "yet), else a CONFLICT error and nothing changes")
    async def set_kv(self, info: strawberry.Info, key: str, value: str | None = None,
                     value_base64: str | None = None, prev: str | None = None,
                     prev_base64: str | None = None) -> KvEntry:
        who = await caller(info)
        data = _bytes("value", value, value_base64)
        if data is None:
            raise InvalidInput("No value provided")
        return KvEntry.of(await _kv(info).set(who, key, data, _bytes("prev", prev, prev_base64)))

    @strawberry.mutation(description="Delete a key, or with `prefix` every key that starts with `/` + key (all of "
                                     "them for an empty key). How many keys were deleted")
    async def delete_kv(self, info: strawberry.Info, key: str, prefix: bool = False) -> int:
        return await _kv(info).delete(await caller(info), key, prefix)
