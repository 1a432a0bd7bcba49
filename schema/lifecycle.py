"""Rules for ending a job's attempt, shared by the agent protocol and the provisioner."""
from typing import Any

from schema.enums import JobStatus, StatusReason

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
