"""Job functions for tests that run real RQ workers (imported by dotted path; JSON args)."""

from __future__ import annotations

import time

from rq import get_current_job


def slow_then_quick(first_run_seconds: float, later_seconds: float = 0.2) -> int:
    """Counts its runs in Redis; the first run is slow (to be killed), later ones are quick."""
    job = get_current_job()
    runs = job.connection.incr(f"test:runs:{job.id}")
    time.sleep(first_run_seconds if runs == 1 else later_seconds)
    job.connection.set(f"test:done:{job.id}", runs)
    return runs


def quick(value: str = "ok") -> str:
    job = get_current_job()
    job.connection.incr(f"test:runs:{job.id}")
    return value


def always_fails(message: str = "boom") -> None:
    raise RuntimeError(message)


def gives_up(message: str = "cannot be fixed by retrying") -> None:
    """Counts its runs, then fails for good through the adapter."""
    from service.pipelines import rq_adapter

    job = get_current_job()
    job.connection.incr(f"test:runs:{job.id}")
    rq_adapter.give_up_retries()
    raise RuntimeError(message)
