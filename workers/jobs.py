"""RQ jobs. Thin: decode the payload, call the domain, let RQ's retry policy handle failure."""

from __future__ import annotations

import functools

from service.config import load_settings
from service.processing import handle_callback, refresh_metadata
from service.recordings import CallbackEvent
from service.services import Services


@functools.cache
def services() -> Services:
    # One set of connections per worker process (the work horse inherits it on fork).
    return Services(load_settings())


def process_callback(payload: dict) -> str:
    s = services()
    return handle_callback(s.store, s.signalwire, CallbackEvent.from_payload(payload))


def refresh_recording(sid: str) -> str:
    s = services()
    return refresh_metadata(s.store, s.signalwire, sid)
