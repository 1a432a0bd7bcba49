"""The admin side of GraphQL (DESIGN.md 3.7): nodes and clouds to read, and the mutations of
`prominence-server cloud|node|token ...`. Every field here is AdminOnly (FORBIDDEN for anyone
else). Resolvers only translate: CloudService decides, as it does for the CLI, and its domain
errors reach clients with their codes.

Clouds go in as JSON with the fields of a cloud file (docs/clouds.md), so that a cloud file,
`prominence-server cloud add --set`, `cloud show` and GraphQL spell a cloud one way, and errors
name the field as the admin wrote it. Credentials go in as JSON and never come back out."""
from __future__ import annotations

import strawberry
from anyio import to_thread
from strawberry.scalars import JSON

from gateway.graphql.clouds import Cloud
from gateway.graphql.context import AdminOnly, services
from gateway.graphql.nodes import Node, node_id
from gateway.services.clouds import CloudService, CloudView
from schema.identity import check_token_claims

def _clouds(info: strawberry.Info) -> CloudService:
    return services(info).clouds


def admin_field(description: str):
    return strawberry.field(description=description, permission_classes=[AdminOnly])


def admin_mutation(description: str):
    return strawberry.mutation(description=description, permission_classes=[AdminOnly])


@strawberry.type
class AdminQueries:
    @admin_field("Nodes in id order: the live ones, or all with includeGone; of one cloud with cloud")
    async def nodes(self, info: strawberry.Info, cloud: str | None = None, include_gone: bool = False) -> list[Node]:
        return [Node.of(view) for view in await to_thread.run_sync(_clouds(info).nodes, cloud, include_gone)]

    @admin_field("Every cloud, by name")
    async def clouds(self, info: strawberry.Info) -> list[Cloud]:
        return [Cloud.of(view) for view in await to_thread.run_sync(_clouds(info).list)]

    @admin_field("One cloud")
    async def cloud(self, info: strawberry.Info, name: str) -> Cloud:
        return Cloud.of(await to_thread.run_sync(_clouds(info).get, name))


@strawberry.type
class AdminMutations:
    @admin_mutation("Add a cloud: `input` holds the fields of a cloud file (docs/clouds.md), `credentials` "
                    "its credentials if given now (they can be set later with setCloudCredentials)")
    async def add_cloud(self, info: strawberry.Info, input: JSON,  # noqa: A002 - its public name
                        credentials: JSON | None = None) -> Cloud:
        return Cloud.of(await to_thread.run_sync(_clouds(info).add, input, credentials))

    @admin_mutation("Change fields of a cloud (any field of a cloud file but its name)")
    async def update_cloud(self, info: strawberry.Info, name: str, changes: JSON) -> Cloud:
        return Cloud.of(await to_thread.run_sync(_clouds(info).update, name, changes))

    @admin_mutation("Let the provisioner create nodes on a cloud")
    async def enable_cloud(self, info: strawberry.Info, name: str) -> Cloud:
        return Cloud.of(await to_thread.run_sync(_clouds(info).set_enabled, name, True))

    @admin_mutation("Stop creating nodes on a cloud (its nodes go once idle)")
    async def disable_cloud(self, info: strawberry.Info, name: str) -> Cloud:
        return Cloud.of(await to_thread.run_sync(_clouds(info).set_enabled, name, False))

    @admin_mutation("Remove a cloud without live nodes; returns its name")
    async def remove_cloud(self, info: strawberry.Info, name: str) -> str:
        await to_thread.run_sync(_clouds(info).remove, name)
        return name

    @admin_mutation("Set or rotate a cloud's credentials (a mapping of names to strings: key, secret, "
                    "ssh_private_key...); they are never shown back")
    async def set_cloud_credentials(self, info: strawberry.Info, name: str, credentials: JSON) -> Cloud:
        clouds = _clouds(info)

        def run() -> CloudView:
            clouds.set_credentials(name, credentials)
            return clouds.get(name)
        return Cloud.of(await to_thread.run_sync(run))

    @admin_mutation("Let a ready node finish its jobs without new ones; it is deleted once they are done")
    async def drain_node(self, info: strawberry.Info, id: strawberry.ID) -> Node:  # noqa: A002 - its public name
        return Node.of(await to_thread.run_sync(_clouds(info).drain_node, node_id(id)))

    @admin_mutation("Take a node out of the pool now: its jobs go back to the queue (not counted as a retry), "
                    "its VM is destroyed")
    async def delete_node(self, info: strawberry.Info, id: strawberry.ID) -> Node:  # noqa: A002 - its public name
        return Node.of(await to_thread.run_sync(_clouds(info).delete_node, node_id(id)))

    @admin_mutation("A token (JWT) for a user, signed by this server, as `prominence-server token create` "
                    "makes")
    async def create_token(self, info: strawberry.Info, username: str, groups: list[str] | None = None,
                           admin: bool = False, email: str | None = None, days: float = 30) -> str:
        check_token_claims(username, groups or [], email, days)
        return services(info).tokens.issue(username, tuple(groups or ()), email=email, admin=admin, days=days)
