"""Seeing inside the running service, with real processes: gunicorn with 2 worker processes, an
RQ worker process, Redis, SQLite and the sandbox. /metrics sums both web processes and the
worker; a callback's request id follows it into the worker's lines; refusals say why, boundedly."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
import redis
import requests

from devstack.redis_server import free_port
from devstack.sandbox import Sandbox
from service.signalwire.signatures import compute_signature
from tests.e2e import database, log_lines, metric as value, scrape, start_stack, stack_env, wait_for
from tests.fixtures.sandbox import SandboxCredentials

pytestmark = pytest.mark.e2e

PATH = "/webhooks/recording-status"


@pytest.fixture(scope="module")
def running(tmp_path_factory, redis_server_url, postgres_server):
    tmp = tmp_path_factory.mktemp("observability")
    credentials = SandboxCredentials()
    redis.Redis.from_url(redis_server_url).flushdb()
    with database("sqlite", tmp, postgres_server) as database_url, \
            Sandbox(credentials.project_id, credentials.api_token, credentials.signing_key) as sandbox:
        port = free_port()
        env = stack_env(redis_server_url, database_url, sandbox, credentials, port)
        stack = start_stack(env, port, tmp / "stack.log")
        try:
            yield SimpleNamespace(stack=stack, sandbox=sandbox, env=env, base=stack.base_url, log=tmp / "stack.log",
                                  key=credentials.signing_key, url=env["PUBLIC_BASE_URL"] + PATH)
        finally:
            codes = stack.stop()
            assert all(code == 0 for code in codes.values()), codes


def completed_recording(running) -> dict[str, str]:
    """A recording the sandbox holds, completed, whose callback we send ourselves."""
    sid = running.sandbox.record_verb(str(uuid.uuid4()), "http://127.0.0.1:9/unused", events=[])
    wait_for(lambda: running.sandbox.recordings[sid]["status"] == "completed", 10, what="the recording to end")
    return running.sandbox._callback_params(sid, "completed")


def send(running, params: dict, key: str | None = None, request_id: str | None = None) -> requests.Response:
    headers = {"X-SignalWire-Signature": compute_signature(key or running.key, running.url, params)}
    if request_id:
        headers["X-Request-ID"] = request_id
    # A connection per request: gunicorn's two processes take turns accepting them.
    return requests.post(running.base + PATH, data=params, headers=headers, timeout=10)


def test_metrics_sum_both_web_processes_and_the_workers(running):
    n = 40
    callbacks = [completed_recording(running) for _ in range(n)]
    before = scrape(running.base)
    with ThreadPoolExecutor(8) as pool:
        first = list(pool.map(lambda p: send(running, p, request_id=f"sum-{p['RecordingSid']}"), callbacks))
        again = list(pool.map(lambda p: send(running, p), callbacks))
        forged = list(pool.map(lambda p: send(running, p, key="PSK_not_our_key"), callbacks[:5]))
    assert [r.headers["X-Callback-Outcome"] for r in first] == ["queued"] * n
    assert [r.headers["X-Callback-Outcome"] for r in again] == ["duplicate"] * n
    assert [r.status_code for r in forged] == [403] * 5

    stored = "recording_keeper_jobs_total"
    callbacks_total = "recording_keeper_callbacks_total"

    def counted(samples) -> bool:
        # The workers' counts come through Redis; the other web process's, with its next batch.
        return (value(samples, stored, result="stored") - value(before, stored, result="stored") >= n
                and value(samples, callbacks_total, outcome="duplicate")
                - value(before, callbacks_total, outcome="duplicate") >= n)

    wait_for(lambda: counted(scrape(running.base)), 30, interval=0.5, what="the counts to reach /metrics")
    after = scrape(running.base)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta(callbacks_total, outcome="queued") == n and delta(callbacks_total, outcome="duplicate") == n
    assert delta(callbacks_total, outcome="signature_mismatch") == 5
    assert delta(callbacks_total, outcome="inbox") == 0 and delta(callbacks_total, outcome="signature_missing") == 0
    assert delta("recording_keeper_http_request_duration_seconds_count", route=PATH, method="POST",
                 status="204") == 2 * n
    assert delta(stored, result="stored") == n and delta(stored, result="failed") == 0
    assert delta("recording_keeper_job_duration_seconds_count") == n
    assert delta("recording_keeper_signalwire_requests_total", operation="fetch", status="200") == n
    assert value(after, "recording_keeper_workers_alive") == 1 and value(after, "recording_keeper_queue_depth") == 0
    assert value(after, "recording_keeper_dependency_up", dependency="database") == 1
    # Both web processes took a share, so the sums above are across processes.
    def pids() -> set[int]:
        return {line["pid"] for line in log_lines(running.log)
                if line["logger"] == "service.access" and line.get("request_id", "").startswith("sum-")}

    assert wait_for(lambda: len(pids()) == 2, 10, interval=0.5, what="access lines from both web processes")


def test_a_callbacks_request_id_is_on_the_workers_lines_for_its_job(running):
    params = completed_recording(running)
    request_id = f"trace-{uuid.uuid4()}"
    response = send(running, params, request_id=request_id)
    assert response.status_code == 204 and response.headers["X-Request-ID"] == request_id
    job_id = f"cb_{params['RecordingSid']}_completed"

    def job_lines():
        # The worker's last line for the job, and the web's access line (written within a second).
        lines = [line for line in log_lines(running.log) if line.get("request_id") == request_id]
        done = any(line.get("result") == "stored" for line in lines)
        return lines if done and any(line["logger"] == "service.access" for line in lines) else None

    lines = wait_for(job_lines, 30, interval=0.3, what="the job's last line and the request's access line")
    web = [line for line in lines if line["logger"] == "service.access"]
    worker = [line for line in lines if line["logger"] != "service.access"]
    assert len(web) == 1 and web[0]["outcome"] == "queued"
    assert {line["pid"] for line in worker}.isdisjoint({web[0]["pid"]})
    assert {line["logger"] for line in worker} >= {"rq.worker", "workers"}
    assert all(line["job_id"] == job_id and line["recording_sid"] == params["RecordingSid"] for line in worker)
    (done,) = [line for line in worker if line.get("result")]
    assert done["event"] == f"job {job_id} stored" and done["duration_ms"] > 0


def test_a_forged_callback_leaves_one_line_naming_its_reason_and_a_flood_a_bounded_number(running):
    params = completed_recording(running)
    one = send(running, params, key="PSK_not_our_key", request_id="forged-one")
    assert one.status_code == 403
    wait_for(lambda: [line for line in log_lines(running.log) if line.get("request_id") == "forged-one"], 10,
             what="the refusal line")
    (line,) = [line for line in log_lines(running.log) if line.get("request_id") == "forged-one"]
    assert line["event"].startswith("callback refused (signature_mismatch): POST " + running.url)
    assert line["reason"] == "signature_mismatch" and line["logger"] == "service.web.webhooks"
    assert line["checked_url"] == running.url and line["keys_tried"] == 1 and line["status"] == 403

    before = len(log_lines(running.log))
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda i: send(running, params, key="PSK_not_our_key",
                                             request_id=f"flood-{i}").status_code, range(1_000)))
    assert codes == [403] * 1_000
    lines = log_lines(running.log)[before:]
    flood = [line for line in lines if line.get("request_id", "").startswith("flood-")]
    # At most 10 a minute per reason in each of the 2 web processes (the lone one above used one).
    assert 1 <= len(flood) <= 20 and len(lines) <= 25, len(lines)
    assert all(line["reason"] == "signature_mismatch" for line in flood)
