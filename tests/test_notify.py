"""Notifications without the database: signatures against the specification, the SSRF rules,
the retry schedule and what each answer means."""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
import socket
from datetime import datetime, timedelta, timezone

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from service.notify.addresses import UnsafeUrl, check_endpoint, check_url, is_public, resolve
from service.notify.deliver import Answer, _retry_after
from service.notify.events import ABSENT, COMPLETED, FAILED, JITTER, RETRY_SCHEDULE, next_attempt, terminal_event
from service.notify.sender import body, decide
from service.notify.signing import new_secret, signature_headers

NOW = datetime(2026, 5, 1, 12, 0, 0, tzinfo=timezone.utc)


# --- signing ---------------------------------------------------------------------------------


def test_secrets_are_whsec_and_base64_of_32_random_bytes():
    secret = new_secret()
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 32
    assert new_secret() != secret


def test_signatures_are_the_specifications_hmac_and_verify_with_the_reference_package():
    secret, msg_id, content = new_secret(), "msg_abc_ep_def", b'{"type":"recording.completed"}'
    headers = signature_headers(msg_id, content, [secret], NOW)
    assert headers["webhook-id"] == msg_id and headers["webhook-timestamp"] == str(int(NOW.timestamp()))
    # By hand, from the specification: base64(HMAC-SHA256(key, "id.timestamp.body")), versioned v1.
    key = base64.b64decode(secret.removeprefix("whsec_"))
    expected = base64.b64encode(hmac.new(key, f"{msg_id}.{int(NOW.timestamp())}.".encode() + content,
                                         hashlib.sha256).digest()).decode()
    assert headers["webhook-signature"] == f"v1,{expected}"
    fresh = signature_headers(msg_id, content, [secret])
    assert Webhook(secret).verify(content, fresh) == {"type": "recording.completed"}
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(content, fresh)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(content + b" ", fresh)
    with pytest.raises(ValueError):
        signature_headers(msg_id, content, [])


def test_during_a_rotation_each_secret_verifies_its_own_signature():
    new, old = new_secret(), new_secret()
    headers = signature_headers("msg_1", b"{}", [new, old])
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (new, old):
        Webhook(secret).verify(b"{}", headers)


def test_the_body_is_the_same_bytes_whatever_order_the_database_kept():
    stored = {"data": {"status": "completed", "recording_sid": "RE1", "started_by_us": True, "channels": 1,
                       "duration": 3, "account_sid": "AC", "call_sid": "CA"},
              "timestamp": "2026-05-01T12:00:00+00:00", "type": "recording.completed"}
    reordered = {"type": stored["type"], "data": dict(reversed(list(stored["data"].items()))),
                 "timestamp": stored["timestamp"]}
    assert body(stored) == body(reordered)
    assert body(stored).startswith(b'{"type":"recording.completed","timestamp":')


# --- the event types and the schedule ----------------------------------------------------------


def test_terminal_statuses_and_their_events():
    assert [terminal_event(s) for s in ("completed", "absent", "failed", "deleted", "in-progress", None)] == [
        COMPLETED, ABSENT, FAILED, FAILED, None, None]


def test_the_retry_schedule_is_the_specifications_with_jitter():
    assert RETRY_SCHEDULE == (0, 5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400)
    rng = random.Random(1)
    for attempts, delay in enumerate(RETRY_SCHEDULE):
        waits = [(next_attempt(attempts, NOW, rng=rng) - NOW).total_seconds() for _ in range(50)]
        assert all(delay <= w <= delay * (1 + JITTER) for w in waits)
        if delay:
            assert len(set(waits)) > 1  # jittered
    assert next_attempt(len(RETRY_SCHEDULE), NOW) is None


def test_retry_after_is_honoured_and_bounded():
    assert next_attempt(1, NOW, (0, 5), retry_after=120) - NOW == timedelta(seconds=120)
    assert (next_attempt(1, NOW, (0, 5), retry_after=1) - NOW).total_seconds() >= 5  # never earlier than the schedule
    assert next_attempt(1, NOW, (0, 5), retry_after=10**9) - NOW == timedelta(hours=24)
    assert _retry_after("30") == 30 and _retry_after("nan") is None and _retry_after("soon") is None
    assert _retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0  # a date in the past: now
    assert _retry_after(None) is None


def test_what_each_answer_means():
    schedule = (0, 5, 300)
    assert decide(Answer(status=204), 1, NOW, schedule).status == "delivered"
    assert decide(Answer(status=200), 3, NOW, schedule).status == "delivered"
    gone = decide(Answer(status=410), 1, NOW, schedule)
    assert gone.status == "failed" and gone.disable_endpoint
    for answer in (Answer(status=301), Answer(status=500), Answer(status=400), Answer(error="timed out")):
        retry = decide(answer, 1, NOW, schedule, random.Random(1))
        assert retry.status == "pending" and 5 <= (retry.next_attempt_at - NOW).total_seconds() <= 5.5
        assert retry.error == (answer.error or f"answered {answer.status}")
        assert decide(answer, 3, NOW, schedule).status == "failed"  # the schedule is spent
    throttled = decide(Answer(status=429, retry_after=60), 1, NOW, schedule)
    assert throttled.status == "pending" and throttled.next_attempt_at - NOW == timedelta(seconds=60)


# --- SSRF ------------------------------------------------------------------------------------


@pytest.mark.parametrize("address", ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254",
                                     "100.64.0.1", "0.0.0.0", "224.0.0.1", "255.255.255.255", "::1", "fe80::1",
                                     "fd00:ec2::254", "fc00::1", "::ffff:127.0.0.1", "::ffff:169.254.169.254",
                                     "64:ff9b::a9fe:a9fe", "2002:7f00:1::", "::"])
def test_non_public_addresses_are_refused(address):
    assert not is_public(address)


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700::1", "64:ff9b::808:808"])
def test_public_addresses_are_allowed(address):
    assert is_public(address)


@pytest.mark.parametrize("url, why", [
    ("http://hooks.example.com/", "https"), ("ftp://hooks.example.com/", "https"), ("https:///path", "no host"),
    ("https://user:pw@hooks.example.com/", "credentials"), ("https://hooks.example.com/#x", "fragment"),
    ("https://hooks.example.com:99999/", "valid"), ("https://hooks.example.com/a b", "spaces"),
    ("https://hooks.example.com/" + "a" * 2048, "2048"),
])
def test_endpoint_urls_must_be_https_and_plain(url, why):
    with pytest.raises(UnsafeUrl, match=why):
        check_url(url)


def resolver_for(mapping: dict[str, list[str]], calls: list[str] | None = None):
    """A resolver (getaddrinfo's shape) answering from a table: no network in tests."""

    def getaddrinfo(host, port, type=0, **_):
        if calls is not None:
            calls.append(host)
        if host not in mapping:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
                for a in mapping[host]]

    return getaddrinfo


def test_every_address_a_name_resolves_to_must_be_public():
    resolver = resolver_for({"good.example": ["93.184.216.34", "2606:4700::1"],
                             "mixed.example": ["93.184.216.34", "10.0.0.5"],
                             "metadata.example": ["169.254.169.254"]})
    assert resolve("good.example", 443, resolver=resolver) == ["93.184.216.34", "2606:4700::1"]
    with pytest.raises(UnsafeUrl, match="10.0.0.5"):
        resolve("mixed.example", 443, resolver=resolver)
    with pytest.raises(UnsafeUrl, match="non-public"):
        check_endpoint("https://metadata.example/x", resolver=resolver)
    with pytest.raises(UnsafeUrl, match="does not resolve"):
        check_endpoint("https://nowhere.example/x", resolver=resolver)
    with pytest.raises(UnsafeUrl, match="non-public"):
        check_endpoint("https://127.0.0.1/x")  # an address literal is checked too
    check_endpoint("https://good.example/x", resolver=resolver)


def test_allow_private_lifts_both_rules():
    check_endpoint("http://127.0.0.1:8080/hooks", allow_private=True)
    check_endpoint("https://localhost/hooks", allow_private=True)
    assert resolve("10.0.0.5", 80, allow_private=True) == ["10.0.0.5"]
