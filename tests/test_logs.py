import io
import logging

from service.config import load_settings
from service.logs import RedactSecrets
from tests.test_config import GOOD


def test_secrets_are_redacted_from_messages_args_and_tracebacks():
    secret = "PSK_super_secret_value"
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(RedactSecrets([secret, "tok-0123456789abcdef"]))
    log = logging.getLogger("tests.redaction")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("key is %s", secret)
        log.warning("url https://user:tok-0123456789abcdef@example.com")
        try:
            raise RuntimeError(f"failed with {secret}")
        except RuntimeError:
            log.exception("boom")
    finally:
        log.removeHandler(handler)
    text = out.getvalue()
    assert "key is [REDACTED]" in text and "user:[REDACTED]@" in text and "failed with [REDACTED]" in text
    assert secret not in text and "tok-0123456789abcdef" not in text


def test_short_values_are_not_treated_as_secrets():
    # Redacting one- or two-letter values would garble every line.
    assert RedactSecrets(["ab", "", "longer-secret"]).secrets == ["longer-secret"]


def test_url_passwords_from_settings_are_redacted():
    settings = load_settings(dict(GOOD, REDIS_URL="redis://:redis-pass-1234@redis.example.com:6379"))
    record = logging.LogRecord("tests.redaction", logging.ERROR, __file__, 1, "cannot reach %s",
                               (settings.redis_url,), None)
    RedactSecrets(settings.secrets).filter(record)
    assert record.getMessage() == "cannot reach redis://:[REDACTED]@redis.example.com:6379"
