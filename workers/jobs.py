"""RQ jobs. Thin: decode the payload, call the domain, let RQ's retry policy handle failure
(except a PermanentFailure, which fails the job at once)."""

from __future__ import annotations

import functools
import logging

from rq import get_current_job
from sqlalchemy.exc import SQLAlchemyError

from service.config import load_settings
from service.domain.processing import PermanentFailure, handle_callback
from service.domain.recordings import CallbackEvent
from service.media.archive import Archiver
from service.services import Services
from service.pipelines import rq_adapter

log = logging.getLogger(__name__)


@functools.cache
def services() -> Services:
    # One set of connections per worker process (the work horse inherits it on fork).
    return Services(load_settings())


def _note_database_error(s: Services, sid: str, exc: SQLAlchemyError) -> None:
    """Best effort: show the failure on the recording (impossible when the database is down)."""
    try:
        s.store.note_attempt(sid, f"database error: {type(exc).__name__}")
    except Exception:
        log.warning("could not record the database error on %s", sid)


def process_callback(payload: dict) -> str:
    s = services()
    event = CallbackEvent.from_payload(payload)
    archive = s.enqueue_archive if s.settings.media_storage_url else None
    try:
        return handle_callback(s.store, s.signalwire, event, on_completed=archive)
    except PermanentFailure:
        rq_adapter.give_up_retries()  # into the failed registry now, with this reason
        raise
    except SQLAlchemyError as exc:
        _note_database_error(s, event.recording_sid, exc)
        raise


@functools.cache
def archiver() -> Archiver:
    s = services()
    return Archiver(s.store, s.signalwire, s.storage, fmt=s.settings.media_format,
                    delete_after=s.settings.media_delete_after_archive)


def archive_media(sid: str) -> str:
    """Copy one recording's media to storage (service.media); RQ retries a failed attempt."""
    if services().storage is None:
        return "archiving is off (no MEDIA_STORAGE_URL)"
    job = get_current_job()
    return archiver().archive(sid, final_attempt=not (job and job.retries_left))

