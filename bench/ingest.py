"""Ingest: the real webhook (signature, validation, dedupe + enqueue) against a bare 204 route,
both under the same gunicorn configuration, loaded with signed, unique callbacks.

python -m bench.ingest [--duration 5] [--repeats 3] [--connections 16,64] [--configs default,...] [--floor]

--floor adds bench/floor_app.py (the webhook without its hand-off to Redis) as a third app.
--quiet adds bench/quiet_app.py (the webhook without its request id, access line and counters;
with --quiet-off lines, without the access line and counters only): the webhook against it is
what they cost, in req/s and in CPU per request.

Where /proc is readable (Linux), each load also reports the CPU time the gunicorn workers and
Redis spent per request, and the workers' voluntary context switches per request: steadier
than req/s on a noisy machine, and they show where a callback's time goes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import redis
from rq import Queue

from bench import loadgen
from bench.common import (
    ROOT, callback_params, EmbeddedRedis, fmt, free_port, log, median, publish, service_env, signed_body,
    wait_http, workdir,
)

# name -> (environment, extra gunicorn arguments). "default" is service/gunicorn_conf.py as is
# with the Stack's WEB_CONCURRENCY=2; the others override it from the command line.
CONFIGS = {
    "default": ({"WEB_CONCURRENCY": "2"}, []),
    "gthread-2x4": ({"WEB_CONCURRENCY": "2", "GUNICORN_THREADS": "4"}, []),
    "gthread-2x8": ({"WEB_CONCURRENCY": "2", "GUNICORN_THREADS": "8"}, []),
    "gthread-4x4": ({"WEB_CONCURRENCY": "4", "GUNICORN_THREADS": "4"}, []),
    "gthread-2x1": ({"WEB_CONCURRENCY": "2", "GUNICORN_THREADS": "1"}, []),
    "sync-2": ({"WEB_CONCURRENCY": "2", "GUNICORN_THREADS": "1"}, ["-k", "sync"]),
    "sync-4": ({"WEB_CONCURRENCY": "4", "GUNICORN_THREADS": "1"}, ["-k", "sync"]),
    "default-nohiredis": ({"WEB_CONCURRENCY": "2", "BENCH_NO_HIREDIS": "1"}, []),
}
WRK = shutil.which("wrk")
LUA = Path(__file__).with_name("post_bodies.lua")
NO_HIREDIS = Path(__file__).with_name("nohiredis")


def gunicorn(app: str, port: int, env: dict, extra: list[str], log_file) -> subprocess.Popen:
    env = dict(env, PORT=str(port), PYTHONUNBUFFERED="1")
    if env.pop("BENCH_NO_HIREDIS", None):
        env["PYTHONPATH"] = f"{NO_HIREDIS}{os.pathsep}{env.get('PYTHONPATH', '')}"
    argv = [sys.executable, "-m", "gunicorn", app, "-c", "python:service.gunicorn_conf",
            "--bind", f"127.0.0.1:{port}", *extra]
    proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=log_file, stderr=log_file, start_new_session=True)
    wait_http(f"http://127.0.0.1:{port}/healthz")
    return proc


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _usage(pids: list[int]) -> tuple[float, int] | None:
    """(user + system CPU seconds, voluntary context switches) summed over pids and their threads."""
    cpu, switches = 0.0, 0
    try:
        for pid in pids:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            cpu += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            for status in Path(f"/proc/{pid}/task").glob("*/status"):
                try:
                    line = next(l for l in status.read_text().splitlines() if l.startswith("voluntary_ctxt_switches"))
                except (OSError, StopIteration):  # a thread that ended meanwhile
                    continue
                switches += int(line.split()[1])
    except OSError:
        return None
    return cpu, switches


def _machine_ticks() -> tuple[int, int] | None:
    """(idle, total) clock ticks of the whole machine, from /proc/stat."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return None
    return fields[3] + fields[4], sum(fields[:8])  # idle + iowait; user..steal


def write_bodies(path: Path, port: int, count: int) -> list[tuple[str, str]]:
    lines = []
    base = f"http://127.0.0.1:{port}"
    for _ in range(count):
        sid = str(uuid.uuid4())
        lines.append(signed_body(base, callback_params(sid)))
    path.write_text("".join(f"{sig}\t{body}\n" for sig, body in lines))
    return lines


def load(port: int, bodies: Path, lines, connections: int, duration: float,
         workers: list[int] = (), redis_pid: int | None = None) -> dict:
    ticks = _machine_ticks()
    before = _usage(list(workers)), _usage([redis_pid] if redis_pid else [])
    r = _load(port, bodies, lines, connections, duration)
    after = _usage(list(workers)), _usage([redis_pid] if redis_pid else [])
    ticks_after = _machine_ticks()
    if ticks and ticks_after and ticks_after[1] > ticks[1]:
        # Idle time under load is capacity the app left unused while its threads waited.
        r["machine_idle_pct"] = 100 * (ticks_after[0] - ticks[0]) / (ticks_after[1] - ticks[1])
    if workers and None not in before + after and r["requests"]:
        per_req = 1e6 / r["requests"]
        r["web_cpu_us"] = (after[0][0] - before[0][0]) * per_req
        r["web_switches"] = (after[0][1] - before[0][1]) / r["requests"]
        r["redis_cpu_us"] = (after[1][0] - before[1][0]) * per_req
    return r


def _load(port: int, bodies: Path, lines, connections: int, duration: float) -> dict:
    if WRK:
        threads = 2
        out = subprocess.run(
            [WRK, f"-t{threads}", f"-c{connections}", f"-d{max(1, int(round(duration)))}s", "--timeout", "10s", "-s", str(LUA),
             f"http://127.0.0.1:{port}", "--", str(bodies), str(threads)],
            capture_output=True, text=True, timeout=duration + 60,
        )
        line = next((l for l in out.stdout.splitlines() if l.startswith("JSON ")), None)
        if line is None:
            raise RuntimeError(f"wrk failed: {out.stdout} {out.stderr}")
        r = json.loads(line[5:])
    else:
        r = loadgen.run("127.0.0.1", port, lines, connections, duration)
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    r["p50_ms"], r["p99_ms"] = r["p50_us"] / 1000, r["p99_us"] / 1000
    r["errors"] = r["connect"] + r["read"] + r["write"] + r["status"] + r["timeout"]
    return r


# --quiet's baseline: all of the observability off, or only the access line and the counters.
QUIET_APPS = {"all": ("bench.quiet_app:all_off()", "without request id, access line and counters (bench/quiet_app.py)"),
              "lines": ("bench.quiet_app:lines_off()",
                        "with its request id, without access line and counters (bench/quiet_app.py)")}


def run(configs=("default",), connections=(16, 64), duration=5.0, repeats=3, floor=False, quiet=False,
        quiet_off: str = "all") -> dict:
    results: dict = {"tool": "wrk" if WRK else "python loadgen", "duration_s": duration, "repeats": repeats,
                     "quiet_off": quiet_off, "configs": {}}
    with workdir() as tmp, EmbeddedRedis() as rs:
        client = redis.Redis.from_url(rs.url)
        redis_pid = client.info("server")["process_id"]
        db_url = f"sqlite:///{tmp / 'ingest.sqlite3'}"
        from service.store.sql import Store

        st = Store(db_url)
        st.migrate()
        st.dispose()
        log_file = open(tmp / "gunicorn.log", "ab")
        for name in configs:
            env_extra, extra = CONFIGS[name]
            real_port = free_port()
            env = service_env(rs.url, db_url, "http://127.0.0.1:9", real_port, **env_extra)
            bodies = tmp / f"bodies-{real_port}.txt"
            lines = write_bodies(bodies, real_port, 80_000)
            apps = {"bare": "bench.bare_app:app", "webhook": "service:create_app()"}
            if floor:
                apps["floor"] = "bench.floor_app:app"
            if quiet:
                apps["quiet"] = QUIET_APPS[quiet_off][0]
            ports = {kind: real_port if kind == "webhook" else free_port() for kind in apps}
            log(f"ingest {name}: starting gunicorn ({', '.join(f'{k} :{v}' for k, v in ports.items())})")
            procs = {}
            try:
                for kind, app in apps.items():
                    procs[kind] = gunicorn(app, ports[kind], env, extra, log_file)

                def measure(kind: str, c: int, seconds: float) -> dict:
                    return load(ports[kind], bodies, lines, c, seconds, _children(procs[kind].pid), redis_pid)

                for kind in apps:  # warm-up
                    measure(kind, 16, 1)
                client.flushall()
                runs = {c: {"bare": [], "webhook": [], "ratio": [], "queued": [], "floor": [], "quiet": []}
                        for c in connections}
                for rep in range(repeats):
                    for c in connections:
                        if floor:
                            f = measure("floor", c, duration)
                            runs[c]["floor"].append(f)
                        b = measure("bare", c, duration)
                        if quiet and rep % 2 == 0:  # next to the webhook, first every other run (drift)
                            q = measure("quiet", c, duration)
                            client.flushall()
                        w = measure("webhook", c, duration)
                        queued = Queue("recordings", connection=client).count
                        client.flushall()  # fresh dedupe keys: the next run's callbacks are new again
                        if quiet and rep % 2 == 1:
                            q = measure("quiet", c, duration)
                            client.flushall()
                        if quiet:
                            runs[c]["quiet"].append(q)
                        runs[c]["bare"].append(b)
                        runs[c]["webhook"].append(w)
                        runs[c]["ratio"].append(w["rps"] / b["rps"])
                        runs[c]["queued"].append(queued)
                        log(f"  {name} c={c} rep={rep}: bare {b['rps']:.0f} req/s p99 {b['p99_ms']:.1f} ms | "
                            f"webhook {w['rps']:.0f} req/s p99 {w['p99_ms']:.1f} ms, queued {queued}/{w['requests']}, "
                            f"errors {w['errors']}" + (f" | no hand-off {f['rps']:.0f} req/s" if floor else "")
                            + (f" | observability off {q['rps']:.0f} req/s" if quiet else ""))
                summary = {}
                for c, r in runs.items():
                    summary[c] = {
                        "bare_rps": median(x["rps"] for x in r["bare"]),
                        "bare_p50_ms": median(x["p50_ms"] for x in r["bare"]),
                        "bare_p99_ms": median(x["p99_ms"] for x in r["bare"]),
                        "webhook_rps": median(x["rps"] for x in r["webhook"]),
                        "webhook_p50_ms": median(x["p50_ms"] for x in r["webhook"]),
                        "webhook_p99_ms": median(x["p99_ms"] for x in r["webhook"]),
                        "ratio": median(r["ratio"]),
                        "webhook_errors": sum(x["errors"] for x in r["webhook"]),
                        "queued_vs_requests": [(q, x["requests"]) for q, x in zip(r["queued"], r["webhook"])],
                    }
                    if floor:
                        summary[c]["floor_rps"] = median(x["rps"] for x in r["floor"])
                        summary[c]["floor_ratio"] = median(f["rps"] / b["rps"] for f, b in zip(r["floor"], r["bare"]))
                    if quiet:
                        # The same build with its access line and counters off, run next to it.
                        summary[c]["quiet_rps"] = median(x["rps"] for x in r["quiet"])
                        summary[c]["quiet_p99_ms"] = median(x["p99_ms"] for x in r["quiet"])
                        summary[c]["observability_ratio"] = median(
                            w["rps"] / q["rps"] for w, q in zip(r["webhook"], r["quiet"]))
                    for kind in apps:
                        for key in ("web_cpu_us", "redis_cpu_us", "web_switches", "machine_idle_pct"):
                            summary[c][f"{kind}_{key}"] = median(x.get(key) for x in r[kind])
                results["configs"][name] = {"summary": summary, "runs": runs}
            finally:
                for proc in procs.values():
                    stop(proc)
        log_file.close()
    return results


def table(results: dict) -> str:
    rows = ["| gunicorn config | conns | bare req/s | bare p50/p99 ms | webhook req/s | webhook p50/p99 ms | ratio | target (64 conns: ≥0.65x, p99 ≤50 ms) |",
            "|---|---|---|---|---|---|---|---|"]
    for name, r in results["configs"].items():
        for c, s in r["summary"].items():
            target = "-"
            if int(c) == 64:
                ok = s["ratio"] >= 0.65 and s["webhook_p99_ms"] <= 50
                target = "met" if ok else "MISSED"
            rows.append(f"| {name} | {c} | {fmt(s['bare_rps'], 0)} | {fmt(s['bare_p50_ms'])}/{fmt(s['bare_p99_ms'])} | "
                        f"{fmt(s['webhook_rps'], 0)} | {fmt(s['webhook_p50_ms'])}/{fmt(s['webhook_p99_ms'])} | "
                        f"{fmt(s['ratio'], 2)}x | {target} |")
            if "quiet_rps" in s:
                rows.append(f"| {name}, webhook {QUIET_APPS[results.get('quiet_off', 'all')][1]} "
                            f"| {c} | | | {fmt(s['quiet_rps'], 0)} | -/{fmt(s['quiet_p99_ms'])} | "
                            f"webhook/this {fmt(s['observability_ratio'], 3)}x | ≥0.95x |")
            if "floor_rps" in s:
                rows.append(f"| {name}, webhook without the hand-off (bench/floor_app.py) | {c} | | | {fmt(s['floor_rps'], 0)} | | "
                            f"{fmt(s['floor_ratio'], 2)}x | |")
    cpu = ["| gunicorn config | conns | app | web workers' CPU µs/request | Redis CPU µs/request | voluntary switches/request | machine idle |",
           "|---|---|---|---|---|---|---|"]
    for name, r in results["configs"].items():
        for c, s in r["summary"].items():
            for kind in ("bare", "floor", "quiet", "webhook"):
                if s.get(f"{kind}_web_cpu_us") is not None:
                    cpu.append(f"| {name} | {c} | {kind} | {fmt(s[f'{kind}_web_cpu_us'], 0)} | "
                               f"{fmt(s[f'{kind}_redis_cpu_us'], 0)} | {fmt(s[f'{kind}_web_switches'], 1)} | "
                               f"{fmt(s.get(f'{kind}_machine_idle_pct'), 0)}% |")
    text = (f"### Ingest ({results['tool']}, {results['duration_s']} s x {results['repeats']} runs, medians)\n\n"
            + "\n".join(rows))
    if len(cpu) > 2:
        text += "\n\nWhere each request's CPU went (from /proc, medians):\n\n" + "\n".join(cpu)
    return text


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.ingest")
    p.add_argument("--configs", default="default", help=f"comma list of {','.join(CONFIGS)} or 'all'")
    p.add_argument("--connections", default="16,64")
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--floor", action="store_true", help="also load the webhook without its hand-off to Redis")
    p.add_argument("--quiet", action="store_true",
                   help="also load the webhook without its request id, access line and counters")
    p.add_argument("--quiet-off", choices=list(QUIET_APPS), default="all",
                   help="with --quiet: what the baseline leaves out (all three, or the access line and counters only)")
    a = p.parse_args(argv)
    configs = list(CONFIGS) if a.configs == "all" else a.configs.split(",")
    res = run(configs, [int(c) for c in a.connections.split(",")], a.duration, a.repeats, a.floor, a.quiet,
              a.quiet_off)
    publish("ingest", res, table(res))


if __name__ == "__main__":
    main()
