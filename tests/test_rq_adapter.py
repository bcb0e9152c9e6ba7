"""Guards every behaviour of RQ (and redis-py) that service.pipelines.rq_adapter relies on, on
a real Redis with real RQ workers: after an upgrade of either, this file says what broke."""

from __future__ import annotations

import json
import zlib
from types import SimpleNamespace

import pytest
from rq import Retry, SimpleWorker
from rq.job import Job, JobStatus

from service.domain.recordings import CallbackEvent
from service.pipelines import rq_adapter
from service.pipelines.ingest import (
    FAILURE_TTL, JOB_FUNC, RESULT_TTL, RETRY_INTERVALS, Ingest, job_id_for, retry_policy,
)
from service.services import queue_for

SETTINGS = SimpleNamespace(queue_name="recordings")


@pytest.fixture
def queue(redis_conn):
    return queue_for(SETTINGS, redis_conn)


def work(queue, connection) -> None:
    SimpleWorker([queue], connection=connection, serializer=queue.serializer).work(burst=True)


def runs(connection, job_id) -> int:
    return int(connection.get(f"test:runs:{job_id}") or 0)


# --- enqueueing without building a Job --------------------------------------------------


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


# --- retries ----------------------------------------------------------------------------


def test_a_job_that_gives_up_fails_at_once_with_its_reason(queue, redis_conn):
    job = queue.enqueue("tests.jobs_for_tests.gives_up", "credentials refused", retry=Retry(max=3, interval=[60, 60, 60]))
    work(queue, redis_conn)

    job = Job.fetch(job.id, connection=redis_conn, serializer=queue.serializer)
    assert job.get_status() == JobStatus.FAILED and runs(redis_conn, job.id) == 1
    assert queue.failed_job_registry.get_job_ids() == [job.id]
    assert queue.scheduled_job_registry.get_job_ids() == []  # no retry was scheduled
    assert "credentials refused" in job.latest_result().exc_string
    assert rq_adapter.attempts(job) == 1

    rq_adapter.restore_retries(job)
    queue.failed_job_registry.requeue(job)
    job = Job.fetch(job.id, connection=redis_conn, serializer=queue.serializer)
    assert job.retries_left == 3 and rq_adapter.attempts(job) == 1  # nothing run since the replay


def test_attempts_count_the_retries_a_job_used(queue, redis_conn):
    job = queue.enqueue("tests.jobs_for_tests.always_fails", retry=Retry(max=2, interval=[0, 0]))  # requeued at once
    work(queue, redis_conn)
    job = Job.fetch(job.id, connection=redis_conn, serializer=queue.serializer)
    assert job.get_status() == JobStatus.FAILED and rq_adapter.attempts(job) == 3


def test_giving_up_outside_a_job_does_nothing():
    rq_adapter.give_up_retries()
