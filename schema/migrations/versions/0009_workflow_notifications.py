"""workflows' notifications (issue 9): workflows' notify_pending and notify_email, and the partial
index of finished workflows whose notifications are not in the outbox yet

Workflows stored before this revision get notify_pending false and no address: those that finished
before the upgrade are not notified afterwards, and neither are those still running then (their
submitter's address was not recorded). Jobs of theirs created after the upgrade do notify as their
own `notifications` ask, e-mails being `skipped` for want of an address.

Revision ID: 0009
Revises: 0008
"""
import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("workflows") as batch:
        batch.add_column(sa.Column("notify_pending", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("notify_email", sa.String(), nullable=True))
    pending = sa.text("notify_pending IS true") if op.get_bind().dialect.name == "postgresql" \
        else sa.text("notify_pending IS 1")
    op.create_index("ix_workflows_notify_pending", "workflows", ["id"], sqlite_where=pending,
                    postgresql_where=pending)


def downgrade() -> None:
    op.drop_index("ix_workflows_notify_pending", "workflows")
    with op.batch_alter_table("workflows") as batch:
        batch.drop_column("notify_email")
        batch.drop_column("notify_pending")
