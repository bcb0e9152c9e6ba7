"""The sender: drains the outbox from a worker process, at least once.

It claims due deliveries with a lease (service.store.notifications), hands them to a few
daemon threads that each sign and POST one (service.notify.signing, service.notify.deliver),
and writes every outcome: delivered, due again on the retry schedule, or failed for good. A
worker that dies mid-delivery leaves its claims to expire, and another sender sends them again
with the same webhook-id. Sending from the workers' own threads, rather than through RQ jobs,
keeps the outbox the only record of what is owed, and notifications keep flowing while Redis
is down.

A transaction that writes deliveries in this process wakes the sender at once
(`notifications.wake_sender`); otherwise it looks every `poll_interval` seconds, which is also
how deliveries written by other processes (the web's `recording.started`) and retries that
come due are found. Outcomes are written together with the next claim.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import queue
import random
import threading
import time
from datetime import datetime, timezone

from service.notify.deliver import Answer, HttpDeliverer
from service.notify.events import DATA_FIELDS, RETRY_SCHEDULE, next_attempt
from service.notify.signing import signature_headers
from service.observability import metrics
from service.store import notifications
from service.store.notifications import DELIVERED, FAILED, PENDING, Claim, Result

log = logging.getLogger(__name__)
_RESULTS = {DELIVERED: "delivered", PENDING: "retried", FAILED: "failed"}

# After a claim, the least wait before the next: writes arriving together leave together,
# and a busy worker does not claim once per write.
CLAIM_GAP = 0.05


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
        self._done: queue.Queue[Result] = queue.Queue()
        self._in_flight = 0
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def run(self, stop: threading.Event) -> None:
        """Claim, dispatch and write outcomes until `stop` is set (runs in its own thread).

        Outcomes are written with the next claim, in one transaction: on SQLite every write
        transaction takes the database's one write lock, and the workers' jobs need it too.
        """
        for i in range(self.concurrency):
            thread = threading.Thread(target=self._send_loop, name=f"notify-send-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        unwritten: list[Result] = []
        while not stop.is_set():
            notifications.wake_sender.clear()  # whatever happens after this wakes the next round
            unwritten += _drain(self._done)
            with self._lock:
                # Claimed ahead of the threads (up to as many again), so a busy sender takes its
                # deliveries in fewer claims; each waits for a thread well within its lease.
                free = 2 * self.concurrency - self._in_flight
            try:
                claims = self.store.claim(free, self.lease_seconds, results=unwritten)
            except Exception as exc:  # the database is away: try again later, never stop
                log.warning("notifications: could not write outcomes or claim deliveries: %s: %s",
                            type(exc).__name__, exc)
                stop.wait(self.poll_interval)
                continue
            self._log(unwritten)
            unwritten = []
            with self._lock:
                self._in_flight += len(claims)
            for claim in claims:
                self._work.put(claim)
            if stop.wait(CLAIM_GAP):
                break
            if (claims and len(claims) == free) or not self._done.empty():
                continue  # more may be due, or outcomes wait
            notifications.wake_sender.wait(self.poll_interval)
        self._write_last(unwritten)

    def _write_last(self, unwritten: list, wait: float = 1.0) -> None:
        """On the way out: the outcomes of attempts that end within `wait`, written, so a clean
        stop sends nothing twice (a delivery still in flight after that is sent again once its
        lease ends)."""
        now = datetime.now(timezone.utc)
        # Claimed but not begun: due again at once, for whichever sender is still running.
        released = [Result(claim, PENDING, None, "not attempted: its worker stopped", now) for claim in _drain(self._work)]
        deadline = time.monotonic() + wait
        while self._in_flight > len(released) and time.monotonic() < deadline:
            time.sleep(0.02)
        try:
            self.store.claim(0, self.lease_seconds, results=unwritten + released + _drain(self._done))
        except Exception as exc:
            log.warning("notifications: outcomes not written at stop (%s); those deliveries are sent again",
                        type(exc).__name__)

    def _send_loop(self) -> None:
        while True:
            claim = self._work.get()
            try:
                result = self.attempt(claim)
            except Exception as exc:  # its lease runs out and it is sent again
                log.warning("notifications: delivery %s failed unexpectedly: %s: %s", claim.id,
                            type(exc).__name__, exc)
                result = None
            with self._lock:
                self._in_flight -= 1
            if result is not None:
                self._done.put(result)
            notifications.wake_sender.set()

    def attempt(self, claim: Claim) -> Result:
        """One attempt at a claimed delivery; its outcome, to be written."""
        now = datetime.now(timezone.utc)
        if claim.url is None:
            return Result(claim, FAILED, None, "the endpoint is disabled", None)
        content = body(claim.payload)
        answer = self.deliverer.post(claim.url, content, signature_headers(claim.id, content, list(claim.keys), now))
        outcome = decide(answer, claim.attempts, now, self.schedule, self.rng)
        return Result(claim, outcome.status, answer.status, outcome.error, outcome.next_attempt_at,
                      outcome.disable_endpoint)

    @staticmethod
    def _log(results: list[Result]) -> None:
        """Each written outcome: counted, and logged unless delivered."""
        for r in results:
            metrics.DELIVERIES.labels(_RESULTS[r.status]).inc()
            if r.status == PENDING:
                log.info("notifications: delivery %s to %s, attempt %d: %s; next at %s", r.claim.id,
                         r.claim.endpoint_id, r.claim.attempts, r.last_error, r.next_attempt_at.isoformat())
            elif r.status == FAILED:
                log.warning("notifications: delivery %s to %s failed after %d attempts: %s%s", r.claim.id,
                            r.claim.endpoint_id, r.claim.attempts, r.last_error,
                            f"; endpoint disabled ({r.disable_endpoint})" if r.disable_endpoint else "")


def _drain(q: queue.Queue) -> list:
    out = []
    while True:
        try:
            out.append(q.get_nowait())
        except queue.Empty:
            return out


def lease_for(timeout: float) -> float:
    """Long enough for an attempt (connect and answer, each within the timeout) to finish
    before another sender may take its delivery over."""
    return 2 * timeout + 5
