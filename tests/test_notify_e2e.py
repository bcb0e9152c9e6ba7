"""Notifications with the real processes (gunicorn, RQ worker processes, Redis, the store, the
sandbox) and a real receiver that verifies every request with the `standardwebhooks` package.

The end-to-end test starts recordings through the API; the fault tests (sized by FAULT_SCALE,
figures in the README) take the receiver down, make it fail 30% of requests, and SIGKILL a
worker while deliveries are in flight. Every event must arrive at least once, verified; a
message that arrives more than once is a retry and carries the same webhook-id."""

from __future__ import annotations

import collections
import contextlib
import time
import uuid
from types import SimpleNamespace

import pytest
import requests
import sqlalchemy as sa

from devstack.redis_server import EmbeddedRedis, free_port
from devstack.sandbox import Sandbox
from service.store.sql import Store
from tests.e2e import AUTH, database, metric, scrape, stack_env, start_stack, wait_for
from tests.faults import callback_forms, report, scaled, send_callbacks
from tests.fixtures.sandbox import SandboxCredentials
from devstack.webhook_receiver import WebhookReceiver
from tests.test_faults import sandbox_recordings

# A compressed schedule (the specification's runs to 24 hours): 0, 1, 2, 4, 8, then every 10 s.
FAST_SCHEDULE = "0,1,2,4,8" + ",10" * 30


@contextlib.contextmanager
def notify_stack(tmp_path, postgres_server, *, db: str = "postgresql", workers: int = 1, **settings):
    credentials = SandboxCredentials()
    receiver = WebhookReceiver().start()
    with database(db, tmp_path, postgres_server) as database_url, EmbeddedRedis() as redis_server, \
            Sandbox(credentials.project_id, credentials.api_token, credentials.signing_key) as sandbox:
        sandbox.recording_seconds = 0.05
        port = free_port()
        env = stack_env(redis_server.url, database_url, sandbox, credentials, port)
        env.update(NOTIFY_ALLOW_PRIVATE="true", NOTIFY_RETRY_SCHEDULE=FAST_SCHEDULE, NOTIFY_POLL_INTERVAL="1")
        env.update({k.upper(): str(v) for k, v in settings.items()})
        stack = start_stack(env, port, tmp_path / "stack.log", workers=workers)
        store = Store(database_url)
        try:
            created = requests.post(f"{stack.base_url}/api/endpoints", json={"url": receiver.url}, headers=AUTH,
                                    timeout=10)
            assert created.status_code == 201, created.text
            receiver.secrets.append(created.json()["secret"])
            yield SimpleNamespace(stack=stack, sandbox=sandbox, store=store, receiver=receiver,
                                  credentials=credentials, endpoint=created.json()["id"],
                                  url=stack.base_url + "/webhooks/recording-status", log=tmp_path / "stack.log")
        finally:
            stack.stop()
            store.dispose()
            receiver.stop()


def outbox(store: Store) -> dict[str, int]:
    with store.engine.connect() as conn:
        counts = dict(conn.execute(sa.text("SELECT status, count(*) FROM notification_deliveries GROUP BY status")).all())
    return {status: counts.get(status, 0) for status in ("pending", "delivered", "failed")}


def delivered_all(f, n: int, timeout: float) -> dict[str, int]:
    return wait_for(lambda: (c := outbox(f.store))["delivered"] >= n and c, timeout, interval=0.5,
                    what=f"{n} deliveries")


def check_receipts(receiver: WebhookReceiver, expected_ids: set[str]) -> dict[str, int]:
    """Every request verified (but one cut short by its sender's death: it cannot be); every
    expected message answered 2xx at least once; duplicates only of those messages (same
    webhook-id, the same body)."""
    received = [d for d in receiver.received if not d.truncated]
    unverified = [(d.webhook_id, d.headers, len(d.body)) for d in received if not d.verified_with]
    assert not unverified, f"requests failed the signature check: {unverified[:3]}"
    ok = collections.Counter(d.webhook_id for d in received if 200 <= d.status < 300)
    assert set(ok) == expected_ids
    bodies = collections.defaultdict(set)
    for d in received:
        bodies[d.webhook_id].add(d.body)
    assert all(len(b) == 1 for b in bodies.values())  # a retry sends the same message
    return {"requests": len(received), "cut_short": len(receiver.received) - len(received), "messages": len(ok),
            "delivered_twice": sum(c > 1 for c in ok.values())}


def delivery_ids(store: Store) -> set[str]:
    with store.engine.connect() as conn:
        return set(conn.execute(sa.text("SELECT id FROM notification_deliveries")).scalars())


def completed_callbacks(f, n: int) -> list[dict]:
    return callback_forms(f.credentials.project_id, sandbox_recordings(f.sandbox, n), f.sandbox.base_url,
                          ("completed",))


# --- end to end --------------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
def test_recordings_started_through_the_api_tell_the_receiver(tmp_path, postgres_server, db):
    with notify_stack(tmp_path, postgres_server, db=db) as f:
        # Long enough for the API to have stored its start before the completed callback's job
        # reads the row (a recording that ends within the start request's own round trip is
        # reported with started_by_us false).
        f.sandbox.recording_seconds = 1.0
        sids = []
        for _ in range(3):
            response = requests.post(f"{f.stack.base_url}/api/calls/{uuid.uuid4()}/recordings", headers=AUTH,
                                     timeout=15)
            assert response.status_code == 201, response.text
            sids.append(response.json()["sid"])
        got = f.receiver.wait_for(lambda r: sum(d.status == 204 for d in r) >= 6, timeout=60)
        by_type = collections.defaultdict(set)
        for d in got:
            by_type[d.payload["type"]].add(d.payload["data"]["recording_sid"])
            assert d.payload["data"]["started_by_us"] is True and d.verified_with
        assert by_type == {"recording.started": set(sids), "recording.completed": set(sids)}
        completed = [d.payload for d in got if d.payload["type"] == "recording.completed"]
        assert all(p["data"]["status"] == "completed" and p["data"]["duration"] is not None for p in completed)
        deliveries = requests.get(f"{f.stack.base_url}/api/endpoints/{f.endpoint}/deliveries", headers=AUTH,
                                  timeout=10).json()["deliveries"]
        assert wait_for(lambda: outbox(f.store)["delivered"] == 6, 10)
        assert {d["id"] for d in deliveries} == {d.webhook_id for d in got}
        # The worker's counts reach the web's /metrics (relayed through Redis).
        delivered = "recording_keeper_notification_deliveries_total"
        wait_for(lambda: metric(scrape(f.stack.base_url), delivered, result="delivered") == 6, 30, interval=0.5,
                 what="the deliveries counted in /metrics")
        assert metric(scrape(f.stack.base_url), delivered, result="failed") == 0


# --- faults ------------------------------------------------------------------------------------


@pytest.mark.fault
@pytest.mark.timeout(900)
def test_receiver_down_for_60_seconds(tmp_path, postgres_server):
    n = scaled(500, 100)
    outage = scaled(60, 15)
    with notify_stack(tmp_path, postgres_server, workers=2) as f:
        forms = completed_callbacks(f, n)
        f.receiver.stop()
        down_at = time.monotonic()
        answers = send_callbacks(f.url, f.credentials.signing_key, forms)
        time.sleep(max(0.0, outage - (time.monotonic() - down_at)))
        during = outbox(f.store)
        f.receiver.start()
        final = delivered_all(f, n, timeout=scaled(300, 120))
        receipts = check_receipts(f.receiver, delivery_ids(f.store))
        report("notifications: receiver down", events=n, outage_seconds=outage, answers=answers,
               pending_at_restart=during["pending"], delivered=final["delivered"], failed=final["failed"],
               all_delivered_seconds_after_restart=round(time.monotonic() - down_at - outage, 1), **receipts)
        assert set(answers) == {204}
        assert during["delivered"] == during["failed"] == 0  # nothing got through, nothing was given up
        assert final == {"pending": 0, "delivered": n, "failed": 0} and receipts["messages"] == n


@pytest.mark.fault
@pytest.mark.timeout(900)
def test_receiver_answering_500_to_30_percent(tmp_path, postgres_server):
    n = scaled(1000, 150)
    with notify_stack(tmp_path, postgres_server, workers=2) as f:
        f.receiver.fail_rate = 0.3
        forms = completed_callbacks(f, n)
        started = time.monotonic()
        answers = send_callbacks(f.url, f.credentials.signing_key, forms)
        final = delivered_all(f, n, timeout=scaled(600, 180))
        receipts = check_receipts(f.receiver, delivery_ids(f.store))
        failed_requests = sum(d.status == 500 for d in f.receiver.received)
        report("notifications: receiver 500 to 30%", events=n, answers=answers, answered_500=failed_requests,
               delivered=final["delivered"], seconds=round(time.monotonic() - started, 1), **receipts)
        assert set(answers) == {204}
        assert final == {"pending": 0, "delivered": n, "failed": 0} and receipts["messages"] == n
        assert failed_requests > 0 and receipts["requests"] == n + failed_requests  # one retry per 500


@pytest.mark.fault
@pytest.mark.timeout(900)
def test_worker_sigkilled_mid_delivery(tmp_path, postgres_server):
    n = scaled(300, 60)
    with notify_stack(tmp_path, postgres_server, workers=2, notify_timeout=3, notify_concurrency=4) as f:
        f.receiver.delay = 0.5  # deliveries take a while: a kill finds some in flight
        forms = completed_callbacks(f, n)
        started = time.monotonic()
        answers = send_callbacks(f.url, f.credentials.signing_key, forms)
        kills = 0
        for _ in range(scaled(6, 2)):
            in_flight = len(f.receiver.received)
            wait_for(lambda: len(f.receiver.received) > in_flight, 30, interval=0.05, what="a delivery in flight")
            f.stack.kill(f.stack.workers()[kills % 2])
            kills += 1
            time.sleep(2)
        final = delivered_all(f, n, timeout=scaled(600, 240))
        receipts = check_receipts(f.receiver, delivery_ids(f.store))
        report("notifications: worker SIGKILL mid-delivery", events=n, kills=kills, answers=answers,
               delivered=final["delivered"], seconds=round(time.monotonic() - started, 1),
               worker_restarts=sum(p.restarts for p in f.stack.workers()), **receipts)
        assert set(answers) == {204} and kills >= 2
        assert final == {"pending": 0, "delivered": n, "failed": 0} and receipts["messages"] == n
