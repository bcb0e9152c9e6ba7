"""The operators' dashboard through Flask's test client, on a real Redis, store and the sandbox:
sign-in and its cookie, the redirect without a session, CSRF refusals, what the pages show
(and never show), paging and filters, failed work and its replay. The browser tests are in
tests/test_dashboard_browser.py."""

from __future__ import annotations

import base64
import json
import re
import uuid
import zlib
from datetime import datetime, timedelta, timezone

import pytest
from rq import SimpleWorker

from service import create_app
from service.config import load_settings
from service.domain.recordings import CallbackEvent
from service.media.archive import Archiver
from service.pipelines.ingest import FAILURE_TTL, JOB_FUNC
from service.store.notifications import FAILED
from tests.fixtures.app import API_TOKEN
from tests.fixtures.sandbox import wait_until
from tests.test_store import full_recording

SECRET_KEY = "dashboard-secret-key-0123456789abcdef"
OTHER_TOKEN = "second-api-token-0123456789"
HOSTILE = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned=2">'
PAGES = ("/dashboard/", "/dashboard/recordings", "/dashboard/failed", "/dashboard/system")


@pytest.fixture
def env(env, tmp_path):
    return {**env, "SECRET_KEY": SECRET_KEY, "SERVICE_API_TOKEN": f"{API_TOKEN},{OTHER_TOKEN}",
            "MEDIA_STORAGE_URL": f"file://{tmp_path / 'media'}"}


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, "no CSRF token in the form"
    return found.group(1)


def sign_in(client, token: str = API_TOKEN):
    page = client.get("/dashboard/login")
    assert page.status_code == 200
    response = client.post("/dashboard/login", data={"token": token, "csrf_token": csrf_of(page.text)})
    assert response.status_code == 302, response.text
    return response


def session_payload(cookie_value: str) -> dict:
    """What Flask's signed session cookie holds (readable by anyone: signed, not encrypted)."""
    data = cookie_value.split(".")[0 if not cookie_value.startswith(".") else 1]
    raw = base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
    if cookie_value.startswith("."):
        raw = zlib.decompress(raw)
    return json.loads(raw)


def test_without_secret_key_the_dashboard_is_off(env, store):
    app = create_app(load_settings({k: v for k, v in env.items() if k != "SECRET_KEY"}))
    client = app.test_client()
    try:
        assert client.get("/dashboard/").status_code == 404
        assert client.get("/dashboard/login").status_code == 404
    finally:
        app.extensions["services"].close()


def test_every_page_redirects_to_sign_in_without_a_session(client):
    for path in (*PAGES, "/dashboard/recordings/RE123"):
        response = client.get(path)
        assert response.status_code == 302, path
        assert response.headers["Location"].startswith("/dashboard/login?next=")
    sign_in(client)
    assert client.get("/dashboard/").status_code == 200
    # Signed in already: the sign-in page sends on.
    assert client.get("/dashboard/login?next=/dashboard/failed").headers["Location"] == "/dashboard/failed"


def test_sign_in_goes_back_where_it_was_asked_and_nowhere_else(client):
    page = client.get("/dashboard/login?next=/dashboard/system")
    token = csrf_of(page.text)
    back = client.post("/dashboard/login?next=/dashboard/system", data={"token": API_TOKEN, "csrf_token": token})
    assert back.headers["Location"] == "/dashboard/system"
    client.post("/dashboard/logout", data={"csrf_token": csrf_of(client.get("/dashboard/system").text)})
    for evil in ("https://evil.example/", "//evil.example/dashboard/", "/api/recordings", "/dashboard\\@evil"):
        token = csrf_of(client.get("/dashboard/login").text)
        response = client.post("/dashboard/login", query_string={"next": evil},
                               data={"token": API_TOKEN, "csrf_token": token})
        assert response.headers["Location"] == "/dashboard/recordings", evil
        client.post("/dashboard/logout", data={"csrf_token": csrf_of(client.get("/dashboard/").text)})


def test_a_wrong_token_is_refused_and_opens_no_session(client):
    token = csrf_of(client.get("/dashboard/login").text)
    response = client.post("/dashboard/login", data={"token": "not-the-token-0123456789", "csrf_token": token})
    assert response.status_code == 401 and "not one of this service" in response.text
    assert client.get("/dashboard/").status_code == 302


def test_the_cookie_is_httponly_lax_secure_and_never_holds_the_token(client, env):
    response = sign_in(client)
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith("rk_dashboard=")
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert "Secure" in cookie  # PUBLIC_BASE_URL is https
    value = cookie.split(";")[0].split("=", 1)[1]
    payload = session_payload(value)
    assert API_TOKEN not in value and API_TOKEN not in json.dumps(payload)
    assert set(payload) >= {"fp"} and len(payload["fp"]) == 32


def test_the_cookie_is_not_secure_over_plain_http(env, store):
    app = create_app(load_settings({**env, "PUBLIC_BASE_URL": "http://127.0.0.1:5000"}))
    try:
        cookie = sign_in(app.test_client()).headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "Secure" not in cookie
    finally:
        app.extensions["services"].close()


def test_removing_a_token_from_the_configuration_ends_its_sessions(client, env, store):
    sign_in(client, OTHER_TOKEN)
    assert client.get("/dashboard/").status_code == 200
    cookie = client.get_cookie("rk_dashboard").value
    rotated = create_app(load_settings({**env, "SERVICE_API_TOKEN": API_TOKEN}))
    try:
        other = rotated.test_client()
        other.set_cookie("rk_dashboard", cookie)
        assert other.get("/dashboard/").status_code == 302
    finally:
        rotated.extensions["services"].close()


def test_posts_without_a_valid_csrf_token_are_refused_and_change_nothing(client, app, sandbox, sw_client, worker_env):
    sid, job_id = failed_callback_job(app, sandbox, sw_client)
    queue = app.extensions["services"].queue
    # Sign-in needs one too.
    assert client.post("/dashboard/login", data={"token": API_TOKEN}).status_code == 400
    assert client.get("/dashboard/").status_code == 302
    sign_in(client)
    for data in ({}, {"csrf_token": "forged"}, {"csrf_token": ""}):
        assert client.post(f"/dashboard/failed/jobs/{job_id}/replay", data=data).status_code == 400
        assert client.post("/dashboard/failed/jobs/replay", data={**data, "kind": "callback"}).status_code == 400
        assert client.post("/dashboard/logout", data=data).status_code == 400
    assert queue.failed_job_registry.get_job_ids() == [job_id]  # nothing replayed
    assert client.get("/dashboard/").status_code == 200  # still signed in
    # A token from another session is not this one's.
    other = app.test_client()
    sign_in(other)
    foreign = csrf_of(other.get("/dashboard/failed").text)
    assert client.post(f"/dashboard/failed/jobs/{job_id}/replay", data={"csrf_token": foreign}).status_code == 400
    assert queue.failed_job_registry.get_job_ids() == [job_id]


def test_sign_out_ends_the_session(client):
    sign_in(client)
    page = client.get("/dashboard/")
    response = client.post("/dashboard/logout", data={"csrf_token": csrf_of(page.text)})
    assert response.status_code == 302 and response.headers["Location"] == "/dashboard/login"
    assert client.get("/dashboard/").status_code == 302


def failed_callback_job(app, sandbox, sw_client) -> tuple[str, str]:
    """A completed recording whose callback job failed (its fetch answered 404 every time)."""
    services = app.extensions["services"]
    queue = services.queue
    recording = sw_client.create_recording(str(uuid.uuid4()), status_callback="http://127.0.0.1:9/x")
    sandbox.end_call(recording.call_sid)
    event = CallbackEvent(recording_sid=recording.sid, account_sid=recording.account_sid, status="completed",
                          call_sid=recording.call_sid)
    services.store.record_event(event)
    sandbox.metadata_lag = 3600  # every fetch is a 404 for now
    job = queue.enqueue(JOB_FUNC, event.to_payload(), failure_ttl=FAILURE_TTL,
                        job_id=f"cb_{recording.sid}_completed", description=f"recording {recording.sid} completed")
    SimpleWorker([queue], connection=services.redis, serializer=queue.serializer).work(burst=True)
    assert queue.failed_job_registry.get_job_ids() == [job.id]
    return recording.sid, job.id


def test_failed_work_lists_jobs_and_deliveries_and_replays_them(client, app, sandbox, sw_client, worker_env):
    services = app.extensions["services"]
    queue, store = services.queue, services.store
    sid, job_id = failed_callback_job(app, sandbox, sw_client)
    endpoint, _ = store.notifications.create_endpoint("https://93.184.216.34/hooks?key=hidden-query", None)
    store.save_metadata(full_recording("RE-delivered-badly"))
    for claim in store.notifications.claim(10, lease_seconds=30):
        store.notifications.finish(claim, status=FAILED, last_status=500, last_error="answered 500",
                                   next_attempt_at=None)
    sign_in(client)

    page = client.get("/dashboard/failed")
    assert page.status_code == 200
    assert job_id in page.text and sid in page.text and "SignalWireError" in page.text and "404" in page.text
    assert "RE-delivered-badly" in page.text and "answered 500" in page.text and "93.184.216.34" in page.text
    assert "hidden-query" not in page.text
    # The recording's own page lists the notification and its attempt.
    notified = client.get("/dashboard/recordings/RE-delivered-badly").text.split("<h2>Notifications</h2>")[1]
    assert re.search(r"<td>recording.completed</td><td>ep_\w+ \(93.184.216.34\)</td><td>failed</td><td>1</td>", notified)
    assert "answered 500" in notified and "hidden-query" not in notified

    # The recording's own page offers its failed job.
    detail = client.get(f"/dashboard/recordings/{sid}")
    assert job_id in detail.text and "Replay" in detail.text

    sandbox.metadata_lag = 0
    replay = client.post(f"/dashboard/failed/jobs/{job_id}/replay",
                         data={"csrf_token": csrf_of(detail.text), "back": f"/dashboard/recordings/{sid}"})
    assert replay.status_code == 302 and replay.headers["Location"] == f"/dashboard/recordings/{sid}"
    assert queue.failed_job_registry.get_job_ids() == [] and job_id in queue.job_ids
    SimpleWorker([queue], connection=services.redis, serializer=queue.serializer).work(burst=True)
    assert store.get(sid)["last_fetched_at"] and store.get(sid)["last_error"] is None
    after = client.get(f"/dashboard/recordings/{sid}")
    assert f"Job {job_id} requeued." in after.text and 'id="no-failed-job"' in after.text

    [delivery] = store.notifications.list_deliveries(endpoint["id"], status="failed")[0]
    page = client.get("/dashboard/failed")
    response = client.post("/dashboard/failed/deliveries/replay", data={"csrf_token": csrf_of(page.text)})
    assert response.status_code == 302
    assert store.notifications.get_delivery(delivery["id"])["status"] == "pending"
    assert "1 failed deliveries are due again" in client.get("/dashboard/failed").text


def test_replay_all_of_a_kind(client, app, sandbox, sw_client, worker_env):
    queue = app.extensions["services"].queue
    _, job_id = failed_callback_job(app, sandbox, sw_client)
    sign_in(client)
    token = csrf_of(client.get("/dashboard/failed").text)
    assert client.post("/dashboard/failed/jobs/replay", data={"csrf_token": token, "kind": "archive"}).status_code == 302
    assert queue.failed_job_registry.get_job_ids() == [job_id]  # not an archive job
    assert client.post("/dashboard/failed/jobs/replay", data={"csrf_token": token, "kind": "nope"}).status_code == 400
    assert client.post("/dashboard/failed/jobs/replay", data={"csrf_token": token, "kind": "callback"}).status_code == 302
    assert queue.failed_job_registry.get_job_ids() == [] and job_id in queue.job_ids


def archived_recording(app, sandbox, sw_client) -> tuple[str, bytes]:
    services = app.extensions["services"]
    sid = sandbox.record_verb(str(uuid.uuid4()), "http://127.0.0.1:9/unused", events=[])
    assert wait_until(lambda: sandbox.recordings[sid]["status"] == "completed")
    sandbox.patch_recording(sid, duration=2)
    services.store.save_metadata(sw_client.fetch_recording(sid))
    Archiver(services.store, sw_client, services.storage).archive(sid)
    return sid, sw_client.open_media(sid).read()


def test_the_audio_plays_through_the_session_for_get_only(client, app, sandbox, sw_client):
    sid, audio = archived_recording(app, sandbox, sw_client)
    media = f"/api/recordings/{sid}/media"
    assert client.get(media).status_code == 401
    sign_in(client)
    page = client.get(f"/dashboard/recordings/{sid}")
    assert f'<audio controls preload="metadata" src="{media}">' in page.text
    stored = app.extensions["services"].store.get(sid)["media"]
    assert stored["sha256"] in page.text and f"{len(audio)} bytes" in page.text
    played = client.get(media, headers={"Range": "bytes=0-99"})
    assert played.status_code == 206 and played.data == audio[:100]
    assert client.get(media).data == audio
    # The session opens the audio, and nothing else of the API.
    assert client.get(f"/api/recordings/{sid}").status_code == 401
    assert client.post(f"/api/calls/{uuid.uuid4()}/recordings", json={}).status_code == 401


def test_recordings_page_filters_and_pages(client, app):
    store = app.extensions["services"].store
    base = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
    for i in range(55):
        store.save_metadata(full_recording(f"RE{i:03d}", call_sid="CA-many" if i % 5 == 0 else f"CA{i}",
                                           status="completed" if i % 2 else "absent",
                                           date_created=base + timedelta(hours=i)))
    sign_in(client)
    first = client.get("/dashboard/")
    rows = re.findall(r'href="/dashboard/recordings/(RE\d+)"', first.text)
    assert rows == [f"RE{i:03d}" for i in range(54, 4, -1)]  # newest first, 50 to a page
    older = re.search(r'href="([^"]+)" rel="next"', first.text).group(1).replace("&amp;", "&")
    second = client.get(older)
    assert re.findall(r'href="/dashboard/recordings/(RE\d+)"', second.text) == [f"RE{i:03d}" for i in range(4, -1, -1)]
    assert 'rel="next"' not in second.text

    def sids(**query):
        response = client.get("/dashboard/recordings", query_string=query)
        assert response.status_code == 200, response.text
        return re.findall(r'href="/dashboard/recordings/(RE\d+)"', response.text)

    assert sids(call_sid="CA-many") == [f"RE{i:03d}" for i in range(50, -1, -5)]
    assert sids(call_sid="CA-many", status="absent") == [f"RE{i:03d}" for i in range(50, -1, -10)]
    # Whole UTC days, both ends included: March 2 holds hours 12 to 35.
    assert sids(**{"from": "2026-03-02", "to": "2026-03-02"}) == [f"RE{i:03d}" for i in range(35, 11, -1)]
    assert sids(media_status="archived") == []
    bad = client.get("/dashboard/recordings", query_string={"from": "yesterday", "call_sid": "a b"})
    assert bad.status_code == 422 and "must be a date" in bad.text and "call_sid" in bad.text


def test_detail_shows_the_timeline_and_escapes_what_callbacks_carry(client, app):
    store = app.extensions["services"].store
    sid = "RE-hostile"
    received = datetime.now(timezone.utc) - timedelta(minutes=5)
    store.record_event(CallbackEvent(recording_sid=sid, account_sid="AC1", status="in-progress", call_sid="CA1",
                                     received_at=received, params={"RecordingSource": HOSTILE,
                                                                   "RecordingUrl": "https://space.example/secret.wav"}))
    store.save_metadata(full_recording(sid, extra={"note": HOSTILE, "media_url": "https://space.example/x.wav",
                                                   "MediaUrl0": "https://space.example/y.wav", "security": "shown"}))
    sign_in(client)
    page = client.get(f"/dashboard/recordings/{sid}")
    assert page.status_code == 200
    assert "callback: in-progress" in page.text and "metadata fetched" in page.text
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in page.text
    assert "<script" not in page.text and "onerror=\"window" not in page.text
    # SignalWire's URLs grant access by themselves: never shown.
    assert "space.example" not in page.text and "/Recordings/" not in page.text
    assert "<dt>security</dt><dd>shown</dd>" in page.text  # only URL and URI fields are left out
    # A sid that could never come through the webhook, were it stored some other way, is text on the list too.
    store.record_event(CallbackEvent(recording_sid="<script>x()</script>", account_sid="AC1", status="completed",
                                     call_sid="<b>CA</b>", received_at=received))
    listing = client.get("/dashboard/recordings")
    assert "&lt;script&gt;x()&lt;/script&gt;" in listing.text and "&lt;b&gt;CA&lt;/b&gt;" in listing.text
    assert "<script" not in listing.text and "<b>CA" not in listing.text
    assert client.get("/dashboard/recordings/RE-none").status_code == 404
    assert client.get("/dashboard/recordings/bad%20sid").status_code == 404


def test_system_page_shows_the_figures_and_the_callback_url(client, app):
    services = app.extensions["services"]
    services.store.inbox_put({"recording_sid": "r"})
    services.redis.set("recording-keeper:sweep:finished-at", "1765000000.0")
    services.redis.set("recording-keeper:sweep:last-report", "sweep: checked=3 stored=2 failed=1 listed=0")
    sign_in(client)
    page = client.get("/dashboard/system")
    assert page.status_code == 200
    assert '<code id="callback-url">https://localhost/webhooks/recording-status</code>' in page.text
    assert re.search(r'id="queue-depth">0<', page.text) and re.search(r'id="inbox-rows">1<', page.text)
    assert re.search(r'id="workers-alive">0<', page.text) and "checked=3 stored=2 failed=1" in page.text
    assert "at the migration head" in page.text and "signalwire" not in page.text.split('id="checks"')[1].split("</table>")[0]
    checked = client.get("/dashboard/system?check=signalwire")
    assert "accepted our credentials" in checked.text


def test_no_page_holds_a_secret(client, app, sandbox, sw_client, sandbox_credentials, env):
    sid, _ = archived_recording(app, sandbox, sw_client)
    secrets = (API_TOKEN, OTHER_TOKEN, SECRET_KEY, sandbox_credentials.api_token, sandbox_credentials.signing_key)
    pages = [client.get("/dashboard/login")]
    sign_in(client)
    pages += [client.get(path) for path in (*PAGES, f"/dashboard/recordings/{sid}", "/dashboard/system?check=signalwire")]
    for page in pages:
        path = page.request.path
        assert page.status_code == 200, path
        for secret in secrets:
            assert secret not in page.text, (path, secret[:4])
        assert "/Recordings/" not in page.text, path  # SignalWire's URIs
        assert page.headers["Cache-Control"] == "no-store"
        assert "default-src 'none'" in page.headers["Content-Security-Policy"]


def test_the_dashboard_is_not_in_the_api_document(client):
    served = client.get("/api/openapi.json").get_json()["paths"]
    assert "/api/recordings" in served and not [path for path in served if path.startswith("/dashboard")]
    sign_in(client)
    assert client.get("/dashboard/").status_code == 200  # while the dashboard is on in this very app


def test_a_failed_archive_job_shows_on_its_recording_and_replays_with_its_kind(client, app):
    services = app.extensions["services"]
    queue, store = services.queue, services.store
    store.save_metadata(full_recording("RE-archive"))
    # Stands in for an archive job that ran out of retries: its id and description are an archive job's.
    queue.enqueue("tests.jobs_for_tests.always_fails", "storage refused the upload", job_id="media_RE-archive",
                  description="recording RE-archive media", failure_ttl=FAILURE_TTL)
    SimpleWorker([queue], connection=services.redis, serializer=queue.serializer).work(burst=True)
    assert queue.failed_job_registry.get_job_ids() == ["media_RE-archive"]
    sign_in(client)
    detail = client.get("/dashboard/recordings/RE-archive")
    assert "media_RE-archive" in detail.text and "(archive, media)" in detail.text
    assert "storage refused the upload" in detail.text
    failed = client.get("/dashboard/failed")
    assert re.search(r'id="failed-archive".*media_RE-archive', failed.text, re.S)
    token = csrf_of(failed.text)
    client.post("/dashboard/failed/jobs/replay", data={"csrf_token": token, "kind": "callback"})
    assert queue.failed_job_registry.get_job_ids() == ["media_RE-archive"]  # not a callback job
    client.post("/dashboard/failed/jobs/replay", data={"csrf_token": token, "kind": "archive"})
    assert queue.failed_job_registry.get_job_ids() == [] and "media_RE-archive" in queue.job_ids
