"""What the request id, the access line and the counters cost a callback, in one process: the
webhook's WSGI app with service.web.access's middleware ("on"), with the middleware taking no
notes ("ids": the request id, its header and its way into the job, but no access line and no
counts) and without it ("off"), each handed the same kind of signed, unique callbacks in
rotating blocks, timed in the process's CPU time (all its threads: the access-lines thread's
batches are drained inside the block that made them). on/ids is what the access line and the
counters cost; on/off what all three cost.

python -m bench.observability [--blocks 40] [--block 250]

Steadier than req/s under a load generator on a shared machine (bench.ingest --quiet): no
network, no other process, and each "on" block is paired with the blocks beside it.
Stdout goes to /dev/null while it runs, as the access lines would go to Heroku's router.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import time
import uuid
from statistics import median

from bench.common import EmbeddedRedis, callback_params, fmt, log, publish, service_env, signed_body, workdir

PORT = 8000  # only part of PUBLIC_BASE_URL, which the signatures cover: nothing listens
PATH = "/webhooks/recording-status"


def environs(count: int, base_url: str) -> list[dict]:
    from werkzeug.test import EnvironBuilder

    out = []
    for _ in range(count):
        signature, body = signed_body(base_url, callback_params(uuid.uuid4().hex))
        builder = EnvironBuilder(path=PATH, method="POST", data=body, base_url=base_url,
                                 content_type="application/x-www-form-urlencoded",
                                 headers={"X-SignalWire-Signature": signature, "X-Request-ID": uuid.uuid4().hex})
        out.append(builder.get_environ())
    return out


def run(blocks: int = 40, block: int = 250) -> dict:
    with workdir() as tmp, EmbeddedRedis() as rs:
        env = service_env(rs.url, f"sqlite:///{tmp / 'obs.sqlite3'}", "http://127.0.0.1:9", PORT,
                          PROMETHEUS_MULTIPROC_DIR=str(tmp))
        os.environ.update(env)
        from service import create_app
        from service.store.sql import Store
        from service.web.access import AccessLog

        Store(env["DATABASE_URL"]).migrate()
        app = create_app()
        on = app.wsgi_app  # service.web.access.AccessLog
        off = on.wsgi_app
        ids = AccessLog(off)
        ids.notes.add = lambda note: None
        arms = {"on": on, "ids": ids, "off": off}
        base_url = env["PUBLIC_BASE_URL"]

        def call(wsgi, environ) -> None:
            status = []
            body = b"".join(wsgi(environ, lambda s, h, e=None: status.append(s)))
            if not status[0].startswith("204"):
                raise RuntimeError(f"{status[0]}: {body[:200]!r}")

        def timed(wsgi, batch) -> float:
            started = time.process_time()
            for environ in batch:
                call(wsgi, environ)
            if wsgi is on:
                on.drain()
            return (time.process_time() - started) / len(batch) * 1e6

        per = {kind: [] for kind in arms}
        with contextlib.redirect_stdout(open(os.devnull, "w")):
            for environ in environs(block, base_url):  # warm-up, both ways
                call(on, environ)
            on.drain()
            for i in range(blocks):
                # Each arm first in turn: a later block of a round runs warmer.
                kinds = list(arms)[i % 3:] + list(arms)[:i % 3]
                for kind in kinds:
                    per[kind].append(timed(arms[kind], environs(block, base_url)))
                if i % 10 == 9:
                    import redis

                    redis.Redis.from_url(rs.url).flushdb()  # bounded memory: the jobs are never run
    result = {"blocks": blocks, "block": block, **{f"{kind}_us": median(v) for kind, v in per.items()}}
    for name, base in (("lines_and_counters", "ids"), ("all", "off")):
        costs = sorted(a / b - 1 for a, b in zip(per["on"], per[base]))
        middle = costs[len(costs) // 4: len(costs) - len(costs) // 4]
        result[name] = {"cost": median(costs), "middle_half": (middle[0], middle[-1])}
    return result


def table(r: dict) -> str:
    rows = ["| observability, in one process (CPU per callback) | on | baseline | cost (median of rounds) | middle half |",
            "|---|---|---|---|---|"]
    for name, base, what in (("lines_and_counters", "ids", "access line + counters (on vs ids)"),
                             ("all", "off", "request id + access line + counters (on vs off)")):
        low, high = r[name]["middle_half"]
        rows.append(f"| {what}, {r['blocks']} rounds of {r['block']} | {fmt(r['on_us'])} µs | {fmt(r[base + '_us'])} µs "
                    f"| {r[name]['cost'] * 100:+.1f}% | {low * 100:+.1f}% to {high * 100:+.1f}% |")
    return "\n".join(rows)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.observability")
    p.add_argument("--blocks", type=int, default=40)
    p.add_argument("--block", type=int, default=250)
    a = p.parse_args(argv)
    r = run(a.blocks, a.block)
    log(f"observability: on {r['on_us']:.1f} µs, ids {r['ids_us']:.1f} µs, off {r['off_us']:.1f} µs per callback")
    publish("observability", r, table(r))


if __name__ == "__main__":
    main()
