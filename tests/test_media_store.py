"""The store's media archive state; each test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import sqlalchemy as sa

from service.domain.recordings import Recording
from service.media.verified import VerifiedCopy

UTC = timezone.utc
SHA = "ab" * 32


def completed(store, sid: str, status: str = "completed") -> None:
    store.save_metadata(Recording(sid=sid, account_sid="acc-1", status=status,
                                  date_created=datetime(2026, 3, 1, 12, tzinfo=UTC)))


def later() -> datetime:
    return datetime.now(UTC) + timedelta(minutes=1)


def test_media_is_none_until_queued_then_pending_archived_and_deleted(store):
    completed(store, "rec-1")
    assert store.get("rec-1")["media"] is None
    assert "media_status" not in store.get("rec-1")
    store.media_queued("rec-1")
    assert store.get("rec-1")["media"]["status"] == "pending"
    assert store.verified_copy("rec-1") is None
    store.media_archived("rec-1", key="p/acc-1/2026/03/rec-1.wav", size=123, sha256=SHA, content_type="audio/x-wav")
    media = store.get("rec-1")["media"]
    assert media["status"] == "archived" and media["bytes"] == 123 and media["sha256"] == SHA
    assert media["key"] == "p/acc-1/2026/03/rec-1.wav" and media["content_type"] == "audio/x-wav"
    assert media["archived_at"] and media["source_deleted_at"] is None and media["error"] is None
    copy = store.verified_copy("rec-1")
    assert copy == VerifiedCopy("rec-1", "p/acc-1/2026/03/rec-1.wav", 123, SHA, "audio/x-wav", copy.archived_at)
    store.media_source_deleted("rec-1")
    assert store.get("rec-1")["media"]["source_deleted_at"]
    store.media_queued("rec-1")  # a verified copy is never put back to pending
    assert store.get("rec-1")["media"]["status"] == "archived"


def test_failures_are_counted_and_final_one_marks_failed(store):
    completed(store, "rec-1")
    store.media_queued("rec-1")
    store.media_failed("rec-1", "storage unreachable", final=False)
    media = store.get("rec-1")["media"]
    assert (media["status"], media["attempts"], media["error"]) == ("pending", 1, "storage unreachable")
    store.media_failed("rec-1", "still unreachable", final=True)
    media = store.get("rec-1")["media"]
    assert (media["status"], media["attempts"]) == ("failed", 2)
    store.media_queued("rec-1")  # the sweep or a replay queues it again
    assert store.get("rec-1")["media"]["status"] == "pending"
    store.media_archived("rec-1", key="k", size=1, sha256=SHA, content_type="audio/x-wav")
    store.media_failed("rec-1", "a late failure of a duplicate job", final=True)  # cannot undo archived
    assert store.get("rec-1")["media"]["status"] == "archived"


def test_unarchived_lists_completed_recordings_without_a_copy_least_tried_first(store):
    for sid in ("a", "b", "c", "d"):
        completed(store, sid)
    completed(store, "absent-1", status="absent")
    store.media_queued("a")
    store.media_failed("a", "boom", final=True)
    store.media_archived("b", key="k", size=1, sha256=SHA, content_type="audio/x-wav")
    assert store.unarchived(older_than=later()) == ["c", "d", "a"]
    assert store.unarchived(older_than=later(), limit=1) == ["c"]
    assert store.unarchived(older_than=datetime(2000, 1, 1, tzinfo=UTC)) == []


def test_list_filters_on_media_status(store):
    for sid in ("a", "b", "c"):
        completed(store, sid)
    store.media_queued("a")
    store.media_archived("b", key="k", size=1, sha256=SHA, content_type="audio/x-wav")
    assert [r["sid"] for r in store.list(media_status="archived")[0]] == ["b"]
    assert [r["sid"] for r in store.list(media_status="pending")[0]] == ["a"]
    page = store.list()[0]
    assert {r["sid"]: (r["media"] or {}).get("status") for r in page} == {"a": "pending", "b": "archived", "c": None}


def test_the_sweeps_media_query_uses_its_partial_index(store):
    """Most completed recordings are archived: the sweep's query reads only the few that are not."""
    now = datetime.now(UTC)
    with store.engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO recordings (sid, status, status_rank, created_at, first_seen_at, updated_at, media_status) "
            "VALUES (:sid, 'completed', 3, :t, :t, :t, :media)"),
            [{"sid": f"r{i}", "t": now, "media": "archived" if i % 100 else None} for i in range(3000)])
        conn.exec_driver_sql("ANALYZE")
    query = ("SELECT sid FROM recordings WHERE status = 'completed' AND (media_status IS NULL OR "
             "media_status <> 'archived') AND first_seen_at < :t ORDER BY media_attempts, first_seen_at, sid LIMIT 5")
    with store.engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            plan = " ".join(str(row) for row in conn.execute(sa.text("EXPLAIN QUERY PLAN " + query), {"t": later()}))
        else:
            plan = " ".join(r[0] for r in conn.execute(sa.text("EXPLAIN " + query), {"t": later()}))
    assert "ix_recordings_media_unarchived" in plan


def test_the_first_verification_stands(store):
    completed(store, "rec-1")
    store.media_archived("rec-1", key="k1", size=1, sha256=SHA, content_type="audio/x-wav")
    first = store.get("rec-1")["media"]
    store.media_archived("rec-1", key="k2", size=2, sha256="cd" * 32, content_type="audio/mpeg")
    assert store.get("rec-1")["media"] == first
