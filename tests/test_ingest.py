"""The webhook's hand-off to RQ: one script for dedupe + enqueue, with a job hash RQ built."""

from __future__ import annotations

import json
import zlib
from types import SimpleNamespace

from rq.job import Job

from service.ingest import FAILURE_TTL, JOB_FUNC, RESULT_TTL, RETRY_INTERVALS, Ingest, job_id_for, retry_policy
from service.recordings import CallbackEvent
from service.services import queue_for

SETTINGS = SimpleNamespace(queue_name="recordings")


def test_job_hash_matches_what_rq_itself_would_write(redis_conn):
    """Guards the per-process template against RQ upgrades: same fields, same static values."""
    queue = queue_for(SETTINGS, redis_conn)
    event = CallbackEvent(recording_sid="5d2b-rec", account_sid="acct", status="completed", params={"A": "1"})
    ingest = Ingest(queue, store=None, dedupe_ttl=60)
    assert ingest.enqueue(event)
    ours = {k.decode(): v for k, v in redis_conn.hgetall(Job.key_for(job_id_for(event))).items()}

    reference = queue.create_job(JOB_FUNC, args=(event.to_payload(),), job_id="reference", retry=retry_policy(),
                                 result_ttl=RESULT_TTL, failure_ttl=FAILURE_TTL,
                                 description=f"recording {event.recording_sid} {event.status}")
    queue.enqueue_job(reference)
    theirs = {k.decode(): v for k, v in redis_conn.hgetall(reference.key).items()}

    assert set(ours) == set(theirs)
    varying = {"created_at", "enqueued_at", "retry_intervals", "data"}
    assert {k: v for k, v in ours.items() if k not in varying} == {k: v for k, v in theirs.items() if k not in varying}
    assert json.loads(ours["data"]) == json.loads(zlib.decompress(theirs["data"]))  # RQ reads both
    intervals = json.loads(ours["retry_intervals"])
    assert len(intervals) == len(RETRY_INTERVALS)
    assert all(base <= got <= base * 1.5 for base, got in zip(RETRY_INTERVALS, intervals))

    job = Job.fetch(job_id_for(event), connection=redis_conn, serializer=queue.serializer)
    assert job.func_name == JOB_FUNC and list(job.args) == [event.to_payload()]
    assert job.retries_left == len(RETRY_INTERVALS) and job.get_status() == "queued"
    assert queue.job_ids == [job_id_for(event), "reference"]


def test_template_is_rewritten_when_redis_lost_it(redis_conn):
    queue = queue_for(SETTINGS, redis_conn)
    ingest = Ingest(queue, store=None, dedupe_ttl=60)
    assert ingest.enqueue(CallbackEvent(recording_sid="r1", account_sid="a", status="completed"))
    redis_conn.flushdb()  # a Redis that restarted empty
    event = CallbackEvent(recording_sid="r2", account_sid="a", status="completed")
    assert ingest.enqueue(event)
    job = Job.fetch(job_id_for(event), connection=redis_conn, serializer=queue.serializer)
    assert job.func_name == JOB_FUNC and job.origin == queue.name


def test_duplicate_and_forced_enqueue(redis_conn):
    queue = queue_for(SETTINGS, redis_conn)
    ingest = Ingest(queue, store=None, dedupe_ttl=60)
    event = CallbackEvent(recording_sid="r1", account_sid="a", status="in-progress")
    assert ingest.enqueue(event) is True
    assert ingest.enqueue(event) is False  # dedupe key
    redis_conn.delete(f"dedupe:{event.dedupe_key}")
    assert ingest.enqueue(event) is False  # the job itself still exists
    assert queue.count == 1
