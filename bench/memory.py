"""Memory: RSS of each gunicorn web worker and each RQ worker process while the real stack
handles CALLBACKS signed callbacks (in-progress then completed for CALLBACKS/2 recordings),
sent as fast as the stack drains them with a bounded backlog. Sampled each second.

python -m bench.memory [--callbacks 100000] [--db sqlite|postgresql] [--workers 2]
"""

from __future__ import annotations

import argparse
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import sqlalchemy as sa

from bench.common import CALLBACK_PATH, callback_params, fmt, log, publish, rss_kb, signed_body, workdir
from bench.e2e import Harness
from service.store.sql import E

MAX_BACKLOG = 2000


def run(callbacks: int = 100_000, db_kind: str = "sqlite", workers: int = 2, time_limit: float = 1800) -> dict:
    recordings = callbacks // 2
    with workdir() as tmp, Harness(tmp, db_kind, recordings, workers) as h:
        web, wrk = h.web_pids(), h.worker_pids()
        samples: list[dict] = []
        sent = [0]
        stop = threading.Event()

        def events() -> int:
            with h.store.engine.connect() as conn:
                return conn.execute(sa.select(sa.func.count()).select_from(E)).scalar()

        def sample():
            t0 = time.monotonic()
            while True:
                samples.append({"t": round(time.monotonic() - t0, 1), "sent": sent[0], "handled": events(),
                                "queue": h.queue.count,
                                "web_kb": {p: rss_kb(p) for p in web}, "worker_kb": {p: rss_kb(p) for p in wrk}})
                if stop.wait(1.0):
                    return

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        codes: dict = {}

        def post(i: int, status: str) -> None:
            sid, call_sid = h.sandbox.sids[i], h.sandbox.call_sids[i]
            sig, body = signed_body(h.base, callback_params(sid, call_sid, status=status, base=h.sandbox.base_url))
            r = h.session().post(h.base + CALLBACK_PATH, data=body, timeout=10, headers={
                "X-SignalWire-Signature": sig, "Content-Type": "application/x-www-form-urlencoded"})
            codes[r.status_code] = codes.get(r.status_code, 0) + 1

        log(f"memory {db_kind}: {callbacks} callbacks, {workers} worker(s), web pids {web}, worker pids {wrk}")
        deadline = time.monotonic() + time_limit
        chunk = 200
        with ThreadPoolExecutor(8) as pool:
            for start in range(0, recordings, chunk):
                while h.queue.count > MAX_BACKLOG and time.monotonic() < deadline:
                    time.sleep(0.05)
                if time.monotonic() > deadline:
                    log("memory: time limit reached, stopping early")
                    break
                idx = range(start, min(recordings, start + chunk))
                list(pool.map(lambda i: post(i, "in-progress"), idx))
                list(pool.map(lambda i: post(i, "completed"), idx))
                sent[0] += 2 * len(idx)
        while h.queue.count > 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(2)
        stop.set()
        th.join(5)

    def at(fraction: float) -> dict:
        target = fraction * sent[0]
        s = next((x for x in samples if x["handled"] >= target), samples[-1])
        return s

    points = {"start": at(0.02), "middle": at(0.5), "end": samples[-1]}
    res = {"db": db_kind, "callbacks": sent[0], "workers": workers, "status_codes": {str(k): v for k, v in codes.items()},
           "duration_s": samples[-1]["t"], "points": points, "samples": samples}
    log(f"memory: done, {sent[0]} callbacks in {samples[-1]['t']} s, codes {codes}")
    return res


def table(r: dict) -> str:
    rows = ["| process | pid | start MB | middle MB | end MB | growth start->end |", "|---|---|---|---|---|---|"]
    p = r["points"]
    for kind, key in (("web worker", "web_kb"), ("RQ worker", "worker_kb")):
        for pid in p["end"][key]:
            vals = [p[x][key].get(pid) for x in ("start", "middle", "end")]
            mb = [v / 1024 if v else None for v in vals]
            growth = f"{(mb[2] - mb[0]):+.1f} MB" if mb[0] and mb[2] else "-"
            rows.append(f"| {kind} | {pid} | {fmt(mb[0])} | {fmt(mb[1])} | {fmt(mb[2])} | {growth} |")
    head = (f"### Memory ({r['callbacks']:,} callbacks, {r['db']}, {r['workers']} RQ worker(s), {r['duration_s']} s; "
            f"start/middle/end = 2%/50%/100% of callbacks handled)\n\n")
    return head + "\n".join(rows)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.memory")
    p.add_argument("--callbacks", type=int, default=100_000)
    p.add_argument("--db", default="sqlite")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--time-limit", type=float, default=1800)
    a = p.parse_args(argv)
    res = run(a.callbacks, a.db, a.workers, a.time_limit)
    publish("memory", res, table(res))


if __name__ == "__main__":
    main()
