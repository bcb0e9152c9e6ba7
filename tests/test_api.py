"""The start-recording API and the read API, against the sandbox over HTTP and a real store."""

from __future__ import annotations

import base64
import uuid
from datetime import datetime, timezone

import pytest

from service import create_app
from service.config import load_settings
from service.signalwire.client import SignalWireClient
from service.store.sql import encode_cursor
from tests.fixtures.app import API_TOKEN, PUBLIC_BASE_URL


def last_create(sandbox) -> dict[str, str]:
    """The form the sandbox received for the latest create, each key sent exactly once."""
    params = sandbox.create_requests[-1]["params"]
    assert all(len(values) == 1 for values in params.values()), params
    return {key: values[0] for key, values in params.items()}


def start(client, auth, call_sid=None, **body):
    call_sid = call_sid or str(uuid.uuid4())
    return client.post(f"/api/calls/{call_sid}/recordings", json=body if body else None, headers=auth)


@pytest.mark.parametrize("header", [None, "Bearer wrong-token-0123456789", f"Basic {API_TOKEN}", "Bearer"])
def test_missing_or_wrong_token_is_401_and_nothing_reaches_signalwire(client, sandbox, header):
    headers = {"Authorization": header} if header else {}
    response = client.post(f"/api/calls/{uuid.uuid4()}/recordings", json={}, headers=headers)
    assert response.status_code == 401
    assert response.get_json()["error"]["message"] == "missing or invalid bearer token"
    assert sandbox.recordings == {}
    assert client.get("/api/recordings", headers=headers).status_code == 401


def test_every_configured_token_is_accepted_for_a_rotation(env, store, sandbox):
    old, new = "old-api-token-0123456789", "new-api-token-0123456789"
    app = create_app(load_settings(dict(env, SERVICE_API_TOKEN=f"{old},{new}")))
    try:
        client = app.test_client()
        for token in (old, new):
            assert client.get("/api/recordings", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        for token in (old + "x", new[:-1], f"{old},{new}", ""):
            assert client.get("/api/recordings", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    finally:
        app.extensions["services"].close()


def test_start_with_defaults_sends_every_parameter_and_stores_it(client, auth, sandbox):
    call_sid = str(uuid.uuid4())
    response = start(client, auth, call_sid)
    assert response.status_code == 201
    body = response.get_json()
    sid = body["sid"]
    assert response.headers["Location"] == f"/api/recordings/{sid}"
    assert body["call_sid"] == call_sid and body["status"] == "in-progress"
    assert body["requested"] == {"channels": "mono", "track": "both", "trim": "do-not-trim",
                                 "events": ["in-progress", "completed", "absent"], "callback_method": "POST"}
    sent = last_create(sandbox)
    assert sent == {
        "RecordingChannels": "mono",
        "RecordingStatusCallback": PUBLIC_BASE_URL + "/webhooks/recording-status",
        "RecordingStatusCallbackEvent": "in-progress completed absent",
        "RecordingStatusCallbackMethod": "POST",
        "RecordingTrack": "both",
        "Trim": "do-not-trim",
    }
    stored = client.get(f"/api/recordings/{sid}", headers=auth).get_json()
    assert stored["started_by_us"] is True and stored["requested"] == body["requested"]
    assert stored["call_sid"] == call_sid


def test_start_with_every_option(client, auth, sandbox):
    response = start(client, auth, channels="dual", track="inbound", trim="trim-silence",
                     events=["completed"], callback_method="GET")
    assert response.status_code == 201, response.get_json()
    sent = last_create(sandbox)
    assert (sent["RecordingChannels"], sent["RecordingTrack"], sent["Trim"]) == ("dual", "inbound", "trim-silence")
    assert (sent["RecordingStatusCallbackEvent"], sent["RecordingStatusCallbackMethod"]) == ("completed", "GET")
    assert response.get_json()["channels"] == 2


def test_bad_values_and_unknown_keys_are_422_naming_each_field(client, auth, sandbox):
    response = start(client, auth, channels="stereo", track="sideways", trim="yes", events=["started"],
                     callback_method="PUT", colour="blue")
    assert response.status_code == 422
    fields = response.get_json()["error"]["fields"]
    assert set(fields) == {"channels", "track", "trim", "events", "callback_method", "colour"}
    assert sandbox.recordings == {}


def test_empty_or_repeated_events_are_422(client, auth):
    assert start(client, auth, events=[]).status_code == 422
    assert start(client, auth, events=["completed", "completed"]).get_json()["error"]["fields"] == {
        "events": ["events must not repeat"]}


def test_bad_call_sid_is_422(client, auth):
    response = client.post("/api/calls/not%20a%20sid/recordings", headers=auth)
    assert response.status_code == 422 and "call_sid" in response.get_json()["error"]["fields"]


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b"\xff\xfe"])
def test_body_that_is_not_a_json_object_is_400(client, auth, body):
    response = client.post(f"/api/calls/{uuid.uuid4()}/recordings", data=body,
                           headers={**auth, "Content-Type": "application/json"})
    assert response.status_code == 400
    assert "JSON" in response.get_json()["error"]["message"]


def test_call_not_in_progress_is_409_with_signalwire_code(client, auth, sandbox):
    call_sid = str(uuid.uuid4())
    sandbox.end_call(call_sid)
    response = start(client, auth, call_sid)
    assert response.status_code == 409
    error = response.get_json()["error"]
    assert error["signalwire"]["code"] == 21220 and error["message"]


def test_signalwire_5xx_is_502_and_timeout_is_504(app, client, auth, sandbox):
    sandbox.fail_next(500)
    response = start(client, auth)
    assert response.status_code == 502
    assert response.get_json()["error"]["signalwire"]["status"] == 500

    services = app.extensions["services"]
    settings = services.settings
    services.__dict__["signalwire"] = SignalWireClient(
        sandbox.base_url, settings.signalwire_project_id, settings.signalwire_api_token, read_timeout=0.3)
    sandbox.latency = 1.0
    response = start(client, auth)
    assert response.status_code == 504


def test_signalwire_4xx_passes_through_with_code_and_message(client, auth, sandbox):
    sandbox.fail_next(422, shape="errors")
    response = start(client, auth)
    assert response.status_code == 422
    assert response.get_json()["error"]["signalwire"]["status"] == 422


def test_signalwire_429_passes_through_with_retry_after(client, auth, sandbox):
    sandbox.fail_next(429, retry_after=30)  # beyond the client's retry cap: not retried
    response = start(client, auth)
    assert response.status_code == 429 and response.headers["Retry-After"] == "30"


def test_signalwire_infinite_retry_after_is_capped_not_a_500(client, auth, sandbox):
    sandbox.fail_next(429, retry_after="1e400")
    response = start(client, auth)
    assert response.status_code == 429 and response.headers["Retry-After"] == "3600"


@pytest.mark.parametrize("status, shape", [(302, "object"), (405, "object"), (408, "object"), (418, "errors"),
                                           (201, "text")])
def test_signalwire_status_not_about_the_request_is_502_with_details(client, auth, sandbox, status, shape):
    # A redirect (no Location), a method or timeout problem, an odd 4xx, a 2xx that is no recording.
    sandbox.fail_next(status, shape=shape, retry_after=30)
    response = start(client, auth)
    assert response.status_code == 502 and "Retry-After" not in response.headers
    assert response.get_json()["error"]["signalwire"]["status"] == status


def test_unknown_recording_is_404_json(client, auth):
    response = client.get("/api/recordings/does-not-exist", headers=auth)
    assert response.status_code == 404
    assert "does-not-exist" in response.get_json()["error"]["message"]
    # A sid that cannot exist, even one PostgreSQL could not query for, is a 404 too.
    assert client.get("/api/recordings/a%00b", headers=auth).status_code == 404


def test_list_filters_and_cursor(client, auth):
    call_a, call_b = str(uuid.uuid4()), str(uuid.uuid4())
    sids = [start(client, auth, call_a).get_json()["sid"] for _ in range(3)]
    sids.append(start(client, auth, call_b).get_json()["sid"])
    page = client.get(f"/api/recordings?call_sid={call_a}&limit=2", headers=auth).get_json()
    assert len(page["recordings"]) == 2 and page["next_cursor"]
    rest = client.get(f"/api/recordings?call_sid={call_a}&limit=2&cursor={page['next_cursor']}",
                      headers=auth).get_json()
    assert rest["next_cursor"] is None
    seen = [r["sid"] for r in page["recordings"] + rest["recordings"]]
    assert sorted(seen) == sorted(sids[:3])
    assert client.get("/api/recordings?status=in-progress&limit=1000", headers=auth).status_code == 200


NUL_CURSOR = encode_cursor(datetime(2026, 1, 1, tzinfo=timezone.utc), "a\x00b")
# Times with no UTC equivalent: year 1 ahead of UTC, year 9999 behind it.
YEAR_1_CURSOR = base64.urlsafe_b64encode(b'["0001-01-01T00:00:00+05:00","x"]').decode()


@pytest.mark.parametrize("query", ["limit=0", "limit=1001", "created_after=yesterday", "cursor=%%%", "colour=blue",
                                   "status=a%00b", "call_sid=CA1%0A", f"cursor={NUL_CURSOR}",
                                   "created_after=0001-01-01T00:00:00%2B05:00",
                                   "created_before=9999-12-31T23:59:59-01:00", f"cursor={YEAR_1_CURSOR}"])
def test_bad_list_queries_are_422(client, auth, query):
    response = client.get(f"/api/recordings?{query}", headers=auth)
    assert response.status_code == 422
    assert response.get_json()["error"]["fields"]


def test_health_and_readiness(client):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["checks"] == {"redis": "ok", "database": "ok"}
