"""The agent protocol's service: what a node's agent may read and change, and nothing more.

Every call names the node (from its node token) and, for a job, the attempt it was given. A
report about a job that is no longer running that attempt on that node (deleted meanwhile,
requeued after the node was thought lost) changes nothing, so no job is ever finished twice or
by two nodes.
"""
from __future__ import annotations

import math
import posixpath
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from anyio import from_thread, to_thread
from sqlalchemy import Engine, and_, func, select, update

from gateway.errors import BadRequest, Forbidden
from gateway.services.jobs import output_path
from gateway.services.data import resolve_for_job
from gateway.storage import ObjectStore
from schema.enums import NODE_GONE, JobStatus, NodeState
from schema.identity import TokenAuthority
from schema.jobspec import DEFAULT_WALLTIME_MINUTES
from schema.lifecycle import finished, infrastructure_failure, release_node_jobs
from schema.signals import Signal, wait_for_event
from schema.tables import jobs, nodes

# A job token outlives the walltime by this much: the image pull (up to 30 min) and the stage-in
# come first. The gateway also refuses it as soon as the attempt is over.
JOB_TOKEN_MARGIN_S = 3600


def job_token_lifetime(spec: dict[str, Any]) -> int:
    return 60 * (spec["resources"].get("walltime") or DEFAULT_WALLTIME_MINUTES) + JOB_TOKEN_MARGIN_S


def output_key(job_id: int, name: str, is_dir: bool) -> str:
    """Each declared output its own object: the whole relative path, files and dirs apart."""
    path = posixpath.normpath(name)
    return f"scratch/{job_id}/dirs/{path}.tgz" if is_dir else f"scratch/{job_id}/files/{path}"


class AgentService:
    def __init__(self, engine: Engine, tokens: TokenAuthority, store: ObjectStore, data_dir: Path,
                 public_url: str, jobs_changed: Signal, assigned: Signal):
        self._engine = engine
        self._tokens = tokens
        self._store = store
        self._data_dir = data_dir
        self._public_url = public_url
        self._jobs_changed = jobs_changed
        self._assigned = assigned
        self._stopping = False

    def stop_claims(self) -> None:
        """The server is stopping: waiting claims answer now (with no job), new ones at once, so
        that the server's graceful shutdown need not cut them off."""
        self._stopping = True
        self._assigned.notify()

    def _node(self, connection, node_id: int) -> Any:
        row = connection.execute(select(nodes).where(nodes.c.id == node_id)).first()
        if row is None or row.state in NODE_GONE:
            raise Forbidden(f"Node {node_id} is not part of the pool any more")
        return row

    async def register(self, node_id: int, info: dict[str, Any]) -> dict[str, Any]:
        """The agent has started: the node is ready to run jobs. Jobs an earlier agent of this
        node was running died with it (the new agent removes their containers before it
        registers): they go back to the queue as infrastructure failures."""
        def run() -> dict[str, Any]:
            now = time.time()
            with self._engine.begin() as connection:
                node = self._node(connection, node_id)
                # A draining node stays draining when its agent restarts.
                state = NodeState.DRAINING if node.state == NodeState.DRAINING else NodeState.READY
                connection.execute(update(nodes).where(nodes.c.id == node_id).values(
                    state=state, ready_at=node.ready_at or now, last_heartbeat=now,
                    idle_since=node.idle_since or now, info={**node.info, **info}))
                release_node_jobs(connection, [node_id], "the node's agent restarted", int(now), assigned_too=False)
            return {"node": node_id}
        result = await to_thread.run_sync(run)
        self._jobs_changed.notify()  # new capacity: match waiting jobs to it
        return result

    async def heartbeat(self, node_id: int, running: list[tuple[int, int]]) -> dict[str, Any]:
        """Keeps the node alive; answers which of the attempts it runs it must stop."""
        def run() -> dict[str, Any]:
            with self._engine.begin() as connection:
                self._node(connection, node_id)
                connection.execute(update(nodes).where(nodes.c.id == node_id).values(last_heartbeat=time.time()))
                ids = [job_id for job_id, _ in running]
                current = {(row.id, row.attempt) for row in connection.execute(
                    select(jobs.c.id, jobs.c.attempt).where(
                        jobs.c.id.in_(ids), jobs.c.node_id == node_id, jobs.c.status == JobStatus.RUNNING))}
            return {"stop": [[job_id, attempt] for job_id, attempt in running if (job_id, attempt) not in current]}
        return await to_thread.run_sync(run)

    def _claim(self, node_id: int) -> list[dict[str, Any]]:
        now = int(time.time())
        with self._engine.begin() as connection:
            self._node(connection, node_id)
            # One statement: only jobs the scheduler assigned to this node, and only while idle,
            # so a job is claimed exactly once even with several gateways.
            claimed = connection.execute(
                update(jobs).where(jobs.c.node_id == node_id, jobs.c.status == JobStatus.IDLE)
                .values(status=JobStatus.RUNNING, attempt=jobs.c.attempt + 1, status_reason="",
                        start_time=func.coalesce(jobs.c.start_time, now))
                .returning(jobs.c.id, jobs.c.attempt, jobs.c.spec, jobs.c.owner, jobs.c.cpus, jobs.c.memory_mb,
                           jobs.c.disk_gb, jobs.c.owner_groups)
            ).all()
        return [self._assignment(row) for row in claimed]

    def _assignment(self, row: Any) -> dict[str, Any]:
        lifetime = job_token_lifetime(row.spec)
        # Artifacts and archive images naming uploaded objects (the owner's, or of a group the job
        # was submitted with): signed URLs (data.py). The job token carries those groups too.
        groups = tuple(row.owner_groups or ())
        spec, images = resolve_for_job(self._store, row.owner, row.spec, lifetime, groups)
        return {
            "id": row.id, "attempt": row.attempt, "spec": spec, "owner": row.owner, "images": images,
            "cpus": row.cpus, "memory_mb": row.memory_mb, "disk_gb": row.disk_gb,
            "token": self._tokens.issue_job_token(row.id, row.attempt, row.owner, groups, lifetime),
            "url": f"{self._public_url}/v1",
        }

    async def claim(self, node_id: int, wait: float,
                    agent_gone: Callable[[], Awaitable[bool]]) -> list[dict[str, Any]]:
        """The jobs assigned to this node, waiting up to `wait` seconds for some. An agent that
        died while it waited must not claim jobs: the answer would go nowhere and the jobs would
        count as running until the node is declared lost."""
        deadline = time.monotonic() + wait
        while True:
            with self._assigned.listener() as woken:
                if self._stopping or await agent_gone():
                    return []
                claimed = await to_thread.run_sync(self._claim, node_id)
                remaining = deadline - time.monotonic()
                if claimed or remaining <= 0:
                    return claimed
                # Another process's scheduler does not signal us: look again every second.
                await wait_for_event(woken, min(remaining, 1.0))

    def _current(self, connection, node_id: int, job_id: int, attempt: int) -> Any:
        return connection.execute(
            select(jobs).where(jobs.c.id == job_id, jobs.c.node_id == node_id, jobs.c.attempt == attempt,
                               jobs.c.status == JobStatus.RUNNING)
        ).first()

    async def append_output(self, node_id: int, job_id: int, attempt: int, stream: str, offset: int,
                            data: bytes) -> bool:
        """Write a piece of stdout/stderr at `offset` (idempotent when the agent sends it again)."""
        def run() -> bool:
            with self._engine.connect() as connection:
                if self._current(connection, node_id, job_id, attempt) is None:
                    return False
            path = output_path(self._data_dir, job_id, 0, stream)
            path.parent.mkdir(parents=True, exist_ok=True)
            received = path.stat().st_size if offset and path.exists() else 0
            if offset > received:  # a hole would be a sparse file users then read as zeros
                raise BadRequest(f"offset {offset} is past the end of the {stream} received so far ({received} bytes)")
            with open(path, "r+b" if path.exists() else "wb") as handle:
                if offset == 0:
                    handle.truncate()  # a new attempt starts its output afresh
                handle.seek(offset)
                handle.write(data)
            return True
        return await to_thread.run_sync(run)

    async def store_output(self, node_id: int, job_id: int, attempt: int, name: str,
                           chunks: AsyncIterator[bytes]) -> bool:
        """Keep an output file (or an output dir's .tgz) of the job, as it declared it in
        outputFiles/Dirs. The body goes to the store as it arrives (never whole in memory), and
        outside any transaction (on SQLite a transaction holds the write lock)."""
        def object_key() -> str | None:
            with self._engine.connect() as connection:
                row = self._current(connection, node_id, job_id, attempt)
            if row is None:
                return None
            if name not in row.spec.get("outputFiles", []) + row.spec.get("outputDirs", []):
                raise BadRequest(f"{name} is not one of the job's outputFiles or outputDirs")
            return output_key(job_id, name, is_dir=name in row.spec.get("outputDirs", []))

        def store(key: str) -> int:
            pending = aiter(chunks)

            def received() -> Iterator[bytes]:  # the request's body, pulled from the event loop
                while True:
                    try:
                        yield from_thread.run(anext, pending)
                    except StopAsyncIteration:
                        return
            return self._store.put(key, received())

        def record(key: str, size: int) -> bool:
            with self._engine.begin() as connection:
                row = self._current(connection, node_id, job_id, attempt)
                if row is None:
                    return False
                outputs = {**row.execution.get("outputs", {}), name: {"key": key, "size": size}}
                connection.execute(update(jobs).where(jobs.c.id == job_id).values(
                    execution={**row.execution, "outputs": outputs}))
            return True

        key = await to_thread.run_sync(object_key)
        if key is None:
            return False
        size = await to_thread.run_sync(store, key)
        return await to_thread.run_sync(record, key, size)

    async def finish(self, node_id: int, job_id: int, attempt: int, report: dict[str, Any]) -> bool:
        """The attempt has ended: the job's final status, or back to the queue to be retried."""
        def run() -> bool:
            now = int(time.time())
            with self._engine.begin() as connection:
                row = self._current(connection, node_id, job_id, attempt)
                if row is None:
                    return False
                node = connection.execute(select(nodes).where(nodes.c.id == node_id)).first()
                execution = {**row.execution, **report.get("execution", {}), "site": node.site,
                             "provisionedResources": {"cpus": node.cpus, "memory": math.ceil(node.memory_mb / 1024),
                                                      "disk": node.disk_gb, "nodes": 1}}
                if row.retries:
                    execution["retries"] = row.retries
                status, reason = report["status"], report.get("reason", "")
                if report.get("infrastructure"):
                    values = infrastructure_failure(row.spec, row.retries, reason, now)
                elif status in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.KILLED):
                    values = finished(row.spec, JobStatus(status), reason, now)
                else:
                    raise BadRequest(f"status must be completed, failed or killed, not {status}")
                values["execution"] = execution
                connection.execute(update(jobs).where(and_(jobs.c.id == job_id, jobs.c.attempt == attempt))
                                   .values(**values))
            self._jobs_changed.notify()  # capacity was freed, or the job waits again
            return True
        return await to_thread.run_sync(run)
