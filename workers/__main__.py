"""`python -m workers`: the Procfile's worker process.

An RQ worker with its scheduler (so that retries fire) on the project's queue. It runs jobs
in-process (SimpleWorker): no fork per job, so connection pools stay warm and safe to use,
and no work horse in a process group of its own (RQ's horse calls setpgrp) to outlive us.

Started while Redis is unreachable, it waits for Redis instead of exiting (wait_for_redis).

Next to the work loop, daemon threads do the housekeeping (workers.housekeeping): the
liveness beat, the inbox drain, crash recovery of dead workers' jobs (workers.recovery) and
the reconciliation sweep.

SIGTERM (Heroku's stop): RQ's warm shutdown finishes the current job, stops the scheduler
process it started and registers the worker's death; then the housekeeping threads stop and
the process exits 0. A job longer than Heroku's 30 s grace is SIGKILLed with the process and
recovered by another worker within seconds (workers.recovery).
"""

from __future__ import annotations

import logging
import signal
import sys
import threading

import redis
import structlog

from service.config import ConfigError, load_settings
from service.observability import metrics
from service.observability.logs import configure_logging
from service.media.pipeline import JOB_FUNC as MEDIA_JOB_FUNC
from service.pipelines.ingest import JOB_FUNC
from service.pipelines.rq_adapter import KeeperWorker, StartupStop, work_loop_socket_timeout
from service.services import queue_for, redis_connection
from workers.housekeeping import Housekeeping

log = logging.getLogger("workers")

# RQ's idle heartbeat: the worker key lives worker_ttl + 60 s, and blocking dequeues last
# worker_ttl - 15 s. 420 s by default; 30 s keeps an idle dead worker's key around for 90 s
# at most (liveness in seconds comes from workers.recovery, which RQ cannot be tuned to).
WORKER_TTL = 30
# RQ's registry cleanup and scheduler takeover run only every maintenance_interval (600 s by
# default): when the worker running the scheduler dies, retries would wait that long.
MAINTENANCE_INTERVAL = 30
# The socket timeout of the work loop's Redis connections, the one that waited for Redis included.
REDIS_SOCKET_TIMEOUT = work_loop_socket_timeout(WORKER_TTL)


def main(argv: list[str] | None = None) -> int:
    try:
        settings = load_settings()
    except ConfigError as exc:
        configure_logging()
        log.critical("%s", exc, extra={"problems": exc.problems})
        return 2
    configure_logging(settings.log_level, settings.secrets, settings.log_format)
    connection = redis_connection(settings.redis_url, socket_timeout=REDIS_SOCKET_TIMEOUT)
    queue = queue_for(settings, connection)
    stop = StartupStop()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if not wait_for_redis(connection, stop.requested):
        return 0
    worker = ObservedWorker([queue], connection=connection, serializer=queue.serializer,
                            worker_ttl=WORKER_TTL, maintenance_interval=MAINTENANCE_INTERVAL)
    stop.attach(worker)
    housekeeping = Housekeeping(settings, worker.name).start()
    log.info("worker %s listening on queue %r", worker.name, queue.name)
    try:
        worker.work(with_scheduler=True, logging_level=settings.log_level)
    finally:
        housekeeping.stop()
    return 0


class ObservedWorker(KeeperWorker):
    """The worker that logs and counts every job.

    Each job's log lines carry its `job_id`, the `request_id` of the callback that queued it
    (from the job's meta), and the `recording_sid` (and `status`) it is about; its last line
    says how it ended and how long it took. Callback jobs are counted in metrics.JOBS
    (`stored`, `retried`, `failed`) and metrics.JOB_DURATION, archive jobs in metrics.MEDIA_JOBS.
    """

    def job_started(self, job) -> None:
        first = job.args[0] if job.args else None
        payload = first if isinstance(first, dict) else {}
        structlog.contextvars.bind_contextvars(
            job_id=job.id, request_id=(job.meta or {}).get("request_id"),
            # A callback job's payload names the recording; a media job takes its sid.
            recording_sid=payload.get("recording_sid") or (first if isinstance(first, str) else None),
            status=payload.get("status"),
        )

    def job_ended(self, job, outcome: str, seconds: float) -> None:
        callback = job.func_name == JOB_FUNC
        result = "stored" if callback and outcome == "succeeded" else outcome
        if callback:
            metrics.JOBS.labels(result).inc()
            metrics.JOB_DURATION.observe(seconds)
        elif job.func_name == MEDIA_JOB_FUNC:
            result = "archived" if outcome == "succeeded" else outcome
            metrics.MEDIA_JOBS.labels(result).inc()
        log.info("job %s %s", job.id, result, extra={"result": result, "duration_ms": round(seconds * 1000, 1)})
        structlog.contextvars.clear_contextvars()


def wait_for_redis(connection: redis.Redis, stopping: threading.Event, longest_wait: float = 5.0) -> bool:
    """True once Redis answers; False when asked to stop first.

    RQ's worker needs Redis from its first line, and a worker that quits when Redis vanishes
    mid-job is restarted into the same outage. Exiting again would make a crash loop, which
    Heroku answers with ever longer cool-off periods before the next restart: this waits instead.
    """
    delay = 0.25
    while not stopping.is_set():
        try:
            connection.ping()
            return True
        except redis.RedisError as exc:
            log.warning("redis unreachable (%s); the worker starts when it answers", type(exc).__name__)
            stopping.wait(delay)
            delay = min(delay * 2, longest_wait)
    return False


if __name__ == "__main__":
    sys.exit(main())
