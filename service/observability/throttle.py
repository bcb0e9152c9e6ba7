"""A bound on repeated log lines: a flood of refused callbacks must not flood the logs."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass


@dataclass
class _Window:
    start: float
    written: int = 0
    held_back: int = 0
    timer: threading.Timer | None = None


class Throttle:
    """At most `limit` lines per key in each `window` seconds (a window opens with the first
    line of its key); the lines held back are counted, and one line says how many when the
    window closes. Per process: gunicorn's worker processes each keep their own count."""

    def __init__(self, log: logging.Logger, what: str, limit: int = 10, window: float = 60.0):
        self.log = log
        self.what = what
        self.limit = limit
        self.window = window
        self._windows: dict[str, _Window] = {}
        self._lock = threading.Lock()

    def allow(self, key: str) -> bool:
        with self._lock:
            now = time.monotonic()
            window = self._windows.get(key)
            if window is None or now - window.start >= self.window:
                window = self._windows[key] = _Window(start=now)
            if window.written < self.limit:
                window.written += 1
                return True
            window.held_back += 1
            if window.timer is None:
                # Said when the window closes, even if nothing more arrives.
                window.timer = threading.Timer(window.start + self.window - now, self._close, (key, window))
                window.timer.daemon = True
                window.timer.start()
            return False

    def _close(self, key: str, window: _Window) -> None:
        with self._lock:
            held_back, window.held_back = window.held_back, 0
            if self._windows.get(key) is window:
                del self._windows[key]
        if held_back:
            self.log.warning("%d more %s (%s) in %.0f s were not logged one by one", held_back, self.what, key,
                             self.window, extra={"reason": key, "not_logged": held_back})
