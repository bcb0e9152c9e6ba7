"""The SignalWire sandbox as a peer over real loopback HTTP: API, lifecycle, callbacks, knobs."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
import wave

import pytest
import requests

from service.signalwire.signatures import verify_signature
from tests.fixtures.sandbox import wait_until

FIELDS = {
    "sid", "account_sid", "api_version", "call_sid", "conference_sid", "channel", "channels", "date_created",
    "date_updated", "start_time", "end_time", "duration", "price", "price_unit", "source", "status", "error_code",
    "uri", "subresource_uris", "encryption_details", "trim",
}


@pytest.fixture
def api(sandbox, sandbox_credentials):
    """A plain requests session with Basic auth, rooted at the account."""
    session = requests.Session()
    session.auth = (sandbox_credentials.project_id, sandbox_credentials.api_token)
    root = f"{sandbox.base_url}/api/laml/2010-04-01/Accounts/{sandbox_credentials.project_id}"

    def call(method: str, path: str, **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", 5)
        # Server-absolute paths (like next_page_uri) are used as they are.
        url = sandbox.base_url + path if path.startswith("/api/") else root + path
        return session.request(method, url, **kwargs)

    yield call
    session.close()


def create(api, call_sid: str, callback: str | None, events: str = "in-progress completed absent", **extra):
    form = {"RecordingStatusCallbackEvent": events, "Trim": "do-not-trim", **extra}
    if callback:
        form["RecordingStatusCallback"] = callback
    return api("POST", f"/Calls/{call_sid}/Recordings.json", data=form)


def assert_signed(cb, signing_key: str) -> None:
    signature = cb.headers.get("X-Signalwire-Signature")
    if cb.method == "POST":
        assert verify_signature([signing_key], signature, cb.url, cb.form)
        assert not verify_signature(["other-key"], signature, cb.url, cb.form)
    else:
        assert verify_signature([signing_key], signature, cb.url)
        assert not verify_signature([signing_key], signature, cb.url + "&x=1")


# --- create: auth and validation -------------------------------------------------------------


def test_create_returns_201_with_all_21_fields(api, sandbox_credentials):
    response = create(api, "call-1", None, RecordingChannels="dual")
    assert response.status_code == 201
    body = response.json()
    assert set(body) == FIELDS
    assert body["status"] == "in-progress"
    assert body["source"] == "StartCallRecordingApi"
    assert body["channels"] == body["channel"] == "2"
    assert body["account_sid"] == sandbox_credentials.project_id
    assert body["price"] is None and body["end_time"] is None
    assert body["date_created"].endswith("+0000")
    assert body["uri"].endswith(f"/Recordings/{body['sid']}.json")
    assert len(body["sid"]) == 36


def test_create_without_extension_also_works(api):
    response = api("POST", "/Calls/call-2/Recordings", data={"Trim": "do-not-trim"})
    assert response.status_code == 201


def test_auth_required(sandbox, sandbox_credentials):
    url = f"{sandbox.base_url}/api/laml/2010-04-01/Accounts/{sandbox_credentials.project_id}/Calls/c/Recordings.json"
    for auth in (None, (sandbox_credentials.project_id, "wrong"), ("someone-else", sandbox_credentials.api_token)):
        response = requests.post(url, data={}, auth=auth, timeout=5)
        assert response.status_code == 401
        assert response.json() == {
            "code": 20003, "message": "Authentication failed",
            "more_info": "https://signalwire.com/docs/compatibility-api/reference/errors", "status": 401,
        }
    assert sandbox.recordings == {}


def test_account_sid_must_be_the_project(sandbox, sandbox_credentials):
    url = f"{sandbox.base_url}/api/laml/2010-04-01/Accounts/other-project/Calls/c/Recordings.json"
    response = requests.post(url, auth=(sandbox_credentials.project_id, sandbox_credentials.api_token), timeout=5)
    assert response.status_code == 401


@pytest.mark.parametrize(
    "form, status, code",
    [
        ({"RecordingStatusCallbackEvent": "completed failed"}, 422, 13621),
        ({"RecordingStatusCallbackEvent": "stopped"}, 422, 13621),
        ({"Trim": "trim"}, 422, 13699),
        ({"RecordingChannels": "stereo"}, 422, 10000),
        ({"RecordingTrack": "both-ways"}, 422, 10000),
        ({"RecordingStatusCallbackMethod": "PUT"}, 422, 10000),
        ({"RecordingStatusCallback": "not-a-url"}, 422, 10000),
        ({"PlayBeep": "true"}, 400, 10000),
    ],
)
def test_create_validation(api, sandbox, form, status, code):
    response = api("POST", "/Calls/call-3/Recordings.json", data=form)
    assert response.status_code == status
    body = response.json()
    assert body["code"] == code and body["status"] == status and body["message"]
    assert sandbox.recordings == {}


def test_call_not_live_is_400_21220(api, sandbox):
    sandbox.end_call("call-4")
    response = create(api, "call-4", None)
    assert response.status_code == 400
    assert response.json()["code"] == 21220


def test_end_call_completes_live_recordings(api, sandbox):
    sandbox.recording_seconds = 30
    sid = create(api, "call-5", None).json()["sid"]
    sandbox.end_call("call-5")
    assert sandbox.recordings[sid]["status"] == "completed"


# --- lifecycle and callbacks -----------------------------------------------------------------


def test_post_callbacks_in_order_signed(api, sandbox, callback_receiver, sandbox_credentials):
    sid = create(api, "call-6", callback_receiver.url + "/cb").json()["sid"]
    got = callback_receiver.wait_for(2)
    assert [cb.params["RecordingStatus"] for cb in got] == ["in-progress", "completed"]
    for cb in got:
        assert cb.method == "POST"
        assert cb.headers["Content-Type"] == "application/x-www-form-urlencoded"
        assert cb.query == []
        assert_signed(cb, sandbox_credentials.signing_key)
        assert cb.params["RecordingSid"] == sid
        assert cb.params["AccountSid"] == sandbox_credentials.project_id
        assert cb.params["CallSid"] == "call-6"
        assert cb.params["RecordingSource"] == "StartCallRecordingApi"
        assert cb.params["RecordingChannels"] == "1"
        assert cb.params["RecordingUrl"] == f"{sandbox.base_url}{sandbox.account_path}/Recordings/{sid}"
        assert "ErrorCode" not in cb.params
    completed = got[1].params
    assert int(completed["RecordingDuration"]) >= 1
    assert completed["RecordingStartTime"] == sandbox.recordings[sid]["start_time"]
    assert sandbox.recordings[sid]["status"] == "completed"
    assert wait_until(lambda: len(sandbox.callbacks_sent) == 2)
    assert [(c["event"], c["status"], c["attempt"]) for c in sandbox.callbacks_sent] == [
        ("in-progress", 204, 1), ("completed", 204, 1)
    ]


def test_only_requested_events_are_sent(api, sandbox, callback_receiver):
    create(api, "call-7", callback_receiver.url, events="completed")
    create(api, "call-8", callback_receiver.url, events="absent")  # completes, so nothing is sent
    assert wait_until(lambda: all(r["status"] == "completed" for r in sandbox.recordings.values()))
    got = callback_receiver.wait_for(1)
    assert wait_until(lambda: len(sandbox.callbacks_sent) == 1)
    assert [(cb.params["CallSid"], cb.params["RecordingStatus"]) for cb in got] == [("call-7", "completed")]


def test_default_event_is_completed(api, sandbox, callback_receiver):
    api("POST", "/Calls/call-9/Recordings.json", data={"RecordingStatusCallback": callback_receiver.url})
    got = callback_receiver.wait_for(1)
    assert [cb.params["RecordingStatus"] for cb in got] == ["completed"]


def test_get_callbacks_use_query_string_and_sign_the_url(api, sandbox, callback_receiver, sandbox_credentials):
    create(api, "call-10", callback_receiver.url + "/cb?tenant=a", RecordingStatusCallbackMethod="GET")
    got = callback_receiver.wait_for(2)
    for cb in got:
        assert cb.method == "GET" and cb.form == [] and cb.raw_body == b""
        assert cb.url.startswith(callback_receiver.url + "/cb?tenant=a&AccountSid=")
        assert cb.params["tenant"] == "a"
        assert_signed(cb, sandbox_credentials.signing_key)
    assert [cb.params["RecordingStatus"] for cb in got] == ["in-progress", "completed"]


def test_absent_call(api, sandbox, callback_receiver):
    sandbox.absent_calls.add("call-11")
    sid = create(api, "call-11", callback_receiver.url).json()["sid"]
    got = callback_receiver.wait_for(2)
    assert [cb.params["RecordingStatus"] for cb in got] == ["in-progress", "absent"]
    assert got[1].params["ErrorCode"] == "16102"
    assert got[1].params["RecordingDuration"] == "0"
    assert sandbox.recordings[sid]["status"] == "absent"
    assert sandbox.recordings[sid]["error_code"] == "16102"


def test_silent_call_with_trim_silence_is_absent(api, sandbox, callback_receiver):
    sandbox.make_silent("call-12")
    create(api, "call-12", callback_receiver.url, events="completed absent", Trim="trim-silence")
    got = callback_receiver.wait_for(1)
    assert [cb.params["RecordingStatus"] for cb in got] == ["absent"]


def test_callback_retried_on_500_three_attempts(api, sandbox, callback_receiver):
    callback_receiver.fail_first = 2
    create(api, "call-13", callback_receiver.url, events="completed")
    got = callback_receiver.wait_for(3)
    assert [cb.status for cb in got] == [500, 500, 204]
    assert wait_until(lambda: len(sandbox.callbacks_sent) == 3)
    assert [(c["attempt"], c["status"]) for c in sandbox.callbacks_sent] == [(1, 500), (2, 500), (3, 204)]
    assert len({cb.headers["X-Signalwire-Signature"] for cb in got}) == 1  # the same request, re-sent


def test_callback_gives_up_after_three_attempts(api, sandbox, callback_receiver):
    callback_receiver.status = 503
    create(api, "call-14", callback_receiver.url, events="completed")
    assert wait_until(lambda: len(sandbox.callbacks_sent) == 3)
    time.sleep(0.2)
    assert [c["attempt"] for c in sandbox.callbacks_sent] == [1, 2, 3]
    assert len(callback_receiver.received) == 3


def test_callback_retried_on_connection_error(api, sandbox):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    create(api, "call-15", f"http://127.0.0.1:{port}/cb", events="completed")
    assert wait_until(lambda: len(sandbox.callbacks_sent) == 3)
    assert [(c["attempt"], c["status"]) for c in sandbox.callbacks_sent] == [(1, None), (2, None), (3, None)]


def test_callback_drop_knob(api, sandbox, callback_receiver):
    sandbox.callback_drop_rate = 1.0
    sid = create(api, "call-16", callback_receiver.url).json()["sid"]
    assert wait_until(lambda: sandbox.state()["callbacks_dropped"] == 2)
    assert sandbox.recordings[sid]["status"] == "completed"
    assert callback_receiver.received == [] and sandbox.callbacks_sent == []


def test_callback_duplicates_knob(api, sandbox, callback_receiver):
    sandbox.callback_duplicates = 3
    create(api, "call-17", callback_receiver.url)
    got = callback_receiver.wait_for(6)
    statuses = [cb.params["RecordingStatus"] for cb in got]
    assert statuses == ["in-progress"] * 3 + ["completed"] * 3


def test_callback_reorder_knob(api, sandbox, callback_receiver):
    sandbox.callback_reorder = True
    create(api, "call-18", callback_receiver.url)
    got = callback_receiver.wait_for(2)
    assert [cb.params["RecordingStatus"] for cb in got] == ["completed", "in-progress"]


def test_many_recordings_proceed_concurrently(api, sandbox, callback_receiver):
    for i in range(20):
        create(api, f"call-many-{i}", callback_receiver.url, events="completed")
    got = callback_receiver.wait_for(20)
    assert len({cb.params["RecordingSid"] for cb in got}) == 20


def test_record_verb(sandbox, callback_receiver, sandbox_credentials):
    sid = sandbox.record_verb("call-19", callback_receiver.url + "/verb", events=("in-progress", "completed"))
    got = callback_receiver.wait_for(2)
    assert [cb.params["RecordingStatus"] for cb in got] == ["in-progress", "completed"]
    assert all(cb.params["RecordingSource"] == "RecordVerb" and cb.params["RecordingSid"] == sid for cb in got)
    for cb in got:
        assert_signed(cb, sandbox_credentials.signing_key)
    assert sandbox.recordings[sid]["source"] == "RecordVerb"


# --- fetch, list, media ------------------------------------------------------------------------


def test_fetch_and_unknown(api, sandbox):
    sid = create(api, "call-20", None).json()["sid"]
    assert api("GET", f"/Recordings/{sid}.json").json()["sid"] == sid
    missing = api("GET", "/Recordings/00000000-0000-4000-8000-00000000dead.json")
    assert missing.status_code == 404 and missing.json()["code"] == 20404


def test_fetch_requires_auth(sandbox, api):
    sid = create(api, "call-21", None).json()["sid"]
    url = f"{sandbox.base_url}{sandbox.account_path}/Recordings/{sid}.json"
    assert requests.get(url, timeout=5).status_code == 401


def test_media_is_a_real_wav_without_auth_sized_for_the_duration(api, sandbox):
    sid = create(api, "call-22", None).json()["sid"]
    base = f"{sandbox.base_url}{sandbox.account_path}/Recordings/{sid}"
    assert requests.get(base + ".wav", timeout=5).status_code == 404  # still recording: no media yet
    assert wait_until(lambda: sandbox.recordings[sid]["status"] == "completed")
    sandbox.patch_recording(sid, duration=90)
    bodies = []
    for url in (base, base + ".wav"):
        response = requests.get(url, timeout=5)  # no auth
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "audio/x-wav"
        assert int(response.headers["Content-Length"]) == len(response.content) == 44 + 90 * 16000  # 128 kbps
        with wave.open(io.BytesIO(response.content)) as wav:
            assert (wav.getnchannels(), wav.getframerate(), wav.getsampwidth()) == (1, 8000, 2)
            assert wav.getnframes() == 90 * 8000
        bodies.append(response.content)
    assert bodies[0] == bodies[1]  # deterministic per recording
    mp3 = requests.get(base + ".mp3", timeout=5)
    assert mp3.status_code == 200 and mp3.headers["Content-Type"] == "audio/mpeg"
    assert mp3.content.startswith(b"ID3") and b"\xff\xfb" in mp3.content[:200]
    assert 90 * 4000 * 0.95 < len(mp3.content) < 90 * 4000 * 1.05  # 32 kbps
    assert requests.get(base.replace(sid, "nope") + ".wav", timeout=5).status_code == 404


def test_media_differs_between_recordings_and_streams_large_files(sandbox):
    from devstack.sandbox.media import media

    assert b"".join(media("a", 2)) != b"".join(media("b", 2))
    big = media("c", 5 * 3600)  # five hours: 288 MB, produced chunk by chunk
    assert big.length == 44 + 5 * 3600 * 16000
    assert max(len(next(iter(big))) for _ in range(3)) <= 64 * 1024


def test_media_fault_knobs_cut_short_and_not_ready(api, sandbox):
    sid = create(api, "call-24", None).json()["sid"]
    assert wait_until(lambda: sandbox.recordings[sid]["status"] == "completed")
    url = f"{sandbox.base_url}{sandbox.account_path}/Recordings/{sid}.wav"
    sandbox.set_knobs(media_not_ready_seconds=60)
    assert requests.get(url, timeout=5).status_code == 404
    sandbox.set_knobs(media_not_ready_seconds=0)
    assert requests.get(url, timeout=5).status_code == 200
    sandbox.patch_recording(sid, duration=60)
    sandbox.set_knobs(media_cut_rate=1.0)
    with pytest.raises(requests.exceptions.ChunkedEncodingError):  # requests' name for a short body
        requests.get(url, timeout=5).content


def test_delete(api, sandbox):
    sid = create(api, "call-25", None).json()["sid"]
    assert wait_until(lambda: sandbox.recordings[sid]["status"] == "completed")
    unauthenticated = requests.delete(f"{sandbox.base_url}{sandbox.account_path}/Recordings/{sid}.json", timeout=5)
    assert unauthenticated.status_code == 401 and sid in sandbox.recordings
    deleted = api("DELETE", f"/Recordings/{sid}.json")
    assert deleted.status_code == 204 and deleted.content == b""
    assert list(sandbox.deleted) == [sid]
    assert api("GET", f"/Recordings/{sid}.json").status_code == 404
    assert api("DELETE", f"/Recordings/{sid}.json").status_code == 404
    assert requests.get(f"{sandbox.base_url}{sandbox.account_path}/Recordings/{sid}.wav", timeout=5).status_code == 404


def test_metadata_lag(api, sandbox):
    sandbox.metadata_lag = 60
    sid = create(api, "call-23", None).json()["sid"]
    assert api("GET", f"/Recordings/{sid}.json").status_code == 200  # still in progress
    assert wait_until(lambda: sandbox.recordings[sid]["status"] == "completed")
    lagging = api("GET", f"/Recordings/{sid}.json")
    assert lagging.status_code == 404 and lagging.json()["code"] == 20404
    sandbox.metadata_lag = 0
    assert api("GET", f"/Recordings/{sid}.json").json()["status"] == "completed"


def test_list_paging_with_tokens(api, sandbox):
    sids = [create(api, f"call-{i}", None).json()["sid"] for i in range(5)]
    first = api("GET", "/Recordings.json", params={"PageSize": 2}).json()
    assert [r["sid"] for r in first["recordings"]] == sids[::-1][:2]
    assert first["page"] == 0 and first["page_size"] == 2 and first["previous_page_uri"] is None
    assert "PageToken=PA" in first["next_page_uri"] and first["first_page_uri"].startswith(sandbox.account_path)
    assert requests.get(sandbox.base_url + first["next_page_uri"], timeout=5).status_code == 401  # still needs auth
    second = api("GET", first["next_page_uri"])
    assert [r["sid"] for r in second.json()["recordings"]] == sids[::-1][2:4]
    assert api("GET", "/Recordings", params={"CallSid": "call-3"}).json()["recordings"][0]["sid"] == sids[3]
    assert api("GET", "/Recordings.json", params={"PageSize": 5000}).status_code == 400


# --- faults and control ------------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["object", "errors", "error_strings", "text"])
def test_fail_next_shapes(api, sandbox, shape):
    sandbox.fail_next(503, shape=shape, retry_after=2, code=20504, message="busy")
    response = api("GET", "/Recordings.json")
    assert response.status_code == 503 and response.headers["Retry-After"] == "2"
    if shape == "object":
        assert response.json() == {"code": 20504, "message": "busy", "status": 503,
                                   "more_info": "https://signalwire.com/docs/compatibility-api/reference/errors"}
    elif shape == "errors":
        assert response.json()["errors"][0]["code"] == "20504"
    elif shape == "error_strings":
        assert response.json() == {"errors": ["busy"]}
    else:
        assert "busy" in response.text and not response.headers["Content-Type"].startswith("application/json")
    assert api("GET", "/Recordings.json").status_code == 200


def test_error_rate_is_seeded(api, sandbox):
    sandbox.error_rate = 0.5
    sandbox.seed = 7
    first = [api("GET", "/Recordings.json").status_code for _ in range(12)]
    sandbox.seed = 7
    second = [api("GET", "/Recordings.json").status_code for _ in range(12)]
    assert first == second
    assert set(first) - {200} <= {429, 500, 503} and 200 in first and set(first) != {200}


def test_knobs_and_state_over_http(api, sandbox):
    knobs = requests.post(f"{sandbox.base_url}/_sandbox/knobs", json={
        "metadata_lag": 1.5, "fail_next": {"status": 429, "retry_after": 1}, "end_calls": ["call-x"],
    }, timeout=5)
    assert knobs.status_code == 200 and knobs.json()["metadata_lag"] == 1.5
    assert sandbox.metadata_lag == 1.5
    assert api("GET", "/Recordings.json").status_code == 429
    assert create(api, "call-x", None).json()["code"] == 21220
    bad = requests.post(f"{sandbox.base_url}/_sandbox/knobs", json={"nonsense": 1}, timeout=5)
    assert bad.status_code == 400
    create(api, "call-y", None)
    state = requests.get(f"{sandbox.base_url}/_sandbox/state", timeout=5).json()
    assert state["recordings"] == 1 and state["callbacks_sent"] == 0


def test_runs_standalone(sandbox_credentials):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "SIGNALWIRE_PROJECT_ID": sandbox_credentials.project_id,
           "SIGNALWIRE_API_TOKEN": sandbox_credentials.api_token, "SIGNALWIRE_SIGNING_KEY": "PSK_x"}
    proc = subprocess.Popen([sys.executable, "-m", "devstack.sandbox", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                return requests.get(base + "/_sandbox/state", timeout=1).status_code == 200
            except requests.ConnectionError:
                return False

        assert wait_until(up, timeout=20)
        url = f"{base}/api/laml/2010-04-01/Accounts/{sandbox_credentials.project_id}/Recordings.json"
        assert requests.get(url, auth=(sandbox_credentials.project_id, sandbox_credentials.api_token),
                            timeout=5).status_code == 200
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=10)
    assert "GET /api/laml/2010-04-01" in output  # one line per request
    assert sandbox_credentials.api_token not in output
