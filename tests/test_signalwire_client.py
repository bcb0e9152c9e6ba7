"""SignalWireClient against the sandbox over real loopback HTTP (no mocks)."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from service.signalwire.client import SignalWireClient, SignalWireError, space_base_url
from tests.fixtures.sandbox import wait_until


def test_space_base_url():
    assert space_base_url("example.signalwire.com") == "https://example.signalwire.com"
    assert space_base_url("http://127.0.0.1:8123/") == "http://127.0.0.1:8123"
    assert space_base_url(" https://example.signalwire.com ") == "https://example.signalwire.com"
    with pytest.raises(ValueError):
        space_base_url("")


# --- create -----------------------------------------------------------------------------


def test_create_sends_every_parameter(sandbox, sw_client, sandbox_credentials):
    rec = sw_client.create_recording(
        "call-a",
        status_callback="http://127.0.0.1:9/cb?x=1",
        events=("completed", "absent"),
        callback_method="GET",
        channels="dual",
        track="inbound",
        trim="trim-silence",
    )
    [received] = sandbox.create_requests
    assert received["call_sid"] == "call-a"
    assert received["params"] == {
        "RecordingChannels": ["dual"],
        "RecordingStatusCallback": ["http://127.0.0.1:9/cb?x=1"],
        "RecordingStatusCallbackEvent": ["completed absent"],
        "RecordingStatusCallbackMethod": ["GET"],
        "RecordingTrack": ["inbound"],
        "Trim": ["trim-silence"],
    }
    assert rec.sid in sandbox.recordings
    assert rec.status == "in-progress"
    assert rec.call_sid == "call-a"
    assert rec.account_sid == sandbox_credentials.project_id
    assert rec.channels == 2
    assert rec.source == "StartCallRecordingApi"
    assert rec.trim == "trim-silence"
    assert rec.extra["channel"] == "2"  # unknown keys are kept


def test_create_defaults_always_send_trim_and_all_events(sandbox, sw_client):
    sw_client.create_recording("call-b", status_callback="http://127.0.0.1:9/cb")
    params = sandbox.create_requests[0]["params"]
    assert params["Trim"] == ["do-not-trim"]
    assert params["RecordingStatusCallbackEvent"] == ["in-progress completed absent"]
    assert params["RecordingStatusCallbackMethod"] == ["POST"]
    assert params["RecordingChannels"] == ["mono"]
    assert params["RecordingTrack"] == ["both"]


def test_create_on_ended_call_is_final_21220(sandbox, sw_client):
    sandbox.end_call("call-gone")
    with pytest.raises(SignalWireError) as info:
        sw_client.create_recording("call-gone", status_callback="http://127.0.0.1:9/cb")
    err = info.value
    assert (err.status, err.code) == (400, 21220)
    assert "not in-progress" in err.message
    assert not err.retryable


def test_create_validation_error_from_sandbox(sandbox, sw_client):
    with pytest.raises(SignalWireError) as info:
        sw_client.create_recording("call-c", status_callback="http://127.0.0.1:9/cb", events=("completed", "failed"))
    assert (info.value.status, info.value.code) == (422, 13621)
    assert not info.value.retryable


# --- fetch, list, media -----------------------------------------------------------------


def test_fetch_after_completion(sandbox, sw_client):
    rec = sw_client.create_recording("call-d", status_callback="http://127.0.0.1:9/cb", events=())
    assert wait_until(lambda: sandbox.recordings[rec.sid]["status"] == "completed")
    fetched = sw_client.fetch_recording(rec.sid)
    assert fetched.status == "completed"
    assert fetched.duration is not None and fetched.duration >= 1
    assert fetched.price == "-0.0025"
    assert fetched.end_time is not None


def test_fetch_unknown_is_404_with_code(sw_client):
    with pytest.raises(SignalWireError) as info:
        sw_client.fetch_recording("7d1b7f0e-0000-4000-8000-000000000000")
    assert (info.value.status, info.value.code) == (404, 20404)
    assert not info.value.retryable


def test_lenient_parsing_of_wire_types(sandbox, sw_client):
    rec = sw_client.create_recording("call-e", status_callback="http://127.0.0.1:9/cb")
    sandbox.patch_recording(rec.sid, duration="14", channels=2, channel=None, price=0.0, error_code=16102,
                            start_time=None, surprise={"new": "field"})
    fetched = sw_client.fetch_recording(rec.sid)
    assert fetched.duration == 14
    assert fetched.channels == 2
    assert fetched.price == "0.0"
    assert fetched.error_code == "16102"
    assert fetched.start_time is None
    assert fetched.extra["surprise"] == {"new": "field"}


def test_list_follows_pages_newest_first(sandbox, sw_client):
    sandbox.recording_seconds = 30  # keep them in progress; paging does not care
    sids = [sw_client.create_recording(f"call-{i % 2}", status_callback="http://127.0.0.1:9/cb").sid for i in range(7)]
    requests_before = sandbox.state()["api_requests"]
    listed = list(sw_client.list_recordings(page_size=3))
    assert [r.sid for r in listed] == list(reversed(sids))
    assert sandbox.state()["api_requests"] - requests_before == 3  # pages of 3, 3, 1
    only_call_1 = list(sw_client.list_recordings(call_sid="call-1", page_size=2))
    assert [r.sid for r in only_call_1] == [s for i, s in reversed(list(enumerate(sids))) if i % 2 == 1]


def test_list_date_filters(sandbox, sw_client):
    rec = sw_client.create_recording("call-f", status_callback="http://127.0.0.1:9/cb")
    now = datetime.now(timezone.utc)
    assert [r.sid for r in sw_client.list_recordings(created_after=now - timedelta(minutes=1))] == [rec.sid]
    assert list(sw_client.list_recordings(created_after=now + timedelta(minutes=1))) == []
    assert list(sw_client.list_recordings(created_before=now - timedelta(minutes=1))) == []
    window = sw_client.list_recordings(created_after=now - timedelta(minutes=1), created_before=now + timedelta(minutes=1))
    assert [r.sid for r in window] == [rec.sid]


def test_next_page_on_another_host_is_refused(sw_client):
    with pytest.raises(SignalWireError) as info:
        sw_client._next_page("https://evil.example.com/api/laml/2010-04-01/Accounts/x/Recordings?Page=1")
    assert not info.value.retryable
    assert sw_client._next_page("/api/laml/x?Page=1").startswith(sw_client.base_url + "/api/laml/")


def test_media_url_serves_wav(sandbox, sw_client):
    rec = sw_client.create_recording("call-g", status_callback="http://127.0.0.1:9/cb")
    sandbox.end_call(rec.call_sid)  # media exists once the recording is completed
    url = sw_client.media_url(rec.sid)
    assert url.endswith(f"/Recordings/{rec.sid}.wav")
    response = requests.get(url, timeout=5)
    assert response.status_code == 200 and response.content.startswith(b"RIFF")
    stream = sw_client.open_media(rec.sid)
    assert stream.read() == response.content and stream.headers["Content-Type"] == "audio/x-wav"
    stream.release_conn()
    assert sw_client.media_url(rec.sid, "mp3").endswith(".mp3")
    with pytest.raises(ValueError):
        sw_client.media_url(rec.sid, "ogg")


def test_open_media_raises_signalwire_errors_and_retries_5xx(sandbox, sw_client):
    rec = sw_client.create_recording("call-h", status_callback="http://127.0.0.1:9/cb")
    with pytest.raises(SignalWireError) as info:  # still recording: no media yet
        sw_client.open_media(rec.sid)
    assert info.value.status == 404
    sandbox.end_call(rec.call_sid)
    sandbox.fail_next(503)
    assert sw_client.open_media(rec.sid).read().startswith(b"RIFF")  # the 503 was retried


# --- error shapes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, expected_code, expected_message",
    [
        ("object", 21220, "it went wrong"),
        ("errors", 21220, "it went wrong"),  # code arrives as the string "21220"
        ("error_strings", None, "it went wrong"),
    ],
)
def test_error_shapes(sandbox, sw_client, shape, expected_code, expected_message):
    sandbox.fail_next(422, shape=shape, code=21220, message="it went wrong")
    with pytest.raises(SignalWireError) as info:
        sw_client.fetch_recording("any")
    err = info.value
    assert err.status == 422
    assert err.code == expected_code
    assert err.message == expected_message
    assert err.timeout is False
    if shape != "error_strings":
        assert err.more_info and err.more_info.startswith("https://")


def test_non_json_error_body(sandbox, sw_client_factory):
    client = sw_client_factory(max_retries=0)
    sandbox.fail_next(502, shape="text", message="bad gateway")
    with pytest.raises(SignalWireError) as info:
        client.fetch_recording("any")
    assert info.value.status == 502
    assert info.value.code is None
    assert "bad gateway" in info.value.message


def test_auth_failure(sandbox, sandbox_credentials):
    client = SignalWireClient(sandbox.base_url, sandbox_credentials.project_id, "wrong-token")
    try:
        with pytest.raises(SignalWireError) as info:
            client.fetch_recording("any")
    finally:
        client.close()
    assert (info.value.status, info.value.code) == (401, 20003)
    assert not info.value.retryable


# --- retries ------------------------------------------------------------------------------


def test_retry_after_is_honoured(sandbox, sw_client):
    rec = sw_client.create_recording("call-h", status_callback="http://127.0.0.1:9/cb")
    sandbox.fail_next(429, retry_after=0.3)
    started = time.monotonic()
    assert sw_client.fetch_recording(rec.sid).sid == rec.sid
    assert time.monotonic() - started >= 0.3  # waited at least what the server asked
    assert sandbox.state()["forced_pending"] == 0


def test_retry_after_beyond_cap_raises_at_once(sandbox, sw_client_factory):
    client = sw_client_factory(max_retry_wait=1.0)
    sandbox.fail_next(429, retry_after=30, count=2)
    with pytest.raises(SignalWireError) as info:
        client.fetch_recording("any")
    assert info.value.status == 429 and info.value.retry_after == 30
    assert info.value.retryable
    assert sandbox.state()["forced_pending"] == 1  # not retried


def test_retry_after_http_date(sandbox, sw_client_factory):
    client = sw_client_factory(max_retry_wait=1.0)
    when = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=120), usegmt=True)
    sandbox.fail_next(503, retry_after=when)
    with pytest.raises(SignalWireError) as info:
        client.fetch_recording("any")
    assert 100 < info.value.retry_after <= 120


def test_x_ratelimit_reset(sandbox, sw_client_factory):
    client = sw_client_factory(max_retry_wait=1.0)
    sandbox.fail_next(429, headers={"X-RateLimit-Reset": str(int(time.time()) + 60)})
    with pytest.raises(SignalWireError) as info:
        client.fetch_recording("any")
    assert 50 < info.value.retry_after <= 60


@pytest.mark.parametrize("headers, expected", [
    ({"Retry-After": "1e400"}, 3600),
    ({"Retry-After": "inf"}, 3600),
    ({"Retry-After": "86400"}, 3600),
    ({"Retry-After": "Fri, 31 Dec 9999 23:59:59 GMT"}, 3600),
    ({"X-RateLimit-Reset": "1e400"}, 3600),
    ({"Retry-After": "nan"}, None),
])
def test_retry_after_is_finite_and_at_most_an_hour(sandbox, sw_client_factory, headers, expected):
    client = sw_client_factory(max_retries=0)
    sandbox.fail_next(429, headers=headers)
    with pytest.raises(SignalWireError) as info:
        client.fetch_recording("any")
    assert info.value.retry_after == expected


def test_get_retried_on_500_up_to_max_retries(sandbox, sw_client_factory):
    client = sw_client_factory(max_retries=2)
    rec = client.create_recording("call-i", status_callback="http://127.0.0.1:9/cb")
    sandbox.fail_next(500, count=2)
    assert client.fetch_recording(rec.sid).sid == rec.sid
    sandbox.fail_next(500, count=3)
    with pytest.raises(SignalWireError) as info:
        client.fetch_recording(rec.sid)
    assert info.value.status == 500 and info.value.retryable
    assert sandbox.state()["forced_pending"] == 0


@pytest.mark.parametrize("status", [500, 502, 504])
def test_post_not_retried_after_5xx(sandbox, sw_client, status):
    sandbox.fail_next(status, count=2)
    with pytest.raises(SignalWireError) as info:
        sw_client.create_recording("call-j", status_callback="http://127.0.0.1:9/cb")
    assert info.value.status == status
    assert not info.value.retryable
    assert sandbox.state()["forced_pending"] == 1


@pytest.mark.parametrize("status", [429, 503])
def test_post_retried_on_429_and_503(sandbox, sw_client, status):
    sandbox.fail_next(status, retry_after=0)
    rec = sw_client.create_recording("call-k", status_callback="http://127.0.0.1:9/cb")
    assert list(sandbox.recordings) == [rec.sid]


def test_other_4xx_not_retried(sandbox, sw_client):
    sandbox.fail_next(400, count=2)
    with pytest.raises(SignalWireError):
        sw_client.fetch_recording("any")
    assert sandbox.state()["forced_pending"] == 1


def test_post_read_timeout_is_not_retried(sandbox, sw_client_factory):
    client = sw_client_factory(read_timeout=0.1, max_retries=2)
    sandbox.latency = 0.4
    with pytest.raises(SignalWireError) as info:
        client.create_recording("call-l", status_callback="http://127.0.0.1:9/cb")
    err = info.value
    assert err.timeout and err.status is None and not err.retryable
    # The slow request still went through on the server: retrying would have made a duplicate.
    assert wait_until(lambda: len(sandbox.recordings) == 1)
    sandbox.latency = 0
    time.sleep(0.5)
    assert sandbox.state()["create_requests"] == 1


def test_get_read_timeout_is_retried(sandbox, sw_client_factory):
    client = sw_client_factory(read_timeout=0.1, max_retries=1)
    sandbox.latency = 0.3
    with pytest.raises(SignalWireError) as info:
        client.fetch_recording("any")
    assert info.value.timeout and info.value.retryable
    assert wait_until(lambda: sandbox.state()["api_requests"] == 2)


def test_create_never_outlasts_its_budget(sandbox, sw_client_factory):
    # The read timeout alone (10 s) would wait for the slow answer; the budget does not.
    client = sw_client_factory(read_timeout=10, create_budget=0.5)
    sandbox.latency = 3
    started = time.monotonic()
    with pytest.raises(SignalWireError) as info:
        client.create_recording("call-budget", status_callback="http://127.0.0.1:9/cb")
    assert time.monotonic() - started < 1.0
    assert info.value.timeout and not info.value.retryable


def test_create_budget_covers_retries_and_their_waits(sandbox, sw_client_factory):
    # Each 503 asks for 0.4 s: the third attempt could not start within 1 s, so the client
    # answers with the error it has instead of sleeping past its budget.
    client = sw_client_factory(create_budget=1.0, max_retries=5, max_retry_wait=5)
    sandbox.fail_next(503, retry_after=0.4, count=6)
    started = time.monotonic()
    with pytest.raises(SignalWireError) as info:
        client.create_recording("call-budget", status_callback="http://127.0.0.1:9/cb")
    assert time.monotonic() - started < 1.0
    assert info.value.status == 503 and sandbox.state()["api_requests"] == 3


def test_reads_have_no_create_budget(sandbox, sw_client_factory):
    client = sw_client_factory(create_budget=0.2, read_timeout=5)
    rec = client.create_recording("call-budget", status_callback="http://127.0.0.1:9/cb")
    sandbox.latency = 0.4
    assert client.fetch_recording(rec.sid).sid == rec.sid


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_connection_refused_is_retryable_even_for_post(sandbox_credentials):
    client = SignalWireClient(f"http://127.0.0.1:{_closed_port()}", sandbox_credentials.project_id,
                              sandbox_credentials.api_token, max_retries=1, max_retry_wait=0.1)
    try:
        with pytest.raises(SignalWireError) as info:
            client.create_recording("call-m", status_callback="http://127.0.0.1:9/cb")
    finally:
        client.close()
    err = info.value
    assert err.status is None and not err.sent and err.retryable and not err.timeout


# --- secrets --------------------------------------------------------------------------------


def test_token_never_in_repr_or_errors(sandbox, sw_client, sandbox_credentials):
    token = sandbox_credentials.api_token
    assert token not in repr(sw_client)
    assert token not in str(sw_client.__dict__.get("base_url"))
    sandbox.fail_next(400, message=f"bad credentials {token}")
    with pytest.raises(SignalWireError) as info:
        sw_client.fetch_recording("any")
    assert token not in str(info.value) and token not in info.value.message and token not in repr(info.value)
    sandbox.latency = 0.3
    slow = SignalWireClient(sandbox.base_url, sandbox_credentials.project_id, token, read_timeout=0.05, max_retries=0)
    try:
        with pytest.raises(SignalWireError) as info:
            slow.fetch_recording("any")
    finally:
        slow.close()
    assert token not in str(info.value)


# --- environment ----------------------------------------------------------------------------


def test_proxy_from_environment_is_read_once_at_construction(sandbox, sandbox_credentials, monkeypatch):
    dead_proxy = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("HTTP_PROXY", dead_proxy)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    proxied = SignalWireClient(sandbox.base_url, sandbox_credentials.project_id, sandbox_credentials.api_token,
                               max_retries=0)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    bypassing = SignalWireClient(sandbox.base_url, sandbox_credentials.project_id, sandbox_credentials.api_token,
                                 max_retries=0)
    monkeypatch.delenv("HTTP_PROXY")  # later changes reach neither client
    try:
        # The proxy is a closed port: going through it fails before the sandbox is reached.
        with pytest.raises(SignalWireError) as info:
            proxied.fetch_recording("RE-any")
        assert info.value.status is None and "ProxyError" in str(info.value)
        with pytest.raises(SignalWireError) as info:
            bypassing.fetch_recording("RE-any")
        assert info.value.status == 404  # the sandbox answered directly
    finally:
        proxied.close()
        bypassing.close()


# --- TLS ------------------------------------------------------------------------------------

TEST_CERT = Path(__file__).parent / "fixtures" / "tls" / "localhost.pem"  # self-signed, for 127.0.0.1


@pytest.fixture
def https_space():
    """An HTTPS server on loopback with a self-signed certificate, answering every request 404."""

    class NotFound(BaseHTTPRequestHandler):
        def do_GET(self):
            body = b'{"code": 20404, "message": "not found"}'
            self.send_response(404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(TEST_CERT)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_tls_certificates_are_verified_against_the_environments_ca_bundle(https_space, sandbox_credentials,
                                                                           monkeypatch):
    def fetch():
        client = SignalWireClient(https_space, sandbox_credentials.project_id, sandbox_credentials.api_token,
                                  max_retries=0)
        try:
            with pytest.raises(SignalWireError) as info:
                client.fetch_recording("RE-any")
        finally:
            client.close()
        return info.value

    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    untrusted = fetch()  # the usual CA bundle does not know the certificate: fail closed
    assert untrusted.status is None and "SSLError" in str(untrusted)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(TEST_CERT))
    trusted = fetch()
    assert (trusted.status, trusted.code) == (404, 20404)  # the server was reached over verified TLS
