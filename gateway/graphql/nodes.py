"""Nodes in GraphQL: the machines jobs run on (a VM on a cloud, or a local node)."""
from __future__ import annotations

import datetime

import strawberry

from gateway.graphql.jobs import time_of
from gateway.services.clouds import NodeView
from schema.enums import NodeState as NodeStateValue

NodeState = strawberry.enum(NodeStateValue, name="NodeState", description="Where a node is in its life")


@strawberry.type(description="A machine that runs jobs")
class Node:
    id: strawberry.ID
    name: str
    cloud: str
    flavour: str
    state: NodeState
    state_reason: str | None
    cpus: int
    memory_mb: int
    disk_gb: int
    price: float = strawberry.field(description="Per hour, from its cloud's flavour")
    created_at: datetime.datetime
    last_heartbeat: datetime.datetime | None

    @classmethod
    def of(cls, view: NodeView) -> Node:
        return cls(id=strawberry.ID(str(view.id)), name=view.name, cloud=view.cloud, flavour=view.flavour,
                   state=NodeStateValue(view.state), state_reason=view.state_reason or None, cpus=view.cpus,
                   memory_mb=view.memory_mb, disk_gb=view.disk_gb, price=view.price,
                   created_at=time_of(view.created_at), last_heartbeat=time_of(view.last_heartbeat))
