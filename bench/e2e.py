"""End to end: signed callback sent -> recording stored, on the real stack (gunicorn + RQ
worker processes via devstack.stack.Stack, a SignalWire sandbox process for the metadata).

Paced mode (default): a steady RATE callbacks/s for DURATION s; per callback, stored time is
the row's last_fetched_at (set by the worker when it saves the fetched metadata) minus the
wall-clock time the sender started the POST. Queue depth (LLEN) is sampled each second.

python -m bench.e2e [--db sqlite|postgresql] [--rate 100] [--duration 60] [--workers 1]

The memory benchmark (bench.memory) drives the same stack with a bounded backlog instead.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import redis
import requests
import sqlalchemy as sa
from rq import Queue

from bench.common import (
    CALLBACK_PATH, callback_params, children, cpu_seconds, database, EmbeddedRedis, fmt, free_port, log, pct,
    publish, reachable, SandboxProcess, service_env, signed_body, workdir,
)
from devstack.stack import Stack
from service.store.sql import R, Store

QUEUE_NAME = "recordings"


class Harness:
    """Redis + sandbox + database + Stack, with a signed-callback sender and a store poller."""

    def __init__(self, tmp, db_kind: str, recordings: int, workers: int = 1, web_concurrency: int = 2,
                 **settings):
        self.tmp, self.db_kind, self.recordings = tmp, db_kind, recordings
        self.workers, self.web_concurrency = workers, web_concurrency
        self.settings = settings  # more environment for the stack (NOTIFY_ALLOW_PRIVATE=true, ...)

    def __enter__(self):
        self.redis_server = EmbeddedRedis().start()
        self.redis = redis.Redis.from_url(self.redis_server.url)
        self.queue = Queue(QUEUE_NAME, connection=self.redis)
        log(f"e2e: sandbox with {self.recordings} recordings")
        self.sandbox = SandboxProcess(self.recordings, self.tmp).start()
        self._db = database(self.db_kind, self.tmp)
        self.db_url = self._db.__enter__()
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = service_env(self.redis_server.url, self.db_url, self.sandbox.base_url, self.port, **self.settings)
        self.stack = Stack(env, port=self.port, workers=self.workers, web_concurrency=self.web_concurrency,
                           log_path=str(self.tmp / "stack.log")).start(timeout=60)
        self.store = Store(self.db_url)
        self._local = threading.local()
        return self

    def __exit__(self, *exc):
        self.store.dispose()
        self.stack.stop()
        self._db.__exit__(None, None, None)
        self.sandbox.stop()
        self.redis_server.stop()

    def session(self) -> requests.Session:
        s = getattr(self._local, "s", None)
        if s is None:
            s = self._local.s = requests.Session()
        return s

    def send(self, i: int, sent: dict, status_codes: dict) -> None:
        sid, call_sid = self.sandbox.sids[i], self.sandbox.call_sids[i]
        params = callback_params(sid, call_sid, base=self.sandbox.base_url)
        sig, body = signed_body(self.base, params)
        t = time.time()
        try:
            r = self.session().post(self.base + CALLBACK_PATH, data=body, timeout=10, headers={
                "X-SignalWire-Signature": sig, "Content-Type": "application/x-www-form-urlencoded"})
            code = r.status_code
        except requests.RequestException as exc:
            code = type(exc).__name__
        sent[sid] = t
        status_codes[code] = status_codes.get(code, 0) + 1

    def stored(self, since: datetime | None = None) -> dict[str, float]:
        q = sa.select(R.c.sid, R.c.last_fetched_at).where(R.c.last_fetched_at.is_not(None))
        if since is not None:
            q = q.where(R.c.last_fetched_at >= since)
        with self.store.engine.connect() as conn:
            return {sid: at.timestamp() for sid, at in conn.execute(q)}

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far per process group, to see who uses the two cores."""
        return {
            "web (gunicorn workers)": sum(cpu_seconds(p) for p in self.web_pids()),
            **{f"rq worker {i + 1}": cpu_seconds(p) for i, p in enumerate(self.worker_pids())},
            "sandbox": cpu_seconds(self.sandbox.pid()),
            "redis": cpu_seconds(self.redis_server._proc.pid),
            "bench (sender + poller)": sum(os.times()[:2]),
        }

    def web_pids(self) -> list[int]:
        return children(self.stack.procs[0].popen.pid)

    def worker_pids(self) -> list[int]:
        return [p.popen.pid for p in self.stack.workers()]


def paced(db_kind: str = "sqlite", rate: float = 100, duration: float = 60, workers: int = 1) -> dict:
    total = int(rate * duration)
    with workdir() as tmp, Harness(tmp, db_kind, total, workers) as h:
        sent: dict[str, float] = {}
        codes: dict = {}
        depth: list[tuple[float, int, int]] = []  # (t, queue length, stored so far)
        stored: dict[str, float] = {}
        stop = threading.Event()

        def sampler():
            t0 = time.monotonic()
            while not stop.wait(1.0) and time.monotonic() - t0 < duration + 120:
                stored.update(h.stored())
                depth.append((round(time.monotonic() - t0, 1), h.queue.count, len(stored)))

        th = threading.Thread(target=sampler, daemon=True)
        log(f"e2e {db_kind}: {rate}/s for {duration} s, {workers} worker(s)")
        th.start()
        cpu0 = h.cpu()
        start = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            for i in range(total):
                due = start + i / rate
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                pool.submit(h.send, i, sent, codes)
        send_elapsed = time.monotonic() - start
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            stored.update(h.stored())
            if len(stored) >= total:
                break
            time.sleep(0.2)
        stop.set()
        th.join(5)
        cpu1 = h.cpu()
        cpu_ms = {k: round(1000 * (cpu1[k] - cpu0.get(k, 0)) / total, 2) for k in cpu1}
        lat = [(stored[s] - t) * 1000 for s, t in sent.items() if s in stored]
        n = len(depth)
        first = [d for _, d, _ in depth[: max(1, n // 4)]]
        last = [d for t, d, _ in depth if t <= duration][-max(1, n // 4):]
        res = {
            "db": db_kind, "rate": rate, "duration_s": duration, "workers": workers, "sent": len(sent),
            "achieved_rate": len(sent) / send_elapsed, "status_codes": {str(k): v for k, v in codes.items()},
            "stored": len(lat), "missing": total - len(lat),
            "p50_ms": pct(lat, 50), "p90_ms": pct(lat, 90), "p99_ms": pct(lat, 99), "max_ms": max(lat) if lat else None,
            "queue_depth_max": max((d for _, d, _ in depth), default=0),
            "queue_depth_first_quarter_mean": sum(first) / len(first) if first else 0,
            "queue_depth_last_quarter_mean": sum(last) / len(last) if last else 0,
            "cpu_ms_per_callback": cpu_ms,
            "queue_depth_series": depth,
        }
        log(f"e2e {db_kind}: p50 {fmt(res['p50_ms'])} ms p99 {fmt(res['p99_ms'])} ms, max depth "
            f"{res['queue_depth_max']}, missing {res['missing']}, codes {res['status_codes']}; CPU ms/callback {cpu_ms}")
        return res


def table(results: list[dict]) -> str:
    rows = ["| db | workers | rate/s (achieved) | stored/sent | p50 ms | p90 ms | p99 ms | max ms | queue depth max (first/last quarter mean) | target p99 ≤250 ms, no backlog |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        ok = r["p99_ms"] is not None and r["p99_ms"] <= 250 and r["missing"] == 0 and r["queue_depth_last_quarter_mean"] <= max(5, 2 * r["queue_depth_first_quarter_mean"])
        rows.append(f"| {r['db']} | {r['workers']} | {r['rate']:.0f} ({r['achieved_rate']:.1f}) | {r['stored']}/{r['sent']} | "
                    f"{fmt(r['p50_ms'])} | {fmt(r['p90_ms'])} | {fmt(r['p99_ms'])} | {fmt(r['max_ms'])} | "
                    f"{r['queue_depth_max']} ({r['queue_depth_first_quarter_mean']:.1f}/{r['queue_depth_last_quarter_mean']:.1f}) | "
                    f"{'met' if ok else 'MISSED'} |")
    notes = [f"- {r['db']}, {r['workers']} worker(s): CPU ms per callback: "
             + ", ".join(f"{k} {v}" for k, v in r["cpu_ms_per_callback"].items()) for r in results]
    return "### End to end (callback sent -> metadata stored)\n\n" + "\n".join(rows) + "\n\n" + "\n".join(notes)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.e2e")
    p.add_argument("--db", default="sqlite", help="sqlite, postgresql or both")
    p.add_argument("--rate", type=float, default=100)
    p.add_argument("--duration", type=float, default=60)
    p.add_argument("--workers", type=int, default=1)
    a = p.parse_args(argv)
    kinds = ["sqlite", "postgresql"] if a.db == "both" else [a.db]
    kinds = reachable(kinds)
    res = [paced(k, a.rate, a.duration, a.workers) for k in kinds]
    publish("e2e", res, table(res))


if __name__ == "__main__":
    main()
