"""Inbox rows the drain cannot handle are counted and, after a few tries, set aside.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("inbox") as batch:
        batch.add_column(sa.Column("attempts", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("last_error", sa.Text))
        batch.add_column(sa.Column("set_aside_at", sa.DateTime(timezone=True)))


def downgrade() -> None:
    with op.batch_alter_table("inbox") as batch:
        batch.drop_column("set_aside_at")
        batch.drop_column("last_error")
        batch.drop_column("attempts")
