"""workflows (issue 9): the workflows table; jobs' place in their workflow (wf_job, wf_instance,
parameters), the dependency gate (blocked) and the engine's to-do mark (wf_pending)

Revision ID: 0008
Revises: 0007
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

JSONType = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "workflows",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("owner", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False, server_default=""),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("status_reason", sa.String(), nullable=False, server_default=""),
        sa.Column("spec", JSONType, nullable=False),
        sa.Column("state", JSONType, nullable=False),
        sa.Column("total", sa.BigInteger(), nullable=False),
        sa.Column("in_queue", sa.Boolean(), nullable=False, server_default=sa.true()),
        sa.Column("create_time", sa.BigInteger(), nullable=False),
        sa.Column("start_time", sa.BigInteger(), nullable=True),
        sa.Column("end_time", sa.BigInteger(), nullable=True),
        sa.Column("rerun_of", sa.BigInteger(), nullable=True),
    )
    op.create_index("ix_workflows_owner_in_queue", "workflows", ["owner", "in_queue"])
    op.create_index("ix_workflows_status", "workflows", ["status"])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("wf_job", sa.String(), nullable=True))
        batch.add_column(sa.Column("wf_instance", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("blocked", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("wf_pending", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("parameters", JSONType, nullable=True))
    pending = sa.text("wf_pending IS true") if op.get_bind().dialect.name == "postgresql" \
        else sa.text("wf_pending IS 1")
    op.create_index("ix_jobs_wf_pending", "jobs", ["id"], sqlite_where=pending, postgresql_where=pending)
    op.create_index("ix_jobs_workflow_job", "jobs", ["workflow_id", "wf_job", "status"])


def downgrade() -> None:
    op.drop_index("ix_jobs_workflow_job", "jobs")
    op.drop_index("ix_jobs_wf_pending", "jobs")
    with op.batch_alter_table("jobs") as batch:
        for column in ("parameters", "wf_pending", "blocked", "wf_instance", "wf_job"):
            batch.drop_column(column)
    op.drop_table("workflows")
