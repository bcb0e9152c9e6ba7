"""The media archive: each recording's copy (status, key, size, SHA-256, ...) and the sweep's index.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

UTC_TIME = sa.DateTime(timezone=True)
# Completed recordings without an archived copy, as service.store.models.MEDIA_UNARCHIVED says.
UNARCHIVED = sa.text("(status = 'completed' AND (media_status IS NULL OR media_status <> 'archived'))")
COLUMNS = (
    ("media_status", sa.String(16), {}),
    ("media_key", sa.Text, {}),
    ("media_bytes", sa.BigInteger, {}),
    ("media_sha256", sa.String(64), {}),
    ("media_content_type", sa.String(64), {}),
    ("media_archived_at", UTC_TIME, {}),
    ("media_source_deleted_at", UTC_TIME, {}),
    ("media_attempts", sa.Integer, {"nullable": False, "server_default": "0"}),
    ("media_error", sa.Text, {}),
)


def upgrade() -> None:
    # Plain ADD COLUMNs (no table rebuild on SQLite; no rewrite on PostgreSQL 11+).
    for name, type_, options in COLUMNS:
        op.add_column("recordings", sa.Column(name, type_, **options))
    op.create_index("ix_recordings_media_unarchived", "recordings", ["media_attempts", "first_seen_at"],
                    postgresql_where=UNARCHIVED, sqlite_where=UNARCHIVED)
    op.create_index("ix_recordings_media_status_created", "recordings", ["media_status", "created_at", "sid"])


def downgrade() -> None:
    op.drop_index("ix_recordings_media_status_created", table_name="recordings")
    op.drop_index("ix_recordings_media_unarchived", table_name="recordings")
    with op.batch_alter_table("recordings") as batch:
        for name, _, _ in reversed(COLUMNS):
            batch.drop_column(name)
