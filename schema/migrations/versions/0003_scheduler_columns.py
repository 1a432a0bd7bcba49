"""fill the scheduler's columns of jobs stored before 0002 from their descriptions

0002 added the columns the scheduler reads (cpus, memory, disk, nodes, priority, autoscale, queue
deadline) with defaults: a job stored earlier would have been scheduled as 1 cpu and 1000 MB
whatever it asked for. Active jobs get them from their description, as a submission computes them.

Revision ID: 0003
Revises: 0002
"""
import logging

import sqlalchemy as sa
from alembic import op
from pydantic import ValidationError

from schema.jobspec import JobSpec

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

log = logging.getLogger("alembic.runtime.migration")


def upgrade() -> None:
    jobs = sa.table("jobs", sa.column("spec", sa.JSON()), *(sa.column(name) for name in (
        "id", "status", "create_time", "cpus", "memory_mb", "disk_gb", "nodes", "priority", "autoscale",
        "queue_deadline")))
    connection = op.get_bind()
    active = connection.execute(sa.select(jobs.c.id, jobs.c.spec, jobs.c.create_time)
                                .where(jobs.c.status.in_(("idle", "running")))).all()
    for row in active:
        try:
            demand = JobSpec.model_validate(row.spec).demand()
        except ValidationError:
            log.warning("job %s: its description is not valid any more; its scheduling columns are unchanged", row.id)
            continue
        limit = demand.pop("queue_limit_s")
        demand.pop("placement")  # 0004 adds that column
        connection.execute(sa.update(jobs).where(jobs.c.id == row.id).values(
            **demand, queue_deadline=row.create_time + limit if limit else None))


def downgrade() -> None:
    pass  # the columns stay as they are; 0002's downgrade drops them
