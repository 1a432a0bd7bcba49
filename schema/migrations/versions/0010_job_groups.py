"""jobs' groups (issue 9): the groups of the token that submitted a job (`jobs.owner_groups`) or a
workflow (`workflows.owner_groups`, given to the jobs it creates later), a JSON list of names, empty
for the rows from before; and an index on jobs(end_time) for the admins' accounting of all users.

Revision ID: 0010
Revises: 0009
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

JSONType = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    for table in ("jobs", "workflows"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("owner_groups", JSONType, nullable=False, server_default=sa.text("'[]'")))
    op.create_index("ix_jobs_end_time", "jobs", ["end_time"])


def downgrade() -> None:
    op.drop_index("ix_jobs_end_time", "jobs")
    for table in ("workflows", "jobs"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("owner_groups")
