"""What a worker does with one callback: record it, and fetch and store the metadata.

Safe under retries, duplicates and reordering: the history insert is idempotent, the
status only moves forward (both enforced by the store), and the metadata is fetched from
the configured space by RecordingSid, never from the RecordingUrl the callback carried.

A failed fetch is one of three things:
- transient (network, timeouts, 429, 5xx, a 404 right after `completed`, which is metadata
  lag): raised as it is, for the job's retry policy;
- permanent (SignalWire refuses our credentials): PermanentFailure, which no retry can fix;
- an answer (a 404 for a recording reported `absent`, past a short window): SignalWire
  received no audio and may never create a resource. The recording keeps the status its
  callback gave, the 404 is noted on it, and nothing more is fetched for it.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from typing import Callable

from service.domain.recordings import CallbackEvent, needs_metadata
from service.signalwire.client import SignalWireClient, SignalWireError

log = logging.getLogger(__name__)

# Statuses with which SignalWire refuses our project id and API token.
REFUSED = frozenset({401, 403})
# How long after an `absent` callback a 404 is still taken for metadata lag (the job's
# retries at about 2, 7, 22, 52 and 112 s fall in it).
ABSENT_NOT_FOUND_WINDOW = timedelta(minutes=2)


class PermanentFailure(Exception):
    """A failure that retrying cannot fix: the job fails at once, with this reason."""


def handle_callback(store, client: SignalWireClient, event: CallbackEvent, now: datetime | None = None,
                    on_completed: Callable[[str], object] | None = None) -> str:
    """`on_completed(sid)` runs once the recording is stored as completed (the media archive
    queues its job there); if it raises, the callback's job is retried, and repeats are harmless."""
    if not needs_metadata(event.status):
        store.record_event(event)
        return "recorded"
    try:
        recording = client.fetch_recording(event.recording_sid)
    except SignalWireError as exc:
        # The event enters the history whatever the fetch said.
        store.record_event(event)
        if exc.status in REFUSED:
            reason = f"SignalWire refused our credentials: {exc}"
            store.note_attempt(event.recording_sid, reason)
            raise PermanentFailure(reason) from exc
        if absent_without_resource(event, exc, now or datetime.now(timezone.utc)):
            store.note_attempt(event.recording_sid, str(exc), not_found=True)
            log.info("recording %s is absent and has no resource (%s); kept as absent", event.recording_sid, exc)
            return "absent, no resource"
        store.note_attempt(event.recording_sid, str(exc))
        raise
    store.record_event(event, metadata=recording)  # one transaction for both
    if on_completed is not None and recording.status == "completed":
        on_completed(recording.sid)
    return recording.status or "stored"


def absent_without_resource(event: CallbackEvent, exc: SignalWireError, now: datetime) -> bool:
    return event.status == "absent" and exc.status == 404 and now - event.received_at >= ABSENT_NOT_FOUND_WINDOW
