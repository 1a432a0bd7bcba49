"""uploaded data objects (issue 9)

Revision ID: 0006
Revises: 0005
"""
import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "data_objects",
        sa.Column("key", sa.String(), primary_key=True),
        sa.Column("area", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(), nullable=False),
        sa.Column("modified", sa.Float(), nullable=False),
        sa.Column("uploader", sa.String(), nullable=False),
    )
    op.create_index("ix_data_objects_area_name", "data_objects", ["area", "name"])
    op.create_table(
        "storage_credentials",
        sa.Column("name", sa.String(), primary_key=True),
        sa.Column("credentials", sa.String(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("storage_credentials")
    op.drop_index("ix_data_objects_area_name", table_name="data_objects")
    op.drop_table("data_objects")
