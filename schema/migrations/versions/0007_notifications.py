"""job notifications (issue 9): jobs' notify_pending and notify_email; the notifications outbox

Jobs stored before this revision get notify_pending false: jobs that finished before the upgrade
are not notified afterwards (no burst of old e-mails), and neither are those still running then
(their submitter's address was not recorded).

Revision ID: 0007
Revises: 0006
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

JSONType = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("notify_pending", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("notify_email", sa.String(), nullable=True))
    pending = sa.text("notify_pending IS true") if op.get_bind().dialect.name == "postgresql" \
        else sa.text("notify_pending IS 1")
    op.create_index("ix_jobs_notify_pending", "jobs", ["id"], sqlite_where=pending, postgresql_where=pending)
    op.create_table(
        "notification_deliveries",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("subject", sa.String(), nullable=False),
        sa.Column("subject_id", sa.BigInteger(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("event", sa.String(), nullable=False),
        sa.Column("owner", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("target", sa.String(), nullable=False),
        sa.Column("payload", JSONType, nullable=False),
        sa.Column("state", sa.String(), nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("next_attempt_at", sa.Float(), nullable=False),
        sa.Column("last_error", sa.String(), nullable=False, server_default=""),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("sent_at", sa.Float(), nullable=True),
    )
    op.create_index("ix_notification_deliveries_subject", "notification_deliveries",
                    ["subject", "subject_id", "seq"], unique=True)
    op.create_index("ix_notification_deliveries_due", "notification_deliveries", ["state", "next_attempt_at"])
