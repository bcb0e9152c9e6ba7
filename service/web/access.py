"""Every request: its request id (bound to all its log lines, returned as X-Request-ID), one
access line, and its metrics.

The access line has the method, the path without its query string (a callback's query holds
its signed parameters), the status, `duration_ms`, the request id and, for callbacks, the
outcome. A refused callback's access line is its refusal line: it says why (the webhook
records the reason, its message and its details with `refuse()`), and there are at most 10 a
minute per reason and process, then one line with the count of the rest.

A WSGI middleware around the Flask app rather than Flask's request hooks: it reads the WSGI
environ directly, where each hook would go through Flask's request proxies, and on the
webhook's path that difference is most of what the access line and its counters cost.
"""

from __future__ import annotations

import logging
import time
from contextvars import ContextVar

import structlog
from flask import Flask, request

from service.observability import metrics
from service.observability.logs import log_fields
from service.observability.request_id import HEADER, request_id_from
from service.observability.throttle import Throttle

log = logging.getLogger("service.access")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# A callback's outcome: the webhook's 204 says it in this header; any other answer's outcome,
# and a refusal's details, the webhook keeps in the request's WSGI environ.
OUTCOME_HEADER = "X-Callback-Outcome"
OUTCOME = "recording_keeper.callback_outcome"
REFUSAL = "recording_keeper.refusal"
# The request id, for the webhook to hand to its job (a context variable is cheaper to read
# than anything behind Flask's request proxy).
_request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
# Children of the families by their labels: a dict lookup instead of labels() per request.
_durations: dict[tuple[str, str, str], object] = {}
_callbacks: dict[str, object] = {}


def register(app: Flask) -> None:
    app.wsgi_app = AccessLog(app.wsgi_app)


def request_id() -> str | None:
    return _request_id.get()


def callback_outcome(outcome: str) -> None:
    """The outcome of a callback that was not answered 204 (whose answer says it in its
    X-Callback-Outcome header), counted and shown on its access line."""
    request.environ[OUTCOME] = outcome


def refuse(reason: str, logger: logging.Logger, message: str, **details) -> None:
    """The callback is refused for `reason` (one of metrics.REFUSAL_REASONS): its access line
    is written by `logger`, says `message` and carries `details`. Never a key, a signature or
    the query string."""
    request.environ[OUTCOME] = reason
    request.environ[REFUSAL] = (logger, message, details)


class AccessLog:
    def __init__(self, wsgi_app):
        self.wsgi_app = wsgi_app
        # Per app, so per gunicorn worker process (and per test's app).
        self.refusals = Throttle(logging.getLogger("service.web.webhooks"), "refused callbacks")

    def __call__(self, environ: dict, start_response):
        started = time.perf_counter()
        rid = request_id_from(environ.get("HTTP_X_REQUEST_ID"))
        _request_id.set(rid)
        structlog.contextvars.bind_contextvars(request_id=rid)
        answered = []

        def start(status: str, headers: list, exc_info=None):
            outcome = next((value for name, value in headers if name == OUTCOME_HEADER), None)
            headers.append((HEADER, rid))
            # Flask's request, with the route it matched, is in the environ only until the app returns.
            answered.append((status, environ.get("werkzeug.request"), outcome))
            return start_response(status, headers) if exc_info is None else start_response(status, headers, exc_info)

        try:
            return self.wsgi_app(environ, start)
        finally:
            status, flask_request, outcome = answered[-1] if answered else ("500", None, None)
            try:
                self._done(environ, int(status[:3]), flask_request, environ.get(OUTCOME, outcome),
                           time.perf_counter() - started)
            finally:
                _request_id.set(None)
                structlog.contextvars.clear_contextvars()  # nothing left for the thread's next request

    def _done(self, environ: dict, status: int, flask_request, outcome: str | None, seconds: float) -> None:
        method = environ.get("REQUEST_METHOD", "")
        method = method if method in _METHODS else "other"
        rule = flask_request.url_rule if flask_request is not None else None
        key = (rule.rule if rule is not None else "unmatched", method, str(status))
        child = _durations.get(key)
        if child is None:
            child = _durations[key] = metrics.HTTP_DURATION.labels(*key)
        child.observe(seconds)
        path = flask_request.path if flask_request is not None else environ.get("PATH_INFO", "")
        fields = {"method": method, "path": path, "status": status, "duration_ms": round(seconds * 1000, 2)}
        if outcome is not None:
            counter = _callbacks.get(outcome)
            if counter is None:
                counter = _callbacks[outcome] = metrics.CALLBACKS.labels(outcome)
            counter.inc()
            fields["outcome"] = outcome
        refusal = environ.get(REFUSAL)
        if refusal is not None:
            logger, message, details = refusal
            if self.refusals.allow(outcome):
                log_fields(logger, logging.WARNING, message, {**fields, "reason": outcome, **details})
        else:
            log_fields(log, logging.ERROR if status >= 500 else logging.INFO, f"{method} {path} {status}", fields)
