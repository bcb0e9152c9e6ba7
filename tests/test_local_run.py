"""The README's first command: the whole service on embedded defaults, a recording going through."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e


def test_local_run_on_embedded_defaults_shows_a_recording_going_through(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SIGNALWIRE_", "REDIS_", "DATABASE_", "PUBLIC_BASE_URL", "SERVICE_API_TOKEN"))}
    env["INSTANCE_PATH"] = str(tmp_path / "instance")
    result = subprocess.run([sys.executable, "-m", "service.local", "--exit-after-demo"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "Redis: embedded server" in out and "SignalWire: sandbox" in out and "sqlite:///" in out
    assert "/recordings -> 201" in out
    assert "processed: in-progress" in out and "processed: completed" in out and "metadata fetched and stored" in out
    assert '"status": "completed"' in out
    assert (tmp_path / "instance" / "recordings.sqlite3").exists()
