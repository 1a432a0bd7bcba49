"""The state database's tables (SQLModel). Alembic migrations in `schema/migrations` create them."""
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Index, String
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel

# JSONB on PostgreSQL (indexable, compact), JSON text on SQLite.
JSONType = JSON().with_variant(JSONB(), "postgresql")


class IdCounter(SQLModel, table=True):
    """One counter shared by jobs and workflows (ids are integers, as in PROMINENCE)."""

    __tablename__ = "id_counter"
    name: str = Field(primary_key=True)
    value: int = Field(sa_column=Column(BigInteger, nullable=False))


class Job(SQLModel, table=True):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_owner_in_queue", "owner", "in_queue"),
        Index("ix_jobs_owner_end_time", "owner", "end_time"),
        Index("ix_jobs_owner_name", "owner", "name"),
        Index("ix_jobs_workflow_id", "workflow_id"),
        Index("ix_jobs_status_priority", "status", "priority", "id"),
        Index("ix_jobs_node_id", "node_id"),
    )

    id: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    owner: str
    name: str = ""
    status: str
    status_reason: str = ""
    # The normalized description (JobSpec.to_stored()): shown back by detail and resubmitted by clone.
    spec: dict[str, Any] = Field(sa_column=Column(JSONType, nullable=False))
    workflow_id: int | None = Field(default=None, sa_column=Column(BigInteger))
    # In the default listing: active jobs, and finished ones kept by leaveInQueue until `remove`.
    in_queue: bool = True
    create_time: int = Field(sa_column=Column(BigInteger, nullable=False))
    start_time: int | None = Field(default=None, sa_column=Column(BigInteger))
    # Set exactly when the job reaches a terminal status.
    end_time: int | None = Field(default=None, sa_column=Column(BigInteger))
    execution: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSONType, nullable=False))
    # Scheduling: the node running the current attempt; every claim starts a new attempt, and
    # reports from an older attempt are ignored, so no job runs twice at once.
    node_id: int | None = None
    attempt: int = 0
    retries: int = 0  # job-level retries used (infrastructure failures and lost nodes)
    # Copied from the description at submission, so the claim is one indexed SQL statement.
    priority: int = 0
    cpus: int = 1
    memory_mb: int = 1000
    disk_gb: int = 10
    nodes: int = 1  # 0 for totalCpusRange
    autoscale: bool = True  # False for autoScalingType "none": never create capacity for it
    queue_deadline: int | None = Field(default=None, sa_column=Column(BigInteger))  # maximumTimeInQueue


class Node(SQLModel, table=True):
    """A machine that runs jobs: a VM on a cloud, or a local node (DESIGN.md 3.4)."""

    __tablename__ = "nodes"
    __table_args__ = (Index("ix_nodes_state", "state"),)

    id: int | None = Field(default=None, primary_key=True)
    cloud: str
    name: str = Field(sa_column=Column(String, nullable=False, unique=True))
    provider_id: str | None = None  # the cloud's id for the VM
    state: str
    state_reason: str = ""
    cpus: int
    memory_mb: int
    disk_gb: int
    site: str
    region: str = ""
    info: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSONType, nullable=False))  # runtimes, cpu
    created_at: float
    ready_at: float | None = None
    last_heartbeat: float | None = None
    idle_since: float | None = None


jobs = Job.__table__
nodes = Node.__table__
id_counter = IdCounter.__table__
