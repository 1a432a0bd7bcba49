"""Rules for ending a job's attempt and for a node leaving the pool, shared by the agent
protocol, the provisioner and the admins' node commands."""
from collections.abc import Collection, Sequence
from typing import Any

from sqlalchemy import Connection, Row, select, update

from schema.enums import NODE_LIVE, JobStatus, NodeState, StatusReason
from schema.tables import jobs, nodes

DEFAULT_INFRASTRUCTURE_RETRIES = 2  # DESIGN.md 3.3: infrastructure failures are retried by default


def finished(spec: dict[str, Any], status: JobStatus, reason: str, now: int) -> dict[str, Any]:
    """Column values for a job that has reached a terminal status."""
    return {"status": status, "status_reason": reason, "end_time": now,
            "in_queue": bool(spec.get("policies", {}).get("leaveInQueue"))}


def infrastructure_failure(spec: dict[str, Any], retries: int, reason: str, now: int) -> dict[str, Any]:
    """The node failed the job (lost, stage-in, image pull): queue it again while retries are left."""
    allowed = spec.get("policies", {}).get("maximumRetries", DEFAULT_INFRASTRUCTURE_RETRIES)
    if retries < allowed:
        return {"status": JobStatus.IDLE, "node_id": None, "retries": retries + 1,
                "status_reason": StatusReason.RETRYING.format(reason=reason)}
    return finished(spec, JobStatus.FAILED, reason, now)


def release_node_jobs(connection: Connection, node_ids: Sequence[int], reason: str, now: int,
                      counts_as_retry: bool = True, assigned_too: bool = True) -> list[int]:
    """The one place where a node's jobs leave it (node lost, failed, deleted, agent restarted,
    service stopped). Jobs it was given but had not started go back to the queue
    (`assigned_too`); jobs it was running are retried elsewhere as infrastructure failures, or
    fail once their retries are spent; without `counts_as_retry` (a planned stop of the service,
    not the job's failure) they are queued again as they were. Returns the running jobs' ids."""
    if not node_ids:
        return []
    if not counts_as_retry:
        statuses = (JobStatus.IDLE, JobStatus.RUNNING) if assigned_too else (JobStatus.RUNNING,)
        return list(connection.execute(
            update(jobs).where(jobs.c.node_id.in_(node_ids), jobs.c.status.in_(statuses))
            .values(status=JobStatus.IDLE, node_id=None, status_reason=reason).returning(jobs.c.id)).scalars())
    if assigned_too:
        connection.execute(update(jobs).where(jobs.c.node_id.in_(node_ids), jobs.c.status == JobStatus.IDLE)
                           .values(node_id=None, status_reason=StatusReason.WAITING))
    running = connection.execute(select(jobs.c.id, jobs.c.spec, jobs.c.retries, jobs.c.attempt).where(
        jobs.c.node_id.in_(node_ids), jobs.c.status == JobStatus.RUNNING)).all()
    for job in running:
        connection.execute(update(jobs).where(jobs.c.id == job.id, jobs.c.attempt == job.attempt).values(
            infrastructure_failure(job.spec, job.retries, reason, now)))
    return [job.id for job in running]


def leave_pool(connection: Connection, node_id: int, state: NodeState, reason: str, now: float,
               leaving: Collection[NodeState] = NODE_LIVE, jobs_reason: str | None = None,
               counts_as_retry: bool = True) -> tuple[Row, list[int]] | None:
    """A node leaves the pool (deleted, drained, lost or failed; by the provisioner or by an
    admin): if it is in one of the `leaving` states, it becomes `state` with `ended_at` (its
    spend stops there) and its jobs are released (release_node_jobs, with `jobs_reason` or
    `reason`). Destroying its VM is the caller's business. Returns the node's row (cloud, name,
    provider_id) and the ids of the jobs it was running; None when it was in no such state."""
    node = connection.execute(
        update(nodes).where(nodes.c.id == node_id, nodes.c.state.in_(leaving))
        .values(state=state, state_reason=reason, ended_at=now)
        .returning(nodes.c.id, nodes.c.cloud, nodes.c.name, nodes.c.provider_id)).first()
    if node is None:
        return None
    return node, release_node_jobs(connection, [node_id], jobs_reason or reason, int(now), counts_as_retry)
