"""What a worker does with one callback: record it, and fetch and store the metadata.

Safe under retries, duplicates and reordering: the history insert is idempotent, the
status only moves forward (both enforced by the store), and the metadata is fetched from
the configured space by RecordingSid, never from the RecordingUrl the callback carried.
"""

from __future__ import annotations

import logging
from typing import Callable

from service.domain.recordings import CallbackEvent, needs_metadata
from service.signalwire.client import SignalWireClient, SignalWireError

log = logging.getLogger(__name__)


def handle_callback(store, client: SignalWireClient, event: CallbackEvent,
                    on_completed: Callable[[str], object] | None = None) -> str:
    """`on_completed(sid)` runs once the recording is stored as completed (the media archive
    queues its job there); if it raises, the callback's job is retried, and repeats are harmless."""
    if not needs_metadata(event.status):
        store.record_event(event)
        return "recorded"
    try:
        recording = client.fetch_recording(event.recording_sid)
    except SignalWireError as exc:
        # The event still enters the history now. A 404 right after `completed` usually
        # means the metadata lags: the job's retry policy tries again, a bounded number of times.
        store.record_event(event)
        store.note_attempt(event.recording_sid, str(exc))
        raise
    store.record_event(event, metadata=recording)  # one transaction for both
    if on_completed is not None and recording.status == "completed":
        on_completed(recording.sid)
    return recording.status or "stored"

