"""Guards every behaviour of RQ (and redis-py) that service.pipelines.rq_adapter relies on, on
a real Redis with real RQ workers: after an upgrade of either, this file says what broke."""

from __future__ import annotations

import json
import os
import signal
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
from service.pipelines.rq_adapter import KeeperWorker, StartupStop
from service.services import queue_for
from workers import recovery
from workers.__main__ import REDIS_SOCKET_TIMEOUT, WORKER_TTL

SETTINGS = SimpleNamespace(queue_name="recordings")


@pytest.fixture
def queue(redis_conn):
    return queue_for(SETTINGS, redis_conn)


def work(queue, connection) -> None:
    SimpleWorker([queue], connection=connection, serializer=queue.serializer).work(burst=True)


def runs(connection, job_id) -> int:
    return int(connection.get(f"test:runs:{job_id}") or 0)


# --- enqueueing without building a Job --------------------------------------------------


@pytest.mark.parametrize("request_id", ["4bd3c0a6-9a4e-4c8e-8d54-0d3c5a9e8f11", None])
@pytest.mark.parametrize("value", ["1", "é \u2028 \ud800"])  # non-ASCII; a lone surrogate, which orjson refuses
def test_job_hash_matches_what_rq_itself_would_write(redis_conn, request_id, value):
    """Guards the per-process template against RQ upgrades: same fields, same static values,
    and the request id in the job's meta as RQ would read it."""
    queue = queue_for(SETTINGS, redis_conn)
    event = CallbackEvent(recording_sid="5d2b-rec", account_sid="acct", status="completed", params={"A": value})
    ingest = Ingest(queue, store=None, dedupe_ttl=60)
    assert ingest.enqueue(event, request_id)
    ours = {k.decode(): v for k, v in redis_conn.hgetall(Job.key_for(job_id_for(event))).items()}

    reference = queue.create_job(JOB_FUNC, args=(event.to_payload(),), job_id="reference", retry=retry_policy(),
                                 result_ttl=RESULT_TTL, failure_ttl=FAILURE_TTL,
                                 description=f"recording {event.recording_sid} {event.status}",
                                 meta={"request_id": request_id} if request_id else None)
    queue.enqueue_job(reference)
    theirs = {k.decode(): v for k, v in redis_conn.hgetall(reference.key).items()}

    assert set(ours) == set(theirs)
    varying = {"created_at", "enqueued_at", "retry_intervals", "data", "meta"}
    assert {k: v for k, v in ours.items() if k not in varying} == {k: v for k, v in theirs.items() if k not in varying}
    assert json.loads(ours["data"]) == json.loads(zlib.decompress(theirs["data"]))  # RQ reads both
    assert [json.loads(h["meta"]) for h in (ours, theirs) if h.get("meta")] == ([{"request_id": request_id}] * 2
                                                                                if request_id else [])
    intervals = json.loads(ours["retry_intervals"])
    assert len(intervals) == len(RETRY_INTERVALS)
    assert all(base <= got <= base * 1.5 for base, got in zip(RETRY_INTERVALS, intervals))

    job = Job.fetch(job_id_for(event), connection=redis_conn, serializer=queue.serializer)
    assert job.func_name == JOB_FUNC and list(job.args) == [event.to_payload()]
    assert job.retries_left == len(RETRY_INTERVALS) and job.get_status() == "queued"
    assert job.meta == ({"request_id": request_id} if request_id else {})
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


# --- the worker process (workers.__main__) ----------------------------------------------


def test_the_start_up_stop_handler_ends_a_forked_child_as_the_default_would(queue, redis_conn):
    # RQ forks its scheduler process before it installs its own handlers. A SIGTERM that our
    # inherited handler swallowed there left the scheduler running, and the worker's warm
    # shutdown waiting on it until a second signal (seen once in CI: 30 s, then a cold shutdown).
    stop = StartupStop()
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        pid = os.fork()
        if pid == 0:
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(1)
            finally:
                os._exit(7)  # reached only if the signal was swallowed
        _, status = os.waitpid(pid, 0)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM
    assert not stop.requested.is_set()

    # In the worker's own process it only asks for a clean stop: before the first job.
    job = queue.enqueue("tests.jobs_for_tests.quick")
    worker = KeeperWorker([queue], connection=redis_conn, serializer=queue.serializer)
    stop.attach(worker)
    stop(signal.SIGTERM, None)
    assert stop.requested.is_set()
    assert worker.work(burst=True) is False
    assert runs(redis_conn, job.id) == 0 and queue.job_ids == [job.id]


def test_death_is_registered_after_a_stop_broke_a_redis_transaction(queue, redis_conn):
    # What RQ's StopRequested, raised mid-transaction by an idle worker's SIGTERM handler,
    # leaves behind (rq/rq#2175): a pooled connection inside MULTI with its replies unread.
    worker = KeeperWorker([queue], connection=redis_conn, serializer=queue.serializer)
    worker.register_birth()
    pool = redis_conn.connection_pool
    dirty = pool.get_connection()
    dirty.send_command("MULTI")
    dirty.send_command("HSET", "interrupted", "f", "v")
    pool.release(dirty)

    worker.register_death()

    assert redis_conn.hget(worker.key, "death") is not None
    assert worker.name not in {w.name for w in SimpleWorker.all(connection=redis_conn)}


def test_the_work_loops_redis_timeout_outlasts_the_blocking_dequeue(queue, redis_conn):
    worker = KeeperWorker([queue], connection=redis_conn, worker_ttl=WORKER_TTL)
    # Not shorter than what RQ would set on the pool (it would then change it, for new
    # connections only), and longer than the blocking dequeue, which must not time out.
    assert REDIS_SOCKET_TIMEOUT >= worker.connection_timeout > worker.dequeue_timeout


def test_a_stop_requested_before_the_worker_exists_stops_it_before_its_first_job(queue, redis_conn):
    job = queue.enqueue("tests.jobs_for_tests.quick")
    stop = StartupStop()
    stop(signal.SIGTERM, None)  # while waiting for Redis, say
    worker = KeeperWorker([queue], connection=redis_conn, serializer=queue.serializer)
    stop.attach(worker)
    assert worker.work(burst=True) is False
    assert runs(redis_conn, job.id) == 0 and queue.job_ids == [job.id]


def test_a_workers_pub_sub_thread_stops_within_seconds(queue, redis_conn):
    # RQ's warm shutdown stops it. redis-py 8.2's PubSubWorkerThread.stop() waits out the
    # thread's 60 s read: a SIGTERM'd worker would outlast Heroku's 30 s and be killed.
    worker = KeeperWorker([queue], connection=redis_conn, serializer=queue.serializer)
    worker.subscribe()
    started = time.monotonic()
    worker.unsubscribe()
    assert time.monotonic() - started < 5


def test_will_retry_says_what_the_failure_handling_then_does(redis_conn):
    """workers.KeeperWorker counts a failed job as retried or failed by will_retry, asked just
    before RQ decides: the two must agree."""
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
