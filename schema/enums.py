"""Job statuses and the transitions allowed between them (DESIGN.md 3.3)."""
from enum import StrEnum


class JobStatus(StrEnum):
    IDLE = "idle"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    DELETED = "deleted"
    KILLED = "killed"


TERMINAL = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.DELETED, JobStatus.KILLED})
ACTIVE = frozenset(JobStatus) - TERMINAL

# idle -> running -> completed | failed | killed; any non-terminal -> deleted by the user.
# running -> idle is the infrastructure-failure retry (node lost, stage-in failed).
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.IDLE: frozenset({JobStatus.RUNNING, JobStatus.FAILED, JobStatus.DELETED}),
    JobStatus.RUNNING: frozenset(
        {JobStatus.IDLE, JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.KILLED, JobStatus.DELETED}
    ),
    **{status: frozenset() for status in TERMINAL},
}


def can_transition(current: JobStatus, new: JobStatus) -> bool:
    return new in TRANSITIONS[current]


class NodeState(StrEnum):
    """creating -> configuring -> ready -> draining -> deleting -> deleted, or failed / lost (DESIGN.md 3.4)."""

    CREATING = "creating"
    CONFIGURING = "configuring"
    READY = "ready"
    DRAINING = "draining"
    DELETING = "deleting"
    DELETED = "deleted"
    FAILED = "failed"
    LOST = "lost"


NODE_BOOTING = frozenset({NodeState.CREATING, NodeState.CONFIGURING})
NODE_LIVE = NODE_BOOTING | {NodeState.READY, NodeState.DRAINING}
NODE_GONE = frozenset(NodeState) - NODE_LIVE  # out of the pool (its VM may still be being destroyed)


class StatusReason:
    """The statusReason strings users see; the real PROMINENCE strings where one exists."""

    WAITING = "Waiting for resources"
    CREATING = "Creating infrastructure to run job on cloud {cloud}"
    NEVER_FITS = "No matching resources: no cloud can ever satisfy these resources"
    MULTI_NODE = "No matching resources: jobs across several nodes are not supported yet"
    EXISTING_ONLY = "Waiting for existing resources (autoScalingType none)"
    STARTING = "Starting on node {node}"
    RETRYING = "Waiting for resources to retry after: {reason}"
    DELETED_BY_USER = "Job deleted by user"
    NODE_LOST = "Job was evicted: its node stopped responding"
    WALLTIME = "Walltime limit exceeded"
    MEMORY = "Job used too much memory"
    MAX_TIME_QUEUED = "Maximum time queued was exceeded"
