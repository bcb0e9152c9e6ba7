"""Request ids: Heroku's router sets `X-Request-ID`; one that is sane is kept, otherwise one is
made, so that a request's every log line, its answer and the worker's lines for its job can
be found together."""

from __future__ import annotations

import re
import secrets
from contextvars import ContextVar

HEADER = "X-Request-ID"
# What may be copied into log lines and job data as is: no spaces, quotes or control characters.
_SANE = re.compile(r"[A-Za-z0-9._:+=@/-]{1,200}")
# The request being handled, for every line logged while it is (service.observability.logs adds
# it to each) and for the job it queues. A context variable of its own: setting and resetting
# one is cheaper than binding and clearing structlog's, on every request.
current: ContextVar[str | None] = ContextVar("request_id", default=None)


def request_id_from(header: str | None) -> str:
    """The header's value when it is sane (at most 200 safe characters), else a new id."""
    if header and _SANE.fullmatch(header):
        return header
    return secrets.token_hex(16)  # 32 hex digits: cheaper to make than a UUID's text
