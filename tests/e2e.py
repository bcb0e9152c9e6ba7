"""Helpers for tests that run the real processes: gunicorn (2 workers), RQ workers, Redis,
the store and the sandbox, wired together exactly as in production."""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Callable, Iterator

import requests

from devstack.stack import Stack
from service.domain.recordings import Recording, is_terminal
from service.store.sql import Store, temporary_schema
from tests.fixtures.database import postgres_or_skip
from tests.fixtures.sandbox import SandboxCredentials

API_TOKEN = "e2e-api-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
METRICS_TOKEN = "e2e-metrics-token-0123456789"
# What every log line of every process carries (service.observability.logs).
LOG_FIELDS = ("time", "level", "logger", "pid", "event")


@contextlib.contextmanager
def database(kind: str, tmp_dir, postgres_server) -> Iterator[str]:
    """A migrated database of its own: a SQLite file, or a fresh PostgreSQL schema."""
    with contextlib.ExitStack() as stack:
        if kind == "sqlite":
            url = f"sqlite:///{tmp_dir / 'e2e.sqlite3'}"
        else:
            url = stack.enter_context(temporary_schema(postgres_or_skip(postgres_server), "e2e"))
        store = Store(url)
        store.migrate()
        store.dispose()
        yield url


def stack_env(redis_url: str, database_url: str, sandbox, credentials: SandboxCredentials, port: int) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIGNALWIRE_", "DATABASE_", "REDIS_"))}
    env.update(
        SIGNALWIRE_SPACE=sandbox.base_url,
        SIGNALWIRE_PROJECT_ID=credentials.project_id,
        SIGNALWIRE_API_TOKEN=credentials.api_token,
        SIGNALWIRE_SIGNING_KEY=credentials.signing_key,
        PUBLIC_BASE_URL=f"http://127.0.0.1:{port}",
        SERVICE_API_TOKEN=API_TOKEN,
        METRICS_TOKEN=METRICS_TOKEN,
        REDIS_URL=redis_url,
        DATABASE_URL=database_url,
        LOG_LEVEL="INFO",
        LOG_FORMAT="json",
    )
    return env


def start_stack(env: dict, port: int, log_path, workers: int = 1) -> Stack:
    """The release step, then gunicorn (2 processes) and the RQ workers, all logging to log_path."""
    return Stack(env, port=port, workers=workers, web_concurrency=2, log_path=str(log_path)).start(release=True)


def log_lines(path) -> list[dict]:
    """Every line of a run's log, each a JSON object with the fields every line has."""
    lines = []
    for number, text in enumerate(Path(path).read_text(errors="replace").splitlines(), 1):
        try:
            line = json.loads(text)
        except ValueError:
            raise AssertionError(f"line {number} is not JSON: {text[:300]!r}") from None
        assert isinstance(line, dict) and all(field in line for field in LOG_FIELDS), (number, text[:300])
        lines.append(line)
    return lines


def wait_for(predicate: Callable[[], object], timeout: float = 30.0, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def get_recording(base_url: str, sid: str) -> dict | None:
    response = requests.get(f"{base_url}/api/recordings/{sid}", headers=AUTH, timeout=10)
    if response.status_code == 404:
        return None
    response.raise_for_status()
    return response.json()


def stored_when_settled(base_url: str, sid: str, expected_events: set[str], timeout: float = 30.0) -> dict:
    """The stored recording once it is terminal, fetched, and holds the expected history."""

    def settled():
        stored = get_recording(base_url, sid)
        if not stored or not is_terminal(stored["status"]) or not stored["last_fetched_at"]:
            return None
        if {e["status"] for e in stored["events"]} != expected_events:
            return None
        return stored

    return wait_for(settled, timeout, what=f"recording {sid} to settle with {sorted(expected_events)}")


METADATA_FIELDS = ("sid", "account_sid", "api_version", "call_sid", "conference_sid", "channels", "date_created",
                   "date_updated", "start_time", "end_time", "duration", "price", "price_unit", "source", "status",
                   "error_code", "uri", "subresource_uris", "trim", "extra")


def assert_matches_signalwire(stored: dict, served: dict) -> None:
    """Field by field, the stored recording equals what the sandbox serves for it."""
    expected = Recording.from_api(served).to_dict()
    for name in METADATA_FIELDS:
        assert stored[name] == expected[name], (name, stored[name], expected[name])


def scrape(base_url: str) -> dict[tuple, float]:
    """GET /metrics, as {(sample name, sorted labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    response = requests.get(base_url + "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=10)
    assert response.status_code == 200, response.text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def metric(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)
