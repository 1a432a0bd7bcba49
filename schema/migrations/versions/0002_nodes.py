"""nodes, and what the scheduler needs on jobs

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

JSONType = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "nodes",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("cloud", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False, unique=True),
        sa.Column("provider_id", sa.String(), nullable=True),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("state_reason", sa.String(), nullable=False, server_default=""),
        sa.Column("cpus", sa.Integer(), nullable=False),
        sa.Column("memory_mb", sa.Integer(), nullable=False),
        sa.Column("disk_gb", sa.Integer(), nullable=False),
        sa.Column("site", sa.String(), nullable=False),
        sa.Column("region", sa.String(), nullable=False, server_default=""),
        sa.Column("info", JSONType, nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("ready_at", sa.Float(), nullable=True),
        sa.Column("last_heartbeat", sa.Float(), nullable=True),
        sa.Column("idle_since", sa.Float(), nullable=True),
    )
    op.create_index("ix_nodes_state", "nodes", ["state"])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("node_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("attempt", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("retries", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("priority", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("cpus", sa.Integer(), nullable=False, server_default="1"))
        batch.add_column(sa.Column("memory_mb", sa.Integer(), nullable=False, server_default="1000"))
        batch.add_column(sa.Column("disk_gb", sa.Integer(), nullable=False, server_default="10"))
        batch.add_column(sa.Column("nodes", sa.Integer(), nullable=False, server_default="1"))
        batch.add_column(sa.Column("autoscale", sa.Boolean(), nullable=False, server_default=sa.true()))
        batch.add_column(sa.Column("queue_deadline", sa.BigInteger(), nullable=True))
    op.create_index("ix_jobs_status_priority", "jobs", ["status", "priority", "id"])
    op.create_index("ix_jobs_node_id", "jobs", ["node_id"])


def downgrade() -> None:
    op.drop_index("ix_jobs_node_id", "jobs")
    op.drop_index("ix_jobs_status_priority", "jobs")
    with op.batch_alter_table("jobs") as batch:
        for column in ("queue_deadline", "autoscale", "disk_gb", "memory_mb", "cpus", "nodes", "priority", "retries",
                       "attempt", "node_id"):
            batch.drop_column(column)
    op.drop_table("nodes")
