"""Guards every behaviour of RQ (and redis-py) that service.pipelines.rq_adapter relies on, on
a real Redis with real RQ workers: after an upgrade of either, this file says what broke."""

from __future__ import annotations

import json
import time
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
from workers import recovery

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


# --- crash recovery (workers.recovery) --------------------------------------------------


def test_rq_counts_a_worker_alive_until_it_registers_its_death(queue, redis_conn):
    worker = SimpleWorker([queue], connection=redis_conn, serializer=queue.serializer)
    worker.register_birth()
    assert recovery.worker_alive(redis_conn, worker.name)  # no liveness beat: RQ's key alone
    worker.register_death()
    assert redis_conn.exists(rq_adapter.worker_key(worker.name))  # kept a while, marked dead
    assert not recovery.worker_alive(redis_conn, worker.name)


def test_a_job_stuck_in_the_intermediate_queue_is_put_back(queue, redis_conn):
    job = queue.enqueue("tests.jobs_for_tests.quick")
    # What a worker does on dequeue (LMOVE to the intermediate queue) before Redis dropped.
    assert redis_conn.lmove(queue.key, queue.intermediate_queue_key) == job.id.encode()
    assert recovery.recover(queue, intermediate_grace=0.2).unstuck == []  # first seen now
    time.sleep(0.3)
    report = recovery.recover(queue, intermediate_grace=0.2)
    assert report.unstuck == [job.id]
    assert queue.intermediate_queue.get_job_ids() == [] and queue.get_job_ids() == [job.id]
    assert recovery.recover(queue, intermediate_grace=0.2).unstuck == []  # once only
    SimpleWorker([queue], connection=redis_conn, serializer=queue.serializer).work(burst=True)
    assert job.get_status(refresh=True) == JobStatus.FINISHED and runs(redis_conn, job.id) == 1


def test_a_live_workers_job_is_left_alone_and_a_dead_ones_taken(queue, redis_conn):
    job = queue.enqueue("tests.jobs_for_tests.quick")
    worker = SimpleWorker([queue], connection=redis_conn, serializer=queue.serializer)
    worker.register_birth()
    dequeued, _ = queue.dequeue_any([queue], None, connection=redis_conn, serializer=queue.serializer)
    execution = worker.prepare_execution(dequeued)
    worker.prepare_job_execution(dequeued, remove_from_intermediate_queue=True)
    recovery.beat(redis_conn, worker.name, alive_ttl=5)
    assert not recovery.recover(queue)  # alive: nothing to do
    assert queue.started_job_registry.get_job_ids(cleanup=False) == [job.id]

    redis_conn.delete(recovery.ALIVE_KEY.format(worker.name))  # the beat stopped: dead
    assert recovery.recover(queue).requeued == [job.id]
    assert not redis_conn.exists(execution.key)
    assert queue.get_job_ids() == [job.id] and job.get_status(refresh=True) == JobStatus.QUEUED
    worker.register_death()
    SimpleWorker([queue], connection=redis_conn, serializer=queue.serializer).work(burst=True)
    assert job.get_status(refresh=True) == JobStatus.FINISHED


def test_a_job_that_keeps_killing_its_worker_becomes_a_dead_letter(queue, redis_conn):
    job = queue.enqueue("tests.jobs_for_tests.quick")
    for attempt in range(recovery.MAX_RECOVERIES + 1):
        worker = SimpleWorker([queue], connection=redis_conn, serializer=queue.serializer)
        worker.register_birth()
        dequeued, _ = queue.dequeue_any([queue], None, connection=redis_conn, serializer=queue.serializer)
        worker.prepare_execution(dequeued)
        worker.prepare_job_execution(dequeued, remove_from_intermediate_queue=True)
        redis_conn.delete(worker.key)  # gone without a trace
        report = recovery.recover(queue)
        if attempt < recovery.MAX_RECOVERIES:
            assert report.requeued == [job.id]
    assert report.failed == [job.id]
    assert job.get_status(refresh=True) == JobStatus.FAILED
    assert job.id in queue.failed_job_registry.get_job_ids()
