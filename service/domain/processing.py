"""What a worker does with one callback: record it, and fetch and store the metadata.

Safe under retries, duplicates and reordering: the history insert is idempotent, the
status only moves forward (both enforced by the store), and the metadata is fetched from
the configured space by RecordingSid, never from the RecordingUrl the callback carried.
"""

from __future__ import annotations

import logging

from service.domain.recordings import CallbackEvent, needs_metadata
from service.signalwire.client import SignalWireClient, SignalWireError

log = logging.getLogger(__name__)


def handle_callback(store, client: SignalWireClient, event: CallbackEvent) -> str:
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
    return recording.status or "stored"

