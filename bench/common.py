"""Shared plumbing: Redis, sandbox process, databases, signed callback bodies, stats, load."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator
from urllib.parse import urlencode

import requests

from devstack.redis_server import EmbeddedRedis, free_port  # noqa: F401 - re-exported
from devstack.sandbox import DEFAULT_API_TOKEN, DEFAULT_PROJECT_ID, DEFAULT_SIGNING_KEY
from service.signalwire.signatures import compute_signature

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PROJECT_ID = DEFAULT_PROJECT_ID
API_TOKEN = DEFAULT_API_TOKEN
SIGNING_KEY = DEFAULT_SIGNING_KEY
SERVICE_TOKEN = "bench-service-token-0123456789"
CALLBACK_PATH = "/webhooks/recording-status"
POSTGRES_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pct(values, p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100); None for no values."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(p / 100 * len(s) + 0.5)) - 1))
    return s[k]


def median(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def save_json(name: str, data) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(data, indent=2, default=str))
    return path


def fmt(v, nd: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


# --- callbacks -----------------------------------------------------------------------------


def callback_params(sid: str, call_sid: str | None = None, status: str = "completed", base: str = "http://127.0.0.1:9") -> dict:
    """A RecordingStatusCallback form as SignalWire (and the sandbox) sends it."""
    return {
        "AccountSid": PROJECT_ID,
        "CallSid": call_sid or f"CA{sid[:30]}",
        "RecordingSid": sid,
        "RecordingUrl": f"{base}/api/laml/2010-04-01/Accounts/{PROJECT_ID}/Recordings/{sid}",
        "RecordingStatus": status,
        "RecordingDuration": "12",
        "RecordingChannels": "1",
        "RecordingSource": "RecordVerb",
        "RecordingStartTime": "Tue, 24 Nov 2026 03:00:00 +0000",
    }


def signed_body(public_base_url: str, params: dict) -> tuple[str, str]:
    """(X-SignalWire-Signature, urlencoded body) for a POST to the callback path."""
    return compute_signature(SIGNING_KEY, public_base_url + CALLBACK_PATH, params), urlencode(params)


def service_env(redis_url: str, database_url: str, sandbox_url: str, port: int, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIGNALWIRE_", "DATABASE_", "REDIS_"))}
    env.update(
        SIGNALWIRE_SPACE=sandbox_url,
        SIGNALWIRE_PROJECT_ID=PROJECT_ID,
        SIGNALWIRE_API_TOKEN=API_TOKEN,
        SIGNALWIRE_SIGNING_KEY=SIGNING_KEY,
        PUBLIC_BASE_URL=f"http://127.0.0.1:{port}",
        SERVICE_API_TOKEN=SERVICE_TOKEN,
        REDIS_URL=redis_url,
        DATABASE_URL=database_url,
        LOG_LEVEL="INFO",  # the production default
        PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    env.update({k: str(v) for k, v in extra.items()})
    return env


# --- the sandbox, in a process of its own (so it does not share the bench's GIL) -----------


class SandboxProcess:
    """`python -m bench.sandbox_proc`: a Sandbox holding `count` recordings (no callbacks)."""

    def __init__(self, count: int, workdir: Path):
        self.count = count
        self.sids_file = workdir / "sandbox-sids.txt"
        self.proc: subprocess.Popen | None = None
        self.base_url = ""
        self.sids: list[str] = []
        self.call_sids: list[str] = []

    def start(self, timeout: float = 300) -> "SandboxProcess":
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.sandbox_proc", "--count", str(self.count), "--out", str(self.sids_file)],
            cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True,
        )
        line = self.proc.stdout.readline()  # "READY <base_url>" once the recordings exist
        if not line.startswith("READY "):
            raise RuntimeError(f"sandbox process failed: {line!r}")
        self.base_url = line.split()[1]
        for row in self.sids_file.read_text().splitlines():
            sid, call_sid = row.split("\t")
            self.sids.append(sid)
            self.call_sids.append(call_sid)
        return self

    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# --- databases -----------------------------------------------------------------------------


@contextlib.contextmanager
def database(kind: str, workdir: Path, migrate: bool = True) -> Iterator[str]:
    """A migrated, empty database: a SQLite file, or a PostgreSQL schema dropped afterwards."""
    from service.store.sql import Store, temporary_schema

    with contextlib.ExitStack() as stack:
        if kind == "sqlite":
            path = workdir / f"bench-{secrets.token_hex(4)}.sqlite3"
            url = f"sqlite:///{path}"
            for suffix in ("", "-wal", "-shm"):
                stack.callback(Path(f"{path}{suffix}").unlink, missing_ok=True)
        else:
            url = stack.enter_context(temporary_schema(POSTGRES_URL, "bench"))
        if migrate:
            store = Store(url)
            store.migrate()
            store.dispose()
        yield url


def reachable(kinds: list[str]) -> list[str]:
    """The database kinds asked for, without PostgreSQL when it does not answer."""
    if "postgresql" in kinds and not postgres_available():
        log("PostgreSQL unreachable: skipping it")
        return [k for k in kinds if k != "postgresql"]
    return kinds


def publish(name: str, results, table: str) -> None:
    """A benchmark's markdown table on stdout, its full results as JSON in bench/results/."""
    path = save_json(name, results)
    print(table)
    log(f"JSON: {path}")


def postgres_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(POSTGRES_URL, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return True
    except Exception:
        return False


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="bench-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# --- processes -----------------------------------------------------------------------------


def rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process (0 if gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0


def children(pid: int) -> list[int]:
    try:
        out = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return [int(p) for p in out]
    except OSError:
        return []


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            requests.get(url, timeout=1)
            return
        except requests.RequestException:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout} s")
