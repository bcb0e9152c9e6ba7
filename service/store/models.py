"""Table definitions for the store (SQLAlchemy 2 typed declarative models).

The schema itself is created by the Alembic migrations in service/store/migrations; these models
must describe the same tables (tests/test_store.py compares them).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Statuses of rank >= this are terminal (see service.domain.recordings: completed/absent/failed
# rank 3, deleted 4, unknown statuses rank 1).
TERMINAL_RANK = 3
# What the reconciliation sweep still has to fetch (Store.unfinished), as its partial index
# ix_recordings_unfinished is defined: not terminal, or no metadata fetched for its status.
UNFINISHED = sa.text(f"(status_rank < {TERMINAL_RANK} OR last_fetched_at IS NULL)")
# Completed recordings whose media has no archived copy: what the sweep queues for archiving
# (Store.unarchived), as its partial index ix_recordings_media_unarchived is defined.
MEDIA_UNARCHIVED = sa.text("(status = 'completed' AND (media_status IS NULL OR media_status <> 'archived'))")


class UTCDateTime(sa.TypeDecorator):
    """Timezone-aware datetimes, always UTC.

    PostgreSQL stores timestamptz. SQLite has no time zones: we store naive UTC text, whose
    fixed format also sorts correctly, and attach UTC again when reading.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


def json_type() -> sa.types.TypeEngine:
    # JSONB on PostgreSQL; none_as_null so Python None is SQL NULL, not the JSON 'null'.
    return sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: json_type()}


class RecordingRow(Base):
    __tablename__ = "recordings"

    sid: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    account_sid: Mapped[str | None] = mapped_column(sa.String(64))
    call_sid: Mapped[str | None] = mapped_column(sa.String(64))
    conference_sid: Mapped[str | None] = mapped_column(sa.String(64))
    api_version: Mapped[str | None] = mapped_column(sa.String(32))
    channels: Mapped[int | None]
    date_created: Mapped[datetime | None]
    date_updated: Mapped[datetime | None]
    start_time: Mapped[datetime | None]
    end_time: Mapped[datetime | None]
    duration: Mapped[int | None]
    price: Mapped[str | None] = mapped_column(sa.String(32))
    price_unit: Mapped[str | None] = mapped_column(sa.String(16))
    source: Mapped[str | None] = mapped_column(sa.String(64))
    status: Mapped[str | None] = mapped_column(sa.String(32))
    # status_rank(status); -1 for no status. Compared in SQL so updates only move forward.
    status_rank: Mapped[int] = mapped_column(default=-1, server_default="-1")
    error_code: Mapped[str | None] = mapped_column(sa.String(32))
    uri: Mapped[str | None] = mapped_column(sa.Text)
    subresource_uris: Mapped[dict[str, Any] | None]
    track: Mapped[str | None] = mapped_column(sa.String(32))
    trim: Mapped[str | None] = mapped_column(sa.String(32))
    extra: Mapped[dict[str, Any] | None]
    requested: Mapped[dict[str, Any] | None]
    started_by_us: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    # Sort key of the list API: date_created when known, else first_seen_at.
    created_at: Mapped[datetime]
    first_seen_at: Mapped[datetime]
    last_fetched_at: Mapped[datetime | None]
    updated_at: Mapped[datetime]
    attempts: Mapped[int] = mapped_column(default=0, server_default="0")
    last_error: Mapped[str | None] = mapped_column(sa.Text)
    # The media archive (service.media): NULL status until the recording is queued for it.
    media_status: Mapped[str | None] = mapped_column(sa.String(16))  # pending, archived, failed
    media_key: Mapped[str | None] = mapped_column(sa.Text)
    media_bytes: Mapped[int | None] = mapped_column(sa.BigInteger)
    media_sha256: Mapped[str | None] = mapped_column(sa.String(64))
    media_content_type: Mapped[str | None] = mapped_column(sa.String(64))
    media_archived_at: Mapped[datetime | None]
    media_source_deleted_at: Mapped[datetime | None]
    media_attempts: Mapped[int] = mapped_column(default=0, server_default="0")
    media_error: Mapped[str | None] = mapped_column(sa.Text)

    __table_args__ = (
        sa.Index("ix_recordings_created", "created_at", "sid"),
        sa.Index("ix_recordings_call_created", "call_sid", "created_at", "sid"),
        sa.Index("ix_recordings_status_created", "status", "created_at", "sid"),
        # Small index for the reconciliation sweep: only unfinished rows are in it.
        sa.Index("ix_recordings_unfinished", "first_seen_at", postgresql_where=UNFINISHED, sqlite_where=UNFINISHED),
        sa.Index("ix_recordings_media_unarchived", "media_attempts", "first_seen_at",
                 postgresql_where=MEDIA_UNARCHIVED, sqlite_where=MEDIA_UNARCHIVED),
        sa.Index("ix_recordings_media_status_created", "media_status", "created_at", "sid"),
    )


class RecordingEventRow(Base):
    __tablename__ = "recording_events"

    id: Mapped[int] = mapped_column(sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True)
    recording_sid: Mapped[str] = mapped_column(sa.String(64))
    status: Mapped[str] = mapped_column(sa.String(32))
    params: Mapped[dict[str, Any]]
    received_at: Mapped[datetime]

    # The unique index leads with recording_sid, so it is also the lookup index for get().
    __table_args__ = (sa.UniqueConstraint("recording_sid", "status", name="uq_recording_events_sid_status"),)


class InboxRow(Base):
    __tablename__ = "inbox"

    id: Mapped[int] = mapped_column(sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True)
    payload: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]
    # A row the drain could not handle: its tries, the last error, and when it was set aside
    # (kept for an operator, skipped by the drain).
    attempts: Mapped[int] = mapped_column(default=0, server_default="0")
    last_error: Mapped[str | None] = mapped_column(sa.Text)
    set_aside_at: Mapped[datetime | None]


class IdempotencyKeyRow(Base):
    """The start-recording API's Idempotency-Keys (service.store.idempotency)."""

    __tablename__ = "idempotency_keys"

    # SHA-256 of the API token the key came with: keys are the token's own, and the token
    # itself is never stored.
    scope: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    key: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    # SHA-256 of the request (path and validated body): a key reused for another request is refused.
    fingerprint: Mapped[str] = mapped_column(sa.String(64))
    # Set while the first request is in flight; NULL once its answer is kept.
    lock: Mapped[str | None] = mapped_column(sa.String(32))
    claimed_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    status: Mapped[int | None]
    body: Mapped[dict[str, Any] | None]
    headers: Mapped[dict[str, Any] | None]

    __table_args__ = (sa.Index("ix_idempotency_keys_expires", "expires_at"),)


# --- outbound notifications (service.notify) ---------------------------------------------

# Deliveries the sender has to attempt (pending, due or leased): the partial index's condition.
PENDING = sa.text("status = 'pending'")


class NotificationEndpointRow(Base):
    __tablename__ = "notification_endpoints"

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    url: Mapped[str] = mapped_column(sa.Text)
    description: Mapped[str] = mapped_column(sa.Text, default="", server_default="")
    # Subscribed event types, space-separated between spaces (" a b "); empty means all. Text,
    # so the outbox's INSERT ... SELECT filters on it the same way on both databases.
    events: Mapped[str] = mapped_column(sa.Text, default="", server_default="")
    disabled: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    disabled_reason: Mapped[str | None] = mapped_column(sa.Text)
    # [{"key": "whsec_...", "expires_at": ISO 8601 or null}]: every key still signing. Kept as
    # written: HMAC needs the secret itself.
    secrets: Mapped[list[Any]] = mapped_column(json_type())
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class NotificationDeliveryRow(Base):
    __tablename__ = "notification_deliveries"

    # The message's webhook-id, the same on every attempt.
    id: Mapped[str] = mapped_column(sa.String(80), primary_key=True)
    endpoint_id: Mapped[str] = mapped_column(
        sa.String(32), sa.ForeignKey("notification_endpoints.id", ondelete="CASCADE"))
    event_type: Mapped[str] = mapped_column(sa.String(32))
    recording_sid: Mapped[str] = mapped_column(sa.String(64))
    payload: Mapped[dict[str, Any]]
    # pending (waiting, or leased to a sender until next_attempt_at), delivered, failed.
    status: Mapped[str] = mapped_column(sa.String(16))
    attempts: Mapped[int] = mapped_column(default=0, server_default="0")
    last_status: Mapped[int | None]
    last_error: Mapped[str | None] = mapped_column(sa.Text)
    last_attempt_at: Mapped[datetime | None]
    next_attempt_at: Mapped[datetime | None]
    # The claim of the sender holding it; its result is written only while the claim is its own.
    lease: Mapped[str | None] = mapped_column(sa.String(32))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]

    __table_args__ = (
        # One message per endpoint, recording and event type: the outbox insert is idempotent.
        sa.UniqueConstraint("endpoint_id", "recording_sid", "event_type", name="uq_notification_deliveries_event"),
        sa.Index("ix_notification_deliveries_due", "next_attempt_at", postgresql_where=PENDING, sqlite_where=PENDING),
        sa.Index("ix_notification_deliveries_endpoint", "endpoint_id", "created_at", "id"),
    )
