"""`python -m service doctor` against the sandbox, as an operator runs it: a process of its own
with the deployed environment; one line per check, exit 1 naming what failed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from devstack.redis_server import EmbeddedRedis

ROOT = Path(__file__).resolve().parents[1]
CHECKS = ("settings", "redis", "database", "signalwire", "signing key", "public url")
# The failing checks need only one database; the passing one runs on both.
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def doctor(env: dict) -> tuple[int, dict[str, str]]:
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("SIGNALWIRE_", "REDIS_", "DATABASE_", "PUBLIC_BASE_URL", "SERVICE_API_TOKEN"))}
    result = subprocess.run([sys.executable, "-m", "service", "doctor"], env={**base, **env}, cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    lines = result.stdout.splitlines()
    print(result.stdout, result.stderr)
    report = {}
    for line in lines:
        mark, rest = line.split(maxsplit=1)
        name = next(name for name in (*CHECKS, "callback", "metrics", "dashboard") if rest.startswith(name))
        report[name] = f"{mark} {rest[len(name):].strip()}"
    assert len(report) == len(lines)  # one line per check, nothing else on stdout
    return result.returncode, report


@pytest.fixture
def redis_server():
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture
def deployed(env, store, redis_server):
    return dict(env, REDIS_URL=redis_server.url, PUBLIC_BASE_URL="https://recordings.example.com")


def test_doctor_passes_against_the_sandbox_and_prints_the_callback_url(deployed):
    code, report = doctor(deployed)
    assert code == 0, report
    assert all(report[name].startswith("ok ") for name in CHECKS), report
    assert report["callback"] == "info RecordingStatusCallback=https://recordings.example.com/webhooks/recording-status"
    assert "accepted our credentials" in report["signalwire"] and "migration head" in report["database"]
    assert report["dashboard"] == "info /dashboard/ is off (SECRET_KEY is not set)"
    _, report = doctor(dict(deployed, SECRET_KEY="k" * 32))
    assert report["dashboard"] == "info /dashboard/ is on (sign in with an API token)"


@sqlite_only
def test_a_wrong_api_token_fails_the_signalwire_check(deployed):
    code, report = doctor(dict(deployed, SIGNALWIRE_API_TOKEN="PT_wrong_token_0000"))
    assert code == 1
    assert report["signalwire"].startswith("FAIL refused our credentials") and "401" in report["signalwire"]
    assert "PT_wrong_token_0000" not in str(report)
    assert all(report[name].startswith("ok ") for name in CHECKS if name != "signalwire")


@sqlite_only
def test_redis_stopped_fails_the_redis_check(deployed, redis_server):
    redis_server.stop()
    code, report = doctor(deployed)
    assert code == 1
    assert report["redis"].startswith("FAIL unreachable: ConnectionError")
    assert report["database"].startswith("ok ") and report["signalwire"].startswith("ok ")


@sqlite_only
def test_an_unmigrated_database_and_plain_http_fail_their_checks(deployed, tmp_path):
    code, report = doctor(dict(deployed, DATABASE_URL=f"sqlite:///{tmp_path / 'empty.sqlite3'}",
                               PUBLIC_BASE_URL="http://recordings.example.com"))
    assert code == 1
    assert report["database"].startswith("FAIL at no migration") and "python -m service migrate" in report["database"]
    assert report["public url"].startswith("FAIL http://recordings.example.com must be https")
    loopback = doctor(dict(deployed, PUBLIC_BASE_URL="http://127.0.0.1:5000"))[1]["public url"]
    assert loopback.startswith("ok http://127.0.0.1:5000")


@sqlite_only
def test_settings_that_do_not_parse_fail_first_and_alone(deployed):
    code, report = doctor({k: v for k, v in deployed.items() if k != "SERVICE_API_TOKEN"})
    assert code == 1 and list(report) == ["settings"]
    assert report["settings"] == "FAIL SERVICE_API_TOKEN is not set"
