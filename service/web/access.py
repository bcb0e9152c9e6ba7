"""Every request: its request id (bound to all its log lines, returned as X-Request-ID), one
access line, and its metrics.

The access line has the method, the path without its query string (a callback's query holds
its signed parameters), the status, `duration_ms`, the request id and, for callbacks, the
outcome. A refused callback's access line is its refusal line: it says why (the webhook
records the reason and its details with `refuse()`), and there are at most 10 a minute per
reason and process, then one line with the count of the rest.
"""

from __future__ import annotations

import logging
import time

import structlog
from flask import Flask, Response, g, request

from service.observability import metrics
from service.observability.request_id import HEADER, request_id_from
from service.observability.throttle import Throttle

log = logging.getLogger("service.access")
_refusals = Throttle(log, "refused callbacks")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# The histogram's children by (route, method, status): a dict lookup instead of labels() per request.
_durations: dict[tuple[str, str, str], object] = {}


def register(app: Flask) -> None:
    app.before_request(_begin)
    app.after_request(_end)
    app.teardown_request(_forget)


def request_id() -> str:
    return g.request_id


def callback_outcome(outcome: str) -> None:
    """The callback's outcome, counted and shown on its access line."""
    g.callback_outcome = outcome


def refuse(reason: str, **details) -> None:
    """The callback is refused for `reason` (one of metrics.REFUSAL_REASONS); `details` go on
    its refusal line. Never a key, a signature or the query string."""
    g.callback_outcome = reason
    g.refusal = details


def _begin() -> None:
    g.started = time.perf_counter()
    g.request_id = request_id_from(request.headers.get(HEADER))
    structlog.contextvars.clear_contextvars()  # a thread's previous request leaves nothing behind
    structlog.contextvars.bind_contextvars(request_id=g.request_id)


def _end(response: Response) -> Response:
    seconds = time.perf_counter() - g.started
    status = response.status_code
    response.headers[HEADER] = g.request_id
    method = request.method if request.method in _METHODS else "other"
    route = request.url_rule.rule if request.url_rule is not None else "unmatched"
    key = (route, method, str(status))
    child = _durations.get(key)
    if child is None:
        child = _durations[key] = metrics.HTTP_DURATION.labels(*key)
    child.observe(seconds)
    fields = {"method": method, "path": request.path, "status": status, "duration_ms": round(seconds * 1000, 2)}
    outcome = g.get("callback_outcome")
    if outcome is not None:
        metrics.CALLBACKS.labels(outcome).inc()
        fields["outcome"] = outcome
    refusal = g.get("refusal")
    if refusal is not None:
        if _refusals.allow(outcome):
            log.warning("callback refused: %s", outcome, extra={**fields, "reason": outcome, **refusal})
    else:
        log.log(logging.ERROR if status >= 500 else logging.INFO, "%s %s %s", method, request.path, status,
                extra=fields)
    return response


def _forget(exc: BaseException | None) -> None:
    structlog.contextvars.clear_contextvars()
