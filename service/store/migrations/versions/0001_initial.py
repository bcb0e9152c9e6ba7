"""Initial schema: recordings, recording_events, inbox.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Spelled out here, not imported from service.store.models, so this revision never changes when
# the models do.
UTC_TIME = sa.DateTime(timezone=True)
JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
BIG_ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")
UNFINISHED = sa.text("status_rank < 3")  # rank >= 3 is terminal (service.domain.recordings)


def upgrade() -> None:
    op.create_table(
        "recordings",
        sa.Column("sid", sa.String(64), primary_key=True),
        sa.Column("account_sid", sa.String(64)),
        sa.Column("call_sid", sa.String(64)),
        sa.Column("conference_sid", sa.String(64)),
        sa.Column("api_version", sa.String(32)),
        sa.Column("channels", sa.Integer),
        sa.Column("date_created", UTC_TIME),
        sa.Column("date_updated", UTC_TIME),
        sa.Column("start_time", UTC_TIME),
        sa.Column("end_time", UTC_TIME),
        sa.Column("duration", sa.Integer),
        sa.Column("price", sa.String(32)),
        sa.Column("price_unit", sa.String(16)),
        sa.Column("source", sa.String(64)),
        sa.Column("status", sa.String(32)),
        sa.Column("status_rank", sa.Integer, nullable=False, server_default="-1"),
        sa.Column("error_code", sa.String(32)),
        sa.Column("uri", sa.Text),
        sa.Column("subresource_uris", JSON),
        sa.Column("track", sa.String(32)),
        sa.Column("trim", sa.String(32)),
        sa.Column("extra", JSON),
        sa.Column("requested", JSON),
        sa.Column("started_by_us", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.Column("first_seen_at", UTC_TIME, nullable=False),
        sa.Column("last_fetched_at", UTC_TIME),
        sa.Column("updated_at", UTC_TIME, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text),
    )
    op.create_index("ix_recordings_created", "recordings", ["created_at", "sid"])
    op.create_index("ix_recordings_call_created", "recordings", ["call_sid", "created_at", "sid"])
    op.create_index("ix_recordings_status_created", "recordings", ["status", "created_at", "sid"])
    op.create_index(
        "ix_recordings_unfinished", "recordings", ["first_seen_at"], postgresql_where=UNFINISHED, sqlite_where=UNFINISHED
    )

    op.create_table(
        "recording_events",
        sa.Column("id", BIG_ID, primary_key=True, autoincrement=True),
        sa.Column("recording_sid", sa.String(64), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("params", JSON, nullable=False),
        sa.Column("received_at", UTC_TIME, nullable=False),
        sa.UniqueConstraint("recording_sid", "status", name="uq_recording_events_sid_status"),
    )

    op.create_table(
        "inbox",
        sa.Column("id", BIG_ID, primary_key=True, autoincrement=True),
        sa.Column("payload", JSON, nullable=False),
        sa.Column("created_at", UTC_TIME, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("inbox")
    op.drop_table("recording_events")
    op.drop_table("recordings")
