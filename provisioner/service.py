"""The provisioner's loop: snapshot -> `planner.plan()` -> execute (DESIGN.md 3.4).

One thread runs `tick()` whenever jobs change (a Signal from the gateway in the same process) or
every `tick_interval` seconds: it reads the clouds, nodes and waiting jobs in a few SQL
statements, asks the pure planner what to do, and applies the plan. Assignments, reasons and node
states are single SQL statements done in the tick; launching, configuring and destroying VMs take
seconds to minutes and run in worker threads (provisioner/launcher.py), each cloud booting up to
its `max_booting` nodes at once. Every background action logs its outcome.

A node's row is written before its VM is created, and its VM is tagged with the service id and
the node id: the reconcile step (at start and every `reconcile_interval` seconds) destroys tagged
VMs the database does not know as live, and loses nodes whose VM vanished. No VM is leaked.

Nodes leave the pool here (the planner's deletions) or elsewhere: an admin's `node delete` (the
gateway, maybe in another process) only marks its node `deleting` in the database. Each tick
starts destroying the VM of every `deleting` node whose destruction is not under way here, so
an admin's deletion takes effect within a tick, not at the next reconcile.
"""
from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select, update

from provisioner import planner
from provisioner.clouds import NODE_TAG, Cloud, CloudRecord, Instance, redact
from provisioner.launcher import Launcher
from schema.credentials import CredentialBox
from schema.enums import NODE_BOOTING, NODE_LIVE, JobStatus, NodeState, StatusReason
from schema.identity import TokenAuthority
from schema.lifecycle import finished, leave_pool, release_node_jobs
from schema.signals import Signal
from schema.tables import clouds, jobs, nodes
from schema import workflowrun

log = logging.getLogger("prominence.provisioner")

# Not a retry: a planned stop of the service is not the job's failure (docs/running-jobs.md).
SERVICE_STOPPED = "Requeued: the service stopped, and its local nodes with it"
NO_MATCHING_RESOURCES = "No matching resources: no enabled cloud can ever satisfy these resources"
MAX_WAITING = 10000  # jobs planned per tick (highest priority first)
DESTROY_BACKOFF = (1, 2, 5, 10, 30, 60)  # seconds between attempts to destroy a VM


@dataclass(frozen=True)
class ProvisionerConfig:
    gateway_url: str  # how agents reach the gateway
    service_id: str  # tags every VM this service creates
    heartbeat_timeout: float = 60.0
    heartbeat_interval: float = 2.0
    tick_interval: float = 1.0
    reconcile_interval: float = 30.0
    agent_gateway_timeout: float = 900.0  # an agent that cannot reach the gateway this long stops its jobs
    agent_ca_pem: str | None = None  # the CA agents trust for an https gateway


def service_id(data_dir: Path) -> str:
    path = data_dir / "service-id"
    if not path.exists():
        path.write_text(secrets.token_hex(4))
    return path.read_text().strip()


class Provisioner:
    def __init__(self, engine: Engine, config: ProvisionerConfig, tokens: TokenAuthority, box: CredentialBox,
                 jobs_changed: Signal, assigned: Signal):
        self._engine = engine
        self._config = config
        self._box = box
        self._jobs_changed = jobs_changed
        self._assigned = assigned
        self._clouds: dict[str, tuple[float, Cloud | None]] = {}  # name -> (record's updated_at, driver)
        self._clouds_lock = threading.Lock()
        self._reasons: dict[int, planner.WaitReason] = {}  # what each waiting job was last told
        # Nodes whose VM a worker destroys (or gave up on: the reconcile retries those).
        self._destroying: set[int] = set()
        self._destroying_lock = threading.Lock()
        self._workers = ThreadPoolExecutor(max_workers=64, thread_name_prefix="node-lifecycle")
        self._stopping = threading.Event()
        self._launcher = Launcher(engine, config, tokens, self.cloud, self._delete, self._record_failure,
                                  self._stopping)
        self._thread = threading.Thread(target=self._run, name="provisioner", daemon=True)

    def start(self) -> None:
        self._fail_orphaned_boots()
        self.reconcile()
        self._thread.start()

    def stop(self) -> None:
        """Stops the loop and the launches under way, then the nodes of this machine (clouds with
        connection `local`): they run here for this service and stop with it."""
        self._stopping.set()
        self._jobs_changed.notify()
        if self._thread.is_alive():
            self._thread.join()
        self._workers.shutdown(wait=True, cancel_futures=True)
        self._stop_local_nodes()

    def _run(self) -> None:
        reconciled = time.monotonic()
        while not self._stopping.is_set():
            generation = self._jobs_changed.generation
            try:
                self.tick()
                if time.monotonic() - reconciled >= self._config.reconcile_interval:
                    reconciled = time.monotonic()
                    self.reconcile()
            except Exception:
                log.exception("provisioner tick failed")
            self._jobs_changed.wait_since(generation, self._config.tick_interval)

    # -- clouds -----------------------------------------------------------------------------------

    def _cloud_rows(self, connection) -> list[Any]:
        return connection.execute(select(clouds).order_by(clouds.c.name)).all()

    def cloud(self, name: str) -> Cloud | None:
        """The cloud's driver, rebuilt when its record changed (new credentials take effect at once)."""
        with self._engine.connect() as connection:
            row = connection.execute(select(clouds).where(clouds.c.name == name)).first()
        return self._driver_for(row) if row is not None else None

    def _driver_for(self, row: Any) -> Cloud | None:
        with self._clouds_lock:
            cached = self._clouds.get(row.name)
            if cached and cached[0] == row.updated_at:
                return cached[1]
            credentials: dict[str, str] = {}
            try:
                credentials = self._box.open(row.credentials)
                record = CloudRecord(
                    row.name, row.provider, dict(row.driver_args), dict(row.create_options), row.region, row.site,
                    row.image, row.connection, row.ssh_user, row.ssh_port, row.node_root, row.install_packages,
                    tuple(planner.Flavour(**f) for f in row.flavours), row.create_timeout, row.running_timeout,
                    row.configure_timeout, credentials)
                cloud = Cloud(record, self._config.service_id)
            except Exception as error:  # a bad record must not stop the other clouds (said once per version)
                log.error("cloud %s cannot be used: %s", row.name, redact(error, credentials))
                cloud = None
            self._clouds[row.name] = (row.updated_at, cloud)
            return cloud

    def _record_failure(self, cloud: str) -> None:
        """A launch failed: counts against the cloud's health (and may put it in the penalty box)."""
        now = time.time()
        with self._engine.begin() as connection:
            row = connection.execute(select(clouds.c.failures).where(clouds.c.name == cloud)).first()
            if row is None:
                return
            recent = [t for t in row.failures if now - t < 4 * planner.PENALTY_WINDOW][-49:] + [now]
            # not updated_at: the driver stays cached
            connection.execute(update(clouds).where(clouds.c.name == cloud).values(failures=recent))
        until = planner.penalty_until(recent, now)
        if until:
            log.warning("cloud %s is in the penalty box until %s after %d recent failures", cloud,
                        time.strftime("%H:%M:%S", time.gmtime(until)), len(recent))

    # -- one pass ---------------------------------------------------------------------------------

    def tick(self) -> None:
        now = time.time()
        self._expire_queued(now)
        # Workflows first: their finished jobs counted, the jobs whose dependencies completed
        # released (only those are `waiting` below: the gate), the next factory instances made.
        try:
            workflowrun.advance(self._engine, int(now))
        except Exception:  # a workflow's trouble must not stop the scheduling of every job
            log.exception("advancing workflows failed")
        plan = planner.plan(self._snapshot(now))
        self._apply(plan, now)
        self._destroy_deleted_elsewhere()

    def _snapshot(self, now: float) -> planner.Snapshot:
        with self._engine.connect() as connection:
            cloud_rows = self._cloud_rows(connection)
            node_rows = connection.execute(select(nodes).where(nodes.c.state.in_(NODE_LIVE))).all()
            load = {row.node_id: row for row in connection.execute(
                select(jobs.c.node_id, func.sum(jobs.c.cpus).label("cpus"),
                       func.sum(jobs.c.memory_mb).label("memory_mb"), func.sum(jobs.c.disk_gb).label("disk_gb"))
                .where(jobs.c.node_id.is_not(None), jobs.c.status.in_((JobStatus.IDLE, JobStatus.RUNNING)))
                .group_by(jobs.c.node_id))}
            waiting = connection.execute(
                select(jobs.c.id, jobs.c.cpus, jobs.c.memory_mb, jobs.c.disk_gb, jobs.c.autoscale, jobs.c.nodes,
                       jobs.c.placement)
                .where(jobs.c.status == JobStatus.IDLE, jobs.c.node_id.is_(None), jobs.c.blocked.is_(False))
                .order_by(jobs.c.priority.desc(), jobs.c.id).limit(MAX_WAITING)).all()
        shapes: dict[tuple, planner.Shape] = {}
        demands = []
        for r in waiting:
            key = (r.cpus, r.memory_mb, r.disk_gb, r.autoscale, r.nodes, repr(r.placement))
            shape = shapes.get(key)
            if shape is None:
                shape = shapes[key] = planner.Shape(r.cpus, r.memory_mb, r.disk_gb, r.autoscale, r.nodes,
                                                    planner.Placement.from_policy(r.placement))
            demands.append(planner.Demand(r.id, shape))
        node_views = []
        for n in node_rows:
            used = load.get(n.id)
            node_views.append(planner.NodeView(
                n.id, n.cloud, NodeState(n.state), n.cpus - (used.cpus if used else 0),
                n.memory_mb - (used.memory_mb if used else 0), n.disk_gb - (used.disk_gb if used else 0),
                n.cpus, n.memory_mb, used is not None, n.created_at, n.idle_since, n.last_heartbeat))
        cloud_states = [planner.CloudState(
            c.name, tuple(planner.Flavour(**f) for f in c.flavours), c.site, c.region, c.enabled, c.max_instances,
            c.max_cpus, c.max_memory_mb, c.min_nodes, c.max_booting, c.idle_timeout,
            c.create_timeout + c.running_timeout + c.configure_timeout, tuple(c.failures)) for c in cloud_rows]
        return planner.Snapshot(now, demands, node_views, cloud_states, self._config.heartbeat_timeout,
                                self._config.heartbeat_interval)

    def _apply(self, plan: planner.Plan, now: float) -> None:
        if plan.assignments:
            with self._engine.begin() as connection:
                for job_id, node_id in plan.assignments.items():
                    connection.execute(update(jobs).where(
                        jobs.c.id == job_id, jobs.c.status == JobStatus.IDLE, jobs.c.node_id.is_(None)
                    ).values(node_id=node_id, wait_reasons=None,
                             status_reason=StatusReason.STARTING.format(node=node_id)))
            self._assigned.notify()
        if plan.unsatisfiable:
            self._fail_unsatisfiable(plan.unsatisfiable, int(now))
        for deletion in plan.deletions:
            self._delete(deletion.node_id, deletion.final_state, deletion.reason)
        if plan.idle_marks:
            with self._engine.begin() as connection:
                for node_id, idle_since in plan.idle_marks.items():
                    connection.execute(update(nodes).where(nodes.c.id == node_id).values(idle_since=idle_since))
        for launch in plan.launches:
            self._launch(launch)
        self._write_reasons(plan.reasons)

    def _write_reasons(self, reasons: dict[int, planner.WaitReason]) -> None:
        """Each waiting job's reason, written when it changed (grouped: one statement per reason)."""
        changed: dict[planner.WaitReason, list[int]] = {}
        for job_id, reason in reasons.items():
            if self._reasons.get(job_id) != reason:
                changed.setdefault(reason, []).append(job_id)
        self._reasons = dict(reasons)
        if not changed:
            return
        with self._engine.begin() as connection:
            for reason, ids in changed.items():
                for start in range(0, len(ids), 500):
                    connection.execute(update(jobs).where(
                        jobs.c.id.in_(ids[start:start + 500]), jobs.c.status == JobStatus.IDLE,
                        jobs.c.node_id.is_(None)).values(status_reason=reason.status_reason,
                                                         wait_reasons=reason.per_cloud or None))

    def _fail_unsatisfiable(self, job_ids: Sequence[int], now: int) -> None:
        with self._engine.begin() as connection:
            rows = connection.execute(select(jobs.c.id, jobs.c.spec).where(
                jobs.c.id.in_(job_ids), jobs.c.status == JobStatus.IDLE, jobs.c.node_id.is_(None))).all()
            for row in rows:
                connection.execute(update(jobs).where(jobs.c.id == row.id, jobs.c.status == JobStatus.IDLE).values(
                    **finished(row.spec, JobStatus.FAILED, NO_MATCHING_RESOURCES, now)))
        if rows:
            log.info("jobs %s failed: no enabled cloud can ever run them", [r.id for r in rows])

    def _expire_queued(self, now: float) -> None:
        """maximumTimeInQueue: idle jobs past their deadline fail. A workflow's job blocked by its
        dependencies is not queued yet: its clock starts when it is released (schema/workflowrun.py)."""
        with self._engine.connect() as connection:
            expired = connection.execute(
                select(jobs.c.id, jobs.c.spec).where(jobs.c.status == JobStatus.IDLE, jobs.c.queue_deadline <= now,
                                                     jobs.c.blocked.is_(False))
            ).all()
        if not expired:
            return
        with self._engine.begin() as connection:
            for row in expired:
                connection.execute(update(jobs).where(jobs.c.id == row.id, jobs.c.status == JobStatus.IDLE).values(
                    node_id=None, **finished(row.spec, JobStatus.FAILED, StatusReason.MAX_TIME_QUEUED, int(now))))

    # -- node lifecycle ---------------------------------------------------------------------------

    def _launch(self, launch: planner.Launch) -> None:
        """Record the node (so the next tick counts it as booting), then boot it in a worker."""
        cloud, flavour = launch.candidates[0]
        node_id, name = self._launcher.record_node(cloud, flavour)
        log.info("creating node %s on %s (%s) for jobs %s", name, cloud, flavour.name, list(launch.job_ids))
        self._workers.submit(self._launcher.boot, launch, node_id, name)

    def _delete(self, node_id: int, final_state: NodeState, reason: str) -> None:
        """Take the node out of the pool now; its VM is destroyed in the background. Its jobs go
        back to the queue, or fail once their retries are spent (schema/lifecycle.py)."""
        state = NodeState.DELETING if final_state == NodeState.DELETED else final_state
        with self._engine.begin() as connection:
            left = leave_pool(connection, node_id, state, reason, time.time())
        if left is None:
            return
        node, running = left
        if running:
            log.warning("node %d %s (%s): jobs %s requeued or failed", node_id, final_state, reason, running)
        self._start_destroy(node, final_state)
        self._jobs_changed.notify()

    def _destroy_deleted_elsewhere(self) -> None:
        """Nodes deleted by an admin (or left `deleting` by an earlier run) have no worker
        destroying their VM yet: start one."""
        with self._engine.connect() as connection:
            deleting = connection.execute(select(nodes.c.id, nodes.c.cloud, nodes.c.name, nodes.c.provider_id)
                                          .where(nodes.c.state == NodeState.DELETING)).all()
        for node in deleting:
            self._start_destroy(node, NodeState.DELETED)

    def _start_destroy(self, node: Any, final_state: NodeState) -> None:
        """Destroy the VM of `node` (a row with id, cloud, name, provider_id) in a worker, unless
        one already does."""
        with self._destroying_lock:
            if node.id in self._destroying:
                return
            self._destroying.add(node.id)
        try:
            self._workers.submit(self._destroy, node.cloud, node.id, node.name, node.provider_id, final_state)
        except RuntimeError:  # a node failing while the service stops: the next reconcile destroys its VM
            log.info("node %d is destroyed by the next reconcile", node.id)

    def _destroy(self, cloud_name: str, node_id: int, name: str, provider_id: str | None,
                 final_state: NodeState) -> None:
        """Destroy the node's VM, retrying with backoff; the reconcile loop picks up what is left."""
        for delay in (*DESTROY_BACKOFF, None):
            cloud = self.cloud(cloud_name)
            try:
                if cloud is None:
                    raise RuntimeError(f"cloud {cloud_name} cannot be used")
                for instance in self._instances_of(cloud, node_id, name, provider_id):
                    cloud.destroy(instance)
                log.info("node %s: VM destroyed", name)
                if final_state == NodeState.DELETED:
                    with self._engine.begin() as connection:
                        connection.execute(update(nodes).where(nodes.c.id == node_id).values(state=NodeState.DELETED))
                with self._destroying_lock:  # after the update: a `deleting` node is never destroyed twice
                    self._destroying.discard(node_id)
                self._jobs_changed.notify()
                return
            except Exception as error:  # noqa: BLE001 - logged; retried
                log.warning("node %s: destroying its VM failed (%s)%s", name,
                            cloud.redact(error) if cloud else redact(error, {}),
                            f"; retrying in {delay} s" if delay else "; the reconcile loop will retry")
                if delay is None or self._stopping.wait(delay):
                    return

    @staticmethod
    def _instances_of(cloud: Cloud, node_id: int, name: str, provider_id: str | None) -> list[Instance]:
        return [i for i in cloud.instances()
                if i.id == provider_id or i.name == name or i.tags.get(NODE_TAG) == str(node_id)]

    def _fail_orphaned_boots(self) -> None:
        """Nodes that were booting when the provisioner stopped (or was killed) have no worker any
        more: they fail now, and the reconcile step destroys their VMs."""
        with self._engine.begin() as connection:
            orphans = connection.execute(select(nodes.c.id).where(nodes.c.state.in_(NODE_BOOTING))).scalars().all()
            connection.execute(update(nodes).where(nodes.c.id.in_(orphans)).values(
                state=NodeState.FAILED, state_reason="the provisioner restarted while the node booted",
                ended_at=time.time()))
            release_node_jobs(connection, orphans, "the provisioner restarted", int(time.time()))
        if orphans:
            log.info("nodes %s were booting when the provisioner stopped: failed, their VMs destroyed", orphans)

    def _stop_local_nodes(self) -> None:
        """Every node of a cloud on this machine (connection local) is destroyed with the service
        (agents and containers). The jobs they had go back to the queue without counting a retry,
        so the next start runs them again."""
        with self._engine.begin() as connection:
            local = connection.execute(select(clouds.c.name).where(clouds.c.connection == "local")).scalars().all()
            stopped = connection.execute(select(nodes.c.id).where(
                nodes.c.cloud.in_(local), nodes.c.state.in_(NODE_LIVE))).scalars().all()
            connection.execute(update(nodes).where(nodes.c.id.in_(stopped)).values(
                state=NodeState.DELETING, state_reason="the service stopped", ended_at=time.time()))
            requeued = release_node_jobs(connection, stopped, SERVICE_STOPPED, int(time.time()),
                                         counts_as_retry=False)
        for name in local:
            cloud = self.cloud(name)
            if cloud is None:
                continue
            vms = cloud.instances()
            if vms or requeued:
                log.info("stopping the nodes %s of %s; jobs %s requeued", [vm.name for vm in vms], name, requeued)
            for vm in vms:
                try:
                    cloud.destroy(vm)
                except Exception as error:  # noqa: BLE001 - logged; the next start's reconcile retries
                    log.warning("node %s could not be stopped: %s", vm.name, cloud.redact(error))
            left = {vm.name for vm in cloud.instances()}
            with self._engine.begin() as connection:  # also nodes whose deletion was under way
                connection.execute(update(nodes).where(nodes.c.cloud == name, nodes.c.state == NodeState.DELETING,
                                                       nodes.c.name.not_in(left)).values(state=NodeState.DELETED))

    def reconcile(self) -> None:
        """Every cloud against the database: VMs tagged with this service's id that the database
        does not know as live are destroyed (none is ever leaked); nodes whose VM vanished are lost
        at once, without waiting for the heartbeat timeout; deletions under way whose VM is gone
        are done."""
        with self._engine.connect() as connection:
            cloud_rows = self._cloud_rows(connection)
        for row in cloud_rows:
            cloud = self._driver_for(row)
            if cloud is None:
                continue
            try:
                vms = cloud.instances()
            except Exception as error:  # noqa: BLE001 - one cloud's API failing must not stop the others
                log.warning("reconcile: cannot list the instances of %s: %s", row.name, cloud.redact(error))
                continue
            # Read right after the listing: a node is recorded before its VM is created, so a VM
            # that a launch under way has just created is known (read before, it was destroyed).
            with self._engine.connect() as connection:
                known = connection.execute(select(nodes.c.id, nodes.c.cloud, nodes.c.name, nodes.c.state).where(
                    nodes.c.state.in_((*NODE_LIVE, NodeState.DELETING)))).all()
            # Any cloud's live nodes: two cloud records on one account and region list each
            # other's VMs (node names are unique to the service).
            live = {n.name for n in known if n.state in NODE_LIVE}
            mine = {n.name: n for n in known if n.cloud == row.name}
            names = {vm.name for vm in vms}
            for vm in vms:
                if vm.name not in live:
                    log.warning("reconcile: destroying VM %s on %s, which the database does not know as live",
                                vm.name, row.name)
                    try:
                        cloud.destroy(vm)
                    except Exception as error:  # noqa: BLE001 - retried at the next reconcile
                        log.warning("reconcile: destroying VM %s failed: %s", vm.name, cloud.redact(error))
            for name, node in mine.items():
                if name in names:
                    continue
                if node.state in (NodeState.READY, NodeState.DRAINING):
                    self._delete(node.id, NodeState.LOST, "Job was evicted: its node's VM vanished")
                elif node.state == NodeState.DELETING:
                    with self._engine.begin() as connection:
                        connection.execute(update(nodes).where(nodes.c.id == node.id,
                                                               nodes.c.state == NodeState.DELETING)
                                           .values(state=NodeState.DELETED))


