"""The README's first command: the whole service on embedded defaults, a recording going through,
and then a service a newcomer can call: its port, its token and two ready commands printed."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]


def _read_until(proc: subprocess.Popen, marker: str, lines: list[str], timeout: float = 120) -> None:
    done = threading.Event()

    def read():
        for line in proc.stdout:
            lines.append(line)
            if marker in line:
                done.set()
                return

    threading.Thread(target=read, daemon=True).start()
    if not done.wait(timeout):
        proc.kill()
        raise AssertionError("".join(lines))


def test_local_run_shows_a_recording_then_serves_with_its_token_and_commands(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SIGNALWIRE_", "REDIS_", "DATABASE_", "PUBLIC_BASE_URL", "SERVICE_API_TOKEN"))}
    env["INSTANCE_PATH"] = str(tmp_path / "instance")
    with socket.socket() as busy:  # the port asked for is taken: the run says so and takes the next
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        env["PORT"] = str(taken)
        proc = subprocess.Popen([sys.executable, "-u", "-m", "devstack.local"], cwd=ROOT, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        lines: list[str] = []
        try:
            _read_until(proc, "press Ctrl-C", lines)
            out = "".join(lines)
            assert "Redis: embedded server" in out and "SignalWire: sandbox" in out and "sqlite:///" in out
            assert "/recordings -> 201" in out
            assert "processed: in-progress" in out and "processed: completed" in out
            assert "metadata fetched and stored" in out and '"status": "completed"' in out
            assert (tmp_path / "instance" / "recordings.sqlite3").exists()
            port = int(re.search(r"Port \d+ is taken; using (\d+) instead", out).group(1))
            assert port != taken and f"* Web: http://127.0.0.1:{port}" in out
            token = re.search(r"\* API token: (\S+)", out).group(1)
            commands = [line.strip() for line in lines if line.strip().startswith("curl ")]
            assert len(commands) == 2 and all(token in c for c in commands)
            started = json.loads(subprocess.run(["bash", "-c", commands[0]], capture_output=True, text=True,
                                                timeout=30, check=True).stdout)
            assert started["sid"] and started["status"] and started["requested"]["channels"] == "dual"
            listed = json.loads(subprocess.run(["bash", "-c", commands[1]], capture_output=True, text=True,
                                               timeout=30, check=True).stdout)
            assert started["sid"] in {r["sid"] for r in listed["recordings"]}
            assert len(listed["recordings"]) == 2  # the demo's and ours
        finally:
            proc.send_signal(signal.SIGINT)
            assert proc.wait(60) == 0, "".join(lines)
