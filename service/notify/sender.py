"""The sender: drains the outbox from a worker process, at least once.

It claims due deliveries with a lease (service.store.notifications), hands them to a few
daemon threads that each sign and POST one (service.notify.signing, service.notify.deliver),
and writes every outcome: delivered, due again on the retry schedule, or failed for good. A
worker that dies mid-delivery leaves its claims to expire, and another sender sends them again
with the same webhook-id. Sending from the workers' own threads, rather than through RQ jobs,
keeps the outbox the only record of what is owed, and notifications keep flowing while Redis
is down.

A transaction that writes deliveries in this process wakes the sender at once
(`notifications.enqueued`); otherwise it looks every `poll_interval` seconds, which is also
how deliveries written by other processes (the web's `recording.started`) and retries that
come due are found.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import queue
import random
import threading
from datetime import datetime, timezone

from service.notify.deliver import Answer, HttpDeliverer
from service.notify.events import DATA_FIELDS, RETRY_SCHEDULE, next_attempt
from service.notify.signing import signature_headers
from service.store import notifications
from service.store.notifications import DELIVERED, FAILED, PENDING, Claim

log = logging.getLogger(__name__)

# After a claim, the least wait before the next: writes arriving together leave together,
# and a busy worker does not claim once per write.
CLAIM_GAP = 0.025


@dataclasses.dataclass(frozen=True)
class Outcome:
    status: str
    next_attempt_at: datetime | None
    error: str | None
    disable_endpoint: str | None = None


def decide(answer: Answer, attempts: int, now: datetime, schedule: tuple[float, ...] = RETRY_SCHEDULE,
           rng: random.Random | None = None) -> Outcome:
    """What an attempt's answer means: 2xx delivered; 410 failed, and the endpoint disabled;
    anything else (3xx included: no redirect is followed) tried again on the schedule, not
    before a 429's or 503's Retry-After, until the schedule is spent."""
    if answer.delivered:
        return Outcome(DELIVERED, None, None)
    if answer.gone:
        return Outcome(FAILED, None, "answered 410 Gone", disable_endpoint="the endpoint answered 410 Gone")
    error = answer.error or f"answered {answer.status}"
    when = next_attempt(attempts, now, schedule, answer.retry_after, rng)
    return Outcome(PENDING, when, error) if when is not None else Outcome(FAILED, None, error)


def body(payload: dict) -> bytes:
    """The request body: the stored payload in a fixed key order (PostgreSQL's JSONB keeps no
    order), so every attempt sends, and signs, the same bytes."""
    data = payload.get("data") or {}
    ordered = {name: data[name] for name in (*DATA_FIELDS, "media") if name in data}
    return json.dumps({"type": payload.get("type"), "timestamp": payload.get("timestamp"), "data": ordered},
                      separators=(",", ":")).encode()


class Sender:
    def __init__(self, store: notifications.Notifications, deliverer: HttpDeliverer, *,
                 schedule: tuple[float, ...] = RETRY_SCHEDULE, concurrency: int = 8, poll_interval: float = 1.0,
                 lease_seconds: float = 35.0, rng: random.Random | None = None):
        self.store = store
        self.deliverer = deliverer
        self.schedule = schedule
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self.lease_seconds = lease_seconds
        self.rng = rng or random.Random()
        self._work: queue.Queue[Claim] = queue.Queue()
        self._in_flight = 0
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []

    def run(self, stop: threading.Event) -> None:
        """Claim and dispatch until `stop` is set (runs in its own thread)."""
        for i in range(self.concurrency):
            thread = threading.Thread(target=self._send_loop, name=f"notify-send-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        while not stop.is_set():
            with self._cond:
                self._cond.wait_for(lambda: self._in_flight < self.concurrency or stop.is_set(), self.poll_interval)
                free = self.concurrency - self._in_flight
            if free <= 0 or stop.is_set():
                continue
            notifications.enqueued.clear()  # a write committed after this is seen: it sets it again
            try:
                claims = self.store.claim(free, self.lease_seconds)
            except Exception as exc:  # the database is away: try again later, never stop
                log.warning("notifications: could not claim deliveries: %s: %s", type(exc).__name__, exc)
                stop.wait(self.poll_interval)
                continue
            with self._cond:
                self._in_flight += len(claims)
            for claim in claims:
                self._work.put(claim)
            if stop.wait(CLAIM_GAP) or len(claims) == free:
                continue  # a full claim: more may be due
            notifications.enqueued.wait(self.poll_interval)

    def _send_loop(self) -> None:
        while True:
            claim = self._work.get()
            try:
                self.attempt(claim)
            except Exception as exc:  # its lease runs out and it is sent again
                log.warning("notifications: delivery %s failed unexpectedly: %s: %s", claim.id,
                            type(exc).__name__, exc)
            finally:
                with self._cond:
                    self._in_flight -= 1
                    self._cond.notify()

    def attempt(self, claim: Claim) -> Outcome:
        """One attempt at a claimed delivery, its outcome written."""
        now = datetime.now(timezone.utc)
        if claim.url is None:
            outcome = Outcome(FAILED, None, "the endpoint is disabled")
            answer = Answer(error=outcome.error)
        else:
            content = body(claim.payload)
            answer = self.deliverer.post(claim.url, content, signature_headers(claim.id, content, list(claim.keys), now))
            outcome = decide(answer, claim.attempts, now, self.schedule, self.rng)
        written = self.store.finish(claim, status=outcome.status, last_status=answer.status, last_error=outcome.error,
                                    next_attempt_at=outcome.next_attempt_at, disable_endpoint=outcome.disable_endpoint)
        if not written:
            log.info("notifications: delivery %s: lease lost, another sender has it", claim.id)
        elif outcome.status == PENDING:
            log.info("notifications: delivery %s to %s, attempt %d: %s; next at %s", claim.id, claim.endpoint_id,
                     claim.attempts, outcome.error, outcome.next_attempt_at.isoformat())
        elif outcome.status == FAILED:
            log.warning("notifications: delivery %s to %s failed after %d attempts: %s%s", claim.id, claim.endpoint_id,
                        claim.attempts, outcome.error,
                        f"; endpoint disabled ({outcome.disable_endpoint})" if outcome.disable_endpoint else "")
        return outcome


def lease_for(timeout: float) -> float:
    """Long enough for an attempt (connect and answer, each within the timeout) to finish
    before another sender may take its delivery over."""
    return 2 * timeout + 5
