"""Every request: its request id (on all its log lines, returned as X-Request-ID), one access
line, and its metrics.

The access line has the method, the path without its query string (a callback's query holds
its signed parameters), the status, `duration_ms`, the request id and, for callbacks, the
outcome. A refused callback's access line is its refusal line: it says why (the webhook
records the reason, its message and its details with `refuse()`), and there are at most 10 a
minute per reason and process, then one line with the count of the rest.

A WSGI middleware around the Flask app, which reads the WSGI environ directly (each Flask
hook would go through Flask's request proxies), and a request only notes what happened: a
thread of the process turns the notes into access lines and counts, in batches a second
apart (bench/ingest.py --quiet: made amid each request, the line and the counts cost the
webhook a seventh of its CPU). So an access line can follow lines logged after it by up to a
second, /metrics sees the other web processes' last second late, and a process killed
outright loses its last second of both (a stopped one writes them on its way out).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections import deque
from typing import Callable

from flask import Flask, request

from service.observability import metrics, request_id as request_ids
from service.observability.logs import event_of, write_events
from service.observability.request_id import HEADER, request_id_from
from service.observability.throttle import Throttle

log = logging.getLogger("service.access")
refusal_log = logging.getLogger("service.web.webhooks")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# A callback's outcome: the webhook's 204 says it in this header; any other answer's outcome,
# and a refusal's details, the webhook keeps in the request's WSGI environ.
OUTCOME_HEADER = "X-Callback-Outcome"
OUTCOME = "recording_keeper.callback_outcome"
REFUSAL = "recording_keeper.refusal"


def register(app: Flask) -> None:
    app.wsgi_app = app.extensions["access"] = AccessLog(app.wsgi_app)


def request_id() -> str | None:
    return request_ids.current.get()


def callback_outcome(outcome: str) -> None:
    """The outcome of a callback that was not answered 204 (whose answer says it in its
    X-Callback-Outcome header), counted and shown on its access line."""
    request.environ[OUTCOME] = outcome


def refuse(reason: str, message: str, **details) -> None:
    """The callback is refused for `reason` (one of metrics.REFUSAL_REASONS): its access line
    says `message` and carries `details`. Never a key, a signature or the query string."""
    request.environ[OUTCOME] = reason
    request.environ[REFUSAL] = (message, details)


class AccessLog:
    def __init__(self, wsgi_app):
        self.wsgi_app = wsgi_app
        # Per app, so per gunicorn worker process (and per test's app).
        self.refusals = Throttle(refusal_log, "refused callbacks")
        self.notes = _Notes(self._account)
        # Children of the families by their labels: a dict lookup instead of labels().
        self._durations: dict[tuple[str, str, str], object] = {}
        self._callbacks: dict[str, object] = {}

    def __call__(self, environ: dict, start_response):
        started = time.perf_counter()
        rid = request_id_from(environ.get("HTTP_X_REQUEST_ID"))
        token = request_ids.current.set(rid)
        answered = []

        def start(status: str, headers: list, exc_info=None):
            outcome = None
            for name, value in headers:
                if name == OUTCOME_HEADER:
                    outcome = value
            headers.append((HEADER, rid))
            # Flask's request, with the route it matched, is in the environ only until the app returns.
            answered.append((status, environ.get("werkzeug.request"), outcome))
            return start_response(status, headers) if exc_info is None else start_response(status, headers, exc_info)

        try:
            return self.wsgi_app(environ, start)
        finally:
            request_ids.current.reset(token)
            status, flask_request, outcome = answered[-1] if answered else ("500", None, None)
            rule = flask_request.url_rule if flask_request is not None else None
            self.notes.add((time.time(), time.perf_counter() - started, rid, environ.get("REQUEST_METHOD", ""),
                            rule.rule if rule is not None else "unmatched",
                            flask_request.path if flask_request is not None else environ.get("PATH_INFO", ""),
                            int(status[:3]), environ.get(OUTCOME, outcome), environ.get(REFUSAL)))

    def drain(self) -> None:
        """The notes taken so far, as lines and counts now (before a scrape of /metrics)."""
        self.notes.drain()

    def _account(self, notes: list[tuple]) -> None:
        lines, refusals, outcomes = [], [], {}
        for created, seconds, rid, method, route, path, status, outcome, refusal in notes:
            method = method if method in _METHODS else "other"
            key = (route, method, str(status))
            child = self._durations.get(key)
            if child is None:
                child = self._durations[key] = metrics.HTTP_DURATION.labels(*key)
            child.observe(seconds)
            fields = {"request_id": rid, "method": method, "path": path, "status": status,
                      "duration_ms": round(seconds * 1000, 2)}
            if outcome is not None:
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
                fields["outcome"] = outcome
            if refusal is not None:
                message, details = refusal
                if self.refusals.allow(outcome):
                    fields.update(reason=outcome, **details)
                    refusals.append((logging.WARNING, event_of(refusal_log, logging.WARNING, message, created, fields)))
            else:
                level = logging.ERROR if status >= 500 else logging.INFO
                lines.append((level, event_of(log, level, f"{method} {path} {status}", created, fields)))
        for outcome, count in outcomes.items():  # one write to the shared file per batch, not per note
            counter = self._callbacks.get(outcome)
            if counter is None:
                counter = self._callbacks[outcome] = metrics.CALLBACKS.labels(outcome)
            counter.inc(count)
        write_events(log, lines)
        write_events(refusal_log, refusals)


class _Notes:
    """Notes of finished requests, handed to `account` in batches by a thread of the process:
    every EVERY seconds while there are any, at once past MAX of them, before a fork (a child
    must not account for them again) and at the exit."""

    # Once a second: at a tenth of a second the batches cost the webhook 4% to 8% of its
    # throughput under gunicorn at 64 connections, at a second nothing measurable (README, Performance).
    EVERY = 1.0
    MAX = 10_000

    def __init__(self, account: Callable[[list], None]):
        self._account = account
        self._notes: deque = deque()
        self._draining = threading.Lock()  # one batch at a time, in order
        self._wake = threading.Event()
        self._thread_pid = 0
        self._pid = os.getpid()
        os.register_at_fork(before=self.drain, after_in_child=self._forked)
        atexit.register(self.drain)

    def add(self, note: tuple) -> None:
        self._notes.append(note)  # thread-safe, and never lost to a batch being taken
        if self._thread_pid != self._pid:  # none yet in this process (threads do not survive a fork)
            with self._draining:
                if self._thread_pid != self._pid:
                    self._thread_pid = self._pid
                    threading.Thread(target=self._run, name="access-lines", daemon=True).start()
        if len(self._notes) >= self.MAX:
            self.drain()
        elif not self._wake.is_set():
            self._wake.set()

    def drain(self) -> None:
        with self._draining:
            notes = []
            try:
                while True:
                    notes.append(self._notes.popleft())
            except IndexError:
                pass
            if notes:
                try:
                    self._account(notes)
                except Exception:  # never lose the thread: the next batch is accounted for as usual
                    logging.getLogger(__name__).exception("could not write %d access lines", len(notes))

    def _forked(self) -> None:
        self._pid = os.getpid()
        self._notes.clear()  # drained before the fork
        self._draining = threading.Lock()
        self._wake = threading.Event()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            time.sleep(self.EVERY)
            self._wake.clear()
            self.drain()
