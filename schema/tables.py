"""The state database's tables (SQLModel). Alembic migrations in `schema/migrations` create them."""
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Index
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


jobs = Job.__table__
id_counter = IdCounter.__table__
