"""Logging for every process: one format, and secrets redacted from every record."""

from __future__ import annotations

import logging
import sys
from typing import Iterable


class RedactSecrets(logging.Filter):
    """Replaces configured secret values wherever they appear in a formatted record."""

    def __init__(self, secrets: Iterable[str]):
        super().__init__()
        self.secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        text = message
        for secret in self.secrets:
            text = text.replace(secret, "[REDACTED]")
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            for secret in self.secrets:
                record.exc_text = record.exc_text.replace(secret, "[REDACTED]")
        if text != message:
            record.msg, record.args = text, None
        return True


def configure_logging(level: str = "INFO", secrets: Iterable[str] = ()) -> None:
    root = logging.getLogger()
    redactor = RedactSecrets(secrets)
    handler = next((h for h in root.handlers if getattr(h, "_recording_keeper", False)), None)
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler._recording_keeper = True  # type: ignore[attr-defined]
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s"))
        root.addHandler(handler)
    handler.filters = [redactor]
    root.setLevel(level)
    # Handlers installed by gunicorn and RQ get the same redaction.
    for other in root.handlers + logging.getLogger("gunicorn.error").handlers + logging.getLogger("rq.worker").handlers:
        if not any(isinstance(f, RedactSecrets) for f in other.filters):
            other.addFilter(redactor)
