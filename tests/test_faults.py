"""Fault tests with real processes (gunicorn, RQ workers, Redis, PostgreSQL) and the sandbox's
fault knobs. Each prints its counts ("[fault] ...") and appends them to bench/results/faults.jsonl.

CI runs them at reduced size; `FAULT_SCALE=full python3 dev.py test -m fault -s` runs the full
sizes that the README's Reliability table reports."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from types import SimpleNamespace
from urllib.parse import urlsplit

import pytest
import requests
import schemathesis
import sqlalchemy as sa

from devstack.redis_server import EmbeddedRedis, free_port
from devstack.sandbox import Sandbox
from service.store.sql import Store
from tests.e2e import AUTH, database, stack_env, start_stack, wait_for
from tests.faults import TcpProxy, callback_forms, report, scaled, send_callbacks
from tests.fixtures.sandbox import SandboxCredentials
from tests.test_api_properties import check_every_operation, document_config

pytestmark = [pytest.mark.fault, pytest.mark.timeout(900)]


@contextlib.contextmanager
def fault_stack(tmp_path, postgres_server, *, workers: int = 1, proxy_db: bool = False, **settings):
    credentials = SandboxCredentials()
    with database("postgresql", tmp_path, postgres_server) as database_url, \
            EmbeddedRedis(persist=True) as redis_server, \
            Sandbox(credentials.project_id, credentials.api_token, credentials.signing_key) as sandbox:
        sandbox.recording_seconds = 0.05
        proxy = None
        stack_db_url = database_url
        if proxy_db:
            parts = urlsplit(database_url)
            proxy = TcpProxy((parts.hostname, parts.port or 5432))
            stack_db_url = database_url.replace(f"{parts.hostname}:{parts.port or 5432}", f"127.0.0.1:{proxy.port}")
        port = free_port()
        env = stack_env(redis_server.url, stack_db_url, sandbox, credentials, port)
        env.update({k.upper(): str(v) for k, v in settings.items()})
        stack = start_stack(env, port, tmp_path / "stack.log", workers=workers)
        store = Store(database_url)
        try:
            yield SimpleNamespace(stack=stack, sandbox=sandbox, redis=redis_server, store=store, proxy=proxy,
                                  credentials=credentials, url=stack.base_url + "/webhooks/recording-status",
                                  log=tmp_path / "stack.log")
        finally:
            stack.stop()
            store.dispose()
            if proxy:
                proxy.close()


def sandbox_recordings(sandbox, n: int) -> list[dict]:
    """n completed recordings that exist at 'SignalWire' but whose callbacks we send ourselves."""
    sids = [sandbox.record_verb(str(uuid.uuid4()), "http://127.0.0.1:9/unused", events=[]) for _ in range(n)]
    wait_for(lambda: all(sandbox.recordings[s]["status"] == "completed" for s in sids), 30, what="sandbox recordings")
    return [sandbox.recordings[s] for s in sids]


def counts(store: Store) -> dict[str, int]:
    with store.engine.connect() as conn:
        def one(sql):
            return conn.execute(sa.text(sql)).scalar_one()
        return {
            "recordings": one("SELECT count(*) FROM recordings"),
            "completed": one("SELECT count(*) FROM recordings WHERE status = 'completed' "
                             "AND last_fetched_at IS NOT NULL"),
            "events": one("SELECT count(*) FROM recording_events"),
            "duplicate_events": one("SELECT count(*) FROM (SELECT recording_sid, status FROM recording_events "
                                    "GROUP BY recording_sid, status HAVING count(*) > 1) d"),
        }


def wait_stored(store: Store, n: int, timeout: float) -> dict[str, int]:
    return wait_for(lambda: (c := counts(store))["completed"] >= n and c, timeout, interval=0.5,
                    what=f"{n} completed recordings")


def test_every_callback_three_times_concurrently_and_shuffled(tmp_path, postgres_server):
    n = scaled(1000, 150)
    with fault_stack(tmp_path, postgres_server, workers=2) as f:
        forms = callback_forms(f.credentials.project_id, sandbox_recordings(f.sandbox, n), f.sandbox.base_url)
        started = time.monotonic()
        answers = send_callbacks(f.url, f.credentials.signing_key, forms, copies=3)
        final = wait_stored(f.store, n, timeout=scaled(300, 120))
        time.sleep(1)  # anything still queued would show as an extra row now
        final = counts(f.store)
        report("duplicates x3 shuffled", recordings=n, callbacks_sent=sum(answers.values()), answers=answers,
               stored=final["completed"], history_rows=final["events"], seconds=round(time.monotonic() - started, 1))
        assert set(answers) == {204}
        assert final["recordings"] == final["completed"] == n
        assert final["events"] == 2 * n and final["duplicate_events"] == 0


def test_sandbox_failing_30_percent_of_api_calls(tmp_path, postgres_server):
    n = scaled(1000, 100)
    with fault_stack(tmp_path, postgres_server, workers=2) as f:
        recordings = sandbox_recordings(f.sandbox, n)
        f.sandbox.set_knobs(error_rate=0.3, error_statuses=[429, 500, 503], retry_after=1)
        started = time.monotonic()
        answers = send_callbacks(f.url, f.credentials.signing_key,
                                 callback_forms(f.credentials.project_id, recordings, f.sandbox.base_url, ("completed",)))
        final = wait_stored(f.store, n, timeout=scaled(600, 240))
        report("sandbox 30% 429/500/503", recordings=n, answers=answers, stored=final["completed"],
               api_requests=f.sandbox.state()["api_requests"], seconds=round(time.monotonic() - started, 1))
        assert set(answers) == {204}
        assert final["completed"] == n


def test_database_unreachable_for_20_seconds(tmp_path, postgres_server):
    n = scaled(600, 120)
    outage = scaled(20, 10)
    with fault_stack(tmp_path, postgres_server, workers=1, proxy_db=True) as f:
        forms = callback_forms(f.credentials.project_id, sandbox_recordings(f.sandbox, n), f.sandbox.base_url,
                               ("completed",))
        half = len(forms) // 2
        first = send_callbacks(f.url, f.credentials.signing_key, forms[:half])
        f.proxy.down()
        down_at = time.monotonic()
        during = send_callbacks(f.url, f.credentials.signing_key, forms[half:])  # Redis is up: still accepted
        time.sleep(max(0.0, outage - (time.monotonic() - down_at)))
        f.proxy.up()
        final = wait_stored(f.store, n, timeout=scaled(300, 240))
        report(f"database down {outage} s", recordings=n, answers_before=first, answers_during=during,
               stored=final["completed"], outage_seconds=outage, recovered_seconds=round(time.monotonic() - down_at, 1))
        assert set(first) == {204} and set(during) == {204}
        assert final["completed"] == n and final["duplicate_events"] == 0


def test_redis_stopped_for_20_seconds_mid_stream(tmp_path, postgres_server):
    n = scaled(1500, 300)
    outage = scaled(20, 10)
    with fault_stack(tmp_path, postgres_server, workers=1, inbox_drain_interval=1) as f:
        forms = callback_forms(f.credentials.project_id, sandbox_recordings(f.sandbox, n), f.sandbox.base_url,
                               ("completed",))
        answers: dict[int, int] = {}

        def stream():
            # A paced stream, so the outage falls in the middle of it.
            for i in range(0, len(forms), 10):
                chunk = forms[i:i + 10]
                got = send_callbacks(f.url, f.credentials.signing_key, chunk, threads=10, shuffle_seed=None)
                for code, count in got.items():
                    answers[code] = answers.get(code, 0) + count
                time.sleep(outage * 2.5 / (len(forms) / 10))

        sender = threading.Thread(target=stream)
        sender.start()
        time.sleep(outage * 0.6)
        f.redis.halt()
        time.sleep(outage)
        f.redis.start()
        sender.join()
        ok = sum(c for code, c in answers.items() if 200 <= code < 300)
        final = wait_stored(f.store, ok, timeout=scaled(300, 240))
        inboxed = f.log.read_text(errors="replace").count("in the inbox")
        report(f"redis stopped {outage} s mid-stream", callbacks=len(forms), answers=answers, answered_2xx=ok,
               kept_in_db_inbox=inboxed, stored=final["completed"],
               worker_restarts=sum(p.restarts for p in f.stack.workers()))
        assert set(answers) <= {204, 503}
        assert inboxed > 0  # the outage really fell in the middle of the stream
        assert final["completed"] == ok
        # A worker caught mid-job quits (RQ), once: restarted into the outage, it waits for Redis.
        assert sum(p.restarts for p in f.stack.workers()) <= len(f.stack.workers())


def test_worker_sigkilled_every_few_seconds_while_backlog_drains(tmp_path, postgres_server):
    n = scaled(2000, 200)
    with fault_stack(tmp_path, postgres_server, workers=2) as f:
        forms = callback_forms(f.credentials.project_id, sandbox_recordings(f.sandbox, n), f.sandbox.base_url,
                               ("completed",))
        for worker in f.stack.workers():  # build the backlog first
            f.stack.kill(worker, 19)  # SIGSTOP
        answers = send_callbacks(f.url, f.credentials.signing_key, forms)
        for worker in f.stack.workers():
            f.stack.kill(worker, 18)  # SIGCONT
        kills = 0
        # Each worker killed every 2 intervals: it must get to work between kills, which on a
        # loaded 2-core machine a restart every 2 s (interval 1) barely allows.
        interval = scaled(3, 2)
        started = time.monotonic()
        deadline = started + scaled(600, 300)
        # The first kill lands right after the workers resume, mid-job; then one every interval.
        while counts(f.store)["completed"] < n and time.monotonic() < deadline:
            f.stack.kill(f.stack.workers()[kills % 2])
            kills += 1
            time.sleep(interval)
        final = wait_stored(f.store, n, timeout=120)
        report(f"worker SIGKILL every {interval} s", backlog=n, answers=answers, kills=kills, stored=final["completed"],
               duplicate_events=final["duplicate_events"], seconds=round(time.monotonic() - started, 1))
        assert set(answers) == {204}
        assert kills >= 2
        assert final["completed"] == n and final["events"] == n and final["duplicate_events"] == 0


def test_sandbox_dropping_20_percent_of_callbacks_the_sweep_stores_all(tmp_path, postgres_server):
    n = scaled(1000, 150)
    with fault_stack(tmp_path, postgres_server, workers=2, sweep_interval=2, sweep_after=1,
                     sweep_list_hours=1) as f:
        f.sandbox.set_knobs(callback_drop_rate=0.2)
        callback_url = f.stack.base_url + "/webhooks/recording-status"
        sids = [f.sandbox.record_verb(str(uuid.uuid4()), callback_url, events=["in-progress", "completed"])
                for _ in range(n)]
        final = wait_stored(f.store, n, timeout=scaled(300, 180))
        dropped = f.sandbox.state()["callbacks_dropped"]
        report("sandbox drops 20% of callbacks", recordings=n, callbacks_dropped=dropped, stored=final["completed"])
        assert dropped > 0
        with f.store.engine.connect() as conn:
            stored = set(conn.execute(sa.text("SELECT sid FROM recordings WHERE status = 'completed'")).scalars())
        assert stored >= set(sids)


def test_api_against_its_document_on_gunicorn(tmp_path, postgres_server):
    """The property tests of tests/test_api_properties.py, against gunicorn, over HTTP, with the
    document as gunicorn serves it."""
    with fault_stack(tmp_path, postgres_server) as f:
        examples = scaled(300, 20)
        schema = schemathesis.openapi.from_url(f.stack.base_url + "/api/openapi.json",
                                               config=document_config(examples))
        started = time.monotonic()
        sent = check_every_operation(schema, AUTH, examples)
        report("API property tests on gunicorn", requests_per_operation=sent,
               seconds=round(time.monotonic() - started, 1))
        operations = {result.ok().label for result in schema.get_all_operations()}
        assert set(sent) == operations and min(sent.values()) >= examples


def test_twenty_racing_retries_on_gunicorn_start_one_recording(tmp_path, postgres_server):
    """Twenty clients retry the same start with the same Idempotency-Key at once, spread over
    gunicorn's processes, while SignalWire is slow: SignalWire gets exactly one Create."""
    with fault_stack(tmp_path, postgres_server) as f:
        f.sandbox.latency = 0.5
        url = f"{f.stack.base_url}/api/calls/{uuid.uuid4()}/recordings"
        headers = {**AUTH, "Idempotency-Key": str(uuid.uuid4())}
        barrier = threading.Barrier(20)
        answers: list = []

        def send():
            barrier.wait(timeout=10)
            response = requests.post(url, json={"channels": "dual"}, headers=headers, timeout=30)
            answers.append((response.status_code, response.json().get("sid")))

        threads = [threading.Thread(target=send) for _ in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        f.sandbox.latency = 0
        replay = requests.post(url, json={"channels": "dual"}, headers=headers, timeout=30)
        statuses = {code: sum(1 for c, _ in answers if c == code) for code, _ in answers}
        report("20 racing retries, one key", answers=statuses, creates=f.sandbox.state()["create_requests"])
        assert len(answers) == 20 and set(statuses) <= {201, 409} and 201 in statuses
        assert {sid for code, sid in answers if code == 201} == {replay.json()["sid"]}
        assert replay.status_code == 201 and replay.headers["Idempotent-Replayed"] == "true"
        assert f.sandbox.state()["create_requests"] == 1
