"""jobs and the shared id counter

Revision ID: 0001
Revises:
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

JSONType = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    counter = op.create_table(
        "id_counter",
        sa.Column("name", sa.String(), primary_key=True),
        sa.Column("value", sa.BigInteger(), nullable=False),
    )
    op.bulk_insert(counter, [{"name": "ids", "value": 0}])
    op.create_table(
        "jobs",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("owner", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("status_reason", sa.String(), nullable=False),
        sa.Column("spec", JSONType, nullable=False),
        sa.Column("workflow_id", sa.BigInteger(), nullable=True),
        sa.Column("in_queue", sa.Boolean(), nullable=False),
        sa.Column("create_time", sa.BigInteger(), nullable=False),
        sa.Column("start_time", sa.BigInteger(), nullable=True),
        sa.Column("end_time", sa.BigInteger(), nullable=True),
        sa.Column("execution", JSONType, nullable=False),
    )
    op.create_index("ix_jobs_owner_in_queue", "jobs", ["owner", "in_queue"])
    op.create_index("ix_jobs_owner_end_time", "jobs", ["owner", "end_time"])
    op.create_index("ix_jobs_owner_name", "jobs", ["owner", "name"])
    op.create_index("ix_jobs_workflow_id", "jobs", ["workflow_id"])


def downgrade() -> None:
    op.drop_table("jobs")
    op.drop_table("id_counter")
