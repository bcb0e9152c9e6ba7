"""What a worker does with one callback: record it, and fetch and store the metadata.

Safe under retries, duplicates and reordering: the history insert is idempotent, the
status only moves forward (both enforced by the store), and the metadata is fetched from
the configured space by RecordingSid, never from the RecordingUrl the callback carried.
"""

from __future__ import annotations

import logging

from service.recordings import CallbackEvent, needs_metadata
from service.signalwire import SignalWireClient, SignalWireError

log = logging.getLogger(__name__)


def handle_callback(store, client: SignalWireClient, event: CallbackEvent) -> str:
    store.record_event(event)
    if not needs_metadata(event.status):
        return "recorded"
    return refresh_metadata(store, client, event.recording_sid)


def refresh_metadata(store, client: SignalWireClient, sid: str) -> str:
    try:
        recording = client.fetch_recording(sid)
    except SignalWireError as exc:
        # A 404 right after `completed` usually means the metadata lags: the job's retry
        # policy tries again later, a bounded number of times.
        store.note_attempt(sid, str(exc))
        raise
    store.save_metadata(recording)
    return recording.status or "stored"
