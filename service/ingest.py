"""Hands verified callbacks to the workers: dedupe and enqueue in one Redis round trip,
falling back to the database inbox when Redis cannot take them.

The rule this module keeps: a callback is acknowledged only once a durable copy exists,
either as an RQ job or as an inbox row.
"""

from __future__ import annotations

import json
import logging
import random
import re
from typing import Literal

import redis
import rq
from rq import Queue, Retry
from rq.scripts import _build_hset_args  # RQ's own field list for a job hash
from rq.utils import now as utcnow, utcformat

from service.recordings import CallbackEvent

log = logging.getLogger(__name__)

JOB_FUNC = "workers.jobs.process_callback"
# Backoff for transient failures (network, 429/5xx, database down, metadata lag).
RETRY_INTERVALS = (2, 5, 15, 30, 60, 120, 300, 600)
RESULT_TTL = 600
FAILURE_TTL = 7 * 24 * 3600

# KEYS: dedupe key, job key, queue key, set of queues, job template.
# ARGV: dedupe ttl, job id, queue key, force (1 = skip dedupe), data, timestamp, description,
#       retry intervals.
# RQ's own unique-enqueue steps plus the dedupe marker, in one round trip: a duplicate can
# never produce a second job. The fields every job shares come from a template hash that RQ
# built (see _JobTemplate), so the request carries only what differs. -1: no template yet.
_ENQUEUE_ONCE = """
local template = redis.call('HGETALL', KEYS[5])
if #template == 0 then
    return -1
end
if ARGV[4] ~= '1' then
    if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', tonumber(ARGV[1])) then
        return 0
    end
end
if redis.call('EXISTS', KEYS[2]) == 1 then
    return 0
end
redis.call('HSET', KEYS[2], unpack(template))
redis.call('HSET', KEYS[2], 'data', ARGV[5], 'created_at', ARGV[6], 'enqueued_at', ARGV[6],
           'description', ARGV[7], 'retry_intervals', ARGV[8])
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


def jittered_intervals() -> list[int]:
    # Jitter spreads a burst of failures (a rate limit, an outage) over time.
    return [int(i * random.uniform(1.0, 1.5)) for i in RETRY_INTERVALS]


def retry_policy() -> Retry:
    return Retry(max=len(RETRY_INTERVALS), interval=jittered_intervals())


class _JobTemplate:
    """The fields every callback job shares, as RQ itself writes them, kept in Redis.

    Building an RQ Job per request (create_job, _prepare_for_queue, to_dict, zlib) and
    sending its ~20 fields was most of the webhook's CPU. RQ builds one template job per
    process instead; only the payload, timestamps, description and jittered retry intervals
    differ per job. The job data is stored uncompressed JSON, which RQ reads as is.
    tests/test_ingest.py compares the result with RQ's own create_job, field by field.
    """

    VARYING = ("data", "created_at", "enqueued_at", "description", "retry_intervals")

    def __init__(self, queue: Queue):
        self.serializer = queue.serializer
        self.key = f"recording-keeper:job-template:{rq.__version__}:{queue.name}"
        job = queue.create_job(JOB_FUNC, args=({},), job_id="template", retry=retry_policy(),
                               result_ttl=RESULT_TTL, failure_ttl=FAILURE_TTL, description="")
        queue._prepare_for_queue(job)  # origin, timeout, status
        fields = _build_hset_args(job)
        self.static = {k: v for k, v in zip(fields[::2], fields[1::2]) if k not in self.VARYING}

    def store(self, connection: redis.Redis) -> None:
        connection.hset(self.key, mapping=self.static)

    def args(self, event: CallbackEvent) -> list:
        return [
            self.serializer.dumps((JOB_FUNC, None, [event.to_payload()], {})),
            utcformat(utcnow()),
            f"recording {event.recording_sid} {event.status}",
            json.dumps(jittered_intervals()),
        ]


class Ingest:
    def __init__(self, queue: Queue, store, dedupe_ttl: int):
        self.queue = queue
        self.store = store
        self.dedupe_ttl = dedupe_ttl
        self._script = queue.connection.register_script(_ENQUEUE_ONCE)
        self._template: _JobTemplate | None = None

    def enqueue(self, event: CallbackEvent, *, force: bool = False) -> bool:
        """True when a new job was queued, False for a duplicate. Raises redis errors."""
        template = self._job()
        job_id = job_id_for(event)
        keys = [f"dedupe:{event.dedupe_key}", self.queue.job_class.key_for(job_id), self.queue.key,
                Queue.redis_queues_keys, template.key]
        args = [self.dedupe_ttl, job_id, self.queue.key, "1" if force else "0", *template.args(event)]
        created = self._script(keys=keys, args=args)
        if created == -1:  # a new or flushed Redis: write the template, then enqueue
            template.store(self.queue.connection)
            created = self._script(keys=keys, args=args)
        return created == 1

    def _job(self) -> _JobTemplate:
        # Made on first use: RQ asks the Redis server for its version, and the web process
        # must start (and keep callbacks in the inbox) while Redis is down.
        if self._template is None:
            self._template = _JobTemplate(self.queue)
        return self._template

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
