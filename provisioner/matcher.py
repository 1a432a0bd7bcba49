"""Matching and planning: pure functions over a snapshot, tested without I/O (DESIGN.md 2, 3.4).

`match` packs idle jobs onto the free capacity of ready nodes; `plan_scale_up` decides what new
nodes the jobs that are left over need; `plan_scale_down` and `find_lost` pick nodes to delete.
The provisioner's loop (provisioner/service.py) takes the snapshot and does the I/O.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from collections.abc import Sequence


@dataclass(frozen=True)
class Demand:
    """One idle job, as the scheduler sees it. Callers pass them highest priority first, then oldest."""

    job_id: int
    cpus: int
    memory_mb: int
    disk_gb: int
    autoscale: bool = True  # False: autoScalingType "none", never create capacity for it
    nodes: int = 1  # several (or 0: totalCpusRange) need all their nodes at once, not supported yet


@dataclass(frozen=True)
class Capacity:
    """Free (or, for a new node, total) resources of a node."""

    node_id: int
    cpus: int
    memory_mb: int
    disk_gb: int

    def fits(self, demand: Demand) -> bool:
        return demand.cpus <= self.cpus and demand.memory_mb <= self.memory_mb and demand.disk_gb <= self.disk_gb

    def minus(self, demand: Demand) -> Capacity:
        return replace(self, cpus=self.cpus - demand.cpus, memory_mb=self.memory_mb - demand.memory_mb,
                       disk_gb=self.disk_gb - demand.disk_gb)


def match(demands: Sequence[Demand], free: Sequence[Capacity]) -> dict[int, int]:
    """job id -> node id. In the callers' order, each job goes to the node it fits most tightly
    (fewest cpus left), so large holes stay open for large jobs; a job that fits nowhere does not
    hold back smaller ones behind it (backfill)."""
    nodes = list(free)
    placed: dict[int, int] = {}
    for demand in demands:
        if demand.nodes != 1:
            continue
        fitting = [i for i, node in enumerate(nodes) if node.fits(demand)]
        if not fitting:
            continue
        best = min(fitting, key=lambda i: (nodes[i].cpus - demand.cpus, nodes[i].memory_mb - demand.memory_mb))
        placed[demand.job_id] = nodes[best].node_id
        nodes[best] = nodes[best].minus(demand)
    return placed


@dataclass(frozen=True)
class CloudRoom:
    """What a cloud can still create: its remaining quota, and the largest node it can make."""

    name: str
    cpus: int
    memory_mb: int
    disk_gb: int
    max_node: Capacity
    can_boot: int = 1  # how many more nodes may boot at once (bounded concurrency per cloud)


@dataclass(frozen=True)
class NodeRequest:
    cloud: str
    cpus: int
    memory_mb: int
    disk_gb: int
    job_ids: tuple[int, ...] = ()


@dataclass
class ScaleUpPlan:
    requests: list[NodeRequest] = field(default_factory=list)
    waiting_for_boot: dict[int, int] = field(default_factory=dict)  # job id -> booting node id
    creating: dict[int, str] = field(default_factory=dict)  # job id -> cloud its node is being created on
    never_fits: list[int] = field(default_factory=list)  # no cloud can ever run these
    multi_node: list[int] = field(default_factory=list)  # need several nodes at once: not supported yet
    no_autoscale: list[int] = field(default_factory=list)  # wait for existing nodes only


def plan_scale_up(waiting: Sequence[Demand], booting: Sequence[Capacity], clouds: Sequence[CloudRoom]) -> ScaleUpPlan:
    """For jobs no ready node can take now: count on nodes already booting first, then ask each
    cloud in turn (callers rank them) for nodes sized for the waiting work, within its quota."""
    plan = ScaleUpPlan()
    autoscaled = []
    for demand in waiting:
        if demand.nodes != 1:
            plan.multi_node.append(demand.job_id)
        elif not demand.autoscale:
            plan.no_autoscale.append(demand.job_id)
        elif not any(cloud.max_node.fits(demand) for cloud in clouds):
            plan.never_fits.append(demand.job_id)
        else:
            autoscaled.append(demand)
    plan.waiting_for_boot = match(autoscaled, booting)
    left = [d for d in autoscaled if d.job_id not in plan.waiting_for_boot]
    for cloud in clouds:
        room = Capacity(0, cloud.cpus, cloud.memory_mb, cloud.disk_gb)
        for _ in range(cloud.can_boot):
            size = Capacity(0, min(room.cpus, cloud.max_node.cpus), min(room.memory_mb, cloud.max_node.memory_mb),
                            min(room.disk_gb, cloud.max_node.disk_gb))
            packed, free = [], size
            for demand in left:
                if free.fits(demand):
                    packed.append(demand)
                    free = free.minus(demand)
            if not packed:
                break
            request = NodeRequest(cloud.name, size.cpus - free.cpus, size.memory_mb - free.memory_mb,
                                  size.disk_gb - free.disk_gb, tuple(d.job_id for d in packed))
            plan.requests.append(request)
            plan.creating.update((d.job_id, cloud.name) for d in packed)
            room = Capacity(0, room.cpus - request.cpus, room.memory_mb - request.memory_mb,
                            room.disk_gb - request.disk_gb)
            left = [d for d in left if d.job_id not in plan.creating]
    return plan


@dataclass(frozen=True)
class NodeSnapshot:
    node_id: int
    state: str
    busy: bool  # runs or is assigned a job
    idle_since: float | None
    last_heartbeat: float | None
    created_at: float


def plan_scale_down(nodes: Sequence[NodeSnapshot], now: float, idle_timeout: float) -> list[int]:
    """Ready nodes that have had nothing to do for `idle_timeout` seconds."""
    return [n.node_id for n in nodes if n.state == "ready" and not n.busy and n.idle_since is not None
            and now - n.idle_since >= idle_timeout]


def find_lost(nodes: Sequence[NodeSnapshot], now: float, heartbeat_timeout: float) -> list[int]:
    """Ready or draining nodes whose agent has not been heard from for `heartbeat_timeout` seconds."""
    return [n.node_id for n in nodes if n.state in ("ready", "draining")
            and now - (n.last_heartbeat or n.created_at) >= heartbeat_timeout]


def find_stuck(nodes: Sequence[NodeSnapshot], now: float, boot_timeout: float) -> list[int]:
    """Nodes still creating or configuring after `boot_timeout` seconds."""
    return [n.node_id for n in nodes if n.state in ("creating", "configuring") and now - n.created_at >= boot_timeout]
