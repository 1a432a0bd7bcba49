"""the key-value store (issue 9)

Revision ID: 0005
Revises: 0004
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# Keys compare byte by byte (code point order) on both databases: a prefix is one index range.
KeyType = sa.String().with_variant(sa.String(collation="C"), "postgresql")


def upgrade() -> None:
    op.create_table(
        "kv_pairs",
        sa.Column("owner", KeyType, nullable=False),
        sa.Column("key", KeyType, nullable=False),
        sa.Column("value", sa.LargeBinary(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("owner", "key", name="pk_kv_pairs"),
    )


def downgrade() -> None:
    op.drop_table("kv_pairs")
