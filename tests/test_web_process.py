"""The web process as the Procfile starts it: real gunicorn (gthread) with service/gunicorn_conf.py,
a real keep-alive HTTP client, and start-up refusing a bad configuration with a clear message."""

from __future__ import annotations

import http.client
import json
import os
import runpy
import shlex
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

from tests.fixtures.app import API_TOKEN

ROOT = Path(__file__).resolve().parent.parent
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


def procfile_command(process: str) -> list[str]:
    for line in (ROOT / "Procfile").read_text().splitlines():
        name, _, command = line.partition(":")
        if name.strip() == process:
            argv = shlex.split(command)
            return [sys.executable, *argv[1:]] if argv[0] == "python" else argv
    raise AssertionError(f"no {process} process in the Procfile")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def service_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    """Settings for the web process. Nothing here reaches Redis, the database or SignalWire."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SIGNALWIRE_", "DATABASE_", "REDIS_", "WEB_CONCURRENCY", "GUNICORN_", "PORT"))}
    env.update(
        SIGNALWIRE_SPACE="http://127.0.0.1:9",  # never called here
        SIGNALWIRE_PROJECT_ID=str(uuid.uuid4()),
        SIGNALWIRE_API_TOKEN="PT_web_process_test",
        SIGNALWIRE_SIGNING_KEY="PSK_web_process_test",
        PUBLIC_BASE_URL="https://recordings.example.com",
        SERVICE_API_TOKEN=API_TOKEN,
        REDIS_URL="redis://127.0.0.1:9/0",
        DATABASE_URL=f"sqlite:///{tmp_path / 'web.sqlite3'}",
        PYTHONUNBUFFERED="1",
    )
    env.update(overrides)
    return env


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    """The Procfile's web process, one gunicorn worker process, on a loopback port."""
    port = free_port()
    env = service_env(tmp_path_factory.mktemp("web"), WEB_CONCURRENCY="1", GUNICORN_THREADS="4")
    proc = subprocess.Popen([*procfile_command("web"), "--bind", f"127.0.0.1:{port}"], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except (requests.ConnectionError, requests.Timeout):  # refused, or still booting
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "web process did not start"
            time.sleep(0.1)
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _exchange(conn: http.client.HTTPConnection, method: str, path: str, body=None, headers=None):
    try:
        conn.request(method, path, body=body, headers=headers or {})
    except BrokenPipeError:
        # The server answered and closed while the rest of a refused body was still being
        # sent (a streamed, chunked one): its answer is already on the way back.
        pass
    response = conn.getresponse()
    return response, response.read()


def _chunks(total: int, size: int = 64 * 1024):
    for _ in range(total // size):
        yield b"x" * size


@pytest.mark.parametrize("path, body, headers, status", [
    # Over the API's 256 KB: refused before it is read.
    ("/api/calls/{uuid}/recordings", b'{"channels": "' + b"x" * (1024 * 1024) + b'"}',
     dict(AUTH, **{"Content-Type": "application/json"}), 413),
    # Over the callbacks' 64 KB.
    ("/webhooks/recording-status", b"RecordingSid=x&Padding=" + b"x" * (100 * 1024),
     {"Content-Type": "application/x-www-form-urlencoded"}, 413),
    # Of unknown length (chunked): werkzeug reads it up to the 64 KB limit only, and the form
    # cut there carries no signature.
    ("/webhooks/recording-status", lambda: _chunks(1024 * 1024),
     {"Content-Type": "application/x-www-form-urlencoded"}, 403),
    # Refused by the bearer check, before anything reads the body.
    ("/api/calls/{uuid}/recordings", b"{}" + b" " * (300 * 1024), {"Content-Type": "application/json"}, 401),
], ids=["api-1MB", "callback-100KB", "callback-chunked-1MB", "unauthenticated-300KB"])
def test_a_refused_unread_body_leaves_the_connection_usable(web, path, body, headers, status):
    # http.client reuses the connection unless the response said `Connection: close`, and then
    # opens a new one by itself, as a router or an HTTP client library does.
    conn = http.client.HTTPConnection("127.0.0.1", web, timeout=10)
    try:
        refused, payload = _exchange(conn, "POST", path.format(uuid=uuid.uuid4()),
                                     body() if callable(body) else body, headers)
        assert refused.status == status and json.loads(payload)["error"]["status"] == status
        # The next requests on this client are answered.
        assert _exchange(conn, "GET", "/healthz")[0].status == 200
        assert _exchange(conn, "POST", "/webhooks/recording-status", b"A=1",
                         {"Content-Type": "application/x-www-form-urlencoded"})[0].status == 403
    finally:
        conn.close()


def test_small_requests_keep_the_connection_alive(web):
    conn = http.client.HTTPConnection("127.0.0.1", web, timeout=10)
    try:
        first, _ = _exchange(conn, "POST", f"/api/calls/{uuid.uuid4()}/recordings", b'{"nope": 1}',
                             dict(AUTH, **{"Content-Type": "application/json"}))
        assert first.status == 422 and first.getheader("Connection") == "keep-alive"
        sock = conn.sock
        second, _ = _exchange(conn, "POST", "/webhooks/recording-status", b"A=" + b"1" * 60_000,
                              {"Content-Type": "application/x-www-form-urlencoded"})
        assert second.status == 403 and second.getheader("Connection") == "keep-alive"
        assert conn.sock is sock  # the same connection
    finally:
        conn.close()


# --- start-up ------------------------------------------------------------------------------


def _start(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("value, problem", [
    ("abc", "WEB_CONCURRENCY must be a whole number (got 'abc')"),
    ("0", "WEB_CONCURRENCY must be at least 1 (got 0)"),
])
def test_procfile_web_refuses_a_bad_web_concurrency_with_the_clear_message(tmp_path, value, problem):
    result = _start([*procfile_command("web"), "--bind", f"127.0.0.1:{free_port()}"],
                    service_env(tmp_path, WEB_CONCURRENCY=value))
    assert result.returncode != 0
    assert "invalid configuration:\n  - " + problem in result.stderr
    assert "Traceback" not in result.stderr


def test_procfile_web_names_every_bad_setting_before_gunicorn_starts(tmp_path):
    env = service_env(tmp_path, GUNICORN_THREADS="many", PORT="70000")
    del env["SIGNALWIRE_API_TOKEN"]
    result = _start(procfile_command("web"), env)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    for problem in ("SIGNALWIRE_API_TOKEN is not set", "GUNICORN_THREADS must be a whole number (got 'many')",
                    "PORT must be at most 65535 (got 70000)"):
        assert problem in result.stderr
    assert "Booting worker" not in result.stderr


def test_gunicorn_config_refuses_bad_web_settings_with_the_clear_message(tmp_path):
    """Started as `gunicorn -c python:service.gunicorn_conf` directly, as the local run does."""
    argv = [sys.executable, "-m", "gunicorn", "service:create_app()", "-c", "python:service.gunicorn_conf",
            "--bind", f"127.0.0.1:{free_port()}"]
    result = _start(argv, service_env(tmp_path, WEB_CONCURRENCY="0", GUNICORN_THREADS="0"))
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert ("invalid configuration:\n  - WEB_CONCURRENCY must be at least 1 (got 0)\n"
            "  - GUNICORN_THREADS must be at least 1 (got 0)") in result.stderr


def test_gunicorn_config_takes_its_values_from_the_settings(monkeypatch):
    monkeypatch.setenv("PORT", "8123")
    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    monkeypatch.setenv("GUNICORN_THREADS", "5")
    conf = runpy.run_module("service.gunicorn_conf")
    assert (conf["bind"], conf["workers"], conf["threads"]) == ("0.0.0.0:8123", 3, 5)
    for name in ("PORT", "WEB_CONCURRENCY", "GUNICORN_THREADS"):
        monkeypatch.delenv(name)
    conf = runpy.run_module("service.gunicorn_conf")
    assert (conf["bind"], conf["workers"], conf["threads"]) == ("0.0.0.0:5000", 2, 16)
