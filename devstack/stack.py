"""Runs the Procfile's web and worker processes on one machine, the way Heroku would:
real gunicorn and real RQ worker processes, restarted when they exit (an RQ worker quits
when Redis drops mid-job). Used by the local run and by the end-to-end tests.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

log = logging.getLogger(__name__)

# The Procfile's commands run from the repository root, as on Heroku.
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Proc:
    name: str
    argv: list[str]
    popen: subprocess.Popen | None = None
    restarts: int = 0
    exits: list[int] = field(default_factory=list)


class Stack:
    def __init__(self, env: dict[str, str], *, port: int, workers: int = 1, web_concurrency: int = 2,
                 log_path: str | None = None, restart: bool = True):
        self.env = {**env, "PORT": str(port), "WEB_CONCURRENCY": str(web_concurrency), "PYTHONUNBUFFERED": "1"}
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.restart = restart
        self._log = open(log_path, "ab") if log_path else None
        web = [sys.executable, "-m", "gunicorn", "service:create_app()", "-c", "python:service.gunicorn_conf",
               "--bind", f"127.0.0.1:{port}"]
        self.procs = [Proc("web", web)] + [
            Proc(f"worker.{i + 1}", [sys.executable, "-m", "workers"]) for i in range(workers)
        ]
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None

    def _spawn(self, proc: Proc) -> None:
        out = self._log if self._log else None
        # Own process group: stopping the stack reaches gunicorn's and RQ's children too.
        proc.popen = subprocess.Popen(proc.argv, env=self.env, cwd=ROOT, stdout=out, stderr=out,
                                      start_new_session=True)

    def release(self, timeout: float = 120.0) -> None:
        """The Procfile's release step (the database migrations), as Heroku runs it before a
        release's processes start; its output goes to the same log."""
        out = self._log if self._log else None
        code = subprocess.run([sys.executable, "-m", "service", "migrate"], env=self.env, cwd=ROOT, stdout=out,
                              stderr=out, timeout=timeout).returncode
        if code != 0:
            raise RuntimeError(f"the release step exited with {code}")

    def start(self, timeout: float = 30.0, release: bool = False) -> "Stack":
        if release:
            self.release()
        for proc in self.procs:
            self._spawn(proc)
        self._watcher = threading.Thread(target=self._watch, name="stack-watch", daemon=True)
        self._watcher.start()
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if requests.get(self.base_url + "/healthz", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            web = self.procs[0].popen
            if web and web.poll() is not None and not self.restart:
                break
            time.sleep(0.1)
        raise RuntimeError(f"web process did not become healthy on port {self.port}")

    def _watch(self) -> None:
        while not self._stopping.wait(0.2):
            for proc in self.procs:
                if proc.popen and proc.popen.poll() is not None and not self._stopping.is_set():
                    proc.exits.append(proc.popen.returncode)
                    if not self.restart:
                        continue
                    log.warning("%s exited with %s; restarting", proc.name, proc.popen.returncode)
                    proc.restarts += 1
                    time.sleep(0.5)
                    self._spawn(proc)

    def workers(self) -> list[Proc]:
        return [p for p in self.procs if p.name.startswith("worker")]

    def kill(self, proc: Proc, sig: int = signal.SIGKILL) -> None:
        """Kill a process and its group (fault tests)."""
        if proc.popen and proc.popen.poll() is None:
            try:
                os.killpg(proc.popen.pid, sig)
            except ProcessLookupError:
                pass

    def stop(self, timeout: float = 30.0) -> dict[str, int | None]:
        """SIGTERM everything (as Heroku does), wait, then SIGKILL. Returns exit codes."""
        self._stopping.set()
        for proc in self.procs:
            self.kill(proc, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        codes: dict[str, int | None] = {}
        for proc in self.procs:
            if not proc.popen:
                continue
            try:
                codes[proc.name] = proc.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.kill(proc, signal.SIGKILL)
                proc.popen.wait()
                codes[proc.name] = None
        if self._log:
            self._log.close()
        return codes

    def __enter__(self) -> "Stack":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
