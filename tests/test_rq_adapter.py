"""Guards what workers.rq_adapter relies on in RQ's internals, on a real worker and Redis."""

from __future__ import annotations

from types import SimpleNamespace

from rq import Retry, SimpleWorker
from rq.job import Job, JobStatus

from service.services import queue_for
from workers import rq_adapter


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


def test_will_retry_says_what_the_failure_handling_then_does(redis_conn):
    """workers.KeeperWorker counts a failed job as retried or failed by will_retry, asked just
    before RQ decides: the two must agree."""
    from workers.__main__ import KeeperWorker

    decisions = []

    class Watching(KeeperWorker):
        def handle_job_failure(self, job, *args, **kwargs):
            decisions.append(rq_adapter.will_retry(self, job))
            super().handle_job_failure(job, *args, **kwargs)

    queue = queue_for(SimpleNamespace(queue_name="adapter"), redis_conn)
    retried = queue.enqueue("tests.jobs_for_tests.always_fails", retry=Retry(max=2, interval=[0, 0]))
    given_up = queue.enqueue("tests.jobs_for_tests.gives_up", retry=Retry(max=3, interval=[60, 60, 60]))
    Watching([queue], connection=redis_conn, serializer=queue.serializer).work(burst=True)
    # always_fails, gives_up, always_fails again (retried at once), and a third time: no retry left.
    assert decisions == [True, False, True, False]
    for job in (retried, given_up):
        assert Job.fetch(job.id, connection=redis_conn, serializer=queue.serializer).get_status() == JobStatus.FAILED
