"""The worker's handling of one callback, against a real store and the sandbox over HTTP,
and the RQ job itself run by a real worker on a real Redis."""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from rq import SimpleWorker

from service.domain.processing import ABSENT_NOT_FOUND_WINDOW, PermanentFailure, handle_callback
from service.domain.recordings import CallbackEvent
from service.pipelines.ingest import Ingest
from service.signalwire.client import SignalWireError
from service.store.sql import Store


def started(sandbox, sw_client, **kw):
    recording = sw_client.create_recording(str(uuid.uuid4()), status_callback="http://127.0.0.1:1/cb", **kw)
    sandbox.end_call(recording.call_sid)  # completes the recording now
    return recording


def event(recording, status, **kw):
    return CallbackEvent(recording_sid=recording.sid, account_sid=recording.account_sid, status=status,
                         call_sid=recording.call_sid, **kw)


def test_completed_fetches_and_stores_metadata(store, sandbox, sw_client):
    recording = started(sandbox, sw_client)
    assert handle_callback(store, sw_client, event(recording, "completed")) == "completed"
    stored = store.get(recording.sid)
    assert stored["status"] == "completed" and stored["duration"] == sandbox.recordings[recording.sid]["duration"]
    assert stored["last_fetched_at"] and [e["status"] for e in stored["events"]] == ["completed"]


def test_in_progress_only_records_the_status(store, sandbox, sw_client):
    recording = started(sandbox, sw_client)
    before = sandbox.state()["api_requests"]
    assert handle_callback(store, sw_client, event(recording, "in-progress")) == "recorded"
    stored = store.get(recording.sid)
    assert stored["status"] == "in-progress" and stored["last_fetched_at"] is None
    assert sandbox.state()["api_requests"] == before  # nothing fetched for a live status


def test_late_in_progress_never_moves_state_back(store, sandbox, sw_client):
    recording = started(sandbox, sw_client)
    handle_callback(store, sw_client, event(recording, "completed"))
    handle_callback(store, sw_client, event(recording, "in-progress"))
    handle_callback(store, sw_client, event(recording, "completed"))  # a duplicate, too
    stored = store.get(recording.sid)
    assert stored["status"] == "completed"
    assert sorted(e["status"] for e in stored["events"]) == ["completed", "in-progress"]


def test_metadata_lag_404_is_raised_for_retry_and_counted(store, sandbox, sw_client):
    recording = started(sandbox, sw_client)
    sandbox.metadata_lag = 60
    with pytest.raises(SignalWireError) as info:
        handle_callback(store, sw_client, event(recording, "completed"))
    assert info.value.status == 404
    stored = store.get(recording.sid)
    assert stored["attempts"] == 1 and "404" in stored["last_error"]
    sandbox.metadata_lag = 0
    handle_callback(store, sw_client, event(recording, "completed"))
    stored = store.get(recording.sid)
    assert stored["status"] == "completed" and stored["last_error"] is None


def test_a_404_after_completed_is_lag_however_late(store, sandbox, sw_client):
    recording = started(sandbox, sw_client)
    sandbox.metadata_lag = 60
    later = datetime.now(timezone.utc) + ABSENT_NOT_FOUND_WINDOW * 10
    with pytest.raises(SignalWireError):
        handle_callback(store, sw_client, event(recording, "completed"), now=later)
    assert store.get(recording.sid)["last_fetched_at"] is None  # still for the sweep to fetch


@pytest.mark.parametrize("status", [401, 403])
def test_refused_credentials_are_a_permanent_failure(store, sandbox, sw_client, status):
    recording = started(sandbox, sw_client)
    sandbox.fail_next(status)
    before = sandbox.state()["api_requests"]
    with pytest.raises(PermanentFailure, match="refused our credentials") as info:
        handle_callback(store, sw_client, event(recording, "completed"))
    assert info.value.__cause__.status == status
    assert sandbox.state()["api_requests"] == before + 1  # and the client did not retry either
    stored = store.get(recording.sid)
    assert stored["status"] == "completed" and [e["status"] for e in stored["events"]] == ["completed"]
    assert stored["attempts"] == 1 and "refused our credentials" in stored["last_error"]


def absent_recording(sandbox, sw_client):
    call_sid = str(uuid.uuid4())
    sandbox.make_silent(call_sid)  # no audio: its recording ends absent
    recording = sw_client.create_recording(call_sid, status_callback="http://127.0.0.1:1/cb")
    sandbox.end_call(call_sid)
    assert sandbox.recordings[recording.sid]["status"] == "absent"
    return recording


def test_an_absent_recording_without_a_resource_is_retried_briefly_then_kept_as_absent(store, sandbox, sw_client):
    recording = absent_recording(sandbox, sw_client)
    sandbox.metadata_lag = 3600  # its resource answers 404
    absent = event(recording, "absent", params={"ErrorCode": "16102"})
    with pytest.raises(SignalWireError):  # within the window: maybe metadata lag, retried
        handle_callback(store, sw_client, absent)
    assert store.get(recording.sid)["last_fetched_at"] is None

    past_the_window = absent.received_at + ABSENT_NOT_FOUND_WINDOW
    assert handle_callback(store, sw_client, absent, now=past_the_window) == "absent, no resource"
    stored = store.get(recording.sid)
    assert stored["status"] == "absent" and [e["status"] for e in stored["events"]] == ["absent"]
    assert stored["attempts"] == 2 and "404" in stored["last_error"] and stored["last_fetched_at"]
    # Final: the sweep does not fetch it again.
    assert store.unfinished(older_than=datetime.now(timezone.utc) + timedelta(days=1)) == []


def test_an_absent_recording_whose_resource_appears_gets_its_metadata(store, sandbox, sw_client):
    recording = absent_recording(sandbox, sw_client)
    assert handle_callback(store, sw_client, event(recording, "absent")) == "absent"
    stored = store.get(recording.sid)
    assert stored["error_code"] == "16102" and stored["last_error"] is None and stored["last_fetched_at"]


def test_recording_url_host_is_never_requested(store, sandbox, sw_client):
    recording = started(sandbox, sw_client)
    hostile = event(recording, "completed", recording_url="http://169.254.169.254/latest/meta-data")
    handle_callback(store, sw_client, hostile)
    assert store.get(recording.sid)["uri"] == sandbox.recordings[recording.sid]["uri"]


def test_rq_job_runs_on_a_real_worker(app, store, sandbox, sw_client, monkeypatch, env):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    from workers import jobs

    jobs.services.cache_clear()
    services = app.extensions["services"]
    ingest = Ingest(services.queue, store, dedupe_ttl=60)
    recording = started(sandbox, sw_client)
    assert ingest.enqueue(event(recording, "in-progress"))
    assert ingest.enqueue(event(recording, "completed"))
    worker = SimpleWorker([services.queue], connection=services.redis, serializer=services.queue.serializer)
    assert worker.work(burst=True)
    stored = store.get(recording.sid)
    assert stored["status"] == "completed" and len(stored["events"]) == 2
    jobs.services().close()
    jobs.services.cache_clear()


def _pooled_connection_killed(store, worker_store) -> None:
    with worker_store.engine.connect() as conn:  # the pool now holds this connection
        pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
    with store.engine.connect() as admin:  # a database restart, for that one connection
        admin.exec_driver_sql(f"SELECT pg_terminate_backend({int(pid)})")


def test_a_connection_that_died_while_idle_is_replaced_before_use(database_url, store, sandbox, sw_client):
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite has no server connection to lose")
    worker_store = Store(database_url, ping_after_idle=0.05)  # as the workers build it, a shorter idle time
    try:
        _pooled_connection_killed(store, worker_store)
        time.sleep(0.1)
        recording = started(sandbox, sw_client)
        assert handle_callback(worker_store, sw_client, event(recording, "completed")) == "completed"
        assert worker_store.get(recording.sid)["status"] == "completed"
    finally:
        worker_store.dispose()


def test_a_connection_used_moments_ago_is_not_pinged_and_its_death_costs_one_attempt(
        database_url, store, sandbox, sw_client):
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite has no server connection to lose")
    worker_store = Store(database_url, ping_after_idle=60)
    try:
        _pooled_connection_killed(store, worker_store)
        recording = started(sandbox, sw_client)
        # Not pinged: the write meets the dead connection and fails, as a job would (then retried).
        with pytest.raises(sa.exc.OperationalError):
            handle_callback(worker_store, sw_client, event(recording, "completed"))
        assert store.get(recording.sid) is None
        # SQLAlchemy dropped the dead connection: the retry gets a new one and stores it.
        assert handle_callback(worker_store, sw_client, event(recording, "completed")) == "completed"
        assert worker_store.get(recording.sid)["status"] == "completed"
    finally:
        worker_store.dispose()
