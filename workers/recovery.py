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
"""

from __future__ import annotations

import dataclasses
import logging
import time

import redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.job_lifecycle import record_job_failure
from rq.utils import parse_composite_key
from rq.worker import BaseWorker

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
    key = BaseWorker.redis_worker_namespace_prefix + worker_name
    with connection.pipeline(transaction=False) as pipe:
        pipe.exists(key)
        pipe.hexists(key, "death")
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
    connection = queue.connection
    registry = queue.started_job_registry
    holders: set[str] = set()
    for composite, job_id, execution in _started(queue):
        if _runs_on_live_worker(queue, job_id, execution):
            holders.add(job_id)
            continue
        if not connection.zrem(registry.key, composite):
            continue  # another recoverer (or the worker finishing) got there first
        outcome = _requeue_abandoned(queue, job_id, execution)
        if outcome == "requeued":
            report.requeued.append(job_id)
        elif outcome == "failed":
            report.failed.append(job_id)
    _recover_intermediate(queue, holders, intermediate_grace, report)
    if report:
        log.warning("recovered jobs of dead workers: %s", report)
    return report


def _started(queue: Queue, only: str | None = None):
    """(registry member, job id, execution) for each entry of the StartedJobRegistry, or for
    job `only`'s entries (the others' execution hashes are then not read)."""
    connection = queue.connection
    for member in connection.zrange(queue.started_job_registry.key, 0, -1):
        composite = member.decode() if isinstance(member, bytes) else member
        job_id, execution_id = parse_composite_key(composite)
        if only is not None and job_id != only:
            continue
        execution = Execution(id=execution_id, job_id=job_id, connection=connection)
        data = connection.hgetall(execution.key)
        if data:
            execution.restore(data)
        yield composite, job_id, execution


def _runs_on_live_worker(queue: Queue, job_id: str, execution: Execution) -> bool:
    worker_name = execution.worker_name
    if not worker_name:
        raw = queue.connection.hget(Job.key_for(job_id), "worker_name")
        worker_name = raw.decode() if raw else None
    return worker_alive(queue.connection, worker_name)


def _fetch(queue: Queue, job_id: str) -> Job | None:
    try:
        return Job.fetch(job_id, connection=queue.connection, serializer=queue.serializer)
    except NoSuchJobError:
        return None


def _requeue_abandoned(queue: Queue, job_id: str, execution: Execution) -> str:
    job = _fetch(queue, job_id)
    connection = queue.connection
    with connection.pipeline() as pipe:
        pipe.delete(execution.key)
        if execution.worker_name:
            pipe.srem(execution.worker_executions_key, execution.composite_key)
        pipe.zrem(job.execution_registry.key if job else f"rq:executions:{job_id}", execution.id)
        if job is None or job.get_status(refresh=False) != JobStatus.STARTED:
            pipe.execute()
            return "gone"  # finished, failed or deleted meanwhile: only the leftovers go
        recoveries = int(job.meta.get("recoveries", 0)) + 1
        job.meta["recoveries"] = recoveries
        if recoveries > MAX_RECOVERIES:
            record_job_failure(job, f"worker died {recoveries} times while running this job", pipe)
            pipe.execute()
            log.error("job %s killed its worker %d times: moved to the failed jobs", job_id, recoveries)
            metrics.JOBS.labels("failed").inc()
            return "failed"
        pipe.lrem(queue.intermediate_queue_key, 0, job_id)
        job.started_at = None
        # As RQ's own BaseRegistry.requeue does (our jobs have no dependencies to set up).
        queue._enqueue_job(job, pipeline=pipe, at_front=True)
        pipe.execute()
    log.warning("job %s: worker %s is dead; requeued (recovery %d)", job_id, execution.worker_name or "?", recoveries)
    return "requeued"


def _recover_intermediate(queue: Queue, holders: set[str], grace: float, report: RecoveryReport) -> None:
    intermediate = queue.intermediate_queue
    connection = queue.connection
    for job_id in intermediate.get_job_ids():
        if job_id in holders:
            continue
        if intermediate.set_first_seen(job_id):
            continue  # just seen; a live worker may be about to start it
        first_seen = intermediate.get_first_seen(job_id)
        if first_seen is not None and time.time() - first_seen.timestamp() < grace:
            continue
        # Re-read: the job may have started since the registry was read.
        if _is_started_by_live_worker(queue, job_id):
            continue
        if not connection.lrem(intermediate.key, 1, job_id):
            continue
        connection.delete(intermediate.get_first_seen_key(job_id))
        job = _fetch(queue, job_id)
        if job is None or job.get_status(refresh=False) not in (JobStatus.QUEUED, JobStatus.STARTED):
            continue
        if connection.lpos(queue.key, job_id) is not None:
            continue  # already back in the queue
        job.started_at = None
        queue.enqueue_job(job, at_front=True)
        report.unstuck.append(job_id)
        log.warning("job %s was stuck in the intermediate queue; requeued", job_id)


def _is_started_by_live_worker(queue: Queue, job_id: str) -> bool:
    return any(_runs_on_live_worker(queue, job_id, execution) for _, _, execution in _started(queue, job_id))
