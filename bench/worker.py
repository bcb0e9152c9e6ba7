"""Worker throughput: jobs/s of workers.jobs.process_callback (fetch from the sandbox, upsert)
against a no-op job, per worker process, for SimpleWorker (what workers/__main__.py runs) and
the forking Worker, in the same run.

python -m bench.worker [--db sqlite|postgresql] [--jobs 600] [--repeats 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys

import redis

from bench.common import (
    ROOT, database, EmbeddedRedis, fmt, log, median, publish, reachable, SandboxProcess, service_env, workdir,
)
from service.ingest import Ingest
from service.recordings import CallbackEvent
from service.services import queue_for, redis_connection
from service.config import load_settings


def drain(env: dict, cls: str, log_file) -> tuple[int, float, int]:
    out = subprocess.run([sys.executable, "-m", "bench.worker_proc", cls], env=env, cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=log_file, text=True, timeout=600)
    line = next(l for l in out.stdout.splitlines() if l.startswith("RESULT "))
    _, jobs, secs, failed = line.split()
    return int(jobs), float(secs), int(failed)


def run(db_kind: str = "sqlite", jobs: int = 600, repeats: int = 3, fork_jobs: int | None = None) -> dict:
    fork_jobs = fork_jobs or max(50, jobs // 4)
    per_rep = {"simple": jobs, "fork": fork_jobs}
    need = repeats * (jobs + fork_jobs)
    res = {"db": db_kind, "jobs": per_rep, "repeats": repeats, "runs": {}}
    with workdir() as tmp, EmbeddedRedis() as rs:
        sandbox = SandboxProcess(need, tmp).start()
        try:
            with database(db_kind, tmp) as db_url:
                env = service_env(rs.url, db_url, sandbox.base_url, 5000)
                settings = load_settings(env)
                conn = redis_connection(rs.url)
                queue = queue_for(settings, conn)
                ingest = Ingest(queue, None, settings.dedupe_ttl)
                log_file = open(tmp / "worker.log", "ab")
                nxt = 0
                runs = {f"{c}/{j}": [] for c in ("simple", "fork") for j in ("noop", "callback")}
                ratios = {"simple": [], "fork": []}
                for rep in range(repeats):
                    for cls in ("simple", "fork"):
                        n = per_rep[cls]
                        for _ in range(n):
                            queue.enqueue("bench.jobs.noop", {"x": 1}, result_ttl=600)
                        j, secs, failed = drain(env, cls, log_file)
                        noop = j / secs
                        runs[f"{cls}/noop"].append({"jobs": j, "seconds": secs, "failed": failed, "rate": noop})
                        for i in range(nxt, nxt + n):
                            ingest.enqueue(CallbackEvent(
                                recording_sid=sandbox.sids[i], account_sid=settings.signalwire_project_id,
                                status="completed", call_sid=sandbox.call_sids[i], duration=12, channels=1,
                                source="RecordVerb", params={"RecordingSid": sandbox.sids[i]}))
                        nxt += n
                        j2, secs2, failed2 = drain(env, cls, log_file)
                        ours = j2 / secs2
                        runs[f"{cls}/callback"].append({"jobs": j2, "seconds": secs2, "failed": failed2, "rate": ours})
                        ratios[cls].append(ours / noop)
                        log(f"worker {db_kind} {cls} rep {rep}: no-op {noop:.0f} jobs/s, process_callback {ours:.0f} "
                            f"jobs/s ({ours / noop:.2f}x), failed {failed2}")
                        redis.Redis.from_url(rs.url).delete("rq:failed:recordings")
                log_file.close()
                conn.close()
        finally:
            sandbox.stop()
    res["runs"] = runs
    res["summary"] = {
        cls: {"noop_rate": median(r["rate"] for r in runs[f"{cls}/noop"]),
              "callback_rate": median(r["rate"] for r in runs[f"{cls}/callback"]),
              "ratio": median(ratios[cls]),
              "failed": sum(r["failed"] for r in runs[f"{cls}/callback"])}
        for cls in ("simple", "fork")
    }
    return res


def table(results: list[dict]) -> str:
    rows = ["| db | worker class | no-op jobs/s | process_callback jobs/s | ratio | target ≥0.5x |", "|---|---|---|---|---|---|"]
    for r in results:
        for cls, s in r["summary"].items():
            name = "SimpleWorker (ours)" if cls == "simple" else "Worker (fork per job)"
            rows.append(f"| {r['db']} | {name} | {fmt(s['noop_rate'], 0)} | {fmt(s['callback_rate'], 0)} | "
                        f"{fmt(s['ratio'], 2)}x | {'met' if s['ratio'] >= 0.5 else 'MISSED'} |")
    return "### Worker throughput (one worker process, burst drain, medians)\n\n" + "\n".join(rows)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.worker")
    p.add_argument("--db", default="sqlite", help="sqlite, postgresql or both")
    p.add_argument("--jobs", type=int, default=600, help="jobs per SimpleWorker run (the forking Worker gets a quarter)")
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)
    kinds = ["sqlite", "postgresql"] if a.db == "both" else [a.db]
    kinds = reachable(kinds)
    res = [run(k, a.jobs, a.repeats) for k in kinds]
    publish("worker", res, table(res))


if __name__ == "__main__":
    main()
