"""The caller's uploaded data objects (gateway/services/data.py): the same rules as /v1/data."""
from __future__ import annotations

import strawberry

from gateway.graphql.context import caller, services
from gateway.services.data import DataObject as StoredObject


@strawberry.type(description="An uploaded object: the caller's own (a name without '/') or a group's "
                             "(<group>/<path>)")
class DataObject:
    name: str
    size: float = strawberry.field(description="Bytes")
    last_modified: float = strawberry.field(description="Epoch seconds of the last upload")
    sha256: str

    @classmethod
    def of(cls, stored: StoredObject) -> DataObject:
        return cls(name=stored.name, size=stored.size, last_modified=stored.modified, sha256=stored.sha256)


@strawberry.type(description="Where to PUT an object's bytes: no bearer token needed, until it expires")
class UploadUrl:
    name: str
    url: str
    expires_at: int = strawberry.field(description="Epoch seconds")


@strawberry.type
class DataQueries:
    @strawberry.field(description="The caller's objects whose names start with `prefix`; a prefix with '/' "
                                  "lists the area of the group it starts with (the caller must be in it)")
    async def data_objects(self, info: strawberry.Info, prefix: str | None = None) -> list[DataObject]:
        who = await caller(info)
        return [DataObject.of(item) for item in await services(info).data.list(who, prefix)]


@strawberry.type
class DataMutations:
    @strawberry.mutation(description="A signed URL to upload the object `name` to with a plain PUT; with "
                                     "`checksum` (sha256 hex), a body of another checksum is refused")
    async def create_upload_url(self, info: strawberry.Info, name: str, checksum: str | None = None) -> UploadUrl:
        who = await caller(info)
        made = await services(info).data.upload_url(who, name, checksum)
        return UploadUrl(name=made.name, url=made.url, expires_at=made.expires)

    @strawberry.mutation(description="Delete one of the caller's objects (or of a group's); true when done")
    async def delete_data_object(self, info: strawberry.Info, name: str) -> bool:
        who = await caller(info)
        await services(info).data.delete(who, name)
        return True
