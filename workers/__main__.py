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
import os
import signal
import sys
import threading
import time

import redis
import structlog
from rq import SimpleWorker

from service.config import ConfigError, load_settings
from service.observability import metrics
from service.observability.logs import configure_logging
from service.pipelines.ingest import JOB_FUNC
from service.services import queue_for, redis_connection
from workers import rq_adapter
from workers.housekeeping import Housekeeping

log = logging.getLogger("workers")

# RQ's idle heartbeat: the worker key lives worker_ttl + 60 s, and blocking dequeues last
# worker_ttl - 15 s. 420 s by default; 30 s keeps an idle dead worker's key around for 90 s
# at most (liveness in seconds comes from workers.recovery, which RQ cannot be tuned to).
WORKER_TTL = 30
# RQ's registry cleanup and scheduler takeover run only every maintenance_interval (600 s by
# default): when the worker running the scheduler dies, retries would wait that long.
MAINTENANCE_INTERVAL = 30
# The socket timeout of the work loop's Redis connections: one that a failover left
# half-open (no answer, no close) would otherwise hang the worker outside any job's timeout.
# RQ gives the pool a timeout (dequeue + 10 s) only for connections opened after the worker
# is built, not the one that waited for Redis. Longer than RQ's blocking dequeue
# (WORKER_TTL - 15 s), and not shorter than RQ's own, which would then replace it.
REDIS_SOCKET_TIMEOUT = WORKER_TTL


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
    worker = stop.worker = KeeperWorker([queue], connection=connection, serializer=queue.serializer,
                                        worker_ttl=WORKER_TTL, maintenance_interval=MAINTENANCE_INTERVAL)
    worker._stop_requested = stop.requested.is_set()
    housekeeping = Housekeeping(settings, worker.name).start()
    log.info("worker %s listening on queue %r", worker.name, queue.name)
    try:
        worker.work(with_scheduler=True, logging_level=settings.log_level)
    finally:
        housekeeping.stop()
    return 0


class KeeperWorker(SimpleWorker):
    """RQ's SimpleWorker, which logs and counts every job, and whose death is registered even
    when a stop signal broke a Redis transaction.

    Each job's log lines carry its `job_id`, the `request_id` of the callback that queued it
    (from the job's meta), and the `recording_sid` (and `status`) it is about; its last line
    says how it ended and how long it took. Callback jobs are counted in metrics.JOBS
    (`stored`, `retried`, `failed`) and metrics.JOB_DURATION.

    An idle worker's SIGTERM handler raises StopRequested wherever the work loop is. Inside a
    transaction, that returns a connection to the pool with replies unread (rq/rq#2175), and
    the next transaction on it, the death registration, fails: the worker exited 1 instead of
    0. Closing the pool's idle connections and registering again on a fresh one mends that.
    """

    def perform_job(self, job, queue, execution) -> bool:
        first = job.args[0] if job.args else None
        payload = first if isinstance(first, dict) else {}
        structlog.contextvars.bind_contextvars(
            job_id=job.id, request_id=(job.meta or {}).get("request_id"),
            # A callback job's payload names the recording; a media job takes its sid.
            recording_sid=payload.get("recording_sid") or (first if isinstance(first, str) else None),
            status=payload.get("status"),
        )
        callback = job.func_name == JOB_FUNC
        self._job_result = "failed"
        started = time.perf_counter()
        try:
            return super().perform_job(job, queue, execution)
        finally:
            seconds = time.perf_counter() - started
            result = "stored" if callback and self._job_result == "succeeded" else self._job_result
            if callback:
                metrics.JOBS.labels(result).inc()
                metrics.JOB_DURATION.observe(seconds)
            log.info("job %s %s", job.id, result, extra={"result": result, "duration_ms": round(seconds * 1000, 1)})
            structlog.contextvars.clear_contextvars()

    def handle_job_success(self, job, queue, started_job_registry, execution):
        self._job_result = "succeeded"
        super().handle_job_success(job, queue, started_job_registry, execution)

    def handle_job_failure(self, job, queue, started_job_registry=None, exc_string="", execution=None):
        self._job_result = "retried" if rq_adapter.will_retry(self, job) else "failed"
        super().handle_job_failure(job, queue, started_job_registry, exc_string, execution)

    def register_death(self) -> None:
        try:
            super().register_death()
        except Exception:  # the misread replies surface as ResponseError or as a parse error
            log.warning("worker %s: registering its death again on a fresh connection", self.name)
            self.connection.connection_pool.disconnect(inuse_connections=False)
            super().register_death()


class StartupStop:
    """The SIGTERM/SIGINT handler until RQ installs its own, after registering the worker and
    starting its scheduler process: without it a stop in between would kill the process with
    no clean exit. The wait for Redis and RQ's work loop (before its first dequeue) check the
    flags it sets."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.worker: KeeperWorker | None = None
        self._pid = os.getpid()

    def __call__(self, signum: int, frame) -> None:
        if os.getpid() != self._pid:
            # Inherited by RQ's scheduler process, forked before it installs its own handlers.
            # Swallowed here, the signal would leave it running and the worker's warm shutdown
            # waiting for it: end it as the default handler would.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        log.info("worker: stop requested during start-up")
        self.requested.set()
        if self.worker is not None:
            self.worker._stop_requested = True


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
