"""Crash recovery and stops with real worker processes (`python -m workers`) on a real Redis: a
job whose worker was SIGKILLed runs again on another worker within seconds, and a stop at any
moment is a clean exit. What recovery and the worker rely on in RQ, case by case, is guarded
by tests/test_rq_adapter.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis
from rq import Worker
from rq.job import Job, JobStatus

from service.config import load_settings
from devstack.redis_server import EmbeddedRedis, free_port
from service.services import queue_for
from service.store.sql import Store
from tests.e2e import wait_for
from tests.faults import TcpProxy
from workers import recovery
from workers.__main__ import REDIS_SOCKET_TIMEOUT

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def worker_env(redis_url, tmp_path):
    url = f"sqlite:///{tmp_path / 'recovery.sqlite3'}"
    store = Store(url)
    store.migrate()
    store.dispose()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIGNALWIRE_", "DATABASE_", "REDIS_"))}
    env.update(
        SIGNALWIRE_SPACE="http://127.0.0.1:9",
        SIGNALWIRE_PROJECT_ID="project",
        SIGNALWIRE_API_TOKEN="token",
        SIGNALWIRE_SIGNING_KEY="signing-key",
        PUBLIC_BASE_URL="http://127.0.0.1:9",
        SERVICE_API_TOKEN="recovery-test-token-0123456789",
        REDIS_URL=redis_url,
        DATABASE_URL=url,
        SWEEP_INTERVAL="0",
        LOG_LEVEL="INFO",
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture
def queue(worker_env, redis_conn):
    return queue_for(load_settings(worker_env), redis_conn)


class Workers:
    def __init__(self, env, log_dir):
        self.env = env
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen] = []

    def start(self) -> subprocess.Popen:
        log = open(self.log_dir / f"worker{len(self.procs)}.log", "ab")
        proc = subprocess.Popen([sys.executable, "-m", "workers"], cwd=ROOT, env=self.env, stdout=log, stderr=log,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> list[int | None]:
        codes = []
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                codes.append(proc.wait(30))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                codes.append(proc.wait())
        return codes


@pytest.fixture
def workers(worker_env, tmp_path):
    w = Workers(worker_env, tmp_path)
    yield w
    w.stop_all()


def runs(redis_conn, job_id) -> int:
    return int(redis_conn.get(f"test:runs:{job_id}") or 0)


def test_a_job_whose_worker_was_killed_runs_again_within_seconds(queue, workers, redis_conn, tmp_path):
    first = workers.start()
    job = queue.enqueue("tests.jobs_for_tests.slow_then_quick", 120)
    wait_for(lambda: runs(redis_conn, job.id) == 1, 20, what="the job to start on the first worker")
    # The first worker's own recovery pass leaves its running job alone.
    time.sleep(recovery.DEFAULT_ALIVE_TTL + 2)
    assert runs(redis_conn, job.id) == 1 and job.get_status(refresh=True) == JobStatus.STARTED

    os.killpg(first.pid, signal.SIGKILL)  # worker and scheduler, mid-job
    first.wait()
    killed_at = time.monotonic()
    second = workers.start()
    wait_for(lambda: redis_conn.get(f"test:done:{job.id}"), 25, interval=0.2, what="the job to run again")
    took = time.monotonic() - killed_at
    print(f"recovered and completed {took:.1f} s after the SIGKILL")
    assert took < 20
    assert runs(redis_conn, job.id) == 2
    wait_for(lambda: job.get_status(refresh=True) == JobStatus.FINISHED, 5, what="the job to finish")
    assert Job.fetch(job.id, connection=redis_conn, serializer=queue.serializer).meta["recoveries"] == 1
    assert queue.started_job_registry.get_job_ids(cleanup=False) == []

    os.killpg(second.pid, signal.SIGTERM)
    assert second.wait(30) == 0  # warm shutdown, scheduler and housekeeping included
    assert not redis_conn.exists(recovery.ALIVE_KEY.format(_only_worker_name(tmp_path)))


def _only_worker_name(tmp_path) -> str:
    text = (tmp_path / "worker1.log").read_text(errors="replace")
    marker = "worker "
    line = next(line for line in text.splitlines() if "listening on queue" in line)
    return line.split(marker, 1)[1].split()[0]


def test_an_idle_worker_exits_0_on_sigterm_within_seconds(workers, redis_conn):
    proc = workers.start()
    wait_for(lambda: Worker.all(connection=redis_conn), 20, what="the worker to register")
    started = time.monotonic()
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(30) == 0
    assert time.monotonic() - started < 10


def test_worker_housekeeping_drains_the_inbox_and_sweeps(worker_env, workers, sandbox, sandbox_credentials):
    from service.domain.recordings import CallbackEvent

    worker_env.update(
        SIGNALWIRE_SPACE=sandbox.base_url,
        SIGNALWIRE_PROJECT_ID=sandbox_credentials.project_id,
        SIGNALWIRE_API_TOKEN=sandbox_credentials.api_token,
        SWEEP_INTERVAL="2",
        SWEEP_AFTER="0",
        SWEEP_LIST_HOURS="1",
    )
    store = Store(worker_env["DATABASE_URL"])
    try:
        call_sid = "call-" + os.urandom(4).hex()
        never_told = sandbox.record_verb(call_sid, "http://127.0.0.1:9/x", events=("completed",))
        sandbox.end_call(call_sid)
        # A callback the web kept in the database while Redis was down.
        store.inbox_put(CallbackEvent(recording_sid="inbox-rec", account_sid=sandbox_credentials.project_id,
                                      status="in-progress", call_sid="call-inbox").to_payload())
        workers.start()
        wait_for(lambda: store.get("inbox-rec"), 20, what="the inbox callback to be processed")
        assert store.inbox_take() == []
        stored = wait_for(lambda: (store.get(never_told) or {}).get("status") == "completed" and store.get(never_told),
                          30, what="the sweep to store the recording nobody told us about")
        assert stored["source"] == "RecordVerb"
    finally:
        store.dispose()
    assert workers.stop_all() == [0]


def test_a_sigterm_during_start_up_still_exits_0(workers, redis_conn):
    proc = workers.start()
    wait_for(lambda: redis_conn.keys(recovery.MANAGED_KEY.format("*")), 20, interval=0.02,
             what="the worker's first beat")
    os.killpg(proc.pid, signal.SIGTERM)  # most likely before RQ's own handlers are installed
    assert proc.wait(30) == 0


def test_a_worker_started_while_redis_is_down_waits_for_it(worker_env, tmp_path):
    # RQ's worker quits when Redis vanishes mid-job, and is restarted into the same outage.
    # Exiting again would be a crash loop, which Heroku restarts only after growing pauses.
    server = EmbeddedRedis()  # its port, nothing listening yet
    env = dict(worker_env, REDIS_URL=server.url)
    workers = Workers(env, tmp_path)
    proc = workers.start()
    try:
        time.sleep(3)
        assert proc.poll() is None, "the worker exited instead of waiting for Redis"
        server.start()
        conn = redis.Redis.from_url(server.url)
        job = queue_for(load_settings(env), conn).enqueue("tests.jobs_for_tests.quick")
        wait_for(lambda: runs(conn, job.id) == 1, 20, interval=0.1, what="the job, once Redis answers")
        conn.close()
        assert workers.stop_all() == [0]
    finally:
        workers.stop_all()
        server.stop()


def test_a_sigterm_while_waiting_for_redis_exits_0(worker_env, tmp_path):
    workers = Workers(dict(worker_env, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0"), tmp_path)
    proc = workers.start()
    wait_for(lambda: "redis unreachable" in (tmp_path / "worker0.log").read_text(errors="replace"), 20,
             interval=0.05, what="the worker to wait for Redis")
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(10) == 0


def test_a_worker_whose_redis_connection_went_half_open_carries_on(worker_env, redis_url, tmp_path):
    # A failover just after the worker's first ping (while it waited for Redis, say) leaves
    # that connection open with nothing behind it: no answer, and no close. Its socket timeout
    # ends the wait, and a new connection reaches Redis again.
    parts = urlsplit(redis_url)
    proxy = TcpProxy((parts.hostname, parts.port))
    proxy.stall_next(after_replies=1)  # the worker's first connection, after its PONG
    workers = Workers(dict(worker_env, REDIS_URL=f"redis://127.0.0.1:{proxy.port}{parts.path}"), tmp_path)
    conn = redis.Redis.from_url(redis_url)
    try:
        started = time.monotonic()
        workers.start()
        job = queue_for(load_settings(worker_env), conn).enqueue("tests.jobs_for_tests.quick")
        wait_for(lambda: runs(conn, job.id) == 1, REDIS_SOCKET_TIMEOUT + 30, interval=0.2,
                 what="the job, once the worker noticed")
        took = time.monotonic() - started
        print(f"the job ran {took:.1f} s after the worker started")
        assert REDIS_SOCKET_TIMEOUT <= took < REDIS_SOCKET_TIMEOUT + 15  # it did wait on that connection
    finally:
        workers.stop_all()
        proxy.close()
        conn.close()
