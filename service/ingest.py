"""Hands verified callbacks to the workers: dedupe and enqueue in one Redis round trip,
falling back to the database inbox when Redis cannot take them.

The rule this module keeps: a callback is acknowledged only once a durable copy exists,
either as an RQ job or as an inbox row.
"""

from __future__ import annotations

import logging
import random
import re
from typing import Literal

import redis
from rq import Queue, Retry
from rq.scripts import _build_hset_args  # RQ's own field list for a job hash

from service.recordings import CallbackEvent

log = logging.getLogger(__name__)

JOB_FUNC = "workers.jobs.process_callback"
# Backoff for transient failures (network, 429/5xx, database down, metadata lag).
RETRY_INTERVALS = (2, 5, 15, 30, 60, 120, 300, 600)
RESULT_TTL = 600
FAILURE_TTL = 7 * 24 * 3600

# KEYS: dedupe key, job key, queue key, set of queues.
# ARGV: dedupe ttl, job id, queue key, force (1 = skip dedupe), then the job hash fields.
# Same steps as RQ's unique enqueue script, plus the dedupe marker, so the webhook pays
# one round trip and a duplicate can never produce a second job.
_ENQUEUE_ONCE = """
if ARGV[4] ~= '1' then
    if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', tonumber(ARGV[1])) then
        return 0
    end
end
if redis.call('EXISTS', KEYS[2]) == 1 then
    return 0
end
redis.call('HSET', KEYS[2], unpack(ARGV, 5))
redis.call('RPUSH', KEYS[3], ARGV[2])
redis.call('SADD', KEYS[4], ARGV[3])
return 1
"""

Outcome = Literal["queued", "duplicate", "inbox"]


class Unavailable(Exception):
    """Neither Redis nor the database could take the event: the sender must retry."""


def job_id_for(event: CallbackEvent) -> str:
    # RQ job ids allow letters, digits, '_' and '-' only.
    return re.sub(r"[^A-Za-z0-9_-]", "_", f"cb_{event.recording_sid}_{event.status}")[:200]


def retry_policy() -> Retry:
    # Jitter spreads a burst of failures (a rate limit, an outage) over time.
    return Retry(max=len(RETRY_INTERVALS), interval=[int(i * random.uniform(1.0, 1.5)) for i in RETRY_INTERVALS])


class Ingest:
    def __init__(self, queue: Queue, store, dedupe_ttl: int):
        self.queue = queue
        self.store = store
        self.dedupe_ttl = dedupe_ttl
        self._script = queue.connection.register_script(_ENQUEUE_ONCE)

    def enqueue(self, event: CallbackEvent, *, force: bool = False) -> bool:
        """True when a new job was queued, False for a duplicate. Raises redis errors."""
        job = self.queue.create_job(
            JOB_FUNC,
            args=(event.to_payload(),),
            job_id=job_id_for(event),
            retry=retry_policy(),
            result_ttl=RESULT_TTL,
            failure_ttl=FAILURE_TTL,
            description=f"recording {event.recording_sid} {event.status}",
        )
        self.queue._prepare_for_queue(job)  # origin, enqueued_at, timeout, status
        created = self._script(
            keys=[f"dedupe:{event.dedupe_key}", job.key, self.queue.key, Queue.redis_queues_keys],
            args=[self.dedupe_ttl, job.id, self.queue.key, "1" if force else "0", *_build_hset_args(job)],
        )
        return bool(created)

    def submit(self, event: CallbackEvent) -> Outcome:
        try:
            return "queued" if self.enqueue(event) else "duplicate"
        except redis.RedisError as exc:
            log.warning("redis unavailable (%s); keeping callback %s in the inbox", type(exc).__name__, event.dedupe_key)
        try:
            self.store.inbox_put(event.to_payload())
        except Exception as exc:
            log.error("database unavailable too (%s); refusing callback %s", type(exc).__name__, event.dedupe_key)
            raise Unavailable(str(type(exc).__name__)) from exc
        return "inbox"

    def drain_inbox(self, batch: int = 200) -> int:
        """Move inbox rows into RQ; a row is deleted only after its job exists."""
        moved = 0
        while True:
            rows = self.store.inbox_take(batch)
            if not rows:
                return moved
            for _, payload in rows:
                self.enqueue(CallbackEvent.from_payload(payload))
            self.store.inbox_delete([row_id for row_id, _ in rows])
            moved += len(rows)
            if len(rows) < batch:
                return moved
