"""Log lines: one JSON object each, with the fixed fields and the bound context, every secret
redacted (messages, fields, tracebacks, as written or JSON-escaped), and never over the limit.
The handler is the real one, writing to a captured stdout."""

from __future__ import annotations

import json
import logging
import logging.config
import time
from datetime import datetime

import pytest
import structlog

from service.config import load_settings
from service.observability import logs
from service.observability.logs import MAX_LINE, RedactSecrets, configure_logging
from tests.test_config import GOOD

SECRET = "PSK_super_secret_value"
QUOTED = 'tok"with\\quote-0123'  # JSON writes it escaped: "tok\"with\\\\quote-0123"


@pytest.fixture
def lines(capsys):
    """Configures logging as a process does, and returns a function reading the lines written."""
    configure_logging("INFO", [SECRET, QUOTED, "tok-0123456789abcdef"], "json")
    capsys.readouterr()

    def read() -> list[dict]:
        out = capsys.readouterr().out
        assert all(len(line.encode()) <= MAX_LINE for line in out.splitlines())  # bytes, as Heroku counts
        return [json.loads(line) for line in out.splitlines()]

    yield read
    configure_logging("INFO", (), "json")


def test_every_line_has_the_fixed_fields_and_the_bound_context(lines):
    structlog.contextvars.bind_contextvars(request_id="req-1")
    try:
        logging.getLogger("tests.fields").warning("callback %s refused", "RE1", extra={"reason": "signature_mismatch"})
    finally:
        structlog.contextvars.clear_contextvars()
    logging.getLogger("tests.fields").info("no context")
    first, second = lines()
    assert first["event"] == "callback RE1 refused" and first["level"] == "warning"
    assert first["logger"] == "tests.fields" and isinstance(first["pid"], int)
    assert first["time"].endswith("Z") and datetime.fromisoformat(first["time"].replace("Z", "+00:00"))
    assert first["request_id"] == "req-1" and first["reason"] == "signature_mismatch"
    assert list(first)[:5] == ["time", "level", "logger", "pid", "event"]
    assert "request_id" not in second


def test_secrets_are_redacted_from_messages_fields_and_tracebacks(lines):
    log = logging.getLogger("tests.redaction")
    log.warning("key is %s", SECRET)
    log.warning("url https://user:tok-0123456789abcdef@example.com", extra={"detail": {"nested": [SECRET]}})
    log.warning("quoted %s", QUOTED)
    try:
        raise RuntimeError(f"failed with {SECRET}")
    except RuntimeError:
        log.exception("boom")
    structlog.get_logger("tests.native").warning("native", token=SECRET)
    key, url, quoted, boom, native = lines()
    assert key["event"] == "key is [REDACTED]"
    assert url["event"] == "url https://user:[REDACTED]@example.com" and url["detail"] == {"nested": ["[REDACTED]"]}
    assert quoted["event"] == "quoted [REDACTED]"
    assert "RuntimeError: failed with [REDACTED]" in boom["exception"]
    assert native["token"] == "[REDACTED]" and native["logger"] == "tests.native"


def test_a_long_line_is_cut_below_the_limit_keeping_the_traceback_ends_and_no_half_secret(lines):
    log = logging.getLogger("tests.long")
    try:
        raise ValueError("the last line " + ("x" * 30 + SECRET) * 1_000)
    except ValueError:
        log.exception("failed", extra={"body": "é" * 20_000, "many": {str(i): "v" * 50 for i in range(500)}})
    log.info("wide", extra={f"field{i}": "y" * 1_400 for i in range(20)})
    log.info("euros", extra={"body": "€" * 5_000})  # 5,000 characters, 15,000 bytes
    failed, wide, euros = lines()
    assert euros["event"] == "euros" and "characters cut" in euros["body"] and euros["body"].startswith("€" * 100)
    assert failed["event"] == "failed"
    assert failed["exception"].startswith("Traceback") and "characters cut" in failed["exception"]
    assert failed["exception"].rstrip().endswith("[REDACTED]")  # the exception's own line survives
    for text in (failed["exception"], failed["body"], failed["many"]):
        assert not any(SECRET[:n] in text.replace("[REDACTED]", "") for n in range(8, len(SECRET) + 1)), text[-200:]
    assert wide["event"] == "wide"


def test_console_format_is_redacted_too(capsys):
    configure_logging("INFO", [SECRET], "console")
    try:
        logging.getLogger("tests.console").warning("key %s", SECRET, extra={"field": SECRET})
        out = capsys.readouterr().out
        assert "key [REDACTED]" in out and SECRET not in out
    finally:
        configure_logging("INFO", (), "json")


def test_gunicorn_logconfig_sends_its_lines_through_the_same_formatter(lines):
    logging.config.dictConfig(logs.gunicorn_logconfig("INFO", "json"))
    configure_logging("INFO", [SECRET], "json")  # as create_app does in each worker afterwards
    logging.getLogger("gunicorn.error").info("Listening at: http://127.0.0.1:1 (%s)", SECRET)
    (line,) = lines()
    assert line["logger"] == "gunicorn.error" and line["event"] == "Listening at: http://127.0.0.1:1 ([REDACTED])"
    assert len([h for h in logging.getLogger().handlers if getattr(h, logs._MARK, None)]) == 1


def test_lines_made_in_a_batch_are_the_lines_a_record_makes(capsys):
    """write_events, when the root's one handler is ours (as in gunicorn, not under pytest's
    capture handlers): the same lines as logger.log(extra=...) writes, in one write."""
    configure_logging("INFO", [SECRET], "json")
    root = logging.getLogger()
    others = [h for h in root.handlers if not getattr(h, logs._MARK, None)]
    for handler in others:
        root.removeHandler(handler)
    log = logging.getLogger("tests.access")
    try:
        capsys.readouterr()
        now = time.time()
        fields = {"request_id": "req-9", "path": "/a", "secret": SECRET}
        logs.write_events(log, [(logging.INFO, logs.event_of(log, logging.INFO, "GET /a 200", now, fields)),
                                (logging.DEBUG, logs.event_of(log, logging.DEBUG, "below the level", now, {})),
                                (logging.WARNING, logs.event_of(log, logging.WARNING, "GET /b 404", now, {}))])
        first, second = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        log.info("GET /a 200", extra=fields)
        (reference,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert {**first, "time": None} == {**reference, "time": None}
        assert first["secret"] == "[REDACTED]" and first["request_id"] == "req-9"
        assert second["event"] == "GET /b 404" and second["level"] == "warning"
    finally:
        for handler in others:
            root.addHandler(handler)


def test_short_values_are_not_treated_as_secrets():
    # Redacting one- or two-letter values would garble every line.
    assert RedactSecrets(["ab", "", "longer-secret"]).secrets == ["longer-secret"]


def test_url_passwords_from_settings_are_redacted():
    settings = load_settings(dict(GOOD, REDIS_URL="redis://:redis-pass%2F1234@redis.example.com:6379",
                                  METRICS_TOKEN="metrics-token-0123456789"))
    redact = RedactSecrets(settings.secrets).redact
    assert redact(f"cannot reach {settings.redis_url}") == "cannot reach redis://:[REDACTED]@redis.example.com:6379"
    assert redact("decoded redis-pass/1234 and metrics-token-0123456789") == "decoded [REDACTED] and [REDACTED]"
