"""Hands verified callbacks to the workers: dedupe and enqueue in one Redis round trip, shared
by the callbacks a process receives together, falling back to the database inbox when Redis
cannot take them.

The rule this module keeps: a callback is acknowledged only once a durable copy exists,
either as an RQ job or as an inbox row.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import logging
import random
import re
import threading
from collections import deque
from typing import Callable, Literal

import redis
from rq import Queue, Retry

from service.domain.recordings import CallbackEvent
from service.pipelines.rq_adapter import EnqueueOnce, OnceJob

log = logging.getLogger(__name__)

JOB_FUNC = "workers.jobs.process_callback"
# Backoff for transient failures (network, 429/5xx, database down, metadata lag).
# Hours in all (about 6.5, and up to half as much again with jitter): a database or SignalWire
# outage that long still ends with the callback stored, not in the dead letters.
RETRY_INTERVALS = (2, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 3600, 3600, 3600, 3600, 3600)
RESULT_TTL = 600
# An inbox row's payload is the event's, plus the request id it came with under this key.
INBOX_REQUEST_ID = "request_id"
# Drains (INBOX_DRAIN_INTERVAL apart) that try an unreadable inbox row before setting it aside.
INBOX_TRIES = 5
FAILURE_TTL = 7 * 24 * 3600

Outcome = Literal["queued", "duplicate", "inbox"]

# Redis cannot take writes for now: out of reach (connection lost or refused, a timeout,
# still loading its data), a replica after a failover (read-only), or full (OOM under
# Heroku Redis's default noeviction; from a script, a plain ResponseError). The inbox
# keeps the callback until the workers' drain gets it into Redis.
REDIS_OUTAGE = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.ReadOnlyError,
                redis.exceptions.OutOfMemoryError)


def redis_outage(exc: redis.RedisError) -> bool:
    if isinstance(exc, REDIS_OUTAGE):
        return True
    return isinstance(exc, redis.ResponseError) and "OOM command not allowed" in str(exc)


class Unavailable(Exception):
    """Neither Redis nor the database could take the event: the sender must retry."""


_PLAIN = re.compile(r"[A-Za-z0-9-]+")


def job_id_for(event: CallbackEvent) -> str:
    """One job id per dedupe key, and never the same for two: a shared id would make the
    second callback look like a duplicate and drop it.

    RQ job ids allow letters, digits, '_' and '-' only. SignalWire's sids and statuses fit
    (readable `cb_<sid>_<status>`, one '_' apart); anything else is hashed, under a prefix
    (`cb__`) the readable form cannot start with, as the sid is never empty.
    """
    return callback_job_id(event.recording_sid, event.status)


def callback_job_id(recording_sid: str, status: str) -> str:
    """job_id_for, from the recording's sid and the callback's status alone."""
    if _PLAIN.fullmatch(recording_sid) and _PLAIN.fullmatch(status):
        return f"cb_{recording_sid}_{status}"
    return "cb__" + hashlib.sha256(f"{recording_sid}:{status}".encode()).hexdigest()


def jittered_intervals() -> list[int]:
    # Jitter spreads a burst of failures (a rate limit, an outage) over time.
    return [int(i * random.uniform(1.0, 1.5)) for i in RETRY_INTERVALS]


def retry_policy() -> Retry:
    return Retry(max=len(RETRY_INTERVALS), interval=jittered_intervals())


class Ingest:
    def __init__(self, queue: Queue, store, dedupe_ttl: int):
        self.queue = queue
        self.store = store
        self.dedupe_ttl = dedupe_ttl
        self._enqueue_once = EnqueueOnce(queue, JOB_FUNC, retry_policy, result_ttl=RESULT_TTL, failure_ttl=FAILURE_TTL)
        self._group = GroupCommit(self.enqueue_many)

    def enqueue(self, event: CallbackEvent, request_id: str | None = None) -> bool:
        """True when a new job was queued, False for a duplicate. Raises redis errors."""
        return self.enqueue_many([(event, request_id)])[0]

    def enqueue_many(self, items: list[tuple[CallbackEvent, str | None]]) -> list[bool]:
        """One round trip for the whole batch of (event, request id); a duplicate (even within
        it) is never queued twice. The request id goes into the job's meta, for the worker's lines."""
        jobs = [OnceJob(job_id_for(event), f"dedupe:{event.dedupe_key}", [event.to_payload()],
                        f"recording {event.recording_sid} {event.status}",
                        {"request_id": request_id} if request_id else None) for event, request_id in items]
        return self._enqueue_once(jobs, self.dedupe_ttl)

    def submit(self, event: CallbackEvent, request_id: str | None = None) -> Outcome:
        """Queue one callback from a web request; concurrent requests share a round trip.

        Raises any other Redis error (a failing script, a key of the wrong type): the inbox
        would only hold the callback for a drain that fails the same way."""
        try:
            return "queued" if self._group.submit((event, request_id)) else "duplicate"
        except redis.RedisError as exc:
            if not redis_outage(exc):
                raise
            log.warning("redis unavailable (%s); keeping callback %s in the inbox", type(exc).__name__, event.dedupe_key)
        try:
            payload = event.to_payload()
            if request_id:
                payload[INBOX_REQUEST_ID] = request_id
            self.store.inbox_put(payload)
        except Exception as exc:
            log.error("database unavailable too (%s); refusing callback %s", type(exc).__name__, event.dedupe_key)
            raise Unavailable(str(type(exc).__name__)) from exc
        return "inbox"

    def drain_inbox(self, batch: int = 200) -> int:
        """Move inbox rows into RQ, oldest first; a row is deleted only after its job exists.

        A row this release cannot read (written by another one, say) holds up nothing: the
        drain pages on past it, and after INBOX_TRIES tries it is set aside, kept in the
        database for an operator (`python -m service failed`) and no longer taken."""
        moved, after_id = 0, None
        while True:
            rows = self.store.inbox_take(batch, after_id=after_id)
            items, done = [], []
            for row_id, payload in rows:
                try:
                    payload = dict(payload)
                    request_id = payload.pop(INBOX_REQUEST_ID, None)
                    items.append((CallbackEvent.from_payload(payload), request_id))
                    done.append(row_id)
                except (TypeError, ValueError) as exc:
                    self._unreadable(row_id, exc)
            self.enqueue_many(items)
            self.store.inbox_delete(done)
            moved += len(done)
            if len(rows) < batch:
                return moved
            after_id = rows[-1][0]

    def _unreadable(self, row_id: int, exc: Exception) -> None:
        error = f"{type(exc).__name__}: {exc}"[:500]
        if self.store.inbox_failed(row_id, error, set_aside_after=INBOX_TRIES):
            log.error("inbox row %s cannot be read (%s); set aside after %d tries", row_id, error, INBOX_TRIES)
        else:
            log.warning("inbox row %s cannot be read (%s); tried again at the next drain", row_id, error)


class GroupCommit:
    """Group commit for a threaded web worker: callbacks that arrive while one Redis round
    trip is in flight go together in the next one.

    A round trip costs far more CPU (system calls, waking Redis) than the script it
    carries, so sharing one is the webhook's largest throughput lever (bench/ingest.py).
    The item at the head of the line leads: it sends every waiting item (up to `limit`),
    answers them and hands the lead to the next in line. Alone, a request sends its own at
    once: no timer, no added latency. Each item gets its own result or the batch's exception.
    """

    def __init__(self, send: Callable[[list], list], limit: int = 64):
        self._send = send
        self._limit = limit
        self._lock = threading.Lock()
        self._waiting: deque[_Ticket] = deque()

    def submit(self, item):
        ticket = _Ticket(item)
        with self._lock:
            self._waiting.append(ticket)
            leading = len(self._waiting) == 1
        if not leading:
            ticket.ready.acquire()  # released once: with an answer, or to lead the next batch
            if ticket.done:
                return ticket.outcome()
        with self._lock:
            batch = list(itertools.islice(self._waiting, self._limit))
        try:
            results, error = self._send([t.item for t in batch]), None
            if len(results) != len(batch):  # never leave a waiter without an answer
                raise RuntimeError(f"{len(results)} results for {len(batch)} items")
        except BaseException as exc:  # every waiter must hear about it, not just the leader
            results, error = [None] * len(batch), exc
        with self._lock:
            for t, result in zip(batch, results):
                self._waiting.popleft()
                t.done, t.result, t.error = True, result, error
            following = self._waiting[0] if self._waiting else None
        for t in batch[1:]:  # batch[0] is this thread's own ticket: the leader heads the line
            t.ready.release()
        if following is not None:
            following.ready.release()
        return ticket.outcome()


class _Ticket:
    __slots__ = ("item", "ready", "done", "result", "error")

    def __init__(self, item):
        self.item = item
        # A plain lock taken up front is the cheapest thing a thread can sleep on.
        self.ready = threading.Lock()
        self.ready.acquire()
        self.done, self.result, self.error = False, None, None

    def outcome(self):
        if self.error is None:
            return self.result
        # Each waiter raises its own copy: threads re-raising one object would tangle its traceback.
        # The original, chained as the cause, keeps where the error came from for the logs.
        raise copy.copy(self.error) from self.error
