"""Failed work and its replay, for the CLI (`failed`, `replay`, `deliveries replay`) and the
dashboard alike: RQ's dead letters (callback jobs and archive jobs), inbox rows set aside, and
notification deliveries that ran out of retries. Nothing here imports Flask or click.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone

from rq import Queue
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job

from service.domain.recordings import CallbackEvent
from service.media.pipeline import job_id_for as archive_job_id
from service.pipelines import rq_adapter
from service.pipelines.ingest import callback_job_id

CALLBACK, ARCHIVE = "callback", "archive"
KINDS = (CALLBACK, ARCHIVE)
# Since when "replay every failed delivery" looks: all of them.
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclasses.dataclass(frozen=True)
class FailedJob:
    """What an operator needs about one dead letter."""

    id: str
    kind: str  # callback or archive
    recording_sid: str
    status: str  # the callback's status; "media" for an archive job
    attempts: int
    recoveries: int
    error: str  # the last line of its traceback
    failed_at: str

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def failed_jobs(queue: Queue) -> list[FailedJob]:
    """Every job in the failed registry (callback and archive jobs), as the registry orders them."""
    return _described(queue, queue.failed_job_registry.get_job_ids())


def failed_jobs_of(queue: Queue, sid: str, statuses) -> list[FailedJob]:
    """A recording's dead letters: its callback jobs (one per status it was told of) and its
    archive job, found by their ids, so the registry is never listed for it."""
    ids = [callback_job_id(sid, status) for status in statuses] + [archive_job_id(sid)]
    key = queue.failed_job_registry.key
    with queue.connection.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.zscore(key, job_id)
        scores = pipe.execute()
    return _described(queue, [job_id for job_id, score in zip(ids, scores) if score is not None])


def _described(queue: Queue, ids: list[str]) -> list[FailedJob]:
    if not ids:
        return []
    jobs = Job.fetch_many(ids, connection=queue.connection, serializer=queue.serializer)
    return [describe(job) for job in jobs if job is not None]


def describe(job: Job) -> FailedJob:
    sid = status = "?"
    try:
        payload = job.args[0]
        if isinstance(payload, dict):
            event = CallbackEvent.from_payload(payload)
            sid, status = event.recording_sid, event.status
    except Exception:
        pass
    if sid == "?":  # an archive job ("recording <sid> media"), or a payload this release cannot read
        parts = (job.description or "").split()
        if len(parts) >= 3 and parts[0] == "recording":
            sid, status = parts[1], parts[2]
    result = job.latest_result()
    exc = (result.exc_string if result is not None else None) or ""
    lines = [line.strip() for line in exc.strip().splitlines() if line.strip()]
    failed_at = job.ended_at or (result.created_at if result is not None else None)
    return FailedJob(
        id=job.id,
        kind=ARCHIVE if job.id.startswith("media_") else CALLBACK,
        recording_sid=sid,
        status=status,
        attempts=rq_adapter.attempts(job),
        recoveries=int((job.meta or {}).get("recoveries", 0)),
        error=lines[-1] if lines else "",
        failed_at=failed_at.isoformat() if failed_at else "",
    )


def replay_job(queue: Queue, job_id: str) -> bool:
    """Requeue one failed job (RQ's requeue: the callback dedupe does not apply) with its full
    retry policy again. False: no such failed job."""
    registry = queue.failed_job_registry
    try:
        job = Job.fetch(job_id, connection=queue.connection, serializer=queue.serializer)
        rq_adapter.restore_retries(job)  # a replay gets the full retry policy again
        job.meta.pop("recoveries", None)
        registry.requeue(job)
    except (NoSuchJobError, InvalidJobOperation):
        return False
    return True


def replay_jobs(queue: Queue, job_ids: list[str] | None = None, kind: str | None = None) -> tuple[list[str], list[str]]:
    """Requeue the given failed jobs, or every one (of `kind`, when given): (requeued, not failed jobs)."""
    if job_ids is None:
        job_ids = queue.failed_job_registry.get_job_ids()
        if kind is not None:
            job_ids = [job_id for job_id in job_ids if (ARCHIVE if job_id.startswith("media_") else CALLBACK) == kind]
    requeued, missing = [], []
    for job_id in job_ids:
        (requeued if replay_job(queue, job_id) else missing).append(job_id)
    return requeued, missing


# --- notification deliveries ------------------------------------------------------------------


def failed_deliveries(store, limit: int = 100) -> list[dict]:
    """Failed deliveries, newest first, across endpoints (each endpoint's page from its index)."""
    rows: list[dict] = []
    for endpoint in store.notifications.list_endpoints():
        page, _ = store.notifications.list_deliveries(endpoint["id"], status="failed", limit=limit)
        rows += [{**row, "endpoint_url": endpoint["url"], "endpoint_disabled": endpoint["disabled"]} for row in page]
    rows.sort(key=lambda row: (row["created_at"], row["id"]), reverse=True)
    return rows[:limit]


def replay_delivery(store, delivery_id: str) -> bool:
    """Send a delivery again (same webhook-id and body, the whole retry schedule). False: no such delivery."""
    return store.notifications.replay(delivery_id) is not None


def replay_failed_deliveries(store, endpoint_id: str | None = None, since: datetime = EPOCH) -> int:
    """Send again every failed delivery created since `since`, of one endpoint or of every enabled
    one (a disabled endpoint's would only fail again: enable it first). Raises LookupError for an
    unknown endpoint and ValueError for a disabled one."""
    if endpoint_id is not None:
        endpoint = store.notifications.get_endpoint(endpoint_id)
        if endpoint is None:
            raise LookupError(f"no endpoint {endpoint_id}")
        if endpoint["disabled"]:
            raise ValueError(f"endpoint {endpoint_id} is disabled; enable it first")
        return store.notifications.replay_failed(endpoint_id, since)
    return sum(store.notifications.replay_failed(endpoint["id"], since)
               for endpoint in store.notifications.list_endpoints() if not endpoint["disabled"])
