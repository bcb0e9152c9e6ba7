"""Idempotency-Key on the start-recording API (Stripe's semantics), against the sandbox over
HTTP and a real store; and the key store itself on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import timedelta

import pytest
import sqlalchemy as sa

from service import create_app
from service.config import load_settings
from service.signalwire.client import SignalWireClient
from service.store.idempotency import IdempotencyKeys
from service.store.models import IdempotencyKeyRow
from tests.fixtures.app import API_TOKEN


def start(client, auth, call_sid, key=None, **body):
    headers = dict(auth, **({"Idempotency-Key": key} if key is not None else {}))
    return client.post(f"/api/calls/{call_sid}/recordings", json=body or None, headers=headers)


def creates(sandbox) -> int:
    return sandbox.state()["create_requests"]


def test_same_key_and_body_replays_the_first_answer_and_starts_once(client, auth, sandbox):
    call, key = str(uuid.uuid4()), str(uuid.uuid4())
    first = start(client, auth, call, key, channels="dual")
    assert first.status_code == 201 and "Idempotent-Replayed" not in first.headers
    # Defaults applied, the same request: {"channels": "dual"} and its spelled-out form.
    again = start(client, auth, call, key, channels="dual", track="both", trim="do-not-trim")
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == first.get_json()
    assert again.headers["Location"] == first.headers["Location"] == f"/api/recordings/{first.get_json()['sid']}"
    assert creates(sandbox) == 1 and len(sandbox.recordings) == 1


def test_without_a_key_every_request_is_a_new_start(client, auth, sandbox):
    call = str(uuid.uuid4())
    sids = {start(client, auth, call).get_json()["sid"] for _ in range(2)}
    assert len(sids) == 2 and creates(sandbox) == 2


def test_same_key_with_another_request_is_422_and_nothing_is_sent(client, auth, sandbox):
    call, key = str(uuid.uuid4()), str(uuid.uuid4())
    assert start(client, auth, call, key).status_code == 201
    for response in (start(client, auth, call, key, channels="dual"), start(client, auth, str(uuid.uuid4()), key)):
        assert response.status_code == 422
        error = response.get_json()["error"]
        assert error["fields"] == {"Idempotency-Key": ["was used with a different request"]}
    assert creates(sandbox) == 1


@pytest.mark.parametrize("key", ["", "k" * 256, "tab\tinside", "caf\xe9", " "])
def test_malformed_key_is_422_naming_the_header_and_nothing_is_sent(client, auth, sandbox, key):
    response = start(client, auth, str(uuid.uuid4()), key)
    assert response.status_code == 422, response.get_data(as_text=True)
    assert "Idempotency-Key" in response.get_json()["error"]["fields"]
    assert creates(sandbox) == 0


def test_longest_key_is_accepted(client, auth):
    assert start(client, auth, str(uuid.uuid4()), "k" * 255).status_code == 201


def test_keys_are_scoped_to_the_token(env, store, sandbox):
    other = "second-api-token-0123456789"
    app = create_app(load_settings(dict(env, SERVICE_API_TOKEN=f"{API_TOKEN},{other}")))
    try:
        client, call, key = app.test_client(), str(uuid.uuid4()), str(uuid.uuid4())
        one = start(client, {"Authorization": f"Bearer {API_TOKEN}"}, call, key)
        two = start(client, {"Authorization": f"Bearer {other}"}, call, key)
        assert one.status_code == two.status_code == 201
        assert one.get_json()["sid"] != two.get_json()["sid"] and creates(sandbox) == 2
        with store.engine.connect() as conn:
            scopes = conn.execute(sa.select(IdempotencyKeyRow.scope)).scalars().all()
        # Each token's scope is its hash; neither token is stored.
        assert len(set(scopes)) == 2 and not {API_TOKEN, other} & set(scopes)
    finally:
        app.extensions["services"].close()


def test_a_start_signalwire_refused_is_kept_and_replayed(client, auth, sandbox):
    call, key = str(uuid.uuid4()), str(uuid.uuid4())
    sandbox.end_call(call)
    first = start(client, auth, call, key)
    assert first.status_code == 409 and first.get_json()["error"]["signalwire"]["code"] == 21220
    again = start(client, auth, call, key)
    assert again.status_code == 409 and again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == first.get_json() and creates(sandbox) == 1


@pytest.mark.parametrize("status, answered", [(500, 502), (503, 502), (429, 429)])
def test_a_start_signalwire_did_not_decide_may_be_retried_under_the_same_key(client, auth, sandbox, status,
                                                                            answered):
    call, key = str(uuid.uuid4()), str(uuid.uuid4())
    sandbox.fail_next(status, retry_after=60)  # a wait longer than the client's: no retry of its own
    assert start(client, auth, call, key).status_code == answered
    retry = start(client, auth, call, key)
    assert retry.status_code == 201 and "Idempotent-Replayed" not in retry.headers
    assert len(sandbox.recordings) == 1


def test_a_start_past_its_budget_is_504_and_its_key_is_free_again(app, client, auth, sandbox):
    services = app.extensions["services"]
    settings = services.settings
    services.__dict__["signalwire"] = SignalWireClient(
        sandbox.base_url, settings.signalwire_project_id, settings.signalwire_api_token, create_budget=0.5)
    call, key = str(uuid.uuid4()), str(uuid.uuid4())
    sandbox.latency = 2.0
    started = time.monotonic()
    response = start(client, auth, call, key)
    assert time.monotonic() - started < 1.5
    assert response.status_code == 504
    assert "Idempotency-Key" in response.get_json()["error"]["message"]
    sandbox.latency = 0
    retry = start(client, auth, call, key)
    assert retry.status_code == 201 and "Idempotent-Replayed" not in retry.headers


def test_keys_that_cannot_be_checked_are_503_and_nothing_is_sent(client, auth, sandbox, store):
    with store.engine.begin() as conn:  # the key store is gone: fail closed, not start unguarded
        conn.execute(sa.text("DROP TABLE idempotency_keys"))
    response = start(client, auth, str(uuid.uuid4()), str(uuid.uuid4()))
    assert response.status_code == 503 and response.headers["Retry-After"] == "5"
    assert "Idempotency-Key" in response.get_json()["error"]["message"]
    assert creates(sandbox) == 0
    assert start(client, auth, str(uuid.uuid4())).status_code == 201  # without a key: as ever


def test_twenty_racing_retries_start_one_recording(client, auth, sandbox):
    """Twenty clients send the same start with the same key at once while SignalWire is slow:
    SignalWire gets one Create; the others are told it is in progress (409), and once it is
    done every retry gets its answer."""
    call, key = str(uuid.uuid4()), str(uuid.uuid4())
    sandbox.latency = 0.5
    barrier = threading.Barrier(20)
    answers: list = [None] * 20

    def send(i: int) -> None:
        barrier.wait(timeout=10)
        response = start(client, auth, call, key, events=["completed"])
        answers[i] = (response.status_code, response.get_json(), response.headers.get("Location"))

    threads = [threading.Thread(target=send, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert all(answer is not None for answer in answers)
    statuses = sorted(status for status, _, _ in answers)
    assert set(statuses) <= {201, 409} and 201 in statuses, statuses
    assert creates(sandbox) == 1
    sandbox.latency = 0
    sids = {body["sid"] for status, body, _ in answers if status == 201}
    replay = start(client, auth, call, key, events=["completed"])
    assert replay.status_code == 201 and {replay.get_json()["sid"]} == sids
    assert creates(sandbox) == 1


# --- the key store --------------------------------------------------------------------------


def test_claim_then_replay_then_expiry(store):
    keys = IdempotencyKeys(store)
    claim = keys.claim("scope", "k1", "fp")
    assert claim.state == "new" and claim.lock
    assert keys.claim("scope", "k1", "fp").state == "in_flight"
    assert keys.claim("scope", "k1", "other").state == "mismatch"
    assert keys.complete("scope", "k1", claim.lock, 201, {"sid": "RE1"}, {"Location": "/x"})
    replay = keys.claim("scope", "k1", "fp")
    assert (replay.state, replay.status, replay.body, replay.headers) == ("replay", 201, {"sid": "RE1"},
                                                                          {"Location": "/x"})
    assert keys.claim("another-scope", "k1", "fp").state == "new"

    expired = IdempotencyKeys(store, ttl=timedelta(seconds=-1))
    expired.claim("scope", "old", "fp")
    keys.claim("scope", "k2", "fp")  # any claim clears what has expired
    with store.engine.connect() as conn:
        left = set(conn.execute(sa.select(IdempotencyKeyRow.key)).scalars())
    assert "old" not in left and {"k1", "k2"} <= left


def test_released_key_and_dead_claim_can_be_taken_again(store):
    keys = IdempotencyKeys(store)
    claim = keys.claim("scope", "k", "fp")
    keys.release("scope", "k", claim.lock)
    retry = keys.claim("scope", "k", "fp")
    assert retry.state == "new"
    # The claim of a request that died: once its lease is over, a retry takes it over, and the
    # dead request can no longer record an answer under it.
    impatient = IdempotencyKeys(store, lease=timedelta(0))
    taken = impatient.claim("scope", "k", "fp")
    assert taken.state == "new" and taken.lock != retry.lock
    assert not keys.complete("scope", "k", retry.lock, 201, {}, {})
    assert keys.complete("scope", "k", taken.lock, 201, {"sid": "RE2"}, {})


def _slow_client(app, sandbox, budget: float) -> None:
    services = app.extensions["services"]
    settings = services.settings
    services.__dict__["signalwire"] = SignalWireClient(
        sandbox.base_url, settings.signalwire_project_id, settings.signalwire_api_token, create_budget=budget)


def test_retry_after_504_takes_the_recording_the_first_attempt_started(app, client, auth, sandbox):
    _slow_client(app, sandbox, budget=0.5)
    call, key = str(uuid.uuid4()), str(uuid.uuid4())
    sandbox.latency = 1.0
    assert start(client, auth, call, key).status_code == 504
    # SignalWire did start it, after this service stopped waiting.
    deadline = time.monotonic() + 5
    while not sandbox.recordings and time.monotonic() < deadline:
        time.sleep(0.05)
    [started] = sandbox.recordings
    sandbox.latency = 0
    retry = start(client, auth, call, key)
    assert retry.status_code == 201 and retry.get_json()["sid"] == started
    assert retry.headers["Location"] == f"/api/recordings/{started}"
    assert creates(sandbox) == 1  # not started a second time
    stored = client.get(f"/api/recordings/{started}", headers=auth).get_json()
    assert stored["started_by_us"] is True and stored["requested"]["channels"] == "mono"
    replay = start(client, auth, call, key)
    assert replay.headers["Idempotent-Replayed"] == "true" and replay.get_json()["sid"] == started


def test_retry_after_504_starts_one_if_the_first_attempt_did_not(app, client, auth, sandbox):
    _slow_client(app, sandbox, budget=0.5)
    call, key = str(uuid.uuid4()), str(uuid.uuid4())
    # Another recording on the call, started before: not this start's.
    other = start(client, auth, call).get_json()["sid"]
    sandbox.latency = 1.0
    sandbox.fail_next(500)  # slow, and then no recording at all
    assert start(client, auth, call, key).status_code == 504
    time.sleep(0.7)
    sandbox.latency = 0
    retry = start(client, auth, call, key)
    assert retry.status_code == 201 and retry.get_json()["sid"] != other
    assert creates(sandbox) == 2 and len(sandbox.recordings) == 2
