"""The sweep's partial index also holds recordings whose status has no metadata fetched.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

BEFORE = sa.text("status_rank < 3")
AFTER = sa.text("(status_rank < 3 OR last_fetched_at IS NULL)")


def _index(where) -> None:
    op.drop_index("ix_recordings_unfinished", table_name="recordings")
    op.create_index("ix_recordings_unfinished", "recordings", ["first_seen_at"], postgresql_where=where,
                    sqlite_where=where)


def upgrade() -> None:
    _index(AFTER)


def downgrade() -> None:
    _index(BEFORE)
