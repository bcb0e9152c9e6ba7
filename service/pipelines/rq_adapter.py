"""Every use the project makes of RQ's (and redis-py's) undocumented behaviour, in one place.

Written against RQ 3.0 and redis-py 8.1 (as locked in uv.lock); pyproject.toml bounds both to
the releases tests/test_rq_adapter.py has passed on. An upgrade: read this module, run that file.
Everything outside it uses RQ's public API only (Queue, Job.fetch, the registries' public
methods, Retry, SimpleWorker, get_current_job).

What it relies on:
- Enqueueing without building a Job (EnqueueOnce, the webhook's ingest): `Queue._prepare_for_queue`
  and `rq.scripts._build_hset_args` give the fields RQ's enqueue writes to a job hash; the Lua
  script writes the same hash (the fields that differ per job: `data` as the serializer's
  (func, instance, args, kwargs), read uncompressed as is; `created_at`/`enqueued_at` in
  `rq.utils.utcformat`; `description`; `retry_intervals` as JSON), pushes the id on the queue's
  list and adds the queue to `Queue.redis_queues_keys`, as `Queue.enqueue_job` does.
- Retries (give_up_retries, will_retry, attempts, restore_retries): `get_current_job()` is the
  very Job the worker holds while `job.perform()` runs, and the worker's `handle_job_failure` reads its
  `retries_left` (at 0 it fails the job into the FailedJobRegistry instead of scheduling a
  retry); each retry lowers `retries_left` by one, and RQ keeps no count of the retries
  configured, so they are counted from `retry_intervals`: a policy needs one interval per retry
  (as service.pipelines.ingest.retry_policy has). `handle_job_failure` retries when
  `job.should_retry` and the worker's `_stopped_job_id` is not the job (will_retry).
- Crash recovery (workers.recovery): a StartedJobRegistry member is `job_id:execution_id`
  (`rq.utils.parse_composite_key`); each run has an `rq.executions.Execution` record (its hash,
  the job's execution registry, the worker's execution index) naming its worker; a job hash
  keeps its last `worker_name`; a worker's hash (`BaseWorker.redis_worker_namespace_prefix` +
  name) lives while RQ counts the worker alive and gets a `death` field when it registers its
  death; `rq.job_lifecycle.record_job_failure` fails a job with no worker involved;
  `Queue._enqueue_job` requeues one as `BaseRegistry.requeue` does; the intermediate queue
  (`queue.intermediate_queue`) holds the ids a worker took but has not started, with RQ's own
  first-seen markers.
- The worker process (workers.__main__): `register_death` runs a transaction on a pooled
  connection (rq/rq#2175); the work loop checks `_stop_requested` before each dequeue; `work()`
  forks its scheduler before installing its own signal handlers; the blocking dequeue lasts
  `worker_ttl - 15` s and RQ raises the pool's socket timeout to 10 s more than that; each
  job passes through `perform_job`, then `handle_job_success` or `handle_job_failure` (the
  job hooks of KeeperWorker).
- redis-py below 8.2: RQ's warm shutdown stops the worker's pub/sub thread, and 8.2's
  `PubSubWorkerThread.stop()` waits out the thread's 60 s read, longer than Heroku's 30 s.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import random
import signal
import threading
import time
from typing import Callable, Iterator, NamedTuple, Sequence

import orjson
import redis
from rq import Queue, Retry, SimpleWorker, get_current_job
from rq.executions import Execution
from rq.job import Job
from rq.job_lifecycle import record_job_failure
from rq.scripts import _build_hset_args  # RQ's own field list for a job hash
from rq.serializers import JSONSerializer
from rq.utils import now as utcnow, parse_composite_key, utcformat
from rq.worker import BaseWorker

log = logging.getLogger(__name__)

# --- enqueueing without building a Job -------------------------------------------------

# KEYS: set of queues, job template, queue key, then per job: once key, job key.
# ARGV: once ttl, queue key, timestamp, then per job: job id, data, description,
#       retry intervals, meta ('' for none).
# RQ's own unique-enqueue steps plus the once marker, for a batch of jobs in one round trip:
# a job whose marker is set can never be enqueued a second time. The fields every job shares
# come from a template hash that RQ built (see _JobTemplate), so the request carries only what
# differs. Returns 1 (queued) or 0 (not) per job, or -1 when there is no template yet.
_ENQUEUE_ONCE = """
local template = redis.call('HGETALL', KEYS[2])
if #template == 0 then
    return -1
end
local ttl = tonumber(ARGV[1])
local created, ids = {}, {}
for i = 1, (#KEYS - 3) / 2 do
    local dedupe, job = KEYS[2 + 2 * i], KEYS[3 + 2 * i]
    local a = 5 * i - 1
    created[i] = 0
    if redis.call('SET', dedupe, '1', 'NX', 'EX', ttl) and redis.call('EXISTS', job) == 0 then
        redis.call('HSET', job, unpack(template))
        redis.call('HSET', job, 'data', ARGV[a + 1], 'created_at', ARGV[3], 'enqueued_at', ARGV[3],
                   'description', ARGV[a + 2], 'retry_intervals', ARGV[a + 3])
        if ARGV[a + 4] ~= '' then
            redis.call('HSET', job, 'meta', ARGV[a + 4])
        end
        ids[#ids + 1] = ARGV[a]
        created[i] = 1
    end
end
if #ids > 0 then
    redis.call('RPUSH', KEYS[3], unpack(ids))
    redis.call('SADD', KEYS[1], ARGV[2])
end
return created
"""


class OnceJob(NamedTuple):
    id: str
    once_key: str  # set for the caller's ttl when the job is queued; while set, none is queued
    args: list
    description: str
    meta: dict | None = None  # the job's meta, as RQ stores it (e.g. the request id)


class EnqueueOnce:
    """Jobs of one function on one queue, a batch per Redis round trip, each queued at most
    once: only while its once key is unset and no job with its id exists.

    Building an RQ Job per request (create_job, _prepare_for_queue, to_dict, zlib) and sending
    its ~20 fields was most of the webhook's CPU. RQ builds one template job per process
    instead; only the payload, timestamps, description and retry intervals differ per job, and
    the job data is stored uncompressed JSON, which RQ reads as is. Each job's retry intervals
    are drawn from a few hundred `retry_policy()` results made once: as good at spreading a
    burst of retries when the policy is jittered, without a policy and a JSON dump per job.
    tests/test_rq_adapter.py compares the result with RQ's own create_job, field by field.
    """

    def __init__(self, queue: Queue, func_name: str, retry_policy: Callable[[], Retry], *,
                 result_ttl: int, failure_ttl: int):
        self.queue = queue
        self._script = queue.connection.register_script(_ENQUEUE_ONCE)
        self._template_options = dict(func_name=func_name, retry_policy=retry_policy, result_ttl=result_ttl,
                                      failure_ttl=failure_ttl)
        self._template: _JobTemplate | None = None

    def __call__(self, jobs: Sequence[OnceJob], once_ttl: int) -> list[bool]:
        """True per job queued, False per job not (its once key was set, or the job exists;
        a job repeated within the batch is queued once). Raises redis errors."""
        if not jobs:
            return []
        template = self._job()
        queue = self.queue
        keys = [Queue.redis_queues_keys, template.key, queue.key]
        args = [once_ttl, queue.key, utcformat(utcnow())]
        for job in jobs:
            keys += [job.once_key, queue.job_class.key_for(job.id)]
            args += [job.id, *template.args(job)]
        created = self._script(keys=keys, args=args)
        if created == -1:  # a new or flushed Redis: write the template, then enqueue
            template.store(queue.connection)
            created = self._script(keys=keys, args=args)
        return [c == 1 for c in created]

    def _job(self) -> _JobTemplate:
        # Made on first use: RQ asks the Redis server for its version, and the web process
        # must start (and keep callbacks in the inbox) while Redis is down.
        if self._template is None:
            self._template = _JobTemplate(self.queue, **self._template_options)
        return self._template


class _JobTemplate:
    """The fields every job of EnqueueOnce shares, as RQ itself writes them, kept in Redis."""

    VARYING = ("data", "created_at", "enqueued_at", "description", "retry_intervals", "meta")

    def __init__(self, queue: Queue, func_name: str, retry_policy: Callable[[], Retry], result_ttl: int,
                 failure_ttl: int):
        self.serializer = queue.serializer
        self.func_name = func_name
        job = queue.create_job(func_name, args=({},), job_id="template", retry=retry_policy(),
                               result_ttl=result_ttl, failure_ttl=failure_ttl, description="")
        queue._prepare_for_queue(job)  # origin, timeout, status
        fields = _build_hset_args(job)
        self.static = {k: v for k, v in zip(fields[::2], fields[1::2]) if k not in self.VARYING}
        # Named by its content: a deploy that changes a field (the retry count, RQ's own
        # fields) writes a new template instead of reading the old one.
        digest = hashlib.sha256(json.dumps(self.static, sort_keys=True, default=repr).encode()).hexdigest()[:16]
        self.key = f"recording-keeper:job-template:{queue.name}:{digest}"
        self.schedules = [json.dumps(retry_policy().intervals) for _ in range(256)]

    def store(self, connection: redis.Redis) -> None:
        connection.hset(self.key, mapping=self.static)

    def args(self, job: OnceJob) -> list:
        return [
            self._dumps((self.func_name, None, job.args, {})),
            job.description,
            random.choice(self.schedules),
            self._dumps(job.meta) if job.meta else "",
        ]

    def _dumps(self, value) -> bytes:
        # RQ's JSONSerializer reads what orjson writes, which takes a fifth of the time on the
        # webhook's path; a value orjson refuses (a lone surrogate) goes the serializer's way.
        if self.serializer is JSONSerializer:
            try:
                return orjson.dumps(value)
            except TypeError:
                pass
        return self.serializer.dumps(value)


# --- retries ---------------------------------------------------------------------------

# Set when a job gave up early: retries_left no longer tells how many times it ran.
_ATTEMPTS_AT_GIVE_UP = "attempts_at_give_up"


def give_up_retries() -> None:
    """The running job's current failure is final: it lands in the failed registry now,
    with its exception as the reason, instead of being retried. Outside a job, nothing."""
    job = get_current_job()
    if job is None or not job.retries_left:
        return
    job.meta[_ATTEMPTS_AT_GIVE_UP] = attempts(job)
    job.save_meta()
    job.retries_left = 0


def will_retry(worker, job: Job) -> bool:
    """Whether the worker's `handle_job_failure`, about to run for this job, schedules a retry:
    RQ retries when `job.should_retry` and the worker's `_stopped_job_id` is not that job (a
    job stopped on request is never retried)."""
    return bool(job.should_retry) and getattr(worker, "_stopped_job_id", None) != job.id


def attempts(job: Job) -> int:
    """How many times a failed (or running) job has run."""
    if _ATTEMPTS_AT_GIVE_UP in (job.meta or {}):
        return int(job.meta[_ATTEMPTS_AT_GIVE_UP])
    configured = len(job.retry_intervals or ())
    return max(configured - (job.retries_left or 0), 0) + 1


def restore_retries(job: Job) -> None:
    """Before a replay: the full retry policy again (saved with the requeue)."""
    if job.retry_intervals:
        job.retries_left = len(job.retry_intervals)
    job.meta.pop(_ATTEMPTS_AT_GIVE_UP, None)


# --- crash recovery --------------------------------------------------------------------

# Recorded by RQ's register_death in the worker's hash, which then lives on for 60 s.
WORKER_DEATH_FIELD = "death"


def worker_key(worker_name: str) -> str:
    """The hash RQ keeps for a worker: it exists while RQ counts the worker alive (its TTL is
    refreshed by the heartbeat) and holds WORKER_DEATH_FIELD once the worker registered its death."""
    return BaseWorker.redis_worker_namespace_prefix + worker_name


@dataclasses.dataclass(frozen=True)
class StartedRun:
    """One entry of a queue's StartedJobRegistry: a run of a job that some worker started."""

    member: str  # as the registry stores it
    job_id: str
    _execution: Execution

    @property
    def worker_name(self) -> str:
        """The worker running it, '' when the run's record is gone (it expired)."""
        return self._execution.worker_name


def started_runs(queue: Queue, job_id: str | None = None) -> Iterator[StartedRun]:
    """Every entry of the queue's StartedJobRegistry, or job `job_id`'s entries (the others'
    records are then not read)."""
    connection = queue.connection
    for member in connection.zrange(queue.started_job_registry.key, 0, -1):
        member = member.decode() if isinstance(member, bytes) else member
        run_job_id, execution_id = parse_composite_key(member)
        if job_id is not None and run_job_id != job_id:
            continue
        execution = Execution(id=execution_id, job_id=run_job_id, connection=connection)
        data = connection.hgetall(execution.key)
        if data:
            execution.restore(data)
        yield StartedRun(member, run_job_id, execution)


def last_worker_of(connection: redis.Redis, job_id: str) -> str | None:
    """The worker that last took the job, from its hash (no whole Job read)."""
    raw = connection.hget(Job.key_for(job_id), "worker_name")
    return raw.decode() if raw else None


def take_started(queue: Queue, run: StartedRun) -> bool:
    """Removes the run from the StartedJobRegistry: True for the one caller that did (another
    recoverer, or the worker finishing the job, may get there first)."""
    return bool(queue.connection.zrem(queue.started_job_registry.key, run.member))


def forget_run(pipe: redis.client.Pipeline, run: StartedRun, job: Job | None) -> None:
    """Deletes what RQ keeps of a run besides its registry entry: its record, and its place in
    the worker's index and the job's execution registry."""
    execution = run._execution
    pipe.delete(execution.key)
    if execution.worker_name:
        pipe.srem(execution.worker_executions_key, execution.composite_key)
    pipe.zrem(job.execution_registry.key if job else f"rq:executions:{run.job_id}", execution.id)


def fail_abandoned(job: Job, reason: str, pipe: redis.client.Pipeline) -> None:
    """Fails a started job no worker is running into the FailedJobRegistry, with `reason`
    as its failure (and its meta saved)."""
    record_job_failure(job, reason, pipe)


def requeue_abandoned(queue: Queue, job: Job, pipe: redis.client.Pipeline) -> None:
    """Puts a started job no worker is running back at the front of its queue, retries and
    meta as they are, as RQ's own BaseRegistry.requeue does (our jobs have no dependencies to
    set up)."""
    pipe.lrem(queue.intermediate_queue_key, 0, job.id)
    job.started_at = None
    queue._enqueue_job(job, pipeline=pipe, at_front=True)


def intermediate_job_ids(queue: Queue) -> list[str]:
    """The ids in RQ's intermediate queue: taken by a worker (LMOVE), not yet started (or the
    worker has not yet removed them)."""
    return queue.intermediate_queue.get_job_ids()


def in_intermediate_longer_than(queue: Queue, job_id: str, seconds: float) -> bool:
    """Whether the job has been seen in the intermediate queue for `seconds` or more, by
    RQ's own first-seen marker. The first call for a job sets the marker: False."""
    intermediate = queue.intermediate_queue
    if intermediate.set_first_seen(job_id):
        return False
    first_seen = intermediate.get_first_seen(job_id)
    return first_seen is None or time.time() - first_seen.timestamp() >= seconds


def take_from_intermediate(queue: Queue, job_id: str) -> bool:
    """Removes the job from the intermediate queue, with its first-seen marker: True for the
    one caller that did."""
    intermediate = queue.intermediate_queue
    if not queue.connection.lrem(intermediate.key, 1, job_id):
        return False
    queue.connection.delete(intermediate.get_first_seen_key(job_id))
    return True


# --- the worker process ----------------------------------------------------------------


def work_loop_socket_timeout(worker_ttl: int) -> int:
    """The socket timeout for a worker's own Redis connection: one that a failover left
    half-open (no answer, no close) would otherwise hang the worker outside any job's timeout.

    Longer than RQ's blocking dequeue (worker_ttl - 15 s), which must not time out, and not
    shorter than the timeout RQ sets on the pool when the worker is built (dequeue + 10 s),
    which would then replace it for new connections only, not the one already open."""
    return worker_ttl


class KeeperWorker(SimpleWorker):
    """RQ's SimpleWorker, whose death is registered even when a stop signal broke a Redis
    transaction, and which can be asked to stop before its work loop starts.

    An idle worker's SIGTERM handler raises StopRequested wherever the work loop is. Inside a
    transaction, that returns a connection to the pool with replies unread (rq/rq#2175), and
    the next transaction on it, the death registration, fails: the worker exited 1 instead of
    0. Closing the pool's idle connections and registering again on a fresh one mends that.
    """

    def register_death(self) -> None:
        try:
            super().register_death()
        except Exception:  # the misread replies surface as ResponseError or as a parse error
            log.warning("worker %s: registering its death again on a fresh connection", self.name)
            self.connection.connection_pool.disconnect(inuse_connections=False)
            super().register_death()

    def stop_before_next_job(self) -> None:
        """The work loop ends before its next dequeue (its first, if it has not started), as
        after RQ's own warm-shutdown request."""
        self._stop_requested = True

    # Hooks around each job, for subclasses: `job_started(job)` before it runs, and
    # `job_ended(job, outcome, seconds)` after, with outcome "succeeded", "retried" or "failed".
    # They rest on RQ's perform_job, handle_job_success and handle_job_failure (their
    # signatures in RQ 3.0) and on will_retry.

    def job_started(self, job: Job) -> None:
        pass

    def job_ended(self, job: Job, outcome: str, seconds: float) -> None:
        pass

    def perform_job(self, job, queue, execution) -> bool:
        self.job_started(job)
        self._job_outcome = "failed"
        started = time.perf_counter()
        try:
            return super().perform_job(job, queue, execution)
        finally:
            self.job_ended(job, self._job_outcome, time.perf_counter() - started)

    def handle_job_success(self, job, queue, started_job_registry, execution):
        self._job_outcome = "succeeded"
        super().handle_job_success(job, queue, started_job_registry, execution)

    def handle_job_failure(self, job, queue, started_job_registry=None, exc_string="", execution=None):
        self._job_outcome = "retried" if will_retry(self, job) else "failed"
        super().handle_job_failure(job, queue, started_job_registry, exc_string, execution)


class StartupStop:
    """The SIGTERM/SIGINT handler until RQ installs its own, after registering the worker and
    starting its scheduler process: without it a stop in between would kill the process with
    no clean exit. The caller's wait before the worker exists checks `requested`; the worker
    attached stops before its first dequeue."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.worker: KeeperWorker | None = None
        self._pid = os.getpid()

    def attach(self, worker: KeeperWorker) -> None:
        """From now on a stop reaches `worker` too; one already requested, at once."""
        self.worker = worker
        if self.requested.is_set():
            worker.stop_before_next_job()

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
            self.worker.stop_before_next_job()
