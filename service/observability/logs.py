"""Logging for every process (web, worker, release, CLI): one JSON object per line on stdout.

Every record goes through one handler and formatter on the root logger, whoever logs it: our
modules, gunicorn, RQ, Alembic, and structlog's own loggers (which hand their events to the
standard library's). So every line carries `time` (ISO 8601, UTC), `level`, `logger`, `pid`
and `event` (the message), and whatever context is known: the request's `request_id`,
fields bound with structlog.contextvars (a job's `job_id`) and fields passed as `extra=`.
`LOG_FORMAT=console` renders the same events for a person at a terminal. Every line stays
under Heroku's 10,000-byte limit, and every configured secret is redacted from it, exception
text included.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from typing import Any, Iterable

import orjson
import structlog

from service.observability.request_id import current as current_request_id

# Heroku splits a line over 10,000 bytes (UTF-8: a line's size is counted in bytes, _size).
MAX_LINE = 9_000
REDACTED = "[REDACTED]"
# What a long field keeps of itself when a line is too long (characters), before any further cut.
FIELD_SHARE = {"exception": 5_000, "event": 2_000}
# Shown first, in this order; the other fields follow as they were added.
FIRST_FIELDS = ("time", "level", "logger", "pid", "event")
# Loggers that install handlers of their own; their records go to the root's handler instead.
LIBRARY_LOGGERS = ("gunicorn.error", "gunicorn.access", "rq.worker", "rq.job", "rq.scheduler", "alembic")
# Chatter at INFO that says nothing to an operator (Alembic lists its plugins on every run).
QUIETER = {"alembic.runtime.plugins": logging.WARNING}
_MARK = "_recording_keeper_format"


class RedactSecrets:
    """Replaces configured secret values wherever they appear: in a rendered line (as written
    or JSON-escaped) or in an event's values, nested ones and exception text included."""

    def __init__(self, secrets: Iterable[str] = ()):
        self.update(secrets)

    def update(self, secrets: Iterable[str]) -> None:
        # Short values would garble every line, and are no secret anyway.
        self.secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)
        forms = {form for s in self.secrets for form in (s, json.dumps(s)[1:-1], _json(s)[1:-1])}
        self._forms = sorted(forms, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for form in self._forms:
            if form in text:
                text = text.replace(form, REDACTED)
        return text

    def __call__(self, logger: Any, method: str, event_dict: dict) -> dict:
        """structlog processor: redacts every value (the console renderer's input)."""
        if self.secrets:
            for key, value in event_dict.items():
                event_dict[key] = self.clean(value)
        return event_dict

    def clean(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, dict):
            return {k: self.clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple, set)):
            return [self.clean(v) for v in value]
        if value is None or isinstance(value, (bool, int, float)):
            return value
        return self.redact(str(value))


_redactor = RedactSecrets()


# orjson renders a line in a fifth of the standard library's time (the access lines are most of
# them). What it does not know, it renders as str(value), as json.dumps(default=str) did, dates too.
_ORJSON = orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


def _json(value: Any) -> str:
    try:
        return orjson.dumps(value, default=str, option=_ORJSON).decode()
    except (orjson.JSONEncodeError, TypeError):  # an int over 64 bits, a recursive structure
        return json.dumps(value, default=str, separators=(",", ":"))


def _size(line: str) -> int:
    """The line's size in bytes, as Heroku counts it."""
    return len(line) if line.isascii() else len(line.encode())


class JSONLines:
    """The last processor in JSON mode: one line, secrets redacted, at most `limit` characters.

    The usual line is rendered once and redacted as a whole. A line over the limit has its
    values redacted first (a cut must not leave half a secret behind), then its longest
    fields shortened: a traceback keeps its start and its end (the exception and the
    innermost frames), anything else its start.
    """

    def __init__(self, redactor: RedactSecrets, limit: int = MAX_LINE):
        self.redactor = redactor
        self.limit = limit

    def __call__(self, logger: Any, method: str, event_dict: dict) -> str:
        # (The fixed fields come first: every event is built starting with them.)
        line = self.redactor.redact(_json(event_dict))
        return line if _size(line) <= self.limit else self.shorten(event_dict)

    def shorten(self, event: dict) -> str:
        event = {key: self.redactor.clean(value) for key, value in event.items()}
        for key, value in event.items():
            if not isinstance(value, str) and len(text := _json({"v": value})) > 1_000:
                value = text[5:-1]  # a big structure becomes text, which can be cut
            if isinstance(value, str):
                event[key] = _cut(value, FIELD_SHARE.get(key, 1_500), keep_end=key == "exception")
        for _ in range(len(event) + 2):
            line = self.redactor.redact(_json(event))
            excess = _size(line) - self.limit
            if excess <= 0:
                return line
            # The longest as written: escapes make a field longer in the line than in the text.
            written, longest = max((_size(_json(v)), k) for k, v in event.items() if isinstance(v, str))
            text = event[longest]
            if len(text) <= 200:
                break
            keep = max(100, int((written - excess - 80) * len(text) / written))
            event[longest] = _cut(text, keep, keep_end=longest == "exception")
        # Many long fields: the essentials alone, with a short event.
        essentials = {k: event[k] for k in (*FIRST_FIELDS, "request_id", "job_id") if k in event}
        essentials["event"] = _cut(str(essentials.get("event", "")), 1_000)
        essentials["truncated"] = True
        return self.redactor.redact(_json(essentials))


def _cut(text: str, keep: int, keep_end: bool = False) -> str:
    if len(text) <= keep:
        return text
    dropped = len(text) - keep
    if keep_end:
        head = keep // 3
        return f"{text[:head]}\n... [{dropped} characters cut] ...\n{text[head - keep:]}"
    return f"{text[:keep]}... [{dropped} characters cut]"


_RECORD_FIELDS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}


_second: tuple[int, str] = (0, "")


def _iso(created: float) -> str:
    """'2026-12-06T12:30:25.694483Z' (UTC); the part up to the second is formatted once a second."""
    global _second
    whole = int(created)
    cached = _second
    if cached[0] != whole:
        cached = _second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
    return f"{cached[1]}.{int((created - whole) * 1e6):06d}Z"


class LineFormatter(logging.Formatter):
    """Turns a standard-library record into the event of one line: the fixed fields, the
    request's id (request_id.current), the context bound with structlog.contextvars, the
    record's `extra=` fields and its exception.

    structlog's ProcessorFormatter does the same through a chain of processors; this does it in
    one step (it copies no record and runs no chain), for half the CPU per line.
    """

    def __init__(self, render):
        super().__init__()
        self.render = render

    def format(self, record: logging.LogRecord) -> str:
        event = {
            "time": _iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "event": record.getMessage(),
        }
        request_id = current_request_id.get()
        if request_id is not None:
            event["request_id"] = request_id
        event.update(structlog.contextvars.get_contextvars())
        for key, value in record.__dict__.items():
            if key not in _RECORD_FIELDS:
                event[key] = value
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            event["exception"] = record.exc_text
        if record.stack_info:
            event["stack"] = self.formatStack(record.stack_info)
        return self.render(None, event["level"], event)


_LEVELS = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warning", logging.ERROR: "error",
           logging.CRITICAL: "critical"}


def event_of(logger: logging.Logger, level: int, message: str, created: float, fields: dict) -> dict:
    """The event of a line, as a record of `logger.log(level, message, extra=fields)` made at
    `created` would have it (the fields carry all its context)."""
    return {"time": _iso(created), "level": _LEVELS.get(level) or logging.getLevelName(level).lower(),
            "logger": logger.name, "pid": os.getpid(), "event": message, **fields}


def write_events(logger: logging.Logger, events: list[tuple[int, dict]]) -> None:
    """Lines made elsewhere (service.web.access, in a batch), written together: rendered by the
    one handler's formatter and sent in one write, when the root's one handler is ours and
    nothing else is attached; otherwise each through `logger.log`, as any other record."""
    events = [(level, event) for level, event in events if logger.isEnabledFor(level)]
    if not events:
        return
    handlers = logging.root.handlers
    handler = handlers[0] if len(handlers) == 1 else None
    if handler is None or not getattr(handler, _MARK, None) or logger.handlers or logger.filters or handler.filters:
        for level, event in events:
            fields = {k: v for k, v in event.items() if k not in FIRST_FIELDS}
            logger.log(level, "%s", event["event"], extra=fields)
        return
    render = handler.formatter.render
    text = "".join([render(None, event["level"], event) + "\n" for level, event in events if level >= handler.level])
    with handler.lock:
        try:
            stream = handler.stream
            stream.write(text)
            stream.flush()
        except Exception:  # as StreamHandler does: logging never breaks the caller
            if logging.raiseExceptions:
                import traceback

                traceback.print_exc(file=sys.stderr)


def formatter(fmt: str = "json") -> logging.Formatter:
    """The formatter of every line, whoever logs it."""
    if fmt == "console":
        console = structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())

        def render(logger, method, event):
            return _redactor.redact(console(logger, method, _redactor(logger, method, event)))

        return LineFormatter(render)
    return LineFormatter(JSONLines(_redactor))


class _Stdout(logging.StreamHandler):
    """Writes to whatever sys.stdout is at the time (as logging's last-resort handler does with
    stderr), so a replaced stdout (a test's capture) never leaves it writing to a closed one."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:
        pass


def make_handler(fmt: str = "json") -> logging.Handler:
    """The one handler, on the root logger; also named in gunicorn's `logconfig_dict`."""
    handler = _Stdout()
    handler.setFormatter(formatter(fmt))
    setattr(handler, _MARK, fmt)
    return handler


def configure_logging(level: str = "INFO", secrets: Iterable[str] = (), fmt: str = "json") -> None:
    """Every record of the process, whoever logs it, through one handler and formatter."""
    _redactor.update(secrets)
    root = logging.getLogger()
    ours = [h for h in root.handlers if getattr(h, _MARK, None)]
    if not ours or getattr(ours[0], _MARK) != fmt:
        for handler in ours:
            root.removeHandler(handler)
        root.addHandler(make_handler(fmt))
    root.setLevel(level)
    for name in LIBRARY_LOGGERS:
        library = logging.getLogger(name)
        for handler in list(library.handlers):
            library.removeHandler(handler)
        library.propagate = True
    for name, quieter in QUIETER.items():
        logging.getLogger(name).setLevel(quieter)
    if not structlog.is_configured():
        # structlog's own loggers hand their events to the standard library's, as `extra=`.
        structlog.configure(
            processors=[structlog.stdlib.filter_by_level, structlog.stdlib.PositionalArgumentsFormatter(),
                        structlog.processors.format_exc_info, structlog.stdlib.render_to_log_kwargs],
            logger_factory=_stdlib_logger,
            wrapper_class=structlog.stdlib.BoundLogger,
            cache_logger_on_first_use=True,
        )
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread


def _stdlib_logger(*args: Any) -> logging.Logger:
    # Not structlog's LoggerFactory: it installs a logging.Logger subclass for every logger
    # created afterwards, whose caller lookup tripled the cost of a line.
    return logging.getLogger(args[0] if args else "service")


def _log_uncaught(exc_type, exc_value, traceback) -> None:
    if issubclass(exc_type, KeyboardInterrupt):
        sys.__excepthook__(exc_type, exc_value, traceback)
        return
    logging.getLogger("service").critical("uncaught exception", exc_info=(exc_type, exc_value, traceback))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    logging.getLogger("service").critical("uncaught exception in thread %s", getattr(args.thread, "name", "?"),
                                          exc_info=(args.exc_type, args.exc_value, args.exc_traceback))


def gunicorn_logconfig(level: str = "INFO", fmt: str = "json") -> dict:
    """gunicorn's `logconfig_dict`: its error log through our handler, as JSON like the rest
    (the access log is the app's own, service.web.access)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "root": {"level": level, "handlers": ["default"]},
        "loggers": {
            "gunicorn.error": {"level": level, "handlers": [], "propagate": True},
            "gunicorn.access": {"level": "WARNING", "handlers": [], "propagate": True},
        },
        "handlers": {"default": {"()": make_handler, "fmt": fmt}},
        "formatters": {},
    }
