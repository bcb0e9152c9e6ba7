"""The reconciliation sweep: SignalWire's status callbacks are best-effort (three attempts,
then dropped, as SignalWire documents), so the REST API is the source of truth for anything the
callbacks left unfinished or never told us about.

`sweep()` (no Flask) does two passes, one sweep at a time across all workers (a Redis lock):

(a) every recording the store holds in a non-terminal (or unknown) status for longer than
    `older_than_seconds`, or in a terminal one with no metadata fetched for it (the job's
    fetches failed for good, or the API still lagged): fetch its metadata and store it.
    Errors are recorded on the recording (`attempts`, `last_error`). A 404 is recorded the
    same way and the recording is left unfinished: it is retried by the next sweeps and stays
    visible to operators, never deleted or guessed terminal. Except for an `absent` one:
    SignalWire may never create its resource, so the 404 is its final answer (it keeps its
    status and is not fetched again; see Store.note_attempt).
(b) when `list_hours > 0`: list the account's recordings created in the last `list_hours`
    hours and store every one the store does not have, or has unfinished as in (a)
    (a `<Record>` verb whose callbacks were all dropped is found only this way).
(c) when the media archive is on (`archive` given): queue the archive job of completed
    recordings whose media has no archived copy (never queued, e.g. completed by this sweep;
    queued and lost; or failed for good), at most `archive_limit`, the least tried first; a
    recording whose job is still on its way is left to it.

Rate limits: the client already waits out short Retry-After values (bounded by its
`max_retry_wait`). A 429 (or a 503 with Retry-After) that is still there after that stops
the sweep at once; the report says so and when to come back, and the worker's schedule
holds the next sweep until then. One request is never repeated in a loop.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from datetime import datetime, timedelta, timezone
from typing import Callable

import redis
from redis.exceptions import LockError

from service.domain.recordings import is_terminal
from service.signalwire.client import SignalWireClient, SignalWireError

log = logging.getLogger(__name__)

LOCK_KEY = "recording-keeper:sweep:lock"
# When the last sweep finished (Unix time), for /metrics.
FINISHED_KEY = "recording-keeper:sweep:finished-at"
# What the last sweep found (its summary line), for the dashboard.
REPORT_KEY = "recording-keeper:sweep:last-report"
DEFAULT_LOCK_TTL = 600
DEFAULT_LIMIT = 500
DEFAULT_ARCHIVE_LIMIT = 200


@dataclasses.dataclass
class SweepReport:
    checked: int = 0  # unfinished recordings fetched (pass a)
    stored: int = 0  # recordings whose metadata was stored (both passes)
    failed: int = 0  # fetches or writes that failed (recorded on the recording where possible)
    listed: int = 0  # recordings the list endpoint returned (pass b)
    archive_queued: int = 0  # archive jobs queued for completed recordings without a copy (pass c)
    skipped_locked: bool = False  # another sweep was running: nothing done
    rate_limited: bool = False  # stopped early on a rate limit
    retry_after: float | None = None  # what SignalWire asked us to wait, when it said
    errors: list[str] = dataclasses.field(default_factory=list)  # a few, for the operator
    seconds: float = 0.0

    def summary(self) -> str:
        if self.skipped_locked:
            return "sweep skipped: another sweep is running"
        text = (
            f"sweep: checked={self.checked} stored={self.stored} failed={self.failed} listed={self.listed} "
            f"archive_queued={self.archive_queued} in {self.seconds:.1f}s"
        )
        if self.rate_limited:
            wait = f" (retry after {self.retry_after:.0f}s)" if self.retry_after is not None else ""
            text += f"; stopped early: rate limited{wait}"
        return text


class _RateLimited(Exception):
    def __init__(self, error: SignalWireError):
        super().__init__(str(error))
        self.error = error


def _is_rate_limit(exc: SignalWireError) -> bool:
    return exc.status == 429 or (exc.status == 503 and exc.retry_after is not None)


def sweep(
    store,
    client: SignalWireClient,
    redis_client: redis.Redis,
    *,
    older_than_seconds: int,
    list_hours: int = 0,
    lock_ttl: int = DEFAULT_LOCK_TTL,
    limit: int = DEFAULT_LIMIT,
    now: datetime | None = None,
    archive: Callable[[str], bool] | None = None,
    archive_limit: int = DEFAULT_ARCHIVE_LIMIT,
) -> SweepReport:
    """Run one sweep now (see the module docstring). Never raises for SignalWire or per-row
    database errors; raises only when Redis (the lock) or the first database read fails."""
    report = SweepReport()
    lock = redis_client.lock(LOCK_KEY, timeout=lock_ttl, blocking=False)
    if not lock.acquire(blocking=False):
        report.skipped_locked = True
        log.info("sweep skipped: another sweep holds the lock")
        return report
    started = time.monotonic()
    keeper = _LockKeeper(lock, lock_ttl)
    try:
        now = now or datetime.now(timezone.utc)
        try:
            _sweep_unfinished(store, client, report, keeper, now - timedelta(seconds=older_than_seconds), limit)
            if list_hours > 0:
                _sweep_listing(store, client, report, keeper, now - timedelta(hours=list_hours))
        except _RateLimited as limited:
            report.rate_limited = True
            report.retry_after = limited.error.retry_after
            report.errors.append(str(limited.error))
            log.warning("sweep stopped early: rate limited (%s)", limited.error)
        if archive is not None:  # needs nothing from SignalWire: runs even when rate limited
            _sweep_unarchived(store, archive, report, keeper, now - timedelta(seconds=older_than_seconds),
                              archive_limit)
    finally:
        report.seconds = time.monotonic() - started
        try:
            lock.release()
        except LockError:  # expired (a very long sweep) or Redis went away: it times out anyway
            log.warning("sweep lock was lost before release")
        except redis.RedisError as exc:
            log.warning("could not release the sweep lock (%s); it expires in %ss", type(exc).__name__, lock_ttl)
        try:
            redis_client.mset({FINISHED_KEY: f"{time.time():.3f}", REPORT_KEY: report.summary()})
        except redis.RedisError:
            pass  # only /metrics and the dashboard read them
    log.info("%s", report.summary(), extra={"checked": report.checked, "stored": report.stored,
                                            "failed": report.failed, "listed": report.listed})
    return report


class _LockKeeper:
    """Extends the lock's time-to-live while a long sweep is still running."""

    def __init__(self, lock, ttl: int):
        self.lock = lock
        self.ttl = ttl
        self.renewed = time.monotonic()

    def touch(self) -> None:
        if time.monotonic() - self.renewed > self.ttl / 3:
            try:
                self.lock.reacquire()
            except (LockError, redis.RedisError) as exc:
                log.warning("could not extend the sweep lock: %s", exc)
            self.renewed = time.monotonic()


def _note(report: SweepReport, message: str) -> None:
    report.failed += 1
    if len(report.errors) < 20:
        report.errors.append(message)


def _note_attempt(store, sid: str, error: str, not_found: bool = False) -> None:
    try:
        store.note_attempt(sid, error, not_found=not_found)
    except Exception as exc:  # the database may be the problem: best effort
        log.warning("could not record the error on %s: %s", sid, type(exc).__name__)


def _sweep_unfinished(store, client, report: SweepReport, keeper: _LockKeeper, older_than: datetime, limit: int):
    for sid in store.unfinished(older_than=older_than, limit=limit):
        keeper.touch()
        report.checked += 1
        try:
            recording = client.fetch_recording(sid)
        except SignalWireError as exc:
            if _is_rate_limit(exc):
                raise _RateLimited(exc) from None
            _note_attempt(store, sid, f"sweep: {exc}", not_found=exc.status == 404)
            _note(report, f"{sid}: {exc}")
            continue
        try:
            store.save_metadata(recording)
        except Exception as exc:
            _note_attempt(store, sid, f"sweep: database error: {type(exc).__name__}")
            _note(report, f"{sid}: database error: {type(exc).__name__}")
            continue
        report.stored += 1


def _sweep_unarchived(store, archive: Callable[[str], bool], report: SweepReport, keeper: _LockKeeper,
                      older_than: datetime, limit: int) -> None:
    try:
        sids = store.unarchived(older_than=older_than, limit=limit)
    except Exception as exc:
        _note(report, f"media: database error: {type(exc).__name__}")
        return
    for sid in sids:
        keeper.touch()
        try:
            if archive(sid):
                report.archive_queued += 1
        except Exception as exc:  # Redis or the database: the next sweep tries again
            _note(report, f"{sid}: could not queue its archive job: {type(exc).__name__}")


def _sweep_listing(store, client, report: SweepReport, keeper: _LockKeeper, created_after: datetime):
    try:
        for recording in client.list_recordings(created_after=created_after):
            keeper.touch()
            report.listed += 1
            try:
                known = store.get(recording.sid)
                if known is not None and is_terminal(known.get("status")) and known.get("last_fetched_at"):
                    continue  # final: terminal, with its metadata
                store.save_metadata(recording)
            except Exception as exc:
                _note(report, f"{recording.sid}: database error: {type(exc).__name__}")
                continue
            report.stored += 1
    except SignalWireError as exc:
        if _is_rate_limit(exc):
            raise _RateLimited(exc) from None
        _note(report, f"list: {exc}")
