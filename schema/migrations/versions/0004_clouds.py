"""clouds as records; nodes' flavour, price and end; jobs' placement and per-cloud wait reasons

Revision ID: 0004
Revises: 0003
"""
import logging

import sqlalchemy as sa
from alembic import op
from pydantic import ValidationError
from sqlalchemy.dialects.postgresql import JSONB

from schema.jobspec import JobSpec

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

JSONType = sa.JSON().with_variant(JSONB(), "postgresql")
log = logging.getLogger("alembic.runtime.migration")


def upgrade() -> None:
    op.create_table(
        "clouds",
        sa.Column("name", sa.String(), primary_key=True),
        sa.Column("provider", sa.String(), nullable=False),
        sa.Column("driver_args", JSONType, nullable=False),
        sa.Column("create_options", JSONType, nullable=False),
        sa.Column("region", sa.String(), nullable=False, server_default=""),
        sa.Column("site", sa.String(), nullable=False, server_default=""),
        sa.Column("image", sa.String(), nullable=False, server_default=""),
        sa.Column("connection", sa.String(), nullable=False, server_default="ssh"),
        sa.Column("ssh_user", sa.String(), nullable=False, server_default="root"),
        sa.Column("ssh_port", sa.Integer(), nullable=False, server_default="22"),
        sa.Column("node_root", sa.String(), nullable=False, server_default="/var/lib/prominence-node"),
        sa.Column("install_packages", sa.Boolean(), nullable=False, server_default=sa.true()),
        sa.Column("flavours", JSONType, nullable=False),
        sa.Column("max_instances", sa.Integer(), nullable=True),
        sa.Column("max_cpus", sa.Integer(), nullable=True),
        sa.Column("max_memory_mb", sa.Integer(), nullable=True),
        sa.Column("min_nodes", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("idle_timeout", sa.Float(), nullable=False, server_default="600"),
        sa.Column("create_timeout", sa.Float(), nullable=False, server_default="600"),
        sa.Column("running_timeout", sa.Float(), nullable=False, server_default="600"),
        sa.Column("configure_timeout", sa.Float(), nullable=False, server_default="600"),
        sa.Column("max_booting", sa.Integer(), nullable=False, server_default="4"),
        sa.Column("enabled", sa.Boolean(), nullable=False, server_default=sa.true()),
        sa.Column("credentials", sa.String(), nullable=True),
        sa.Column("failures", JSONType, nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
    )
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(sa.Column("ended_at", sa.Float(), nullable=True))
        batch.add_column(sa.Column("flavour", sa.String(), nullable=False, server_default=""))
        batch.add_column(sa.Column("price", sa.Float(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("address", sa.String(), nullable=False, server_default=""))
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("placement", JSONType, nullable=True))
        batch.add_column(sa.Column("wait_reasons", JSONType, nullable=True))
    # Waiting jobs stored earlier get their placement from their description, as a submission does.
    jobs = sa.table("jobs", sa.column("id"), sa.column("status"), sa.column("spec", sa.JSON()),
                    sa.column("placement", sa.JSON()))
    connection = op.get_bind()
    for row in connection.execute(sa.select(jobs.c.id, jobs.c.spec).where(jobs.c.status == "idle")).all():
        try:
            placement = JobSpec.model_validate(row.spec).demand()["placement"]
        except ValidationError:
            log.warning("job %s: its description is not valid any more; it keeps no placement", row.id)
            continue
        if placement:
            connection.execute(sa.update(jobs).where(jobs.c.id == row.id).values(placement=placement))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("wait_reasons")
        batch.drop_column("placement")
    with op.batch_alter_table("nodes") as batch:
        for column in ("address", "price", "flavour", "ended_at"):
            batch.drop_column(column)
    op.drop_table("clouds")
