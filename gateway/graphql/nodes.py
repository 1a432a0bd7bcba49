"""Nodes in GraphQL: the machines jobs run on (a VM on a cloud, or a local node). Admins list them
all (gateway/graphql/admin.py); a job's owner reaches the node of their job (Job.node) and reads
what it is and how it does, but not where it is (`address`) or what it costs (`price`): those
are admin-only fields (AdminOnly). Its `jobs` are all of them for an admin, else the caller's own."""
from __future__ import annotations

import datetime
from collections.abc import Sequence

import strawberry
from anyio import to_thread
from sqlalchemy import Row
from strawberry.dataloader import DataLoader

from gateway.graphql.clouds import Cloud, admin_only, clouds_by_name
from gateway.graphql.context import caller, loader, services
from gateway.graphql.jobs import Job, time_of
from gateway.rest.common import MAX_ID, ascii_int
from gateway.services.clouds import NodeView
from schema.enums import NodeState as NodeStateValue
from schema.errors import InvalidInput

NodeState = strawberry.enum(NodeStateValue, name="NodeState", description="Where a node is in its life")


def node_id(value: str) -> int:
    number = ascii_int(value)
    if number is None or not 0 < number <= MAX_ID:
        raise InvalidInput(f"id: {value!r} is not a node id")
    return number


async def _jobs_on_nodes(info: strawberry.Info) -> DataLoader:
    """The request's loader of each node's unfinished jobs (rows), all of them for an admin,
    else the caller's own: however many nodes ask, one SQL statement."""
    who = await caller(info)
    clouds = services(info).clouds

    async def load(ids: Sequence[int]) -> list[list[Row]]:
        found = await to_thread.run_sync(clouds.jobs_on_nodes, list(ids), None if who.admin else who.username)
        return [found[node] for node in ids]
    return loader(info, "jobs_on_nodes", load)


@strawberry.type(description="A machine that runs jobs")
class Node:
    id: strawberry.ID
    name: str
    cloud_name: str = strawberry.field(description="Its cloud's name (also once that cloud is removed)")
    flavour: str
    state: NodeState
    state_reason: str | None
    cpus: int
    memory_mb: int
    disk_gb: int
    created_at: datetime.datetime
    ended_at: datetime.datetime | None = strawberry.field(description="When it left the pool")
    last_heartbeat: datetime.datetime | None
    address: str | None = admin_only("Where it was configured: a host name or IP address")
    price: float | None = admin_only("Per hour, from its cloud's flavour")

    @classmethod
    def of(cls, view: NodeView) -> Node:
        return cls(id=strawberry.ID(str(view.id)), name=view.name, cloud_name=view.cloud, flavour=view.flavour,
                   state=NodeStateValue(view.state), state_reason=view.state_reason or None, cpus=view.cpus,
                   memory_mb=view.memory_mb, disk_gb=view.disk_gb, created_at=time_of(view.created_at),
                   ended_at=time_of(view.ended_at), last_heartbeat=time_of(view.last_heartbeat),
                   address=view.address or None, price=view.price)

    @strawberry.field(description="Its cloud (null once that cloud is removed)")
    async def cloud(self, info: strawberry.Info) -> Cloud | None:
        return await clouds_by_name(info).load(self.cloud_name)

    @strawberry.field(description="The jobs it was given and has not finished, in id order: all of them for an "
                                  "admin, else the caller's own")
    async def jobs(self, info: strawberry.Info) -> list[Job]:
        return [Job.of(row) for row in await (await _jobs_on_nodes(info)).load(int(self.id))]
