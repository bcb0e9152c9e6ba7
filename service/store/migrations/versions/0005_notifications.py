"""Outbound notifications: endpoints and their deliveries (the outbox).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

UTC_TIME = sa.DateTime(timezone=True)
JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
PENDING = sa.text("status = 'pending'")


def upgrade() -> None:
    op.create_table(
        "notification_endpoints",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.Column("events", sa.Text, nullable=False, server_default=""),
        sa.Column("disabled", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("disabled_reason", sa.Text),
        sa.Column("secrets", JSON, nullable=False),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.Column("updated_at", UTC_TIME, nullable=False),
    )
    op.create_table(
        "notification_deliveries",
        sa.Column("id", sa.String(80), primary_key=True),
        sa.Column("endpoint_id", sa.String(32), sa.ForeignKey("notification_endpoints.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("event_type", sa.String(32), nullable=False),
        sa.Column("recording_sid", sa.String(64), nullable=False),
        sa.Column("payload", JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_status", sa.Integer),
        sa.Column("last_error", sa.Text),
        sa.Column("last_attempt_at", UTC_TIME),
        sa.Column("next_attempt_at", UTC_TIME),
        sa.Column("lease", sa.String(32)),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.Column("updated_at", UTC_TIME, nullable=False),
        sa.UniqueConstraint("endpoint_id", "recording_sid", "event_type", name="uq_notification_deliveries_event"),
    )
    op.create_index("ix_notification_deliveries_due", "notification_deliveries", ["next_attempt_at"],
                    postgresql_where=PENDING, sqlite_where=PENDING)
    op.create_index("ix_notification_deliveries_endpoint", "notification_deliveries",
                    ["endpoint_id", "created_at", "id"])


def downgrade() -> None:
    op.drop_table("notification_deliveries")
    op.drop_table("notification_endpoints")
