"""The dashboard in a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright),
against the real processes: gunicorn (2 workers), an RQ worker, Redis, SQLite, the sandbox, and
a folder as the media archive. One stack for the module.

An operator signs in, finds a recording that went through the pipeline, opens it (its timeline,
its audio played through the session), replays a failed job and sees it succeed, and signs
out. A hostile callback parameter renders as text and runs nothing. A screenshot of each page
goes to $TEST_ARTIFACTS (default .artifacts/screenshots)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
import redis
import requests
from rq import Queue

from devstack.redis_server import free_port
from devstack.sandbox import Sandbox
from service.signalwire.signatures import compute_signature
from tests.e2e import API_TOKEN, AUTH, database, get_recording, start_stack, stack_env, wait_for
from tests.fixtures.sandbox import SandboxCredentials

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SECRET_KEY = "e2e-dashboard-secret-key-0123456789abcdef"
ROOT = Path(__file__).resolve().parent.parent
SCRIPT = "<script>window.__pwned=1</script>"
IMG = "<img src=x onerror=window.__pwned=2>"


@pytest.fixture(scope="module")
def artifacts() -> Path:
    path = Path(os.environ.get("TEST_ARTIFACTS") or ROOT / ".artifacts" / "screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} not found (apt-get install chromium): the dashboard's browser tests need it"
        if os.environ.get("REQUIRE_CHROMIUM") == "1":  # CI
            pytest.fail(reason)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def running(tmp_path_factory, redis_server_url, postgres_server, browser):
    tmp = tmp_path_factory.mktemp("dashboard-e2e")
    credentials = SandboxCredentials()
    redis.Redis.from_url(redis_server_url).flushdb()
    with database("sqlite", tmp, postgres_server) as database_url, \
            Sandbox(credentials.project_id, credentials.api_token, credentials.signing_key) as sandbox:
        sandbox.recording_seconds = 0.3
        port = free_port()
        env = stack_env(redis_server_url, database_url, sandbox, credentials, port)
        # No sweep: nothing but the jobs under test asks the sandbox anything.
        env.update(SECRET_KEY=SECRET_KEY, MEDIA_STORAGE_URL=f"file://{tmp / 'media'}", SWEEP_INTERVAL="0")
        stack = start_stack(env, port, tmp / "stack.log")
        try:
            yield SimpleNamespace(stack=stack, sandbox=sandbox, base=stack.base_url, credentials=credentials,
                                  queue=Queue(env.get("RQ_QUEUE", "recordings"),
                                              connection=redis.Redis.from_url(redis_server_url)))
        finally:
            stack.stop()


@pytest.fixture
def page(browser, running):
    context = browser.new_context(base_url=running.base)
    page = context.new_page()
    yield page
    context.close()


def sign_in(page, token: str = API_TOKEN) -> None:
    page.goto("/dashboard/")
    assert "/dashboard/login" in page.url  # no session: the sign-in page
    page.fill("input[name=token]", token)
    page.click("button[type=submit]")
    page.wait_for_load_state()
    assert "/dashboard/login" not in page.url


def shot(page, artifacts: Path, name: str) -> Path:
    path = artifacts / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def archived(base: str, sid: str):
    stored = get_recording(base, sid)
    return stored if stored and stored["last_fetched_at"] and (stored["media"] or {}).get("status") == "archived" \
        else None


def test_an_operator_follows_a_recording_replays_a_failed_job_and_signs_out(running, page, artifacts):
    shots = []
    started = requests.post(f"{running.base}/api/calls/{uuid.uuid4()}/recordings", headers=AUTH, timeout=15)
    assert started.status_code == 201, started.text
    sid = started.json()["sid"]
    stored = wait_for(lambda: archived(running.base, sid), 60, what=f"{sid} archived")

    page.goto("/dashboard/login")
    shots.append(shot(page, artifacts, "login"))
    sign_in(page)
    shots.append(shot(page, artifacts, "recordings"))
    page.click(f"a[href='/dashboard/recordings/{sid}']")
    page.wait_for_load_state()
    assert page.url.endswith(f"/dashboard/recordings/{sid}")
    timeline = page.locator("#timeline li[data-status]")
    assert set(timeline.evaluate_all("items => items.map(i => i.dataset.status)")) >= {"in-progress", "completed"}
    assert "metadata fetched" in page.inner_text("#timeline")
    assert page.inner_text("#media-sha256") == stored["media"]["sha256"]
    shots.append(shot(page, artifacts, "recording"))

    # The player's source answers with the audio, through this page's session (no token).
    src = page.eval_on_selector("audio", "a => a.src")
    assert src == f"{running.base}/api/recordings/{sid}/media"
    heard = page.evaluate("""async src => {
        const r = await fetch(src);
        const body = new Uint8Array(await r.arrayBuffer());
        return {status: r.status, type: r.headers.get('content-type'), bytes: body.length,
                riff: String.fromCharCode(...body.slice(0, 4))};
    }""", src)
    assert heard == {"status": 200, "type": "audio/x-wav", "bytes": stored["media"]["bytes"], "riff": "RIFF"}

    # A job that fails for good: SignalWire refuses our credentials for its one fetch.
    running.sandbox.fail_next(401, message="Authentication failed")
    failing = running.sandbox.record_verb(str(uuid.uuid4()), f"{running.base}/webhooks/recording-status",
                                          events=["completed"])
    job_id = f"cb_{failing}_completed"
    wait_for(lambda: job_id in running.queue.failed_job_registry.get_job_ids(), 30, what="the job to fail")
    page.goto("/dashboard/failed")
    assert job_id in page.inner_text("#failed-callback") and "refused our credentials" in page.content()
    shots.append(shot(page, artifacts, "failed"))
    page.click(f"#failed-callback a[href='/dashboard/recordings/{failing}']")
    page.wait_for_load_state()
    assert "PermanentFailure" in page.content()
    page.click("form[action$='/replay'] button")  # the recording's own Replay button
    page.wait_for_load_state()
    assert page.url.endswith(f"/dashboard/recordings/{failing}") and "requeued" in page.inner_text(".flash")
    wait_for(lambda: (get_recording(running.base, failing) or {}).get("last_fetched_at"), 30, what="the replay")
    page.reload()
    assert page.locator("#no-failed-job").count() == 1
    assert "metadata fetched" in page.inner_text("#timeline")
    assert running.queue.failed_job_registry.get_job_ids() == []

    page.goto("/dashboard/system")
    assert page.inner_text("#callback-url") == f"{running.base}/webhooks/recording-status"
    assert int(page.inner_text("#workers-alive")) >= 1 and page.inner_text("#queue-depth") == "0"
    shots.append(shot(page, artifacts, "system"))

    page.click("text=Sign out")
    page.wait_for_load_state()
    assert "/dashboard/login" in page.url
    page.goto(f"/dashboard/recordings/{sid}")
    assert "/dashboard/login" in page.url  # refused: back to sign-in
    refused = page.evaluate("async src => (await fetch(src)).status", src)
    assert refused == 401
    for path in shots:
        assert path.exists() and path.stat().st_size > 1000, path


def test_a_hostile_callback_parameter_renders_as_text_and_runs_nothing(running, page, artifacts):
    sid = str(uuid.uuid4())
    url = f"{running.base}/webhooks/recording-status"
    params = {"AccountSid": running.credentials.project_id, "CallSid": str(uuid.uuid4()), "RecordingSid": sid,
              "RecordingStatus": "in-progress", "RecordingChannels": "1", "RecordingSource": SCRIPT, "Note": IMG,
              "RecordingUrl": f"{running.sandbox.base_url}/secret-media-url"}
    signature = compute_signature(running.credentials.signing_key, url, params)
    sent = requests.post(url, data=params, headers={"X-SignalWire-Signature": signature}, timeout=5)
    assert sent.status_code == 204, sent.text
    wait_for(lambda: get_recording(running.base, sid), 30, what="the hostile callback stored")

    sign_in(page)
    page.goto(f"/dashboard/recordings/{sid}")
    page.click("#timeline summary")  # open the callback's parameters
    text = page.inner_text("body")
    assert SCRIPT in text and IMG in text  # shown as text
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert page.locator("script").count() == 0 and page.locator("img").count() == 0
    assert "secret-media-url" not in page.content()
    path = shot(page, artifacts, "hostile")
    assert path.exists() and path.stat().st_size > 1000
