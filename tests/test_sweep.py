"""The reconciliation sweep against a real store (SQLite, PostgreSQL), a real Redis and the
SignalWire sandbox over HTTP."""

from __future__ import annotations

import threading
import time
import uuid
import dataclasses
from types import SimpleNamespace
from datetime import datetime, timedelta, timezone

from service.domain.recordings import CallbackEvent, Recording
from service.pipelines.sweep import FINISHED_KEY, LOCK_KEY, REPORT_KEY, sweep
from workers.housekeeping import SWEEP_SLOT_KEY, Housekeeping

DEAD_CALLBACK = "http://127.0.0.1:9/x"
OLD = datetime.now(timezone.utc) - timedelta(hours=2)


def completed_recording(sandbox, sw_client) -> Recording:
    recording = sw_client.create_recording(str(uuid.uuid4()), status_callback=DEAD_CALLBACK)
    sandbox.end_call(recording.call_sid)
    return recording


def seen_in_progress(store, recording: Recording, when: datetime = OLD) -> None:
    """The store heard `in-progress` long ago; the terminal callback never came."""
    store.record_event(CallbackEvent(recording_sid=recording.sid, account_sid=recording.account_sid,
                                     status="in-progress", call_sid=recording.call_sid, received_at=when))


def test_sweep_fetches_and_stores_unfinished_recordings(store, sandbox, sw_client, redis_conn):
    lost = completed_recording(sandbox, sw_client)
    seen_in_progress(store, lost)
    recent = completed_recording(sandbox, sw_client)
    seen_in_progress(store, recent, when=datetime.now(timezone.utc))  # too new to sweep yet

    started = time.time()
    report = sweep(store, sw_client, redis_conn, older_than_seconds=600, list_hours=0)

    assert (report.checked, report.stored, report.failed, report.listed) == (1, 1, 0, 0)
    assert not report.skipped_locked and not report.rate_limited
    stored = store.get(lost.sid)
    assert stored["status"] == "completed" and stored["last_fetched_at"]
    assert stored["duration"] == sandbox.recordings[lost.sid]["duration"]
    assert store.get(recent.sid)["status"] == "in-progress"
    assert store.unfinished(older_than=datetime.now(timezone.utc) - timedelta(seconds=600)) == []
    assert not redis_conn.exists(LOCK_KEY)  # released
    # What it found, for the dashboard, and when it finished, for /metrics too.
    assert redis_conn.get(REPORT_KEY).decode() == report.summary() and "checked=1 stored=1" in report.summary()
    assert started <= float(redis_conn.get(FINISHED_KEY)) <= time.time()


def test_a_terminal_callback_whose_fetches_all_failed_is_fetched_by_the_sweep(store, sandbox, sw_client, redis_conn):
    recording = completed_recording(sandbox, sw_client)
    # What the job leaves when every fetch failed (a long rate limit, an outage): the
    # callback's status, no metadata.
    store.record_event(CallbackEvent(recording_sid=recording.sid, account_sid=recording.account_sid,
                                     status="completed", received_at=OLD))
    store.note_attempt(recording.sid, "HTTP 429")
    assert store.get(recording.sid)["duration"] is None

    report = sweep(store, sw_client, redis_conn, older_than_seconds=600)

    assert (report.checked, report.stored, report.failed) == (1, 1, 0)
    stored = store.get(recording.sid)
    assert stored["duration"] == sandbox.recordings[recording.sid]["duration"] and stored["last_fetched_at"]
    assert sweep(store, sw_client, redis_conn, older_than_seconds=600).checked == 0  # final now


def test_a_404_is_recorded_and_the_recording_left_unfinished(store, sandbox, sw_client, redis_conn):
    ghost = Recording(sid=str(uuid.uuid4()), call_sid="call-x", status="in-progress")
    seen_in_progress(store, ghost)
    report = sweep(store, sw_client, redis_conn, older_than_seconds=600)
    assert (report.checked, report.stored, report.failed) == (1, 0, 1)
    stored = store.get(ghost.sid)
    assert stored["status"] == "in-progress" and stored["attempts"] == 1 and "404" in stored["last_error"]
    assert sweep(store, sw_client, redis_conn, older_than_seconds=600).failed == 1  # tried again later
    assert store.get(ghost.sid)["attempts"] == 2


def test_an_absent_recording_that_answers_404_is_not_swept_again(store, sandbox, sw_client, redis_conn):
    # Absent (SignalWire received no audio) and no resource: the job ran out, or ended it.
    ghost = Recording(sid=str(uuid.uuid4()), call_sid="call-x", status="absent")
    store.record_event(CallbackEvent(recording_sid=ghost.sid, account_sid="acc", status="absent", received_at=OLD,
                                     params={"ErrorCode": "16102"}))
    report = sweep(store, sw_client, redis_conn, older_than_seconds=600)
    assert (report.checked, report.stored, report.failed) == (1, 0, 1)
    stored = store.get(ghost.sid)
    assert stored["status"] == "absent" and stored["attempts"] == 1 and "404" in stored["last_error"]
    assert stored["last_fetched_at"]
    assert sweep(store, sw_client, redis_conn, older_than_seconds=600).checked == 0  # final


def test_listing_finds_recordings_whose_callbacks_never_came(store, sandbox, sw_client, redis_conn):
    call_sid = str(uuid.uuid4())
    unknown = sandbox.record_verb(call_sid, DEAD_CALLBACK, events=("in-progress", "completed"))
    sandbox.end_call(call_sid)
    known = completed_recording(sandbox, sw_client)
    store.save_metadata(sw_client.fetch_recording(known.sid))  # already terminal here
    half = completed_recording(sandbox, sw_client)
    seen_in_progress(store, half, when=datetime.now(timezone.utc))  # too new for pass (a)

    report = sweep(store, sw_client, redis_conn, older_than_seconds=600, list_hours=1)

    assert report.listed == 3 and report.stored == 2 and report.failed == 0
    stored = store.get(unknown)
    assert stored["status"] == "completed" and stored["source"] == "RecordVerb" and stored["call_sid"] == call_sid
    assert stored["started_by_us"] is False and stored["events"] == []
    assert store.get(half.sid)["status"] == "completed"


def test_a_second_concurrent_sweep_is_skipped(store, sandbox, sw_client, redis_conn):
    seen_in_progress(store, completed_recording(sandbox, sw_client))
    sandbox.latency = 0.5  # the first sweep is still running when the second starts
    held = redis_conn.lock(LOCK_KEY, timeout=30)
    assert held.acquire(blocking=False)
    try:
        report = sweep(store, sw_client, redis_conn, older_than_seconds=600)
        assert report.skipped_locked and report.checked == 0
    finally:
        held.release()
    # Two at once from two threads: exactly one runs.
    barrier = threading.Barrier(2)
    reports = []

    def run():
        barrier.wait()
        reports.append(sweep(store, sw_client, redis_conn, older_than_seconds=600))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(reports) == 2
    assert sorted(r.skipped_locked for r in reports) == [False, True]
    assert sum(r.stored for r in reports) == 1


def test_a_rate_limit_stops_the_sweep_without_hammering(store, sandbox, sw_client, redis_conn):
    for _ in range(3):
        seen_in_progress(store, completed_recording(sandbox, sw_client))
    sandbox.fail_next(429, retry_after=30)
    before = sandbox.state()["api_requests"]

    report = sweep(store, sw_client, redis_conn, older_than_seconds=600)

    assert report.rate_limited and report.retry_after == 30
    assert report.checked == 1 and report.stored == 0
    assert sandbox.state()["api_requests"] - before == 1  # one request, then we stopped
    assert "stopped early: rate limited" in report.summary()
    assert not redis_conn.exists(LOCK_KEY)


def test_a_short_retry_after_is_waited_out(store, sandbox, sw_client, redis_conn):
    recording = completed_recording(sandbox, sw_client)
    seen_in_progress(store, recording)
    sandbox.fail_next(429, retry_after=0.5)
    started = time.monotonic()
    report = sweep(store, sw_client, redis_conn, older_than_seconds=600)
    assert time.monotonic() - started >= 0.5
    assert not report.rate_limited and report.stored == 1
    assert store.get(recording.sid)["status"] == "completed"


def test_a_rate_limit_pushes_back_the_next_sweep_slot(settings, store, sandbox, sw_client, redis_conn):
    settings = dataclasses.replace(settings, sweep_interval=60, sweep_after=600, sweep_list_hours=0)
    services = SimpleNamespace(redis=redis_conn, store=store, signalwire=sw_client)
    keeper = Housekeeping(settings, "worker-a", services)
    seen_in_progress(store, completed_recording(sandbox, sw_client))

    sandbox.fail_next(429, retry_after=30)  # shorter than what is left of the slot: unchanged
    assert keeper.sweep_if_due().rate_limited
    assert 0 < redis_conn.ttl(SWEEP_SLOT_KEY) <= 60

    redis_conn.delete(SWEEP_SLOT_KEY)
    sandbox.fail_next(429, retry_after=900)  # longer than the interval: the slot waits for it
    assert keeper.sweep_if_due().rate_limited
    assert 60 < redis_conn.ttl(SWEEP_SLOT_KEY) <= 900
    assert keeper.sweep_if_due() is None  # no sweep before then
