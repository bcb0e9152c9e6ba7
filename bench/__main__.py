"""`python -m bench`: every benchmark in one go (about 8-10 minutes on 2 cores), a markdown
table on stdout, JSON in bench/results/. See bench/README.md for each one's own options."""

from __future__ import annotations

import argparse
import time

from bench import dashboard, e2e, ingest, memory, notify, store_scale, worker
from bench.common import log, postgres_available, save_json


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench")
    p.add_argument("--only", default="ingest,worker,e2e,store,memory",
                   help="comma list of benchmarks to run (also: notify, dashboard)")
    p.add_argument("--quick", action="store_true", help="smaller everything (a smoke run, ~2 minutes)")
    p.add_argument("--rows", type=int, default=None, help="store benchmark rows (default 500,000 to stay within 10 minutes; --quick 50,000)")
    p.add_argument("--callbacks", type=int, default=None, help="memory benchmark callbacks (default 10,000 here)")
    p.add_argument("--e2e-workers", type=int, default=4, help="RQ worker processes for the e2e run")
    a = p.parse_args(argv)
    only = set(a.only.split(","))
    quick = a.quick
    pg = postgres_available()
    dbs = ["sqlite", "postgresql"] if pg else ["sqlite"]
    if not pg:
        log("PostgreSQL unreachable: SQLite only")
    t0 = time.monotonic()
    sections, everything = [], {}
    if "ingest" in only:
        r = ingest.run(["default"], [16, 64], duration=2 if quick else 5, repeats=1 if quick else 3, floor=True,
                       quiet=True)
        everything["ingest"] = r
        sections.append(ingest.table(r))
    if "worker" in only:
        r = [worker.run(k, 100 if quick else 600, 1 if quick else 3) for k in dbs]
        everything["worker"] = r
        sections.append(worker.table(r))
    if "e2e" in only:
        r = [e2e.paced(k, 100, 10 if quick else 60, a.e2e_workers) for k in (dbs if not quick else ["sqlite"])]
        everything["e2e"] = r
        sections.append(e2e.table(r))
    if "notify" in only:
        r = [notify.run(k, 100, 10 if quick else 60, 2) for k in (dbs if not quick else ["sqlite"])]
        everything["notify"] = r
        sections.append(notify.table(r))
    if "store" in only:
        rows = a.rows or (50_000 if quick else 500_000)  # 1,000,000: python -m bench.store_scale
        r = [store_scale.run(k, rows, 100 if quick else 200, 1 if quick else 3) for k in dbs]
        everything["store"] = r
        sections.append(store_scale.table(r))
    if "dashboard" in only:
        rows = a.rows or (50_000 if quick else 500_000)  # 1,000,000: python -m bench.dashboard
        r = [dashboard.run(k, rows, 50 if quick else 200, 1 if quick else 3) for k in dbs]
        everything["dashboard"] = r
        sections.append(dashboard.table(r))
    if "memory" in only:
        r = memory.run(a.callbacks or (2_000 if quick else 8_000), "sqlite", 2, time_limit=240)
        everything["memory"] = r
        sections.append(memory.table(r))
    path = save_json("all", everything)
    print("\n\n".join(sections))
    log(f"all done in {time.monotonic() - t0:.0f} s; JSON: {path}")


if __name__ == "__main__":
    main()
