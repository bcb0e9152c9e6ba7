"""RQ jobs. Thin: decode the payload, call the domain, let RQ's retry policy handle failure."""

from __future__ import annotations

import functools
import logging

from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from service.config import load_settings
from service.processing import handle_callback
from service.recordings import CallbackEvent
from service.services import Services

log = logging.getLogger(__name__)


@functools.cache
def services() -> Services:
    # One set of connections per worker process (the work horse inherits it on fork).
    # No pre-ping on checkout (a round trip per job): handle() replaces a dead connection.
    return Services(load_settings(), pre_ping=False)


def _note_database_error(s: Services, sid: str, exc: SQLAlchemyError) -> None:
    """Best effort: show the failure on the recording (impossible when the database is down)."""
    try:
        s.store.note_attempt(sid, f"database error: {type(exc).__name__}")
    except Exception:
        log.warning("could not record the database error on %s", sid)


def process_callback(payload: dict) -> str:
    s = services()
    event = CallbackEvent.from_payload(payload)
    try:
        return handle(s, event)
    except SQLAlchemyError as exc:
        _note_database_error(s, event.recording_sid, exc)
        raise


def handle(s: Services, event: CallbackEvent) -> str:
    """handle_callback, once more when the pool handed out a connection that had died while
    idle (a database restart): without pre-pings that is where it shows, and the pool has
    dropped it by then. Safe because handling a callback is idempotent."""
    try:
        return handle_callback(s.store, s.signalwire, event)
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
        log.info("database connection was gone; handling %s again on a new one", event.dedupe_key)
        return handle_callback(s.store, s.signalwire, event)

