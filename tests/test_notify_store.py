"""The notification outbox in the store, on SQLite and PostgreSQL: deliveries written in the
transaction of the change they tell about, once; endpoints and their secrets; claims, leases
and replays."""

from __future__ import annotations

import dataclasses
import threading
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from service.notify.events import ARCHIVED, STARTED
from service.notify.signing import SECRET_PREFIX
from service.store import notifications
from service.store.notifications import D, DELIVERED, EP, FAILED, PENDING, Result, enqueue_event, signing_keys
from tests.test_store import event, full_recording

UTC = timezone.utc


def deliveries(store) -> list[dict]:
    with store.engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(D).order_by(D.c.created_at, D.c.id)).mappings()]


def endpoint(store, events=None, url="https://hooks.example.com/in") -> str:
    created, _secret = store.notifications.create_endpoint(url, events, "test")
    return created["id"]


# --- the outbox ----------------------------------------------------------------------------


def test_completed_metadata_writes_one_delivery_per_subscribed_endpoint_with_a_thin_body(store):
    everything = endpoint(store)
    completed_only = endpoint(store, ["recording.completed"])
    absent_only = endpoint(store, ["recording.absent"])
    store.save_started(full_recording("rec-1", status="in-progress", duration=None), {"channels": "mono"})
    store.record_event(event("rec-1", "completed"), metadata=full_recording("rec-1"))

    rows = deliveries(store)
    assert [(r["endpoint_id"], r["event_type"]) for r in rows if r["event_type"] == "recording.completed"] in (
        [(everything, "recording.completed"), (completed_only, "recording.completed")],
        [(completed_only, "recording.completed"), (everything, "recording.completed")],
    )
    assert not [r for r in rows if r["endpoint_id"] == absent_only]
    started = [r for r in rows if r["event_type"] == STARTED]
    assert [r["endpoint_id"] for r in started] == [everything]
    body = next(r for r in rows if r["event_type"] == "recording.completed")["payload"]
    assert body["type"] == "recording.completed"
    assert datetime.fromisoformat(body["timestamp"]).tzinfo is not None
    assert body["data"] == {"recording_sid": "rec-1", "call_sid": "call-1", "account_sid": "acc-1",
                            "status": "completed", "duration": 119, "channels": 2, "started_by_us": True}
    # Thin: nothing from the metadata beyond these, so no media URL and no URI.
    assert "uri" not in str(body) and "http" not in str(body)
    for row in rows:
        assert row["status"] == PENDING and row["attempts"] == 0 and row["id"].startswith("msg_")
        assert row["id"].endswith(row["endpoint_id"])


def test_the_same_write_repeated_adds_no_delivery(store):
    ep = endpoint(store)
    for _ in range(3):
        store.record_event(event("rec-1", "completed"), metadata=full_recording("rec-1"))
        store.save_metadata(full_recording("rec-1"))
    rows = deliveries(store)
    assert [(r["endpoint_id"], r["event_type"]) for r in rows] == [(ep, "recording.completed")]
    assert rows[0]["payload"]["data"]["started_by_us"] is False


@pytest.mark.parametrize("status, expected", [("absent", "recording.absent"), ("failed", "recording.failed"),
                                              ("deleted", "recording.failed"), ("in-progress", None),
                                              ("processing", None)])
def test_each_terminal_status_has_its_event(store, status, expected):
    endpoint(store)
    store.save_metadata(full_recording("rec-1", status=status))
    assert [r["event_type"] for r in deliveries(store)] == ([expected] if expected else [])


def test_a_callback_without_metadata_or_a_lagging_snapshot_tells_nothing(store):
    endpoint(store)
    store.record_event(event("rec-1", "completed"))  # metadata fetch failed: not stored yet
    assert deliveries(store) == []
    store.record_event(event("rec-2", "absent"), metadata=full_recording("rec-2", status="absent"))
    # The API lagging behind: a snapshot older than the stored terminal state is not what is stored.
    store.record_event(event("rec-3", "completed"), metadata=full_recording("rec-3", status="in-progress"))
    assert [(r["recording_sid"], r["event_type"]) for r in deliveries(store)] == [("rec-2", "recording.absent")]


def test_the_delivery_is_written_in_the_same_transaction_as_the_change(store):
    endpoint(store)
    with pytest.raises(RuntimeError), store._write() as conn:
        store._upsert(conn, full_recording("rec-1"), last_fetched_at=datetime.now(UTC), last_error=None)
        store._notify_outcome(conn, full_recording("rec-1"))
        raise RuntimeError("the transaction fails after both writes")
    assert store.get("rec-1") is None and deliveries(store) == []


def test_disabled_endpoints_get_nothing_and_events_filter(store):
    ep = endpoint(store)
    store.notifications.update_endpoint(ep, disabled=True)
    store.save_metadata(full_recording("rec-1"))
    assert deliveries(store) == []


def test_enqueue_event_for_the_media_archive_carries_the_media_in_the_callers_transaction(store):
    ep = endpoint(store, [ARCHIVED])
    store.save_metadata(full_recording("rec-1"))
    media = {"sha256": "ab" * 32, "bytes": 123456, "content_type": "audio/x-wav"}
    with store._write() as conn:
        enqueue_event(conn, ARCHIVED, "rec-1", media=media)
        enqueue_event(conn, ARCHIVED, "rec-1", media=media)  # twice: still one message
    with pytest.raises(RuntimeError), store._write() as conn:
        enqueue_event(conn, ARCHIVED, "rec-2", media=media)
        raise RuntimeError("rolled back")
    rows = deliveries(store)
    assert [(r["endpoint_id"], r["recording_sid"]) for r in rows] == [(ep, "rec-1")]
    assert rows[0]["payload"]["data"]["media"] == media
    assert rows[0]["payload"]["data"]["status"] == "completed"
    with pytest.raises(ValueError, match="only sha256"), store._write() as conn:
        enqueue_event(conn, ARCHIVED, "rec-1", media={**media, "url": "https://files.example/a.wav"})
    # An unknown recording raises nothing (there is no row to describe).
    with store._write() as conn:
        enqueue_event(conn, ARCHIVED, "no-such-recording", media=media)
    assert len(deliveries(store)) == 1


def test_an_archived_recording_notifies_once_with_its_media(store):
    ep = endpoint(store, [ARCHIVED])
    store.save_metadata(full_recording("rec-1"))
    store.media_queued("rec-1")
    assert deliveries(store) == []
    for _ in range(2):  # a second verification (a job run twice) changes nothing
        store.media_archived("rec-1", key="k/rec-1.wav", size=123456, sha256="ab" * 32, content_type="audio/x-wav")
    rows = deliveries(store)
    assert [(r["endpoint_id"], r["event_type"]) for r in rows] == [(ep, ARCHIVED)]
    assert rows[0]["payload"]["data"]["media"] == {"sha256": "ab" * 32, "bytes": 123456,
                                                    "content_type": "audio/x-wav"}


def test_writes_wake_the_local_sender_after_commit(store):
    endpoint(store)
    notifications.wake_sender.clear()
    store.record_event(event("rec-1", "in-progress"))
    assert not notifications.wake_sender.is_set()
    store.record_event(event("rec-1", "completed"), metadata=full_recording("rec-1"))
    assert notifications.wake_sender.is_set()


# --- endpoints and secrets -------------------------------------------------------------------


def test_endpoints_never_show_their_secrets(store):
    created, secret = store.notifications.create_endpoint("https://a.example.com/x", ["recording.absent"], "d")
    assert secret.startswith(SECRET_PREFIX)
    assert created["events"] == ["recording.absent"] and created["disabled"] is False
    for shown in (created, store.notifications.get_endpoint(created["id"]), *store.notifications.list_endpoints()):
        assert "secrets" not in shown and secret not in str(shown)
    updated = store.notifications.update_endpoint(created["id"], url="https://b.example.com/", events=[],
                                                  description="new")
    assert (updated["url"], updated["events"], updated["description"]) == ("https://b.example.com/", [], "new")
    assert store.notifications.update_endpoint("ep_missing", disabled=True) is None
    assert store.notifications.delete_endpoint(created["id"]) is True
    assert store.notifications.delete_endpoint(created["id"]) is False
    assert store.notifications.list_endpoints() == []


def test_deleting_an_endpoint_deletes_its_deliveries(store):
    ep, other = endpoint(store), endpoint(store)
    store.save_metadata(full_recording("rec-1"))
    store.notifications.delete_endpoint(ep)
    assert [r["endpoint_id"] for r in deliveries(store)] == [other]


def test_rotation_keeps_the_old_secret_signing_for_24_hours(store):
    created, first = store.notifications.create_endpoint("https://a.example.com/", None)
    t0 = datetime.now(UTC)
    second = store.notifications.rotate_secret(created["id"], now=t0)
    third = store.notifications.rotate_secret(created["id"], now=t0 + timedelta(hours=2))
    with store.engine.connect() as conn:
        stored = conn.execute(sa.select(EP.c.secrets).where(EP.c.id == created["id"])).scalar_one()
    assert signing_keys(stored, t0 + timedelta(hours=3)) == [third, second, first]
    # The first secret's 24 hours began at the first rotation; a second rotation does not extend them.
    assert signing_keys(stored, t0 + timedelta(hours=24, seconds=1)) == [third, second]
    assert signing_keys(stored, t0 + timedelta(hours=26, seconds=1)) == [third]
    assert store.notifications.rotate_secret("ep_missing") is None
    fourth = store.notifications.rotate_secret(created["id"], now=t0 + timedelta(hours=30))
    with store.engine.connect() as conn:
        stored = conn.execute(sa.select(EP.c.secrets).where(EP.c.id == created["id"])).scalar_one()
    assert [s["key"] for s in stored] == [fourth, third]  # the expired ones are gone


# --- claims, leases, results, replays --------------------------------------------------------


def test_a_claim_leases_due_deliveries_and_counts_the_attempt(store):
    ep = endpoint(store)
    store.save_metadata(full_recording("rec-1"))
    now = datetime.now(UTC)
    [claim] = store.notifications.claim(10, lease_seconds=30, now=now)
    assert claim.endpoint_id == ep and claim.url == "https://hooks.example.com/in" and claim.attempts == 1
    assert len(claim.keys) == 1 and claim.payload["type"] == "recording.completed"
    assert store.notifications.claim(10, lease_seconds=30, now=now) == []  # leased
    # The sender died: when the lease runs out, the delivery is due again, for another sender.
    [again] = store.notifications.claim(10, lease_seconds=30, now=now + timedelta(seconds=31))
    assert again.id == claim.id and again.attempts == 2 and again.lease != claim.lease
    # The first sender's late result is not written over the second's claim.
    assert not store.notifications.finish(claim, status=DELIVERED, last_status=200, last_error=None,
                                          next_attempt_at=None)
    assert store.notifications.finish(again, status=DELIVERED, last_status=204, last_error=None,
                                      next_attempt_at=None)
    shown = store.notifications.get_delivery(claim.id)
    assert (shown["status"], shown["attempts"], shown["last_status"]) == (DELIVERED, 2, 204)
    assert "lease" not in shown


def test_outcomes_are_written_with_the_next_claim(store):
    endpoint(store)
    store.save_metadata(full_recording("rec-1"))
    [first] = store.notifications.claim(1, lease_seconds=30)
    store.save_metadata(full_recording("rec-2"))
    stale = dataclasses.replace(first, lease="not-the-lease")
    [second] = store.notifications.claim(5, lease_seconds=30, results=[
        Result(first, DELIVERED, 204, None, None), Result(stale, FAILED, 500, "late", None)])
    assert second.id != first.id
    shown = store.notifications.get_delivery(first.id)
    assert (shown["status"], shown["last_status"], shown["last_error"]) == (DELIVERED, 204, None)
    assert store.notifications.claim(0, lease_seconds=30, results=[Result(second, PENDING, 500, "answered 500",
                                                                          datetime.now(UTC))]) == []
    assert store.notifications.get_delivery(second.id)["last_error"] == "answered 500"


def test_concurrent_claimers_never_share_a_delivery(store):
    endpoint(store)
    for i in range(60):
        store.save_metadata(full_recording(f"rec-{i}"))
    got: list[list[str]] = [[] for _ in range(4)]

    def claimer(mine: list[str]) -> None:
        for _ in range(30):
            mine.extend(c.id for c in store.notifications.claim(3, lease_seconds=60))

    threads = [threading.Thread(target=claimer, args=(mine,)) for mine in got]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    claimed = [i for mine in got for i in mine]
    assert len(claimed) == len(set(claimed)) == 60


def test_a_disabled_endpoints_claims_come_without_a_url_and_410_disables(store):
    ep = endpoint(store)
    store.save_metadata(full_recording("rec-1"))
    store.save_metadata(full_recording("rec-2"))
    first, second = store.notifications.claim(10, lease_seconds=30)
    store.notifications.finish(first, status=FAILED, last_status=410, last_error=None, next_attempt_at=None,
                               disable_endpoint="the endpoint answered 410 Gone")
    shown = store.notifications.get_endpoint(ep)
    assert shown["disabled"] is True and "410" in shown["disabled_reason"]
    store.notifications.replay(second.id)
    [claim] = store.notifications.claim(10, lease_seconds=30)
    assert claim.url is None and claim.keys == ()
    # Enabled again through the API: the reason goes.
    assert store.notifications.update_endpoint(ep, disabled=False)["disabled_reason"] is None


def test_replays_and_the_delivery_listing(store):
    ep, other = endpoint(store), endpoint(store)
    for i in range(5):
        store.save_metadata(full_recording(f"rec-{i}"))
    for claim in store.notifications.claim(100, lease_seconds=30):
        store.notifications.finish(claim, status=FAILED, last_status=500, last_error=None, next_attempt_at=None)
    page, cursor = store.notifications.list_deliveries(ep, limit=3)
    rest, end = store.notifications.list_deliveries(ep, limit=3, cursor=cursor)
    assert len(page) == 3 and len(rest) == 2 and end is None
    assert {d["endpoint_id"] for d in page + rest} == {ep}
    assert all(d["status"] == FAILED and d["last_status"] == 500 and d["attempts"] == 1 for d in page + rest)
    assert store.notifications.list_deliveries(ep, status=PENDING) == ([], None)

    replayed = store.notifications.replay(page[0]["id"])
    assert replayed["status"] == PENDING and replayed["attempts"] == 0
    assert store.notifications.replay("msg_missing") is None
    future = datetime.now(UTC) + timedelta(minutes=1)
    assert store.notifications.replay_failed(ep, since=future) == 0
    assert store.notifications.replay_failed(ep, since=datetime.now(UTC) - timedelta(minutes=1)) == 4
    counts = store.notifications.counts()
    assert counts[PENDING] == 5 and counts[FAILED] == 5 and counts["due"] == 5
    assert {c.endpoint_id for c in store.notifications.claim(100, lease_seconds=30)} == {ep}
    assert other
