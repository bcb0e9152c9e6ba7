"""How a job's retries are counted and cut short, in terms of RQ's internals (RQ 3.0).

RQ has no documented way for a job to refuse its remaining retries. What this relies on,
guarded by tests/test_rq_adapter.py:
- `get_current_job()` returns the very Job object the worker holds (RQ keeps it in a
  context variable while `job.perform()` runs);
- when the job raises, the worker's `handle_job_failure` reads `job.retries_left` from that
  object: at 0 it fails the job into the FailedJobRegistry instead of scheduling a retry;
- a job with a Retry policy has `retry_intervals` and `retries_left`, which each retry lowers
  by one; RQ keeps no count of the retries configured, so `attempts` and `restore_retries`
  take it from the intervals: a policy needs one interval per retry (as
  service.pipelines.ingest.retry_policy has);
- `handle_job_failure` retries a job when `job.should_retry` and the worker's
  `_stopped_job_id` is not that job (a job stopped on request is never retried): `will_retry`.
"""

from __future__ import annotations

from rq import get_current_job
from rq.job import Job

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
    """Whether the worker's `handle_job_failure`, about to run for this job, schedules a retry."""
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
