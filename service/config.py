"""Settings: read from the environment in one place and checked once, at start-up.

A misconfigured service refuses to start with one message naming every bad variable;
secret values never appear in that message, in logs or in `repr(settings)`.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Mapping
from urllib.parse import unquote, urlsplit, urlunsplit

from service.notify.events import RETRY_SCHEDULE

INSTANCE_DIR = Path(os.environ.get("INSTANCE_PATH", Path.cwd() / "instance"))
# Plain http sends the Basic credentials in clear text: only to a sandbox on this machine.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
# URL settings that may carry a password (Heroku's REDIS_URL and DATABASE_URL do).
PASSWORD_URLS = ("redis_url", "database_url")


class ConfigError(Exception):
    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid configuration:\n  - " + "\n  - ".join(problems))


@dataclasses.dataclass(frozen=True)
class WebSettings:
    """What the gunicorn configuration needs (service/gunicorn_conf.py): checked on its own,
    because gunicorn reads its configuration before it loads the app, whose own check
    (load_settings) names every other problem."""

    port: int = 5000
    web_concurrency: int = 2
    # gunicorn gthread threads per web process.
    gunicorn_threads: int = 16


@dataclasses.dataclass(frozen=True)
class Settings:
    signalwire_space: str
    signalwire_project_id: str
    signalwire_api_token: str = dataclasses.field(repr=False)
    signalwire_signing_keys: tuple[str, ...] = dataclasses.field(repr=False)
    public_base_url: str
    # Several during a rotation: each is accepted (see service.web.auth).
    service_api_tokens: tuple[str, ...] = dataclasses.field(repr=False)
    redis_url: str
    database_url: str
    port: int = WebSettings.port
    web_concurrency: int = WebSettings.web_concurrency
    gunicorn_threads: int = WebSettings.gunicorn_threads
    # Connections each SQLAlchemy engine keeps, and how many more it may open in a burst. A
    # web process has one engine, a worker process two (README, "Database connections").
    database_pool_size: int = 3
    database_max_overflow: int = 3
    # Opt-out for local experiments only: accept unsigned callbacks (logged loudly).
    allow_unsigned_webhooks: bool = False
    queue_name: str = "recordings"
    # Longer than SignalWire's three delivery attempts, so a retried callback is a duplicate.
    dedupe_ttl: int = 24 * 3600
    max_callback_bytes: int = 64 * 1024
    # Reconciliation sweep: how often, how old an unfinished recording must be, and how far
    # back to list the account's recordings (0 turns listing off).
    sweep_interval: int = 300
    sweep_after: int = 600
    sweep_list_hours: int = 0
    # Worker housekeeping (workers.housekeeping): inbox drain and crash-recovery periods, and
    # how long a worker's liveness key lasts without a refresh (dead workers' jobs are
    # requeued about this long after the worker died).
    inbox_drain_interval: int = 2
    recovery_interval: int = 3
    worker_alive_ttl: int = 8
    log_level: str = "INFO"
    # One JSON object per line (production), or a console rendering for a person at a terminal.
    log_format: str = "json"
    # Bearer token for GET /metrics; unset, /metrics answers 404 (a Heroku app is public).
    metrics_token: str = dataclasses.field(default="", repr=False)
    # Signs the dashboard's session cookie and CSRF tokens; unset, the dashboard is off (404).
    secret_key: str = dataclasses.field(default="", repr=False)
    # Outbound notifications (service.notify): plain http and private addresses allowed (local
    # run and tests only, logged loudly); the retry delays after each failed attempt; one
    # attempt's timeout; deliveries in flight per worker; how often a worker looks for due ones.
    notify_allow_private: bool = False
    notify_retry_schedule: tuple[float, ...] = RETRY_SCHEDULE
    notify_timeout: int = 15
    notify_concurrency: int = 8
    notify_poll_interval: int = 1
    # The media archive (service.media): where copies go (None: no archiving), which format is
    # downloaded, whether the recording is deleted at SignalWire once its copy is verified, and
    # how a copy in S3 is verified. The storage's own secrets are read here only to keep them
    # out of logs (boto3 reads its variables itself).
    media_storage_url: str | None = None
    media_format: str = "wav"
    media_delete_after_archive: bool = False
    media_verify: str = "checksum"
    storage_secrets: tuple[str, ...] = dataclasses.field(default=(), repr=False)

    @property
    def callback_url(self) -> str:
        return self.public_base_url + "/webhooks/recording-status"

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every secret value, for log redaction."""
        url_passwords = [form for name in PASSWORD_URLS for form in url_password_forms(getattr(self, name))]
        return tuple(
            s for s in (self.signalwire_api_token, *self.service_api_tokens, self.metrics_token,
                        self.secret_key, *self.signalwire_signing_keys, *url_passwords, *self.storage_secrets) if s
        )

    def __repr__(self) -> str:
        # The generated repr would show URL passwords; this one masks them.
        shown = []
        for field in dataclasses.fields(self):
            if field.repr:
                value = getattr(self, field.name)
                if field.name in PASSWORD_URLS:
                    value = _mask_password(value)
                shown.append(f"{field.name}={value!r}")
        return f"Settings({', '.join(shown)})"


def url_password_forms(url: str) -> tuple[str, ...]:
    """A URL's password as it may be logged: as written (percent-encoded) or as used (decoded)."""
    password = urlsplit(url).password
    return (password, unquote(password)) if password else ()


def _mask_password(url: str) -> str:
    """'redis://:pw@host:6379' -> 'redis://:***@host:6379'; a URL without a password is unchanged."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{userinfo.partition(':')[0]}:***@{hostport}"))


def _url_ok(value: str, schemes: tuple[str, ...]) -> bool:
    parts = urlsplit(value)
    return parts.scheme in schemes and bool(parts.hostname)


def _int(env: Mapping[str, str], name: str, default: int, problems: list[str], minimum: int = 0,
         maximum: int | None = None) -> int:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        problems.append(f"{name} must be a whole number (got {raw!r})")
        return default
    if value < minimum:
        problems.append(f"{name} must be at least {minimum} (got {value})")
    elif maximum is not None and value > maximum:
        problems.append(f"{name} must be at most {maximum} (got {value})")
    return value


def _flag(env: Mapping[str, str], name: str, problems: list[str]) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    problems.append(f"{name} must be true or false (got {raw!r})")
    return False


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("json", "console")


def log_options(env: Mapping[str, str] | None = None) -> tuple[str, str]:
    """(LOG_LEVEL, LOG_FORMAT), checked: for processes that need no other setting (the release
    step), and for load_settings."""
    env = os.environ if env is None else env
    problems = _log_problems(env)
    if problems:
        raise ConfigError(problems)
    return _log_level(env), _log_format(env)


def _log_level(env: Mapping[str, str]) -> str:
    return (env.get("LOG_LEVEL") or "INFO").strip().upper()


def _log_format(env: Mapping[str, str]) -> str:
    return (env.get("LOG_FORMAT") or "json").strip().lower()


def _log_problems(env: Mapping[str, str]) -> list[str]:
    problems = []
    if _log_level(env) not in LOG_LEVELS:
        problems.append(f"LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR (got {_log_level(env)!r})")
    if _log_format(env) not in LOG_FORMATS:
        problems.append(f"LOG_FORMAT must be json or console (got {_log_format(env)!r})")
    return problems


def _web_values(env: Mapping[str, str], problems: list[str]) -> dict[str, int]:
    return dict(
        port=_int(env, "PORT", WebSettings.port, problems, minimum=1, maximum=65535),
        web_concurrency=_int(env, "WEB_CONCURRENCY", WebSettings.web_concurrency, problems, minimum=1),
        gunicorn_threads=_int(env, "GUNICORN_THREADS", WebSettings.gunicorn_threads, problems, minimum=1),
    )


def load_web_settings(env: Mapping[str, str] | None = None) -> WebSettings:
    """PORT, WEB_CONCURRENCY and GUNICORN_THREADS only, checked as load_settings checks them."""
    problems: list[str] = []
    values = _web_values(os.environ if env is None else env, problems)
    if problems:
        raise ConfigError(problems)
    return WebSettings(**values)


def _schedule(env: Mapping[str, str], name: str, default: tuple[float, ...], problems: list[str]) -> tuple[float, ...]:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        delays = tuple(float(part) for part in raw.split(","))
    except ValueError:
        problems.append(f"{name} must be comma-separated seconds, such as 0,5,300 (got {raw!r})")
        return default
    if not all(0 <= d <= 7 * 86400 for d in delays):
        problems.append(f"{name} delays must be between 0 and 604800 seconds (got {raw!r})")
    return delays


def _list(value: str) -> tuple[str, ...]:
    """A comma-separated setting (several keys or tokens during a rotation)."""
    return tuple(item.strip() for item in value.split(",") if item.strip())


def default_database_url() -> str:
    return f"sqlite:///{INSTANCE_DIR / 'recordings.sqlite3'}"


def load_database_url(env: Mapping[str, str] | None = None) -> str:
    """DATABASE_URL alone, checked: the release step needs no other setting."""
    problems: list[str] = []
    url = _database_url(os.environ if env is None else env, problems)
    if problems:
        raise ConfigError(problems)
    return url


def _database_url(env: Mapping[str, str], problems: list[str]) -> str:
    url = (env.get("DATABASE_URL") or "").strip() or default_database_url()
    if urlsplit(url).scheme.split("+")[0] not in ("sqlite", "postgres", "postgresql"):
        problems.append("DATABASE_URL must be a postgres://, postgresql:// or sqlite:/// URL")
    return url


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    problems: list[str] = []

    def required(name: str) -> str:
        value = (env.get(name) or "").strip()
        if not value:
            problems.append(f"{name} is not set")
        return value

    space = required("SIGNALWIRE_SPACE")
    space_url = urlsplit(space)
    if space and "://" in space and not _url_ok(space, ("http", "https")):
        problems.append("SIGNALWIRE_SPACE must be a host (example.signalwire.com) or an http(s) URL")
    elif "://" in space and space_url.scheme == "http" and space_url.hostname not in LOOPBACK_HOSTS:
        problems.append("SIGNALWIRE_SPACE must use https:// (http:// would send the API token in clear text; "
                        "it is allowed only for a local sandbox on 127.0.0.1, localhost or ::1)")
    project_id = required("SIGNALWIRE_PROJECT_ID")
    api_token = required("SIGNALWIRE_API_TOKEN")

    allow_unsigned = _flag(env, "ALLOW_UNSIGNED_WEBHOOKS", problems)
    keys = _list(env.get("SIGNALWIRE_SIGNING_KEY") or "")
    if not keys and not allow_unsigned:
        problems.append(
            "SIGNALWIRE_SIGNING_KEY is not set (set ALLOW_UNSIGNED_WEBHOOKS=true to run without "
            "verifying callbacks, for local experiments only)"
        )

    public_base_url = required("PUBLIC_BASE_URL").rstrip("/")
    if public_base_url and not _url_ok(public_base_url, ("http", "https")):
        problems.append("PUBLIC_BASE_URL must be an http(s) URL such as https://recordings.example.com")
    elif "?" in public_base_url or "#" in public_base_url:
        # The callback URL is PUBLIC_BASE_URL + "/webhooks/recording-status": after a ? or a #
        # that path would no longer be the path.
        problems.append("PUBLIC_BASE_URL must not have a query string (?) or a fragment (#)")

    raw_tokens = required("SERVICE_API_TOKEN")
    service_tokens = _list(raw_tokens)
    if raw_tokens and not service_tokens:
        problems.append("SERVICE_API_TOKEN is not set (only commas and spaces)")
    short = sum(len(token) < 16 for token in service_tokens)
    if short:  # which one is never said: the message must not help guess a token
        problems.append(f"SERVICE_API_TOKEN must be at least 16 characters, each token if several ({short} of "
                        f"{len(service_tokens)} not)")

    redis_url = required("REDIS_URL")
    if redis_url and not _url_ok(redis_url, ("redis", "rediss", "unix")) and not redis_url.startswith("unix:"):
        problems.append("REDIS_URL must be a redis://, rediss:// or unix:// URL")

    database_url = _database_url(env, problems)

    settings = dict(
        **_web_values(env, problems),
        database_pool_size=_int(env, "DATABASE_POOL_SIZE", Settings.database_pool_size, problems, minimum=1),
        database_max_overflow=_int(env, "DATABASE_MAX_OVERFLOW", Settings.database_max_overflow, problems, minimum=0),
        dedupe_ttl=_int(env, "DEDUPE_TTL", 24 * 3600, problems, minimum=60),
        sweep_interval=_int(env, "SWEEP_INTERVAL", 300, problems, minimum=0),
        sweep_after=_int(env, "SWEEP_AFTER", 600, problems, minimum=0),
        sweep_list_hours=_int(env, "SWEEP_LIST_HOURS", 0, problems, minimum=0),
        inbox_drain_interval=_int(env, "INBOX_DRAIN_INTERVAL", 2, problems, minimum=1),
        recovery_interval=_int(env, "RECOVERY_INTERVAL", 3, problems, minimum=1),
        worker_alive_ttl=_int(env, "WORKER_ALIVE_TTL", 8, problems, minimum=3),
        notify_allow_private=_flag(env, "NOTIFY_ALLOW_PRIVATE", problems),
        notify_retry_schedule=_schedule(env, "NOTIFY_RETRY_SCHEDULE", RETRY_SCHEDULE, problems),
        notify_timeout=_int(env, "NOTIFY_TIMEOUT", 15, problems, minimum=1),
        notify_concurrency=_int(env, "NOTIFY_CONCURRENCY", 8, problems, minimum=1),
        notify_poll_interval=_int(env, "NOTIFY_POLL_INTERVAL", 1, problems, minimum=1),
    )
    queue_name = (env.get("RQ_QUEUE") or "recordings").strip()
    problems += _log_problems(env)
    metrics_token = (env.get("METRICS_TOKEN") or "").strip()
    if metrics_token and len(metrics_token) < 16:
        problems.append("METRICS_TOKEN must be at least 16 characters (or unset, which turns /metrics off)")

    secret_key = (env.get("SECRET_KEY") or "").strip()
    if secret_key and len(secret_key) < 32:
        problems.append("SECRET_KEY must be at least 32 characters (or unset, which turns the dashboard off)")

    media = _media_settings(env, problems)

    if problems:
        raise ConfigError(problems)
    return Settings(
        signalwire_space=space,
        signalwire_project_id=project_id,
        signalwire_api_token=api_token,
        signalwire_signing_keys=keys,
        public_base_url=public_base_url,
        service_api_tokens=service_tokens,
        redis_url=redis_url,
        database_url=database_url,
        allow_unsigned_webhooks=allow_unsigned,
        queue_name=queue_name,
        log_level=_log_level(env),
        log_format=_log_format(env),
        metrics_token=metrics_token,
        secret_key=secret_key,
        **settings,
        **media,
    )


def _media_settings(env: Mapping[str, str], problems: list[str]) -> dict:
    from service.media.storage import VERIFY_MODES, parse_location

    url = (env.get("MEDIA_STORAGE_URL") or "").strip() or None
    if url is not None:
        try:
            parse_location(url)
        except ValueError as exc:
            problems.append(f"MEDIA_STORAGE_URL {exc}")
        else:
            if url.startswith("s3:"):
                _s3_settings(env, problems)
    fmt = (env.get("MEDIA_FORMAT") or "wav").strip().lower()
    if fmt not in ("wav", "mp3"):
        problems.append(f"MEDIA_FORMAT must be wav or mp3 (got {fmt!r})")
    verify = (env.get("MEDIA_VERIFY") or "checksum").strip().lower()
    if verify not in VERIFY_MODES:
        problems.append(f"MEDIA_VERIFY must be {' or '.join(VERIFY_MODES)} (got {verify!r})")
    delete = _flag(env, "MEDIA_DELETE_AFTER_ARCHIVE", problems)
    if delete and url is None:
        problems.append("MEDIA_DELETE_AFTER_ARCHIVE needs MEDIA_STORAGE_URL: nothing would be archived first")
    secret = env.get("AWS_SECRET_ACCESS_KEY")
    return dict(media_storage_url=url, media_format=fmt, media_delete_after_archive=delete, media_verify=verify,
                storage_secrets=(secret,) if secret else ())


# boto3 reads its own variables (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
# AWS_REGION); for an s3:// storage they are checked here, so a typo stops the start.
def _s3_settings(env: Mapping[str, str], problems: list[str]) -> None:
    endpoint = (env.get("AWS_ENDPOINT_URL") or "").strip()
    if endpoint and not _url_ok(endpoint, ("http", "https")):
        problems.append("AWS_ENDPOINT_URL must be an http(s) URL, such as https://<account>.r2.cloudflarestorage.com")
    if bool(env.get("AWS_ACCESS_KEY_ID")) != bool(env.get("AWS_SECRET_ACCESS_KEY")):
        problems.append("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are set together, or neither "
                        "(boto3 then looks for credentials elsewhere)")
    region = (env.get("AWS_REGION") or "").strip()
    if region and not region.replace("-", "").isalnum():
        problems.append(f"AWS_REGION must be a region name such as us-east-1 (got {region!r})")
