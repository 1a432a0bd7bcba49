"""The provisioner's decisions: one pure function, `plan(snapshot)`, tested without I/O (DESIGN.md 3.4).

Like the cluster-autoscaler, every decision of a tick is made here over a snapshot of the
database: which waiting job goes to which ready node, which VMs to launch (cloud, flavour, the
jobs they are for, and the alternatives to fall back on), which nodes to delete and why, which
nodes became idle, why each job still waits (overall and per candidate cloud), and which jobs no
enabled cloud can ever run. `provisioner/service.py` takes the snapshot and applies the plan.

Jobs are handled by *shape* (resources and placement): thousands of waiting jobs usually have a
few shapes, and jobs of one shape are interchangeable, so a cycle over 10,000 jobs and 20 clouds
costs a few thousand comparisons, not millions.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

from schema.enums import NODE_BOOTING, NodeState, StatusReason

# Health (DESIGN.md 3.4): each failure weighs 1, halving every HEALTH_HALF_LIFE seconds; more
# than PENALTY_FAILURES failures within PENALTY_WINDOW seconds put the cloud in the penalty box.
HEALTH_HALF_LIFE = 400.0
PENALTY_WINDOW = 800.0
PENALTY_FAILURES = 2
DRAINED = "drained by an admin"  # why a draining node was deleted


@dataclass(frozen=True)
class Flavour:
    name: str
    cpus: int
    memory_mb: int
    disk_gb: int
    price: float = 0.0  # per hour

    def fits(self, shape: Shape, count: int = 1) -> bool:
        return (shape.cpus * count <= self.cpus and shape.memory_mb * count <= self.memory_mb
                and shape.disk_gb * count <= self.disk_gb)


@dataclass(frozen=True)
class Placement:
    """policies.placement: requirements filter clouds, preferences rank them."""

    sites: frozenset[str] = frozenset()
    regions: frozenset[str] = frozenset()
    preferred_sites: frozenset[str] = frozenset()
    preferred_regions: frozenset[str] = frozenset()

    @classmethod
    def from_policy(cls, policy: dict | None) -> Placement:
        policy = policy or {}
        required, preferred = policy.get("requirements") or {}, policy.get("preferences") or {}
        return cls(frozenset(required.get("sites") or ()), frozenset(required.get("regions") or ()),
                   frozenset(preferred.get("sites") or ()), frozenset(preferred.get("regions") or ()))

    def allows(self, site: str, region: str) -> bool:
        return (not self.sites or site in self.sites) and (not self.regions or region in self.regions)

    def preference(self, site: str, region: str) -> int:
        return (site in self.preferred_sites) + (region in self.preferred_regions)


NO_PLACEMENT = Placement()


@dataclass(frozen=True)
class Shape:
    """What a job needs from one node; jobs of one shape are interchangeable for planning."""

    cpus: int
    memory_mb: int
    disk_gb: int
    autoscale: bool = True  # False: autoScalingType "none", only existing nodes
    nodes: int = 1  # several (or 0: totalCpusRange) need all their nodes at once: not supported yet
    placement: Placement = NO_PLACEMENT


@dataclass(frozen=True)
class Demand:
    """One idle job without a node. Callers pass them highest priority first, then oldest."""

    job_id: int
    shape: Shape


@dataclass(frozen=True)
class CloudState:
    name: str
    flavours: tuple[Flavour, ...]
    site: str = ""
    region: str = ""
    enabled: bool = True
    max_instances: int | None = None
    max_cpus: int | None = None
    max_memory_mb: int | None = None
    min_nodes: int = 0
    max_booting: int = 4
    idle_timeout: float = 600.0
    boot_timeout: float = 1800.0  # create + running + configured
    failures: tuple[float, ...] = ()  # when launches on it failed (recent ones)


@dataclass(frozen=True)
class NodeView:
    node_id: int
    cloud: str
    state: NodeState
    cpus: int  # free (ready and booting nodes: total minus what its jobs use)
    memory_mb: int
    disk_gb: int
    total_cpus: int
    total_memory_mb: int
    busy: bool  # runs or is assigned a job
    created_at: float
    idle_since: float | None = None
    last_heartbeat: float | None = None


@dataclass(frozen=True)
class Snapshot:
    now: float
    waiting: Sequence[Demand]
    nodes: Sequence[NodeView]  # live ones
    clouds: Sequence[CloudState]
    heartbeat_timeout: float = 60.0
    heartbeat_interval: float = 2.0


@dataclass(frozen=True)
class Launch:
    """A VM to create: `candidates` in the order to try them (first the planned cloud and flavour,
    then other flavours there, then other clouds) for the jobs it is meant for."""

    candidates: tuple[tuple[str, Flavour], ...]
    job_ids: tuple[int, ...] = ()

    @property
    def cloud(self) -> str:
        return self.candidates[0][0]

    @property
    def flavour(self) -> Flavour:
        return self.candidates[0][1]


@dataclass(frozen=True)
class Deletion:
    node_id: int
    final_state: NodeState  # DELETED (idle, drained), LOST, FAILED
    reason: str


@dataclass(frozen=True)
class WaitReason:
    status_reason: str
    per_cloud: dict[str, str] = field(default_factory=dict, hash=False, compare=True)


@dataclass
class Plan:
    assignments: dict[int, int] = field(default_factory=dict)  # job id -> ready node id
    launches: list[Launch] = field(default_factory=list)
    deletions: list[Deletion] = field(default_factory=list)
    idle_marks: dict[int, float | None] = field(default_factory=dict)  # node id -> idle since (None: busy)
    reasons: dict[int, WaitReason] = field(default_factory=dict)  # every job still waiting
    unsatisfiable: list[int] = field(default_factory=list)  # fail: no enabled cloud can ever run them


# -- health ---------------------------------------------------------------------------------------

def health(failures: Sequence[float], now: float) -> float:
    """1.0 for a cloud without recent failures, towards 0 as failures pile up; decays with time."""
    weight = sum(0.5 ** (max(0.0, now - t) / HEALTH_HALF_LIFE) for t in failures)
    return 1.0 / (1.0 + weight)


def penalty_until(failures: Sequence[float], now: float) -> float | None:
    """When the cloud leaves the penalty box, or None if it is not in it: it stays while more than
    PENALTY_FAILURES of its failures are within the last PENALTY_WINDOW seconds."""
    recent = sorted(t for t in failures if now - t < PENALTY_WINDOW)
    if len(recent) <= PENALTY_FAILURES:
        return None
    return recent[-(PENALTY_FAILURES + 1)] + PENALTY_WINDOW


def _clock(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- matching onto existing nodes -----------------------------------------------------------------

@dataclass
class _Free:
    node_id: int
    cloud: str
    cpus: int
    memory_mb: int
    disk_gb: int

    def fits(self, shape: Shape) -> bool:
        return shape.cpus <= self.cpus and shape.memory_mb <= self.memory_mb and shape.disk_gb <= self.disk_gb

    def take(self, shape: Shape) -> None:
        self.cpus -= shape.cpus
        self.memory_mb -= shape.memory_mb
        self.disk_gb -= shape.disk_gb


def match(demands: Sequence[Demand], free: Sequence[_Free], allowed: dict[tuple[Shape, str], bool]) -> dict[int, int]:
    """job id -> node id. In the callers' order, each job goes to the node it fits most tightly
    (fewest cpus left), so large holes stay open for large jobs; a job that fits nowhere does not
    hold back smaller ones behind it (backfill). Room only shrinks, so a shape that found no node
    is not looked for again."""
    placed: dict[int, int] = {}
    hopeless: set[Shape] = set()
    for demand in demands:
        shape = demand.shape
        if shape in hopeless or shape.nodes != 1:
            continue
        best = None
        for node in free:
            if node.fits(shape) and allowed.get((shape, node.cloud), False) and (
                    best is None or (node.cpus, node.memory_mb) < (best.cpus, best.memory_mb)):
                best = node
        if best is None:
            hopeless.add(shape)
            continue
        placed[demand.job_id] = best.node_id
        best.take(shape)
    return placed


# -- the plan -------------------------------------------------------------------------------------

@dataclass
class _Room:
    """What a cloud can still start this cycle."""

    cloud: CloudState
    instances: int | None
    cpus: int | None
    memory_mb: int | None
    boots: int
    health: float
    penalty: float | None

    def allows(self, flavour: Flavour) -> bool:
        return ((self.instances is None or self.instances >= 1) and (self.cpus is None or self.cpus >= flavour.cpus)
                and (self.memory_mb is None or self.memory_mb >= flavour.memory_mb))

    def use(self, flavour: Flavour) -> None:
        self.boots -= 1
        if self.instances is not None:
            self.instances -= 1
        if self.cpus is not None:
            self.cpus -= flavour.cpus
        if self.memory_mb is not None:
            self.memory_mb -= flavour.memory_mb


def _ever_fits(cloud: CloudState, flavour: Flavour) -> bool:
    return ((cloud.max_instances is None or cloud.max_instances >= 1)
            and (cloud.max_cpus is None or cloud.max_cpus >= flavour.cpus)
            and (cloud.max_memory_mb is None or cloud.max_memory_mb >= flavour.memory_mb))


def _cloud_reason(shape: Shape, room: _Room) -> str | None:
    """Why `room`'s cloud cannot start a node for `shape` now (None: it can)."""
    cloud = room.cloud
    if not shape.placement.allows(cloud.site, cloud.region):
        return "not in the required sites or regions"
    fitting = [f for f in cloud.flavours if f.fits(shape) and _ever_fits(cloud, f)]
    if not fitting:
        return "no flavour big enough"
    if not shape.autoscale:
        return "only existing resources allowed"
    if room.penalty is not None:
        return f"in the penalty box until {_clock(room.penalty)}"
    if not any(room.allows(f) for f in fitting):
        return "quota used"
    if room.boots <= 0:
        return "as many VMs as it may boot at once are booting"
    return None


def plan(snapshot: Snapshot) -> Plan:
    now, result = snapshot.now, Plan()
    clouds = {c.name: c for c in snapshot.clouds}
    enabled = [c for c in snapshot.clouds if c.enabled]

    # Nodes lost (no heartbeat) or stuck booting; drained nodes once their jobs are done (an admin
    # drained them: they get no new jobs, as only ready nodes do).
    for node in snapshot.nodes:
        cloud = clouds.get(node.cloud)
        if node.state in (NodeState.READY, NodeState.DRAINING) and \
                now - (node.last_heartbeat or node.created_at) >= snapshot.heartbeat_timeout:
            result.deletions.append(Deletion(node.node_id, NodeState.LOST, StatusReason.NODE_LOST))
        elif node.state in NODE_BOOTING and now - node.created_at >= (cloud.boot_timeout if cloud else 0):
            result.deletions.append(Deletion(node.node_id, NodeState.FAILED,
                                             "Infrastructure took too long to be deployed"))
        elif node.state == NodeState.DRAINING and not node.busy:
            result.deletions.append(Deletion(node.node_id, NodeState.DELETED, DRAINED))
    gone = {d.node_id for d in result.deletions}
    live_per_cloud: dict[str, int] = {}
    for node in snapshot.nodes:
        if node.node_id not in gone:
            live_per_cloud[node.cloud] = live_per_cloud.get(node.cloud, 0) + 1

    # Which shapes may use which cloud's nodes at all (placement requirements).
    shapes = list(dict.fromkeys(d.shape for d in snapshot.waiting))
    allowed = {(s, c.name): s.placement.allows(c.site, c.region) for s in shapes for c in snapshot.clouds}

    # 1. Ready nodes that have heard from their agent lately take what fits.
    fresh_since = now - 2 * snapshot.heartbeat_interval
    ready = [_Free(n.node_id, n.cloud, n.cpus, n.memory_mb, n.disk_gb) for n in snapshot.nodes
             if n.state == NodeState.READY and n.node_id not in gone and (n.last_heartbeat or 0) >= fresh_since]
    result.assignments = match(snapshot.waiting, ready, allowed)
    left = [d for d in snapshot.waiting if d.job_id not in result.assignments]

    # Idle nodes (those just given work are not): deleted after their cloud's idle timeout, but
    # never below its min_nodes.
    given_work = set(result.assignments.values())
    for node in sorted(snapshot.nodes, key=lambda n: n.idle_since or 0):
        cloud = clouds.get(node.cloud)
        if node.node_id in gone or node.state != NodeState.READY:
            continue
        busy = node.busy or node.node_id in given_work
        if busy != (node.idle_since is None):
            result.idle_marks[node.node_id] = None if busy else now
        idle_timeout = cloud.idle_timeout if cloud else 0.0
        keep = cloud.min_nodes if cloud and cloud.enabled else 0
        if not busy and node.idle_since is not None and now - node.idle_since >= idle_timeout \
                and live_per_cloud[node.cloud] > keep:
            result.deletions.append(Deletion(node.node_id, NodeState.DELETED, "idle"))
            live_per_cloud[node.cloud] -= 1
            gone.add(node.node_id)

    # 2. Jobs no enabled cloud can ever run, and those that only wait for existing nodes.
    can_ever = {s: s.nodes == 1 and any(allowed[s, c.name] and any(f.fits(s) and _ever_fits(c, f) for f in c.flavours)
                                        for c in enabled) for s in shapes}
    booting = [_Free(n.node_id, n.cloud, n.cpus, n.memory_mb, n.disk_gb) for n in snapshot.nodes
               if n.state in NODE_BOOTING and n.node_id not in gone]
    waiting_for_boot = match([d for d in left if d.shape.autoscale], booting, allowed)
    booting_cloud = {n.node_id: n.cloud for n in booting}
    rooms = {c.name: _room(c, snapshot, gone) for c in enabled}
    per_shape: dict[Shape, dict[str, str]] = {}
    existing_only: dict[Shape, WaitReason] = {}
    pending: list[Demand] = []
    for demand in left:
        shape = demand.shape
        if shape.nodes != 1:
            result.reasons[demand.job_id] = WaitReason(StatusReason.MULTI_NODE)
        elif not can_ever[shape]:
            result.unsatisfiable.append(demand.job_id)
        elif demand.job_id in waiting_for_boot:
            cloud = booting_cloud[waiting_for_boot[demand.job_id]]
            result.reasons[demand.job_id] = WaitReason(StatusReason.CREATING.format(cloud=cloud))
        elif not shape.autoscale:
            # per cloud (once per shape): why it is no option (placement, no flavour big enough),
            # or that the job only waits for existing nodes
            if shape not in existing_only:
                existing_only[shape] = WaitReason(StatusReason.EXISTING_ONLY, {
                    c.name: _cloud_reason(shape, rooms[c.name]) or "only existing resources allowed"
                    for c in enabled})
            result.reasons[demand.job_id] = existing_only[shape]
        else:
            pending.append(demand)

    # 3. Launches: for each job in order, the best cloud that can start a node for it now, and
    # the flavour there that costs least per job once other waiting jobs are packed in with it.
    by_shape: dict[Shape, list[int]] = {}
    for demand in pending:
        by_shape.setdefault(demand.shape, []).append(demand.job_id)
    counts = {shape: len(ids) for shape, ids in by_shape.items()}
    taken: dict[Shape, int] = {shape: 0 for shape in by_shape}
    for shape in by_shape:
        while counts[shape] > 0:
            reasons = {name: _cloud_reason(shape, room) for name, room in rooms.items()}
            per_shape[shape] = {name: reason for name, reason in reasons.items() if reason}
            candidates = sorted((rooms[name] for name, reason in reasons.items() if reason is None),
                                key=lambda r: (-shape.placement.preference(r.cloud.site, r.cloud.region),
                                               -round(r.health, 2), _cheapest(r.cloud, shape).price, r.cloud.name))
            if not candidates:
                break
            room = candidates[0]
            flavour, packed = _best_bin(room, shape, counts, by_shape)
            job_ids: list[int] = []
            for other, count in packed.items():
                ids = by_shape[other][taken[other]:taken[other] + count]
                taken[other] += count
                counts[other] -= count
                job_ids.extend(ids)
            # Fallbacks replace the planned VM if it fails: judged on the quota before it.
            result.launches.append(Launch(_fallbacks(room, flavour, packed, candidates), tuple(job_ids)))
            room.use(flavour)
            creating = WaitReason(StatusReason.CREATING.format(cloud=room.cloud.name),
                                  {room.cloud.name: "creating a VM"})
            for job_id in job_ids:
                result.reasons[job_id] = creating
    for shape, ids in by_shape.items():
        per_cloud = per_shape.get(shape) or {}
        summary = "; ".join(f"{name}: {reason}" for name, reason in sorted(per_cloud.items()))
        reason = WaitReason(f"{StatusReason.WAITING}: {summary}" if summary else StatusReason.WAITING, per_cloud)
        for job_id in ids[taken[shape]:]:
            result.reasons[job_id] = reason

    # 4. Clouds that keep nodes up without work (a static pool's hosts).
    for cloud in enabled:
        room = rooms[cloud.name]
        missing = cloud.min_nodes - live_per_cloud.get(cloud.name, 0) - sum(
            launch.cloud == cloud.name for launch in result.launches)
        for i in range(missing):
            flavour = cloud.flavours[i % len(cloud.flavours)]
            if room.boots <= 0 or room.penalty is not None or not room.allows(flavour):
                break
            room.use(flavour)
            result.launches.append(Launch(((cloud.name, flavour),)))
    return result


def _room(cloud: CloudState, snapshot: Snapshot, gone: set[int]) -> _Room:
    nodes = [n for n in snapshot.nodes if n.cloud == cloud.name and n.node_id not in gone]

    def left(limit: int | None, used: int) -> int | None:
        return None if limit is None else limit - used

    return _Room(cloud, left(cloud.max_instances, len(nodes)), left(cloud.max_cpus, sum(n.total_cpus for n in nodes)),
                 left(cloud.max_memory_mb, sum(n.total_memory_mb for n in nodes)),
                 cloud.max_booting - sum(n.state in NODE_BOOTING for n in nodes),
                 health(cloud.failures, snapshot.now), penalty_until(cloud.failures, snapshot.now))


def _cheapest(cloud: CloudState, shape: Shape) -> Flavour:
    return min((f for f in cloud.flavours if f.fits(shape)), key=lambda f: (f.price, f.cpus, f.memory_mb))


def _pack(flavour: Flavour, first: Shape, counts: dict[Shape, int], room: _Room) -> dict[Shape, int]:
    """How many waiting jobs of each shape fit in `flavour` with one job of `first`: first that
    shape, then the others in their order (first fit)."""
    free = [flavour.cpus, flavour.memory_mb, flavour.disk_gb]
    packed: dict[Shape, int] = {}
    for shape in (first, *[s for s in counts if s != first]):
        if counts[shape] <= 0 or (shape is not first and (
                shape.autoscale is False or not shape.placement.allows(room.cloud.site, room.cloud.region))):
            continue
        n = min(counts[shape], *(free[i] // need if need else math.inf
                                 for i, need in enumerate((shape.cpus, shape.memory_mb, shape.disk_gb))))
        n = int(n)
        if n > 0:
            packed[shape] = n
            free = [free[0] - n * shape.cpus, free[1] - n * shape.memory_mb, free[2] - n * shape.disk_gb]
    return packed


def _best_bin(room: _Room, shape: Shape, counts: dict[Shape, int],
              by_shape: dict[Shape, list[int]]) -> tuple[Flavour, dict[Shape, int]]:
    """The flavour for a node started for a job of `shape`: the one that saves most against one VM
    per job (each on its cheapest flavour); at equal savings, the one that takes more jobs, then
    the smaller one."""
    best = None
    for flavour in room.cloud.flavours:
        if not flavour.fits(shape) or not room.allows(flavour):
            continue
        packed = _pack(flavour, shape, counts, room)
        singles = sum(_cheapest(room.cloud, s).price * n for s, n in packed.items())
        key = (round(singles - flavour.price, 9), sum(packed.values()), -flavour.cpus, -flavour.memory_mb)
        if best is None or key > best[0]:
            best = (key, flavour, packed)
    assert best is not None  # _cloud_reason found a flavour that fits and the quota allows
    return best[1], best[2]


def _fallbacks(room: _Room, flavour: Flavour, packed: dict[Shape, int],
               candidates: Sequence[_Room]) -> tuple[tuple[str, Flavour], ...]:
    """Where to try when the planned launch fails: the next flavours that take the same jobs on
    the same cloud (cheapest first), then the other candidate clouds' cheapest such flavour."""

    def takes_all(f: Flavour) -> bool:
        need = [sum(s.cpus * n for s, n in packed.items()), sum(s.memory_mb * n for s, n in packed.items()),
                sum(s.disk_gb * n for s, n in packed.items())]
        return need[0] <= f.cpus and need[1] <= f.memory_mb and need[2] <= f.disk_gb

    order: list[tuple[str, Flavour]] = [(room.cloud.name, flavour)]
    order += [(room.cloud.name, f) for f in sorted(room.cloud.flavours, key=lambda f: (f.price, f.cpus))
              if f != flavour and takes_all(f) and room.allows(f)]
    for other in candidates:
        if other is room:
            continue
        options = sorted((f for f in other.cloud.flavours if takes_all(f) and other.allows(f)),
                         key=lambda f: (f.price, f.cpus))
        if options:
            order.append((other.cloud.name, options[0]))
    return tuple(order)
