"""Booting a node, in a worker thread: create -> running -> configured, each phase with its
cloud's timeout (DESIGN.md 3.4).

A failed attempt is recorded against the cloud's health and its node is failed (its VM destroyed
in the background). Then: a quota or image error skips the cloud at once; a flavour the cloud
cannot supply now moves to the next flavour; any other error is retried up to
RETRIES_PER_CLOUD times on the same cloud and flavour, unless the cloud has landed in the penalty
box. After that the launch's next candidate is tried (the planner ordered them: other flavours of
the cloud, then other clouds). Each attempt is a new node, recorded before its VM is created.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, insert, select, update

from provisioner import planner
from provisioner.clouds import Access, Cloud, Instance, LaunchError, classify
from provisioner.configure import ConfigureResult, Target, configure_nodes, node_target
from schema.enums import NodeState
from schema.identity import TokenAuthority
from schema.tables import clouds, nodes

log = logging.getLogger("prominence.provisioner")

AGENT_SOURCE = Path(__file__).parent / "agent"
RETRIES_PER_CLOUD = 2


class Launcher:
    def __init__(self, engine: Engine, config: Any, tokens: TokenAuthority,
                 cloud_of: Callable[[str], Cloud | None], delete: Callable[[int, NodeState, str], None],
                 record_failure: Callable[[str], None], stopping: threading.Event):
        self._engine = engine
        self._config = config
        self._tokens = tokens
        self._cloud_of = cloud_of
        self._delete = delete
        self._record_failure = record_failure
        self._stopping = stopping
        self._batches = ConfigureBatches(lambda targets, timeout: configure_nodes(targets, AGENT_SOURCE, timeout),
                                         self._creating)

    def record_node(self, cloud: str, flavour: planner.Flavour) -> tuple[int, str]:
        """The node's row, before anything is asked of the cloud; its name carries the service id."""
        with self._engine.begin() as connection:
            place = connection.execute(select(clouds.c.site, clouds.c.region).where(clouds.c.name == cloud)).first()
            node_id = connection.execute(insert(nodes).values(
                cloud=cloud, name=f"pending-{os.urandom(6).hex()}", state=NodeState.CREATING, cpus=flavour.cpus,
                memory_mb=flavour.memory_mb, disk_gb=flavour.disk_gb, site=place.site if place else "",
                region=place.region if place else "", info={}, created_at=time.time(), flavour=flavour.name,
                price=flavour.price).returning(nodes.c.id)).scalar_one()
            name = f"prominence-{self._config.service_id}-{node_id}"
            connection.execute(update(nodes).where(nodes.c.id == node_id).values(name=name))
        return node_id, name

    def boot(self, launch: planner.Launch, node_id: int, name: str) -> None:
        recorded: tuple[int, str] | None = (node_id, name)
        # A failed attempt's node is failed once the next attempt's node is recorded (or nothing
        # is left to try): until then it stands for the launch's jobs, so that a tick in between
        # does not plan another VM for them.
        failed: tuple[int, NodeState, str] | None = None
        skipped: set[str] = set()
        try:
            for cloud_name, flavour in launch.candidates:
                for attempt in range(1 + RETRIES_PER_CLOUD):
                    if cloud_name in skipped:
                        break
                    if self._stopping.is_set():
                        return  # the stop (local nodes) or the next start (the others) takes care of the node
                    cloud = self._cloud_of(cloud_name)
                    if cloud is None or (recorded is None and self._in_penalty_box(cloud_name)):
                        skipped.add(cloud_name)
                        if recorded:
                            self._delete(recorded[0], NodeState.FAILED, f"cloud {cloud_name} cannot be used")
                            recorded = None
                        break
                    node_id, name = recorded or self.record_node(cloud_name, flavour)
                    recorded = None
                    if failed:
                        self._delete(*failed)
                        failed = None
                    try:
                        self._bring_up(cloud, node_id, name, flavour)
                        return
                    except LaunchError as error:
                        if self._stopping.is_set():
                            return
                        message = cloud.redact(str(error))
                        log.warning("node %s on %s (%s), attempt %d: %s", name, cloud_name, flavour.name,
                                    attempt + 1, message)
                        self._record_failure(cloud_name)
                        failed = (node_id, NodeState.FAILED, f"Infrastructure deployment failed: {message}")
                        if error.kind in ("quota", "image") or self._in_penalty_box(cloud_name):
                            skipped.add(cloud_name)
                        if error.kind != "error":
                            break
            log.warning("no node could be started for jobs %s on any of %s", list(launch.job_ids),
                        sorted({c for c, _ in launch.candidates}))
        finally:
            if failed:
                self._delete(*failed)

    def _creating(self, cloud: str) -> int:
        with self._engine.connect() as connection:
            return connection.execute(select(func.count()).select_from(nodes).where(
                nodes.c.cloud == cloud, nodes.c.state == NodeState.CREATING)).scalar_one()

    def _in_penalty_box(self, cloud: str) -> bool:
        with self._engine.connect() as connection:
            failures = connection.execute(select(clouds.c.failures).where(clouds.c.name == cloud)).scalar()
        return planner.penalty_until(failures or [], time.time()) is not None

    # -- the phases -------------------------------------------------------------------------------

    def _bring_up(self, cloud: Cloud, node_id: int, name: str, flavour: planner.Flavour) -> None:
        record = cloud.record
        instance = _within(record.create_timeout, "create", lambda: cloud.launch(name, flavour, node_id))
        self._set_node(node_id, provider_id=instance.id)
        if instance.state != "running" or not instance.address:
            instance = _within(record.running_timeout + 30, "running",
                               lambda: cloud.wait_running(instance.id, record.running_timeout))
        access = cloud.access(instance)
        self._set_node(node_id, state=NodeState.CONFIGURING, address=access.host)
        deadline = time.monotonic() + record.configure_timeout
        result = self._batches.configure(cloud.name, self._target(cloud, access, node_id, name, flavour),
                                         record.configure_timeout)
        if not result.ok:
            raise LaunchError("configure", result.error or result.status)
        log.info("node %s configured in %.1f s", name, result.duration)
        while not self._stopping.is_set():
            with self._engine.connect() as connection:
                node = connection.execute(select(nodes.c.state, nodes.c.ready_at).where(nodes.c.id == node_id)).one()
            if node.ready_at is not None:  # its agent registered: booted, whatever an admin did since (drain, delete)
                log.info("node %s on %s is ready", name, cloud.name)
                return
            if node.state != NodeState.CONFIGURING:
                raise LaunchError("configured", f"the node became {node.state} while it booted")
            if time.monotonic() >= deadline:
                raise LaunchError("configured", f"its agent did not register within {record.configure_timeout:.0f} s")
            time.sleep(0.2)
        raise LaunchError("configured", "the service stopped")

    def _target(self, cloud: Cloud, access: Access, node_id: int, name: str, flavour: planner.Flavour) -> Target:
        config = self._config
        agent_config = {
            "gateway": config.gateway_url, "node_id": node_id, "node_name": name,
            "token": self._tokens.issue_node_token(node_id), "work_dir": f"{access.node_dir}/work",
            "cpus": flavour.cpus, "memory_mb": flavour.memory_mb, "disk_gb": flavour.disk_gb,
            "heartbeat_interval": config.heartbeat_interval, "gateway_timeout": config.agent_gateway_timeout,
            "containers_conf": f"{access.node_dir}/containers.conf",
        }
        extravars = {}
        if config.agent_ca_pem:
            agent_config["ca_file"] = f"{access.node_dir}/gateway-ca.pem"
            extravars["agent_ca_pem"] = config.agent_ca_pem
        return node_target(access.host, access.node_dir, agent_config, access.connection, ssh_user=access.user,
                           ssh_port=access.port, install_packages=cloud.record.install_packages,
                           extravars=extravars, ssh_key=access.private_key)

    def _set_node(self, node_id: int, **values: Any) -> None:
        with self._engine.begin() as connection:
            connection.execute(update(nodes).where(nodes.c.id == node_id).values(**values))


def _within(timeout: float, phase: str, call: Callable[[], Instance]) -> Instance:
    """`call()` in a thread, given up after `timeout` seconds: a cloud API that hangs must not
    hold the launch (a VM it creates later is tagged, and the reconcile step destroys it)."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as error:  # noqa: BLE001 - handed to the caller
            outcome["error"] = error

    thread = threading.Thread(target=run, name=f"cloud-{phase}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise LaunchError(phase, f"no answer within {timeout:.0f} s")
    if "error" in outcome:
        error = outcome["error"]
        if isinstance(error, LaunchError):
            raise error
        raise LaunchError(phase, f"{type(error).__name__}: {error}", classify(error))
    return outcome["value"]


class ConfigureBatches:
    """Nodes of one cloud that reach configuration together are configured by one ansible run,
    a fork each, so the controller's cost is shared (bench/burst.py). The first of a cloud's
    nodes to reach configuration waits, up to `window` seconds, while `creating(cloud)` says
    other nodes of that cloud are still being created (the tick records a node before its boot
    starts), then configures all that arrived meanwhile. A single boot is not held back."""

    def __init__(self, configure: Callable[[list[Target], int], list[ConfigureResult]],
                 creating: Callable[[str], int], window: float = 2.0):
        self._configure = configure
        self._creating = creating
        self._window = window
        self._lock = threading.Condition()
        self._waiting: dict[str, list[_Request]] = {}

    def configure(self, cloud: str, target: Target, timeout: float) -> ConfigureResult:
        request = _Request(target, max(1, int(timeout)))
        with self._lock:
            batch = self._waiting.setdefault(cloud, [])
            batch.append(request)
            if len(batch) > 1:  # the batch's first node runs it
                while request.result is None:
                    self._lock.wait()
                return request.result
        deadline = time.monotonic() + self._window
        waited = False
        while self._creating(cloud) > 0 and time.monotonic() < deadline:
            waited = True
            time.sleep(0.1)
        if waited:  # the last one created may be between its creation and this call: let it join
            time.sleep(0.1)
        with self._lock:
            batch = self._waiting.pop(cloud)
        try:
            results = self._configure([r.target for r in batch], max(r.timeout for r in batch))
        except Exception as error:  # noqa: BLE001 - every node of the batch gets the failure
            results = [ConfigureResult("error", None, f"{type(error).__name__}: {error}", 0.0) for _ in batch]
        with self._lock:
            for waiting, result in zip(batch, results):
                waiting.result = result
            self._lock.notify_all()
        return request.result


class _Request:
    def __init__(self, target: Target, timeout: int):
        self.target = target
        self.timeout = timeout
        self.result: ConfigureResult | None = None

