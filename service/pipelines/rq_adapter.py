"""Every use the project makes of RQ's (and redis-py's) undocumented behaviour, in one place.

Written against RQ 3.0 and redis-py 8.1 (as locked in uv.lock); pyproject.toml bounds both to
the releases tests/test_rq_adapter.py has passed on. An upgrade: read this module, run that file.

What it relies on:
- Retries (give_up_retries, attempts, restore_retries): `get_current_job()` is the very Job the
  worker holds while `job.perform()` runs, and the worker's `handle_job_failure` reads its
  `retries_left` (at 0 it fails the job into the FailedJobRegistry instead of scheduling a
  retry); each retry lowers `retries_left` by one, and RQ keeps no count of the retries
  configured, so they are counted from `retry_intervals`: a policy needs one interval per retry
  (as service.pipelines.ingest.retry_policy has).
"""

from __future__ import annotations

from rq import get_current_job
from rq.job import Job

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
