"""Guards what service.pipelines.rq_adapter relies on in RQ's internals, on a real worker and Redis."""

from __future__ import annotations

from types import SimpleNamespace

from rq import Retry, SimpleWorker
from rq.job import Job, JobStatus

from service.pipelines import rq_adapter
from service.services import queue_for


def work(queue, connection) -> None:
    SimpleWorker([queue], connection=connection, serializer=queue.serializer).work(burst=True)


def runs(connection, job) -> int:
    return int(connection.get(f"test:runs:{job.id}") or 0)


def test_a_job_that_gives_up_fails_at_once_with_its_reason(redis_conn):
    queue = queue_for(SimpleNamespace(queue_name="adapter"), redis_conn)
    job = queue.enqueue("tests.jobs_for_tests.gives_up", "credentials refused", retry=Retry(max=3, interval=[60, 60, 60]))
    work(queue, redis_conn)

    job = Job.fetch(job.id, connection=redis_conn, serializer=queue.serializer)
    assert job.get_status() == JobStatus.FAILED and runs(redis_conn, job) == 1
    assert queue.failed_job_registry.get_job_ids() == [job.id]
    assert queue.scheduled_job_registry.get_job_ids() == []  # no retry was scheduled
    assert "credentials refused" in job.latest_result().exc_string
    assert rq_adapter.attempts(job) == 1

    rq_adapter.restore_retries(job)
    queue.failed_job_registry.requeue(job)
    job = Job.fetch(job.id, connection=redis_conn, serializer=queue.serializer)
    assert job.retries_left == 3 and rq_adapter.attempts(job) == 1  # nothing run since the replay


def test_attempts_count_the_retries_a_job_used(redis_conn):
    queue = queue_for(SimpleNamespace(queue_name="adapter"), redis_conn)
    job = queue.enqueue("tests.jobs_for_tests.always_fails", retry=Retry(max=2, interval=[0, 0]))  # requeued at once
    work(queue, redis_conn)
    job = Job.fetch(job.id, connection=redis_conn, serializer=queue.serializer)
    assert job.get_status() == JobStatus.FAILED and rq_adapter.attempts(job) == 3


def test_giving_up_outside_a_job_does_nothing():
    rq_adapter.give_up_retries()
