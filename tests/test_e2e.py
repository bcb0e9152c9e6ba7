"""End to end with real processes: gunicorn (2 workers), an RQ worker process, Redis, the
store (SQLite and PostgreSQL) and the sandbox firing signed callbacks over loopback HTTP."""

from __future__ import annotations

import itertools
import json
import uuid
from types import SimpleNamespace

import pytest
import redis
import requests

from devstack.sandbox import Sandbox
from service.signalwire.signatures import compute_signature
from tests.e2e import (AUTH, assert_matches_signalwire, database, get_recording, log_lines, start_stack,
                       stack_env, stored_when_settled, wait_for)
from tests.fixtures.sandbox import SandboxCredentials

pytestmark = pytest.mark.e2e

COMBINATIONS = list(itertools.product(("mono", "dual"), ("inbound", "outbound", "both"),
                                      ("trim-silence", "do-not-trim"), ("GET", "POST")))


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def running(request, tmp_path_factory, redis_server_url, postgres_server):
    tmp = tmp_path_factory.mktemp(f"e2e-{request.param}")
    credentials = SandboxCredentials()
    redis.Redis.from_url(redis_server_url).flushdb()
    with database(request.param, tmp, postgres_server) as database_url, \
            Sandbox(credentials.project_id, credentials.api_token, credentials.signing_key) as sandbox:
        sandbox.recording_seconds = 0.3
        from devstack.redis_server import free_port

        port = free_port()
        env = stack_env(redis_server_url, database_url, sandbox, credentials, port)
        stack = start_stack(env, port, tmp / "stack.log")
        try:
            yield SimpleNamespace(stack=stack, sandbox=sandbox, env=env, base=stack.base_url,
                                  credentials=credentials, log=tmp / "stack.log")
        finally:
            codes = stack.stop()
            # SIGTERM (as Heroku sends) ends every process cleanly.
            assert codes and all(code == 0 for code in codes.values()), codes


@pytest.fixture(autouse=True)
def calm_sandbox(running):
    sandbox = running.sandbox
    sandbox.set_knobs(callback_duplicates=1, callback_reorder=False, callback_drop_rate=0.0)
    yield


def start(base: str, call_sid: str | None = None, **body) -> dict:
    response = requests.post(f"{base}/api/calls/{call_sid or uuid.uuid4()}/recordings", json=body, headers=AUTH,
                             timeout=15)
    assert response.status_code == 201, response.text
    return response.json()


def test_every_combination_of_parameters_is_stored_as_signalwire_has_it(running):
    started = []
    for channels, track, trim, method in COMBINATIONS:
        body = start(running.base, channels=channels, track=track, trim=trim, callback_method=method)
        started.append((body, dict(channels=channels, track=track, trim=trim, callback_method=method)))
    for body, asked in started:
        stored = stored_when_settled(running.base, body["sid"], {"in-progress", "completed"})
        assert_matches_signalwire(stored, running.sandbox.recordings[body["sid"]])
        assert stored["started_by_us"] is True
        assert {k: stored["requested"][k] for k in asked} == asked
        assert stored["channels"] == (2 if asked["channels"] == "dual" else 1)
        assert [e["status"] for e in stored["events"]] == ["in-progress", "completed"]
    methods = {cb["method"] for cb in running.sandbox.callbacks_sent}
    assert methods == {"GET", "POST"}


@pytest.mark.parametrize("events", [["completed"], ["in-progress"], ["in-progress", "absent"]])
def test_history_holds_exactly_the_events_asked_for(running, events):
    body = start(running.base, events=events)
    expected = set(events) & {"in-progress", "completed"}
    if expected == {"in-progress"}:
        # Without a terminal callback the recording stays live until the sweep; the history is exact.
        wait_for(lambda: (get_recording(running.base, body["sid"]) or {}).get("events"), what="in-progress event")
        stored = get_recording(running.base, body["sid"])
        assert [e["status"] for e in stored["events"]] == ["in-progress"]
        assert stored["status"] == "in-progress"
    else:
        stored = stored_when_settled(running.base, body["sid"], expected)
        assert [e["status"] for e in stored["events"]] == [e for e in ("in-progress", "completed") if e in expected]


def test_every_callback_delivered_three_times_is_stored_once(running):
    running.sandbox.set_knobs(callback_duplicates=3)
    bodies = [start(running.base) for _ in range(5)]
    for body in bodies:
        stored = stored_when_settled(running.base, body["sid"], {"in-progress", "completed"})
        assert len(stored["events"]) == 2
    deliveries = [cb for cb in running.sandbox.callbacks_sent if cb["params"]["RecordingSid"] == bodies[0]["sid"]]
    assert len(deliveries) == 6 and all(cb["status"] in (200, 204) for cb in deliveries)


def test_completed_before_in_progress_ends_completed(running):
    running.sandbox.set_knobs(callback_reorder=True)
    body = start(running.base)
    stored = stored_when_settled(running.base, body["sid"], {"in-progress", "completed"})
    assert stored["status"] == "completed"
    order = [cb["params"]["RecordingStatus"] for cb in running.sandbox.callbacks_sent
             if cb["params"]["RecordingSid"] == body["sid"]]
    assert order == ["completed", "in-progress"]
    assert_matches_signalwire(stored, running.sandbox.recordings[body["sid"]])


def test_absent_recording(running):
    call_sid = str(uuid.uuid4())
    running.sandbox.make_silent(call_sid)
    body = start(running.base, call_sid, trim="trim-silence")
    stored = stored_when_settled(running.base, body["sid"], {"in-progress", "absent"})
    assert stored["status"] == "absent"
    assert_matches_signalwire(stored, running.sandbox.recordings[body["sid"]])


def test_forged_signature_is_rejected_and_nothing_stored(running):
    sid = str(uuid.uuid4())
    params = {"AccountSid": running.credentials.project_id, "CallSid": str(uuid.uuid4()), "RecordingSid": sid,
              "RecordingStatus": "completed", "RecordingUrl": "http://127.0.0.1:1/x", "RecordingDuration": "3",
              "RecordingChannels": "1", "RecordingSource": "RecordVerb"}
    url = running.base + "/webhooks/recording-status"
    forged = compute_signature("PSK_not_our_key", url, params)
    response = requests.post(url, data=params, headers={"X-SignalWire-Signature": forged}, timeout=5)
    assert response.status_code == 403 and response.json()["error"]["message"] == "invalid signature"
    # A genuine callback sent afterwards is processed, so the forged one had every chance to be.
    body = start(running.base)
    stored_when_settled(running.base, body["sid"], {"in-progress", "completed"})
    assert get_recording(running.base, sid) is None


def test_recording_we_did_not_start_is_stored_too(running):
    call_sid = str(uuid.uuid4())
    sid = running.sandbox.record_verb(call_sid, running.env["PUBLIC_BASE_URL"] + "/webhooks/recording-status",
                                      events=["completed"], method="POST", trim="do-not-trim")
    stored = stored_when_settled(running.base, sid, {"completed"})
    assert stored["started_by_us"] is False and stored["requested"] is None
    assert stored["source"] == "RecordVerb" and stored["call_sid"] == call_sid
    assert_matches_signalwire(stored, running.sandbox.recordings[sid])


def test_no_secret_appears_in_the_logs_of_a_full_run(running):
    """Runs last in this module: the log holds every process's output for the whole module."""
    base = running.base
    # Exercise the error paths too: a bad token, an upstream failure, a forged callback.
    assert requests.get(f"{base}/api/recordings", headers={"Authorization": "Bearer wrong"}, timeout=5).status_code == 401
    running.sandbox.fail_next(500)
    response = requests.post(f"{base}/api/calls/{uuid.uuid4()}/recordings", json={}, headers=AUTH, timeout=15)
    assert response.status_code == 502
    running.sandbox.fail_next(401, message=f"token {running.credentials.api_token} refused")
    response = requests.post(f"{base}/api/calls/{uuid.uuid4()}/recordings", json={}, headers=AUTH, timeout=15)
    assert response.status_code == 502 and running.credentials.api_token not in response.text
    body = start(base)
    stored_when_settled(base, body["sid"], {"in-progress", "completed"})

    log = running.log.read_text(errors="replace")
    assert "recording" in log and "Listening at" in log  # the log really holds the processes' output
    # Every line of every process (release, web, workers) is one JSON object with the fields.
    lines = log_lines(running.log)
    loggers = {line["logger"] for line in lines}
    assert {"alembic.runtime.migration", "service.cli", "gunicorn.error", "service.access", "rq.worker",
            "workers"} <= loggers, loggers
    for secret in (running.credentials.api_token, running.credentials.signing_key, running.env["SERVICE_API_TOKEN"],
                   running.env["METRICS_TOKEN"]):
        assert secret not in log and json.dumps(secret)[1:-1] not in log
