"""The provisioner's loop: takes a snapshot, asks the pure functions in `matcher` what to do, does it.

One thread runs `tick()` whenever jobs change (a Signal from the gateway in the same process) or
every `tick_interval` seconds. Launching, configuring and deleting nodes take seconds to minutes,
so they run in worker threads; the database row of a node is written before its VM is created,
so a crash in between leaves a record the reconcile step can clean up.
"""
from __future__ import annotations

import logging
import secrets
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, insert, select, update

from provisioner import matcher
from schema.enums import JobStatus, StatusReason
from schema.identity import TokenAuthority
from schema.lifecycle import finished, infrastructure_failure
from schema.signals import Signal
from schema.tables import jobs, nodes

log = logging.getLogger("prominence.provisioner")

AGENT_SOURCE = Path(__file__).parent / "agent"
LIVE_STATES = ("creating", "configuring", "ready", "draining")
BOOTING_STATES = ("creating", "configuring")
# Not a retry: a planned stop of the service is not the job's failure (docs/running-jobs.md).
SERVICE_STOPPED = "Requeued: the service stopped, and its local nodes with it"


@dataclass(frozen=True)
class LocalCloud:
    """The embedded `local` cloud: nodes on this machine, up to its size (DESIGN.md 3.4)."""

    base_dir: Path
    cpus: int
    memory_mb: int
    disk_gb: int
    name: str = "local"
    site: str = "local"

    @classmethod
    def this_machine(cls, base_dir: Path, cpus: int | None = None, memory_mb: int | None = None) -> LocalCloud:
        from provisioner.drivers.local import machine_cpus, machine_memory_mb

        base_dir.mkdir(parents=True, exist_ok=True)
        disk = shutil.disk_usage(base_dir).free // (1 << 30)
        return cls(base_dir, cpus or machine_cpus(), memory_mb or machine_memory_mb(), max(int(disk), 1))


@dataclass(frozen=True)
class ProvisionerConfig:
    gateway_url: str  # how agents reach the gateway
    cloud: LocalCloud
    service_id: str  # tags every VM this service creates
    idle_timeout: float = 600.0
    heartbeat_timeout: float = 60.0
    boot_timeout: float = 600.0
    heartbeat_interval: float = 2.0
    tick_interval: float = 1.0
    reconcile_interval: float = 30.0
    max_booting: int = 1  # nodes booting at once on the cloud
    agent_gateway_timeout: float = 900.0  # an agent that cannot reach the gateway this long stops its jobs


def service_id(data_dir: Path) -> str:
    path = data_dir / "service-id"
    if not path.exists():
        path.write_text(secrets.token_hex(4))
    return path.read_text().strip()


class Provisioner:
    def __init__(self, engine: Engine, config: ProvisionerConfig, tokens: TokenAuthority,
                 jobs_changed: Signal, assigned: Signal):
        from provisioner.drivers.local import register
        from libcloud.compute.providers import get_driver

        register()
        self._engine = engine
        self._config = config
        self._tokens = tokens
        self._jobs_changed = jobs_changed
        self._assigned = assigned
        self._driver = get_driver("local")(str(config.cloud.base_dir))
        self._workers = ThreadPoolExecutor(max_workers=4, thread_name_prefix="node-lifecycle")
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="provisioner", daemon=True)

    def start(self) -> None:
        self.reconcile()
        self._thread.start()

    def stop(self) -> None:
        """Stops the loop, then the local cloud's nodes: they run on this machine for this service
        and stop with it, so no agent or container outlives the service."""
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

    # -- one pass -------------------------------------------------------------------------------

    def tick(self) -> None:
        now = time.time()
        self._expire_queued(now)
        node_rows, load, waiting = self._snapshot()
        self._assign(node_rows, load, waiting)
        node_rows, load, waiting = self._snapshot()
        snapshots = [matcher.NodeSnapshot(n.id, n.state, n.id in load, n.idle_since, n.last_heartbeat, n.created_at)
                     for n in node_rows]
        for node_id in matcher.find_lost(snapshots, now, self._config.heartbeat_timeout):
            self._delete(node_id, "lost", StatusReason.NODE_LOST)
        for node_id in matcher.find_stuck(snapshots, now, self._config.boot_timeout):
            self._delete(node_id, "failed", "Infrastructure took too long to be deployed")
        for node_id in matcher.plan_scale_down(snapshots, now, self._config.idle_timeout):
            self._delete(node_id, "deleted", "idle")
        self._track_idle(node_rows, load, now)
        self._scale_up(node_rows, load, waiting)

    def _snapshot(self) -> tuple[list[Any], dict[int, Any], list[matcher.Demand]]:
        with self._engine.connect() as connection:
            node_rows = connection.execute(select(nodes).where(nodes.c.state.in_(LIVE_STATES))).all()
            load = {row.node_id: row for row in connection.execute(
                select(jobs.c.node_id, func.sum(jobs.c.cpus).label("cpus"),
                       func.sum(jobs.c.memory_mb).label("memory_mb"), func.sum(jobs.c.disk_gb).label("disk_gb"))
                .where(jobs.c.node_id.is_not(None), jobs.c.status.in_((JobStatus.IDLE, JobStatus.RUNNING)))
                .group_by(jobs.c.node_id))}
            waiting = [matcher.Demand(r.id, r.cpus, r.memory_mb, r.disk_gb, r.autoscale, r.nodes)
                       for r in connection.execute(
                select(jobs.c.id, jobs.c.cpus, jobs.c.memory_mb, jobs.c.disk_gb, jobs.c.autoscale, jobs.c.nodes)
                .where(jobs.c.status == JobStatus.IDLE, jobs.c.node_id.is_(None))
                .order_by(jobs.c.priority.desc(), jobs.c.id).limit(10000))]
        return node_rows, load, waiting

    @staticmethod
    def _free(node: Any, load: dict[int, Any]) -> matcher.Capacity:
        used = load.get(node.id)
        return matcher.Capacity(node.id, node.cpus - (used.cpus if used else 0),
                                node.memory_mb - (used.memory_mb if used else 0),
                                node.disk_gb - (used.disk_gb if used else 0))

    def _assign(self, node_rows: list[Any], load: dict[int, Any], waiting: list[matcher.Demand]) -> None:
        # A node that has missed two heartbeats gets no new work: it may be dead, and a job
        # given to it would wait for the heartbeat timeout before going elsewhere.
        fresh_since = time.time() - 2 * self._config.heartbeat_interval
        ready = [self._free(n, load) for n in node_rows
                 if n.state == "ready" and (n.last_heartbeat or 0) >= fresh_since]
        placed = matcher.match(waiting, ready)
        if not placed:
            return
        with self._engine.begin() as connection:
            for job_id, node_id in placed.items():
                connection.execute(
                    update(jobs).where(jobs.c.id == job_id, jobs.c.status == JobStatus.IDLE, jobs.c.node_id.is_(None))
                    .values(node_id=node_id, status_reason=StatusReason.STARTING.format(node=node_id)))
        self._assigned.notify()

    def _expire_queued(self, now: float) -> None:
        """maximumTimeInQueue: idle jobs past their deadline fail."""
        with self._engine.connect() as connection:
            expired = connection.execute(
                select(jobs.c.id, jobs.c.spec).where(jobs.c.status == JobStatus.IDLE, jobs.c.queue_deadline <= now)
            ).all()
        if not expired:
            return
        with self._engine.begin() as connection:
            for row in expired:
                connection.execute(update(jobs).where(jobs.c.id == row.id, jobs.c.status == JobStatus.IDLE).values(
                    node_id=None, **finished(row.spec, JobStatus.FAILED, StatusReason.MAX_TIME_QUEUED, int(now))))

    def _track_idle(self, node_rows: list[Any], load: dict[int, Any], now: float) -> None:
        """Nodes' idle_since: when they last ran out of work (None while they have some)."""
        changes = {node.id: None if node.id in load else now for node in node_rows
                   if node.state == "ready" and (node.id in load) == (node.idle_since is not None)}
        if not changes:
            return
        with self._engine.begin() as connection:
            for node_id, idle_since in changes.items():
                connection.execute(update(nodes).where(nodes.c.id == node_id).values(idle_since=idle_since))

    def _scale_up(self, node_rows: list[Any], load: dict[int, Any], waiting: list[matcher.Demand]) -> None:
        cloud = self._config.cloud
        room = matcher.CloudRoom(
            name=cloud.name, cpus=cloud.cpus - sum(n.cpus for n in node_rows),
            memory_mb=cloud.memory_mb - sum(n.memory_mb for n in node_rows),
            disk_gb=cloud.disk_gb - sum(n.disk_gb for n in node_rows),
            max_node=matcher.Capacity(0, cloud.cpus, cloud.memory_mb, cloud.disk_gb),
            can_boot=max(0, self._config.max_booting - sum(n.state in BOOTING_STATES for n in node_rows)))
        booting = [self._free(n, load) for n in node_rows if n.state in BOOTING_STATES]
        plan = matcher.plan_scale_up(waiting, booting, [room])
        for request in plan.requests:
            self._launch(request)
        reasons = {StatusReason.CREATING.format(cloud=cloud.name): [*plan.creating, *plan.waiting_for_boot],
                   StatusReason.NEVER_FITS: plan.never_fits, StatusReason.EXISTING_ONLY: plan.no_autoscale,
                   StatusReason.MULTI_NODE: plan.multi_node}
        placed = {job_id for ids in reasons.values() for job_id in ids}
        reasons[StatusReason.WAITING] = [d.job_id for d in waiting if d.job_id not in placed]
        with self._engine.begin() as connection:
            for reason, ids in reasons.items():
                if ids:
                    connection.execute(update(jobs).where(
                        jobs.c.id.in_(ids), jobs.c.status == JobStatus.IDLE, jobs.c.node_id.is_(None),
                        jobs.c.status_reason != reason).values(status_reason=reason))

    # -- node lifecycle -------------------------------------------------------------------------

    def _launch(self, request: matcher.NodeRequest) -> None:
        cloud = self._config.cloud
        with self._engine.begin() as connection:
            node_id = connection.execute(insert(nodes).values(
                cloud=cloud.name, name=f"pending-{secrets.token_hex(6)}", state="creating", cpus=request.cpus,
                memory_mb=request.memory_mb, disk_gb=request.disk_gb, site=cloud.site, region="", info={},
                created_at=time.time()).returning(nodes.c.id)).scalar_one()
            name = f"prominence-{self._config.service_id}-{node_id}"
            connection.execute(update(nodes).where(nodes.c.id == node_id).values(name=name))
        log.info("creating node %s (%d cpus, %d MB) for jobs %s", name, request.cpus, request.memory_mb,
                 list(request.job_ids))
        self._workers.submit(self._create_and_configure, node_id, name, request)

    def _create_and_configure(self, node_id: int, name: str, request: matcher.NodeRequest) -> None:
        from libcloud.compute.base import NodeSize

        from provisioner.configure import configure_node

        try:
            size = NodeSize(id=f"local-{request.cpus}cpu", name=name, ram=request.memory_mb, disk=request.disk_gb,
                            bandwidth=None, price=0, driver=self._driver, extra={"cpus": request.cpus})
            image = self._driver.list_images()[0]
            vm = self._driver.create_node(name=name, size=size, image=image, ex_metadata={
                "prominence-service": self._config.service_id, "prominence-node": str(node_id)})
            self._set_node(node_id, state="configuring", provider_id=vm.id)
            agent_config = {
                "gateway": self._config.gateway_url, "node_id": node_id, "node_name": name,
                "token": self._tokens.issue_node_token(node_id), "work_dir": str(Path(vm.extra["dir"]) / "work"),
                "cpus": request.cpus, "memory_mb": request.memory_mb, "disk_gb": request.disk_gb,
                "heartbeat_interval": self._config.heartbeat_interval,
                "gateway_timeout": self._config.agent_gateway_timeout,
                "containers_conf": str(Path(vm.extra["dir"]) / "containers.conf"),
            }
            result = configure_node("127.0.0.1", vm.extra["dir"], agent_config, AGENT_SOURCE, connection="local")
            if result.status != "successful":
                raise RuntimeError(f"configuration failed: {result.error}")
            log.info("node %s configured in %.1f s", name, result.duration)
        except Exception as error:
            log.exception("node %s could not be created", name)
            self._delete(node_id, "failed", f"Infrastructure deployment failed: {error}")

    def _set_node(self, node_id: int, **values: Any) -> None:
        with self._engine.begin() as connection:
            connection.execute(update(nodes).where(nodes.c.id == node_id).values(**values))

    def _delete(self, node_id: int, final_state: str, reason: str) -> None:
        """Take the node out of the pool now; its VM is destroyed in the background. Jobs it was
        given but had not started go back to the queue; jobs it was running are retried elsewhere,
        or fail once their retries are spent."""
        now = int(time.time())
        with self._engine.begin() as connection:
            row = connection.execute(select(nodes).where(nodes.c.id == node_id)).first()
            if row is None or row.state in ("deleting", "deleted", "failed", "lost"):
                return
            connection.execute(update(nodes).where(nodes.c.id == node_id).values(
                state="deleting" if final_state == "deleted" else final_state, state_reason=reason))
            connection.execute(update(jobs).where(jobs.c.node_id == node_id, jobs.c.status == JobStatus.IDLE)
                               .values(node_id=None, status_reason=StatusReason.WAITING))
            running = connection.execute(select(jobs.c.id, jobs.c.spec, jobs.c.retries, jobs.c.attempt).where(
                jobs.c.node_id == node_id, jobs.c.status == JobStatus.RUNNING)).all()
            for job in running:
                connection.execute(update(jobs).where(jobs.c.id == job.id, jobs.c.attempt == job.attempt).values(
                    infrastructure_failure(job.spec, job.retries, reason, now)))
        if running:
            log.warning("node %d %s (%s): jobs %s requeued or failed", node_id, final_state, reason,
                        [job.id for job in running])
        try:
            self._workers.submit(self._destroy, node_id, row.name, final_state)
        except RuntimeError:  # a node failing while the service stops: _stop_local_nodes destroys it
            log.info("node %d is destroyed with the service", node_id)

    def _destroy(self, node_id: int, name: str, final_state: str) -> None:
        for vm in self._driver.list_nodes():
            if vm.name == name:
                self._driver.destroy_node(vm)
        if final_state == "deleted":
            self._set_node(node_id, state="deleted")
        self._jobs_changed.notify()

    def _stop_local_nodes(self) -> None:
        """Every VM of this service on the local cloud is destroyed (agent and containers). The
        jobs its nodes had go back to the queue without counting a retry, so the next start runs
        them again."""
        cloud = self._config.cloud.name
        with self._engine.begin() as connection:
            stopped = connection.execute(select(nodes.c.id).where(
                nodes.c.cloud == cloud, nodes.c.state.in_(LIVE_STATES))).scalars().all()
            connection.execute(update(nodes).where(nodes.c.id.in_(stopped)).values(
                state="deleting", state_reason="the service stopped"))
            requeued = connection.execute(
                update(jobs).where(jobs.c.node_id.in_(stopped), jobs.c.status.in_((JobStatus.IDLE, JobStatus.RUNNING)))
                .values(status=JobStatus.IDLE, node_id=None, status_reason=SERVICE_STOPPED)
                .returning(jobs.c.id)).scalars().all()
        vms = self._our_vms()
        if vms or requeued:
            log.info("stopping the local nodes %s; jobs %s requeued", [vm.name for vm in vms], requeued)
        for vm in vms:
            self._driver.destroy_node(vm)
        left = {vm.name for vm in self._driver.list_nodes()}
        with self._engine.begin() as connection:  # also nodes whose deletion was under way
            connection.execute(update(nodes).where(nodes.c.cloud == cloud, nodes.c.state == "deleting",
                                                   nodes.c.name.not_in(left)).values(state="deleted"))

    def _our_vms(self) -> list[Any]:
        """The cloud's VMs tagged with this service's id."""
        return [vm for vm in self._driver.list_nodes()
                if (vm.extra.get("tags") or {}).get("prominence-service") == self._config.service_id]

    def reconcile(self) -> None:
        """The database against the cloud: VMs tagged with this service's id that the database
        does not know as live are destroyed (none is ever leaked); nodes whose VM vanished are
        lost at once, without waiting for the heartbeat timeout."""
        with self._engine.connect() as connection:
            live = connection.execute(select(nodes.c.id, nodes.c.name, nodes.c.state)
                                      .where(nodes.c.state.in_(LIVE_STATES))).all()
        vms = self._our_vms()
        names = {vm.name for vm in vms}
        for vm in vms:
            if vm.name not in {n.name for n in live}:
                log.warning("destroying VM %s, which the database does not know", vm.name)
                self._driver.destroy_node(vm)
        for node in live:
            if node.state in ("ready", "draining") and node.name not in names:
                self._delete(node.id, "lost", "Job was evicted: its node's VM vanished")
