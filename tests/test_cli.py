"""Operator commands through click's CliRunner, on a real Redis, store and the sandbox."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest
from click.testing import CliRunner
from rq import Retry, SimpleWorker

from service.cli import main
from service.config import load_settings
from service.domain.recordings import CallbackEvent
from service.pipelines.ingest import FAILURE_TTL, JOB_FUNC, Ingest, job_id_for
from service.services import queue_for

DEAD_CALLBACK = "http://127.0.0.1:9/x"


@pytest.fixture
def cli_env(worker_env, monkeypatch):
    monkeypatch.setenv("SWEEP_AFTER", "600")
    return worker_env


def run(*args, expect: int = 0) -> str:
    """What the command printed, without the log lines that other threads of this process (the
    sandbox retrying its callbacks) write to the same stdout while it runs."""
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == expect, result.output
    return "".join(line for line in result.output.splitlines(keepends=True) if not line.startswith('{"time":'))


def completed_recording(sandbox, sw_client):
    recording = sw_client.create_recording(str(uuid.uuid4()), status_callback=DEAD_CALLBACK)
    sandbox.end_call(recording.call_sid)
    return recording


def completed_event(recording) -> CallbackEvent:
    return CallbackEvent(recording_sid=recording.sid, account_sid=recording.account_sid, status="completed",
                         call_sid=recording.call_sid)


def test_sweep_prints_its_report(cli_env, store, sandbox, sw_client):
    recording = completed_recording(sandbox, sw_client)
    store.record_event(CallbackEvent(recording_sid=recording.sid, account_sid=recording.account_sid,
                                     status="in-progress", call_sid=recording.call_sid,
                                     received_at=datetime.now(timezone.utc) - timedelta(hours=1)))
    unknown = sandbox.record_verb(str(uuid.uuid4()), DEAD_CALLBACK)
    sandbox.end_call(sandbox.recordings[unknown]["call_sid"])

    out = run("sweep")
    assert "sweep: checked=1 stored=1 failed=0 listed=0" in out
    assert store.get(recording.sid)["status"] == "completed"

    out = run("sweep", "--list-hours", "1", "--older-than", "0")
    assert "checked=0 stored=1 failed=0 listed=2" in out
    assert store.get(unknown)["status"] == "completed"


def test_failed_lists_dead_letters_and_replay_runs_them_again(cli_env, store, sandbox, sw_client, redis_conn):
    queue = queue_for(load_settings(cli_env), redis_conn)
    recording = completed_recording(sandbox, sw_client)
    sandbox.metadata_lag = 3600  # every fetch is a 404 for now
    event = completed_event(recording)
    job = queue.enqueue(JOB_FUNC, event.to_payload(), retry=Retry(max=1), failure_ttl=FAILURE_TTL,
                        description=f"recording {recording.sid} completed")
    SimpleWorker([queue], connection=redis_conn, serializer=queue.serializer).work(burst=True)
    assert job.id in queue.failed_job_registry.get_job_ids()

    out = run("failed")
    assert job.id in out and f"recording={recording.sid} status=completed attempts=2" in out
    assert "SignalWireError" in out and "404" in out
    assert "1 failed job(s)" in out
    assert store.get(recording.sid)["attempts"] == 2 and "404" in store.get(recording.sid)["last_error"]

    sandbox.metadata_lag = 0
    assert f"{job.id}: requeued" in run("replay", job.id)
    assert queue.failed_job_registry.get_job_ids() == []
    SimpleWorker([queue], connection=redis_conn, serializer=queue.serializer).work(burst=True)
    stored = store.get(recording.sid)
    assert stored["status"] == "completed" and stored["last_error"] is None and stored["last_fetched_at"]
    assert run("failed").strip() == "no failed jobs"


def test_refused_credentials_fail_the_job_at_once_with_the_reason(cli_env, store, sandbox, sw_client, redis_conn):
    queue = queue_for(load_settings(cli_env), redis_conn)
    recording = completed_recording(sandbox, sw_client)
    event = completed_event(recording)
    assert Ingest(queue, store, dedupe_ttl=60).enqueue(event)  # with the full retry policy
    sandbox.fail_next(401, message="Authentication failed")
    SimpleWorker([queue], connection=redis_conn, serializer=queue.serializer).work(burst=True)

    assert queue.failed_job_registry.get_job_ids() == [job_id_for(event)]
    assert queue.scheduled_job_registry.get_job_ids() == []  # no retry waits
    out = run("failed")
    assert f"recording={recording.sid} status=completed attempts=1" in out
    assert "PermanentFailure: SignalWire refused our credentials: Authentication failed (status=401" in out

    # Credentials fixed: a replay stores it, with the whole retry policy back.
    assert f"{job_id_for(event)}: requeued" in run("replay", job_id_for(event))
    SimpleWorker([queue], connection=redis_conn, serializer=queue.serializer).work(burst=True)
    assert store.get(recording.sid)["last_fetched_at"] and run("failed").strip() == "no failed jobs"


def test_replay_all_and_usage_errors(cli_env, sandbox, sw_client, redis_conn):
    queue = queue_for(load_settings(cli_env), redis_conn)
    sandbox.metadata_lag = 3600
    jobs = [queue.enqueue(JOB_FUNC, completed_event(completed_recording(sandbox, sw_client)).to_payload())
            for _ in range(2)]
    SimpleWorker([queue], connection=redis_conn, serializer=queue.serializer).work(burst=True)
    assert sorted(queue.failed_job_registry.get_job_ids()) == sorted(j.id for j in jobs)
    run("replay", expect=2)  # neither ids nor --all
    assert "not a failed job" in run("replay", "no-such-job", expect=1)
    out = run("replay", "--all")
    assert "replayed 2 job(s)" in out and queue.count == 2


def test_failed_lists_the_inbox_rows_set_aside_and_replay_hands_them_back(cli_env, store):
    kept = store.inbox_put({"recording_sid": "r", "field_of_a_later_release": 1})
    store.inbox_failed(kept, "TypeError: unexpected keyword argument 'field_of_a_later_release'", set_aside_after=1)
    other = store.inbox_put({"recording_sid": "r2", "field_of_a_later_release": 1})  # not set aside (yet)

    out = run("failed")
    assert out.startswith("no failed jobs\n")  # RQ's dead letters, then the inbox's
    assert f"inbox row {kept}  received_at=" in out and "tries=1 set_aside_at=" in out
    assert "error: TypeError: unexpected keyword argument 'field_of_a_later_release'" in out
    assert f"inbox row {other} " not in out and "1 inbox row(s) set aside" in out

    assert "inbox row 999999: not set aside" in run("replay", "--inbox", str(kept), "999999", expect=1)
    assert [row_id for row_id, _ in store.inbox_take()] == [kept, other]
    assert run("failed").strip() == "no failed jobs"
    run("replay", "--inbox", "x", expect=2)
    assert "released 0 inbox row(s)" in run("replay", "--inbox", "--all")


# --- notification deliveries ------------------------------------------------------------------


def test_deliveries_replay_and_replay_failed(store, monkeypatch):
    from service.store.notifications import FAILED
    from tests.test_store import full_recording

    monkeypatch.setenv("DATABASE_URL", str(store.url.render_as_string(hide_password=False)))
    endpoint, _ = store.notifications.create_endpoint("https://93.184.216.34/hooks", None)
    for i in range(3):
        store.save_metadata(full_recording(f"RE{i}"))
    claims = store.notifications.claim(10, lease_seconds=30)
    for claim in claims:
        store.notifications.finish(claim, status=FAILED, last_status=500, last_error=None, next_attempt_at=None)

    out = run("deliveries", "replay", claims[0].id)
    assert f"{claims[0].id}: due again" in out
    assert store.notifications.get_delivery(claims[0].id)["status"] == "pending"
    assert "no such delivery" in run("deliveries", "replay", "msg_missing", expect=1)

    since = (datetime.now(timezone.utc) - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%S%z")
    assert "replayed 2 failed deliveries" in run("deliveries", "replay-failed", endpoint["id"], "--since", since)
    assert "replayed 0" in run("deliveries", "replay-failed", endpoint["id"], "--since", since)
    assert "no endpoint" in run("deliveries", "replay-failed", "ep_missing", "--since", since, expect=1)
    store.notifications.update_endpoint(endpoint["id"], disabled=True)
    assert "disabled" in run("deliveries", "replay-failed", endpoint["id"], "--since", since, expect=1)
