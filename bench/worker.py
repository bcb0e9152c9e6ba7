"""Worker throughput: jobs/s of workers.jobs.process_callback (fetch from the sandbox, upsert)
against a no-op job, per worker process, for SimpleWorker (what workers/__main__.py runs) and
the forking Worker, in the same run.

The machine's speed drifts by a third within minutes, more than the effects measured here. So
one worker drains the two kinds interleaved, in blocks (no-op, ours, no-op, ours, ...): each
block's rate comes from its jobs' own started_at/ended_at in Redis, and each ratio compares a
block of ours with the no-op block just before it. The figures are medians over those pairs.

python -m bench.worker [--db sqlite|postgresql|both] [--jobs 600] [--repeats 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from rq.job import Job

from bench.common import (
    ROOT, database, EmbeddedRedis, fmt, log, median, pct, publish, reachable, SandboxProcess, service_env, workdir,
)
from service.pipelines.ingest import Ingest, job_id_for
from service.domain.recordings import CallbackEvent
from service.services import queue_for, redis_connection
from service.config import load_settings

BLOCKS = {"simple": 50, "fork": 10}  # jobs per block


def drain(env: dict, cls: str, log_file) -> int:
    out = subprocess.run([sys.executable, "-m", "bench.worker_proc", cls], env=env, cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=log_file, text=True, timeout=600)
    line = next(l for l in out.stdout.splitlines() if l.startswith("RESULT "))
    return int(line.split()[1])  # failed jobs


def block_rate(queue, ids: list[str]) -> float:
    jobs = Job.fetch_many(ids, connection=queue.connection, serializer=queue.serializer)
    start = min(j.started_at for j in jobs)
    end = max(j.ended_at for j in jobs)
    return len(jobs) / (end - start).total_seconds()


def enqueue_pair(queue, ingest, sandbox, settings, sids, size: int) -> tuple[list[str], list[str]]:
    """A block of no-op jobs, then a block of ours; returns both blocks' job ids."""
    noop = [queue.enqueue("bench.jobs.noop", {"x": 1}, result_ttl=600).id for _ in range(size)]
    ours = []
    for _ in range(size):
        i = next(sids)
        event = CallbackEvent(
            recording_sid=sandbox.sids[i], account_sid=settings.signalwire_project_id, status="completed",
            call_sid=sandbox.call_sids[i], duration=12, channels=1, source="RecordVerb",
            params={"RecordingSid": sandbox.sids[i]})
        ingest.enqueue(event)
        ours.append(job_id_for(event))
    return noop, ours


def run(db_kind: str = "sqlite", jobs: int = 600, repeats: int = 3) -> dict:
    per_rep = {"simple": jobs, "fork": max(50, jobs // 4)}
    need = repeats * sum(n + BLOCKS[cls] for cls, n in per_rep.items())
    res = {"db": db_kind, "jobs": per_rep, "blocks": BLOCKS, "repeats": repeats}
    runs = {cls: {"noop": [], "callback": [], "ratio": [], "failed": 0} for cls in per_rep}
    with workdir() as tmp, EmbeddedRedis() as rs:
        sandbox = SandboxProcess(need, tmp).start()
        try:
            with database(db_kind, tmp) as db_url:
                env = service_env(rs.url, db_url, sandbox.base_url, 5000)
                settings = load_settings(env)
                conn = redis_connection(rs.url)
                queue = queue_for(settings, conn)
                ingest = Ingest(queue, None, settings.dedupe_ttl)
                sids = iter(range(need))
                with open(tmp / "worker.log", "ab") as log_file:
                    for rep in range(repeats):
                        for cls, n in per_rep.items():
                            size = BLOCKS[cls]
                            blocks = [enqueue_pair(queue, ingest, sandbox, settings, sids, size)
                                      for _ in range(n // size + 1)]
                            pairs = blocks[1:]  # the first pair is the warm-up
                            failed = drain(env, cls, log_file)
                            r = runs[cls]
                            r["failed"] += failed
                            for noop, ours in pairs:
                                a, b = block_rate(queue, noop), block_rate(queue, ours)
                                r["noop"].append(a)
                                r["callback"].append(b)
                                r["ratio"].append(b / a)
                            k = len(pairs)
                            log(f"worker {db_kind} {cls} rep {rep}: {k} block pairs of {size}: no-op "
                                f"{median(r['noop'][-k:]):.0f} jobs/s, process_callback {median(r['callback'][-k:]):.0f} "
                                f"jobs/s, paired ratio {median(r['ratio'][-k:]):.2f}x, failed {failed}")
                            for job_id in queue.failed_job_registry.get_job_ids():
                                queue.failed_job_registry.remove(job_id)
                conn.close()
        finally:
            sandbox.stop()
    res["runs"] = runs
    res["summary"] = {
        cls: {"noop_rate": median(r["noop"]), "callback_rate": median(r["callback"]), "ratio": median(r["ratio"]),
              "ratio_p25_p75": (pct(r["ratio"], 25), pct(r["ratio"], 75)), "failed": r["failed"]}
        for cls, r in runs.items()
    }
    return res


def table(results: list[dict]) -> str:
    rows = ["| db | worker class | no-op jobs/s | process_callback jobs/s | paired ratio (p25-p75) | target ≥0.5x |",
            "|---|---|---|---|---|---|"]
    for r in results:
        for cls, s in r["summary"].items():
            name = "SimpleWorker (ours)" if cls == "simple" else "Worker (fork per job)"
            low, high = s["ratio_p25_p75"]
            rows.append(f"| {r['db']} | {name} | {fmt(s['noop_rate'], 0)} | {fmt(s['callback_rate'], 0)} | "
                        f"{fmt(s['ratio'], 2)}x ({fmt(low, 2)}-{fmt(high, 2)}) | {'met' if s['ratio'] >= 0.5 else 'MISSED'} |")
    return ("### Worker throughput (one worker process, no-op and real jobs interleaved in blocks, medians)\n\n"
            + "\n".join(rows))


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
