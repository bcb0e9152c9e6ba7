"""`python -m service doctor`: the configuration as deployed, checked one line at a time.

Each check is one line, `ok` or `FAIL`, its name and what it found; the command exits 1 when
any fails. It also prints the exact RecordingStatusCallback URL the service sends.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Mapping
from urllib.parse import urlsplit

from service.config import LOOPBACK_HOSTS, ConfigError, Settings, load_settings
from service.observability.logs import RedactSecrets
from service.signalwire.client import SignalWireError


@dataclasses.dataclass(frozen=True)
class Line:
    name: str
    ok: bool | None  # None: information, not a check
    detail: str

    def __str__(self) -> str:
        mark = {True: "ok", False: "FAIL", None: "info"}[self.ok]
        return f"{mark:<5} {self.name:<11} {self.detail}"


def checks(env: Mapping[str, str] | None = None) -> Iterator[Line]:
    try:
        settings = load_settings(env)
    except ConfigError as exc:
        yield Line("settings", False, "; ".join(exc.problems))
        return
    yield Line("settings", True, "every variable parses")
    from service.services import Services

    services = Services(settings)
    try:
        yield from service_checks(settings, services)
    finally:
        services.close()


def service_checks(settings: Settings, services, signalwire: bool = True) -> Iterator[Line]:
    """Every check but the settings' own, on connections the caller owns (the dashboard's
    system page passes the web process's; `signalwire=False` skips the one outbound request)."""
    redact = RedactSecrets(settings.secrets).redact
    yield _probe("redis", redact, lambda: _redis(services))
    yield _probe("database", redact, lambda: _database(services))
    if signalwire:
        yield _probe("signalwire", redact, lambda: _signalwire(services))
    yield _signing_key(settings)
    yield _public_base_url(settings)
    yield Line("callback", None, f"RecordingStatusCallback={settings.callback_url}")
    yield Line("metrics", None, "GET /metrics answers with METRICS_TOKEN" if settings.metrics_token
               else "GET /metrics is off (METRICS_TOKEN is not set)")
    yield Line("dashboard", None, "/dashboard/ is on (sign in with an API token)" if settings.secret_key
               else "/dashboard/ is off (SECRET_KEY is not set)")


class _Failed(Exception):
    pass


def _probe(name: str, redact: Callable[[str], str], check: Callable[[], str]) -> Line:
    started = time.perf_counter()
    try:
        detail = check()
    except _Failed as failed:
        return Line(name, False, redact(str(failed)))
    except Exception as exc:  # whatever the driver raises: name it, without secrets
        return Line(name, False, redact(f"unreachable: {type(exc).__name__}: {exc}"[:300]))
    return Line(name, True, f"{detail} ({(time.perf_counter() - started) * 1000:.0f} ms)")


def _redis(services) -> str:
    services.redis.ping()
    return "answered PING"


def _database(services) -> str:
    current, heads = services.store.revisions()
    if current != heads:
        at = ", ".join(sorted(current)) or "no migration"
        raise _Failed(f"at {at}, the code's head is {', '.join(sorted(heads))}: run `python -m service migrate`")
    return f"at the migration head ({', '.join(sorted(heads))})"


def _signalwire(services) -> str:
    try:
        services.signalwire.check_credentials()
    except SignalWireError as exc:
        if exc.status in (401, 403):
            raise _Failed(f"refused our credentials (SIGNALWIRE_PROJECT_ID, SIGNALWIRE_API_TOKEN): {exc}")
        raise _Failed(f"{services.signalwire.base_url} did not answer as expected: {exc}")
    return f"{services.signalwire.base_url} accepted our credentials"


def _signing_key(settings: Settings) -> Line:
    keys = len(settings.signalwire_signing_keys)
    if not keys:
        return Line("signing key", False, "none set: ALLOW_UNSIGNED_WEBHOOKS is on and callbacks are NOT verified")
    return Line("signing key", True, f"{keys} set" + (" (a rotation: each is tried)" if keys > 1 else ""))


def _public_base_url(settings: Settings) -> Line:
    url = urlsplit(settings.public_base_url)
    if url.scheme == "https":
        return Line("public url", True, settings.public_base_url)
    if url.hostname in LOOPBACK_HOSTS:
        return Line("public url", True, f"{settings.public_base_url} (plain http, on loopback only)")
    return Line("public url", False, f"{settings.public_base_url} must be https (or a loopback address): "
                                     "callbacks would travel in clear text")
