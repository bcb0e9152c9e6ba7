"""The sender against a real receiver over loopback HTTP (and HTTPS), on SQLite and
PostgreSQL: every request is verified by the receiver with the `standardwebhooks` package."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path

import pytest

from service.notify.deliver import HttpDeliverer
from service.notify.sender import Sender
from devstack.webhook_receiver import WebhookReceiver
from tests.test_notify import resolver_for
from tests.test_store import full_recording

FAST = (0, 0.2, 0.2, 0.2)  # the specification's schedule, in tenths of seconds
TEST_CERT = Path(__file__).parent / "fixtures" / "tls" / "localhost.pem"


@contextlib.contextmanager
def sending(store, *, allow_private=True, schedule=FAST, timeout=2.0, **deliverer_options):
    deliverer = HttpDeliverer(allow_private=allow_private, timeout=timeout, **deliverer_options)
    sender = Sender(store.notifications, deliverer, schedule=schedule, concurrency=4, poll_interval=0.1,
                    lease_seconds=timeout * 2 + 1)
    stop = threading.Event()
    thread = threading.Thread(target=sender.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield sender
    finally:
        stop.set()
        thread.join(5)
        deliverer.close()


def subscribe(store, receiver: WebhookReceiver, url: str | None = None, events=None) -> str:
    created, secret = store.notifications.create_endpoint(url or receiver.url, events)
    receiver.secrets.append(secret)
    return created["id"]


def settled(store, delivery_id: str, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        shown = store.notifications.get_delivery(delivery_id)
        if shown and shown["status"] != "pending" or time.monotonic() > deadline:
            return shown
        time.sleep(0.05)


def only_delivery(store) -> dict:
    [endpoint] = store.notifications.list_endpoints()
    [delivery], _ = store.notifications.list_deliveries(endpoint["id"])
    return delivery


def test_a_stored_outcome_reaches_the_receiver_signed(store, webhook_receiver):
    endpoint = subscribe(store, webhook_receiver)
    with sending(store):
        store.save_metadata(full_recording("RE1", status="absent", duration=0))
        [got] = webhook_receiver.wait_for(lambda r: len(r) >= 1)
        delivery = settled(store, only_delivery(store)["id"])
    assert got.verified_with and got.status == 204 and got.path == "/hooks"
    assert got.webhook_id == delivery["id"] and got.webhook_id.endswith(endpoint)
    assert got.headers["Content-Type"] == "application/json"
    assert got.payload == {"type": "recording.absent", "timestamp": got.payload["timestamp"],
                           "data": {"recording_sid": "RE1", "call_sid": "call-1", "account_sid": "acc-1",
                                    "status": "absent", "duration": 0, "channels": 2, "started_by_us": False}}
    assert (delivery["status"], delivery["attempts"], delivery["last_status"]) == ("delivered", 1, 204)
    assert delivery["next_attempt_at"] is None and delivery["last_error"] is None


def test_failed_attempts_are_retried_with_the_same_webhook_id_and_fresh_signatures(store, webhook_receiver):
    subscribe(store, webhook_receiver)
    webhook_receiver.status = 500
    with sending(store):
        store.save_metadata(full_recording("RE1"))
        webhook_receiver.wait_for(lambda r: len(r) >= 2)
        webhook_receiver.status = 204
        got = webhook_receiver.wait_for(lambda r: any(d.status == 204 for d in r))
        delivery = settled(store, only_delivery(store)["id"])
    assert [d.status for d in got] == [500, 500, 204]
    assert len({d.webhook_id for d in got}) == 1 and all(d.verified_with for d in got)
    assert len({d.body for d in got}) == 1
    assert all(b.at - a.at >= 0.2 for a, b in zip(got, got[1:]))  # the schedule's delays
    assert (delivery["status"], delivery["attempts"]) == ("delivered", 3)


def test_a_spent_schedule_fails_the_delivery_and_replay_sends_it_again(store, webhook_receiver):
    subscribe(store, webhook_receiver)
    webhook_receiver.status = 503
    with sending(store, schedule=(0, 0.1, 0.1)):
        store.save_metadata(full_recording("RE1"))
        delivery = settled(store, only_delivery(store)["id"])
        assert (delivery["status"], delivery["attempts"], delivery["last_status"]) == ("failed", 3, 503)
        assert delivery["last_error"] == "answered 503"
        webhook_receiver.status = 200
        store.notifications.replay(delivery["id"])
        replayed = settled(store, delivery["id"])
    assert replayed["status"] == "delivered" and replayed["attempts"] == 1
    assert [d.status for d in webhook_receiver.received] == [503, 503, 503, 200]
    assert len({d.webhook_id for d in webhook_receiver.received}) == 1


def test_a_redirect_is_a_failure_and_is_not_followed(store, webhook_receiver):
    subscribe(store, webhook_receiver)
    webhook_receiver.status = 307
    webhook_receiver.headers = {"Location": "/elsewhere"}
    with sending(store, schedule=(0,)):
        store.save_metadata(full_recording("RE1"))
        delivery = settled(store, only_delivery(store)["id"])
        time.sleep(0.3)
    assert (delivery["status"], delivery["last_status"]) == ("failed", 307)
    assert [d.path for d in webhook_receiver.received] == ["/hooks"]


def test_410_disables_the_endpoint(store, webhook_receiver):
    endpoint = subscribe(store, webhook_receiver)
    webhook_receiver.status = 410
    with sending(store):
        store.save_metadata(full_recording("RE1"))
        delivery = settled(store, only_delivery(store)["id"])
        store.save_metadata(full_recording("RE2"))  # a disabled endpoint is owed nothing more
        time.sleep(0.5)
    assert (delivery["status"], delivery["attempts"], delivery["last_status"]) == ("failed", 1, 410)
    shown = store.notifications.get_endpoint(endpoint)
    assert shown["disabled"] is True and "410" in shown["disabled_reason"]
    assert len(webhook_receiver.received) == 1
    assert len(store.notifications.list_deliveries(endpoint)[0]) == 1


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_is_honoured(store, webhook_receiver, status):
    subscribe(store, webhook_receiver)
    webhook_receiver.status = status
    webhook_receiver.headers = {"Retry-After": "2"}
    with sending(store, schedule=(0, 0.1)):
        store.save_metadata(full_recording("RE1"))
        first, second = webhook_receiver.wait_for(lambda r: len(r) >= 2, timeout=10)
    assert second.at - first.at >= 1.9  # not the schedule's 0.1 s


def test_a_receiver_slower_than_the_timeout_is_a_failed_attempt(store, webhook_receiver):
    subscribe(store, webhook_receiver)
    webhook_receiver.delay = 2.0
    with sending(store, schedule=(0,), timeout=0.5):
        store.save_metadata(full_recording("RE1"))
        delivery = settled(store, only_delivery(store)["id"])
    assert (delivery["status"], delivery["last_status"], delivery["last_error"]) == ("failed", None, "timed out")


def test_after_a_rotation_both_secrets_sign(store, webhook_receiver):
    endpoint = subscribe(store, webhook_receiver)
    old = webhook_receiver.secrets[0]
    new = store.notifications.rotate_secret(endpoint)
    webhook_receiver.secrets[:] = [new]  # a receiver already on the new secret
    with sending(store):
        store.save_metadata(full_recording("RE1"))
        [got] = webhook_receiver.wait_for(lambda r: len(r) >= 1)
    assert got.verified_with == new and len(got.headers["Webhook-Signature"].split(" ")) == 2
    webhook_receiver.secrets[:] = [old]  # and one still on the old
    with sending(store):
        store.save_metadata(full_recording("RE2"))
        got = webhook_receiver.wait_for(lambda r: len(r) >= 2)
    assert got[1].verified_with == old and got[1].status == 204


# --- SSRF at delivery time -------------------------------------------------------------------


def test_private_addresses_are_refused_at_delivery_unless_allowed(store, webhook_receiver):
    # Created while allowed (the tests' setting), delivered by a sender that is not: every
    # delivery re-checks, so nothing reaches the loopback receiver.
    subscribe(store, webhook_receiver)
    subscribe(store, webhook_receiver, url=webhook_receiver.url.replace("http://", "https://"))
    with sending(store, allow_private=False, schedule=(0,)):
        store.save_metadata(full_recording("RE1"))
        time.sleep(0.5)
        errors = sorted(settled(store, d["id"])["last_error"] for e in store.notifications.list_endpoints()
                        for d in store.notifications.list_deliveries(e["id"])[0])
    assert errors == ["refused: host '127.0.0.1' resolves to a non-public address (127.0.0.1)",
                      "refused: must be an https:// URL"]
    assert webhook_receiver.received == []


def test_the_connection_goes_to_the_checked_address_with_the_name_as_host(store, webhook_receiver):
    calls: list[str] = []
    resolver = resolver_for({"hooks.example.test": ["127.0.0.1"]}, calls)
    subscribe(store, webhook_receiver, url=f"http://hooks.example.test:{webhook_receiver.port}/hooks")
    with sending(store, resolver=resolver):
        store.save_metadata(full_recording("RE1"))
        [got] = webhook_receiver.wait_for(lambda r: len(r) >= 1)
    assert got.headers["Host"] == f"hooks.example.test:{webhook_receiver.port}" and got.status == 204
    assert calls == ["hooks.example.test"]  # resolved once, for the check; the connection used its answer


def test_a_name_rebound_to_a_private_address_is_refused_without_connecting(store, webhook_receiver):
    answers = iter([["93.184.216.34"], ["93.184.216.34", "127.0.0.1"]])

    def rebinding(host, port, type=0, **_):
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in next(answers)]

    from service.notify.addresses import check_endpoint

    url = f"https://rebind.example.test:{webhook_receiver.port}/hooks"
    check_endpoint(url, resolver=rebinding)  # public when the endpoint was created
    subscribe(store, webhook_receiver, url=url)
    with sending(store, allow_private=False, schedule=(0,), resolver=rebinding):
        store.save_metadata(full_recording("RE1"))
        delivery = settled(store, only_delivery(store)["id"])
    assert delivery["last_error"].startswith("refused:") and "127.0.0.1" in delivery["last_error"]
    assert webhook_receiver.received == []


def test_https_by_address_checks_the_certificate_against_the_name():
    receiver = WebhookReceiver(tls_pem=str(TEST_CERT), secrets=["whsec_" + "A" * 43 + "="]).start()
    try:
        names = resolver_for({"localhost": ["127.0.0.1"], "hooks.example.test": ["127.0.0.1"]})
        deliverer = HttpDeliverer(allow_private=True, timeout=2, resolver=names, ca_certs=str(TEST_CERT))
        from service.notify.signing import signature_headers

        content = b'{"type":"recording.started"}'
        ok = deliverer.post(f"https://localhost:{receiver.port}/hooks", content,
                            signature_headers("msg_1", content, receiver.secrets))
        # The same address under a name the certificate does not cover: refused by TLS.
        wrong = deliverer.post(f"https://hooks.example.test:{receiver.port}/hooks", content,
                               signature_headers("msg_2", content, receiver.secrets))
        deliverer.close()
    finally:
        receiver.stop()
    assert ok.status == 204 and ok.delivered
    assert wrong.status is None and wrong.error == "TLS error"
    assert [d.webhook_id for d in receiver.received] == ["msg_1"]


def test_a_clean_stop_writes_the_outcome_of_the_delivery_in_flight(store, webhook_receiver):
    subscribe(store, webhook_receiver)
    webhook_receiver.delay = 0.5
    with sending(store):
        store.save_metadata(full_recording("RE1"))
        deadline = time.monotonic() + 10
        while only_delivery(store)["attempts"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        # Claimed and on its way: the stop comes while the receiver takes its time.
    delivery = only_delivery(store)
    assert (delivery["status"], delivery["last_status"]) == ("delivered", 204)
    assert len(webhook_receiver.received) == 1


def test_secrets_never_reach_the_logs(store, webhook_receiver, caplog):
    caplog.set_level("DEBUG")
    endpoint = subscribe(store, webhook_receiver)
    rotated = store.notifications.rotate_secret(endpoint)
    webhook_receiver.status = 500  # failures are what get logged
    with sending(store, schedule=(0, 0.1)):
        store.save_metadata(full_recording("RE1"))
        settled(store, only_delivery(store)["id"])
    assert "failed after 2 attempts" in caplog.text
    for secret in (*webhook_receiver.secrets, rotated, rotated.removeprefix("whsec_")):
        assert secret not in caplog.text
