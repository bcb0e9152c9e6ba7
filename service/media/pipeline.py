"""Archive jobs: one per recording (a deterministic job id), on the service's queue, with their
own retry policy. Queued when a recording is stored as completed (workers.jobs.process_callback)
and by the sweep for completed recordings still without a copy (service.pipelines.sweep).
"""

from __future__ import annotations

import hashlib
import logging
import re

from rq import Queue, Retry
from rq.exceptions import DuplicateJobError, NoSuchJobError
from rq.job import Job, JobStatus

log = logging.getLogger(__name__)

JOB_FUNC = "workers.jobs.archive_media"
# Storage or SignalWire unreachable, a download cut short: about 4 hours of retries, then the
# failed jobs (`python -m service failed`), and the sweep queues the recording again later.
RETRY_INTERVALS = (5, 15, 30, 60, 120, 300, 600, 1800, 3600, 3600, 3600)
# An hour of WAV is about 58 MB; this bounds a stuck transfer, not a normal one.
JOB_TIMEOUT = 3600
RESULT_TTL = 600
FAILURE_TTL = 7 * 24 * 3600
IN_FLIGHT = frozenset({JobStatus.QUEUED, JobStatus.STARTED, JobStatus.SCHEDULED, JobStatus.DEFERRED})
_PLAIN = re.compile(r"[A-Za-z0-9-]+")


def job_id_for(sid: str) -> str:
    """`media_<sid>`; a sid RQ would not accept in an id is hashed (`media__<sha256>`)."""
    if _PLAIN.fullmatch(sid):
        return f"media_{sid}"
    return "media__" + hashlib.sha256(sid.encode()).hexdigest()


def enqueue_archive(queue: Queue, store, sid: str) -> bool:
    """Queue the recording's archive job unless one is already on its way (queued, running or
    waiting for a retry); a finished or failed one is replaced. True when queued."""
    store.media_queued(sid)
    job_id = job_id_for(sid)
    for _ in range(2):
        try:
            queue.enqueue(JOB_FUNC, sid, job_id=job_id, unique=True, job_timeout=JOB_TIMEOUT,
                          retry=Retry(max=len(RETRY_INTERVALS), interval=list(RETRY_INTERVALS)),
                          result_ttl=RESULT_TTL, failure_ttl=FAILURE_TTL, description=f"recording {sid} media")
            return True
        except DuplicateJobError:
            try:
                existing = Job.fetch(job_id, connection=queue.connection, serializer=queue.serializer)
            except NoSuchJobError:
                continue  # gone in between: try again
            if existing.get_status(refresh=False) in IN_FLIGHT:
                return False
            existing.delete()  # finished or failed: its record goes, a new job takes its id
    return False
