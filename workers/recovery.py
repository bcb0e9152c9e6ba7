"""Crash recovery for RQ jobs whose worker died, in seconds rather than RQ's minutes.

Why RQ alone is slow here (RQ 3.0 as installed): a SimpleWorker sends no
heartbeat while a job runs; before the job it sets its worker key, the execution and the
StartedJobRegistry entry to expire after the job timeout + 60 s (180 s for our 120 s jobs),
and registry cleanup runs only every `maintenance_interval`. RQ's `worker_ttl` only shortens
the idle heartbeat (never below 60 s) and `job_monitoring_interval` only applies to the
forking Worker's horse monitor. So no RQ setting makes a dead SimpleWorker visible in ~10 s.

Hence our own liveness key: every worker process refreshes `recording-keeper:worker-alive:
<name>` (TTL `alive_ttl`, default 8 s) from a small thread, and marks itself "managed" (a
long-lived key) so that other processes know its liveness key is meaningful. A worker is
dead when its RQ worker key is gone or records its death, or when it is managed and its
liveness key expired. Workers that do not run our housekeeping (e.g. a burst worker in a
script) are judged by their RQ key only.

`recover()` then, on each pass:
- StartedJobRegistry entries (`job_id:execution_id` in RQ 3) whose execution belongs to a dead
  worker: removed from the registry (ZREM decides which recoverer wins), the execution
  record dropped, and the job enqueued again at the front of its queue with its retries
  intact (a crash is not the job's fault). Our jobs are idempotent, so a double run is
  harmless. A job that has been recovered MAX_RECOVERIES times (it keeps killing its worker)
  is moved to the FailedJobRegistry instead.
- Job ids in RQ's intermediate queue that no started execution holds and that have been
  seen there for more than `intermediate_grace` seconds (RQ's own first-seen marker): a
  worker took them but never started them (Redis dropped between LMOVE and the reply).
  Removed (LREM decides the winner) and enqueued again unless already queued or finished.

What this needs of RQ's internals (registry members, execution records, worker keys, the
intermediate queue) goes through service.pipelines.rq_adapter.
"""

from __future__ import annotations

import dataclasses
import logging

import redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus

from service.pipelines import rq_adapter

from service.liveness import ALIVE_KEY, WORKERS_KEY
from service.observability import metrics

log = logging.getLogger(__name__)

MANAGED_KEY = "recording-keeper:worker-managed:{}"
MANAGED_TTL = 7 * 24 * 3600
DEFAULT_ALIVE_TTL = 8
DEFAULT_INTERMEDIATE_GRACE = 5.0
MAX_RECOVERIES = 3


def beat(connection: redis.Redis, worker_name: str, alive_ttl: int = DEFAULT_ALIVE_TTL) -> None:
    """Declare this worker process alive for the next `alive_ttl` seconds."""
    with connection.pipeline(transaction=False) as pipe:
        pipe.set(ALIVE_KEY.format(worker_name), "1", ex=alive_ttl)
        pipe.set(MANAGED_KEY.format(worker_name), "1", ex=MANAGED_TTL)
        pipe.sadd(WORKERS_KEY, worker_name)  # counted by /metrics
        pipe.execute()


def forget(connection: redis.Redis, worker_name: str) -> None:
    """A clean exit: nothing of ours is left to look alive."""
    with connection.pipeline(transaction=False) as pipe:
        pipe.delete(ALIVE_KEY.format(worker_name), MANAGED_KEY.format(worker_name))
        pipe.srem(WORKERS_KEY, worker_name)
        pipe.execute()


def worker_alive(connection: redis.Redis, worker_name: str | None) -> bool:
    if not worker_name:
        return False
    key = rq_adapter.worker_key(worker_name)
    with connection.pipeline(transaction=False) as pipe:
        pipe.exists(key)
        pipe.hexists(key, rq_adapter.WORKER_DEATH_FIELD)
        pipe.exists(ALIVE_KEY.format(worker_name))
        pipe.exists(MANAGED_KEY.format(worker_name))
        registered, dead, alive, managed = pipe.execute()
    if not registered or dead:
        return False
    return bool(alive) or not managed


@dataclasses.dataclass
class RecoveryReport:
    requeued: list[str] = dataclasses.field(default_factory=list)  # from dead workers' executions
    unstuck: list[str] = dataclasses.field(default_factory=list)  # from the intermediate queue
    failed: list[str] = dataclasses.field(default_factory=list)  # recovered too often: dead letters

    def __bool__(self) -> bool:
        return bool(self.requeued or self.unstuck or self.failed)


def recover(queue: Queue, *, intermediate_grace: float = DEFAULT_INTERMEDIATE_GRACE) -> RecoveryReport:
    report = RecoveryReport()
    holders: set[str] = set()
    for run in rq_adapter.started_runs(queue):
        if _runs_on_live_worker(queue, run):
            holders.add(run.job_id)
            continue
        if not rq_adapter.take_started(queue, run):
            continue  # another recoverer (or the worker finishing) got there first
        outcome = _requeue_abandoned(queue, run)
        if outcome == "requeued":
            report.requeued.append(run.job_id)
        elif outcome == "failed":
            report.failed.append(run.job_id)
    _recover_intermediate(queue, holders, intermediate_grace, report)
    if report:
        log.warning("recovered jobs of dead workers: %s", report)
    return report


def _runs_on_live_worker(queue: Queue, run: rq_adapter.StartedRun) -> bool:
    worker_name = run.worker_name or rq_adapter.last_worker_of(queue.connection, run.job_id)
    return worker_alive(queue.connection, worker_name)


def _fetch(queue: Queue, job_id: str) -> Job | None:
    try:
        return Job.fetch(job_id, connection=queue.connection, serializer=queue.serializer)
    except NoSuchJobError:
        return None


def _requeue_abandoned(queue: Queue, run: rq_adapter.StartedRun) -> str:
    job_id = run.job_id
    job = _fetch(queue, job_id)
    with queue.connection.pipeline() as pipe:
        rq_adapter.forget_run(pipe, run, job)
        if job is None or job.get_status(refresh=False) != JobStatus.STARTED:
            pipe.execute()
            return "gone"  # finished, failed or deleted meanwhile: only the leftovers go
        recoveries = int(job.meta.get("recoveries", 0)) + 1
        job.meta["recoveries"] = recoveries
        if recoveries > MAX_RECOVERIES:
            rq_adapter.fail_abandoned(job, f"worker died {recoveries} times while running this job", pipe)
            pipe.execute()
            log.error("job %s killed its worker %d times: moved to the failed jobs", job_id, recoveries)
            metrics.JOBS.labels("failed").inc()
            return "failed"
        rq_adapter.requeue_abandoned(queue, job, pipe)
        pipe.execute()
    log.warning("job %s: worker %s is dead; requeued (recovery %d)", job_id, run.worker_name or "?", recoveries)
    return "requeued"


def _recover_intermediate(queue: Queue, holders: set[str], grace: float, report: RecoveryReport) -> None:
    for job_id in rq_adapter.intermediate_job_ids(queue):
        if job_id in holders:
            continue
        if not rq_adapter.in_intermediate_longer_than(queue, job_id, grace):
            continue  # just seen; a live worker may be about to start it
        # Re-read: the job may have started since the registry was read.
        if _is_started_by_live_worker(queue, job_id):
            continue
        if not rq_adapter.take_from_intermediate(queue, job_id):
            continue
        job = _fetch(queue, job_id)
        if job is None or job.get_status(refresh=False) not in (JobStatus.QUEUED, JobStatus.STARTED):
            continue
        if queue.get_job_position(job_id) is not None:
            continue  # already back in the queue
        job.started_at = None
        queue.enqueue_job(job, at_front=True)
        report.unstuck.append(job_id)
        log.warning("job %s was stuck in the intermediate queue; requeued", job_id)


def _is_started_by_live_worker(queue: Queue, job_id: str) -> bool:
    return any(_runs_on_live_worker(queue, run) for run in rq_adapter.started_runs(queue, job_id))
