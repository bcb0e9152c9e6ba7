"""Store at scale: Store.list (common filters, a deep cursor page) and Store.get (with history)
on ROWS generated recordings (+ about two events each), bulk-inserted with SQL, in PostgreSQL
and SQLite. Baseline in the same run: a primary-key probe `SELECT 1 FROM recordings WHERE sid=?`.
Also a whole GET /metrics exposition (service.observability.scrape.render, with an embedded
Redis) and its database part alone (Store.backlog), whose plans are recorded.

python -m bench.store_scale [--rows 1000000] [--db sqlite,postgresql] [--samples 200] [--passes 3]
"""

from __future__ import annotations

import argparse
import random
import time
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import sqlalchemy as sa

from bench.common import EmbeddedRedis, database, fmt, log, median, pct, publish, reachable, workdir
from service.observability import scrape
from service.services import queue_for, redis_connection
from service.store.sql import BACKLOG, Store, encode_cursor

BASE = datetime(2026, 1, 1, tzinfo=timezone.utc)
SPAN_S = 30 * 86400  # created_at spread over 30 days
# 90% completed, 5% absent, 3% in-progress, 2% failed.
STATUS_SQL = ("CASE WHEN g % 100 < 90 THEN 'completed' WHEN g % 100 < 95 THEN 'absent' "
              "WHEN g % 100 < 98 THEN 'in-progress' ELSE 'failed' END")
RANK_SQL = "CASE WHEN g % 100 >= 95 AND g % 100 < 98 THEN 1 ELSE 3 END"
COLUMNS = ("sid, account_sid, call_sid, api_version, channels, date_created, date_updated, start_time, end_time, "
           "duration, price, price_unit, source, status, status_rank, uri, trim, started_by_us, created_at, "
           "first_seen_at, last_fetched_at, updated_at, attempts")


def sid_of(g: int) -> str:
    return "RE%032x" % ((g * 2654435761) % 4294967296)


def call_of(g: int) -> str:
    return "CA%032d" % (g // 4)


def created_of(g: int, rows: int) -> datetime:
    return BASE + timedelta(seconds=((g * 7919) % rows) * SPAN_S // rows)


def fill(engine: sa.Engine, kind: str, rows: int) -> float:
    t0 = time.monotonic()
    if kind == "postgresql":
        t = (f"(timestamptz '2026-01-01 00:00:00+00' + make_interval(secs => ((g::bigint * 7919) % {rows}) * {SPAN_S} / {rows}))")
        select = f"""
            SELECT 'RE' || lpad(to_hex((g::bigint * 2654435761) % 4294967296), 32, '0'), 'PA', 'CA' || lpad((g / 4)::text, 32, '0'),
                   '2010-04-01', 1, t, t, t, t + interval '30 s', 30, '-0.0025', 'USD', 'RecordVerb', st, rk,
                   '/Recordings/' || g, 'do-not-trim', false, t, t, t + interval '31 s', t + interval '31 s', 1
            FROM (SELECT g, {t} AS t, {STATUS_SQL} AS st, {RANK_SQL} AS rk FROM generate_series(0, {rows - 1}) g) s"""
        ev_ip = "'{\"RecordingStatus\": \"in-progress\"}'::jsonb"
        ev_final = "jsonb_build_object('RecordingStatus', status)"
        later = "created_at + interval '31 s'"
    else:
        t = (f"printf('%s.000000', datetime('2026-01-01 00:00:00', '+' || (((g * 7919) % {rows}) * {SPAN_S} / {rows}) || ' seconds'))")
        te = lambda s: f"printf('%s.000000', datetime(t, '+{s} seconds'))"  # noqa: E731
        select = f"""
            WITH RECURSIVE c(g) AS (SELECT 0 UNION ALL SELECT g + 1 FROM c WHERE g < {rows - 1})
            SELECT printf('RE%032x', (g * 2654435761) % 4294967296), 'PA', printf('CA%032d', g / 4),
                   '2010-04-01', 1, t, t, t, {te(30)}, 30, '-0.0025', 'USD', 'RecordVerb', st, rk,
                   '/Recordings/' || g, 'do-not-trim', 0, t, t, {te(31)}, {te(31)}, 1
            FROM (SELECT g, {t} AS t, {STATUS_SQL} AS st, {RANK_SQL} AS rk FROM c) s"""
        ev_ip = "'{\"RecordingStatus\": \"in-progress\"}'"
        ev_final = "json_object('RecordingStatus', status)"
        later = "printf('%s.000000', datetime(created_at, '+31 seconds'))"
    statements = [
        f"INSERT INTO recordings ({COLUMNS}) {select}",
        f"INSERT INTO recording_events (recording_sid, status, params, received_at) "
        f"SELECT sid, 'in-progress', {ev_ip}, created_at FROM recordings",
        f"INSERT INTO recording_events (recording_sid, status, params, received_at) "
        f"SELECT sid, status, {ev_final}, {later} FROM recordings WHERE status <> 'in-progress'",
    ]
    with engine.begin() as conn:
        for sql in statements:
            # psycopg reads '%' as a placeholder even without parameters.
            conn.exec_driver_sql(sql.replace("%", "%%") if kind == "postgresql" else sql)
    with engine.connect() as conn:
        if kind == "postgresql":
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            conn.exec_driver_sql("VACUUM ANALYZE recordings")
            conn.exec_driver_sql("VACUUM ANALYZE recording_events")
        else:
            conn.exec_driver_sql("ANALYZE")
            conn.commit()
    return time.monotonic() - t0


def measure(store: Store, rows: int, samples: int, passes: int, rng: random.Random, queue) -> dict:
    probe = sa.text("SELECT 1 FROM recordings WHERE sid = :sid")

    def pk():
        with store.engine.connect() as conn:
            conn.execute(probe, {"sid": sid_of(rng.randrange(rows))}).first()

    def window():
        start = BASE + timedelta(seconds=rng.randrange(SPAN_S - 3600))
        return {"created_after": start, "created_before": start + timedelta(hours=1)}

    def deep_cursor():
        g = rng.randrange(rows // 4, 3 * rows // 4)
        return encode_cursor(created_of(g, rows), sid_of(g))

    cases = {
        "pk probe (baseline)": pk,
        "get(sid) + history": lambda: store.get(sid_of(rng.randrange(rows))),
        "list() first page": lambda: store.list(),
        "list(call_sid)": lambda: store.list(call_sid=call_of(rng.randrange(rows))),
        "list(status=completed)": lambda: store.list(status="completed"),
        "list(status=failed)": lambda: store.list(status="failed"),
        "list(1 h window)": lambda: store.list(**window()),
        "list(status, 1 h window)": lambda: store.list(status="completed", **window()),
        "list(deep cursor)": lambda: store.list(cursor=deep_cursor()),
        "list(status, deep cursor)": lambda: store.list(status="completed", cursor=deep_cursor()),
        "metrics: backlog counts (database)": store.backlog,
        "metrics: whole scrape (Redis + database)": lambda: scrape.render(queue, store),
    }
    for fn in cases.values():  # warm the pool, caches and statement cache
        for _ in range(5):
            fn()
    per_pass: dict[str, list[dict]] = {name: [] for name in cases}
    for _ in range(passes):
        for name, fn in cases.items():
            lat = []
            for _ in range(samples):
                t0 = time.perf_counter()
                fn()
                lat.append((time.perf_counter() - t0) * 1000)
            per_pass[name].append({"p50": pct(lat, 50), "p99": pct(lat, 99)})
    base = per_pass["pk probe (baseline)"]
    out = {}
    for name, runs in per_pass.items():
        out[name] = {
            "p50_ms": median(r["p50"] for r in runs),
            "p99_ms": median(r["p99"] for r in runs),
            "p99_ratio": median(r["p99"] / b["p99"] for r, b in zip(runs, base)),
        }
    return out


def explain(store: Store, kind: str, rows: int) -> dict:
    """Query plans of the list queries, for the record."""
    plans = {}
    queries = {
        "status": "SELECT sid FROM recordings WHERE status = 'completed' ORDER BY created_at DESC, sid DESC LIMIT 101",
        "call_sid": f"SELECT sid FROM recordings WHERE call_sid = '{call_of(rows // 2)}' ORDER BY created_at DESC, sid DESC LIMIT 101",
        "metrics backlog": str(BACKLOG.compile(store.engine, compile_kwargs={"literal_binds": True})),
    }
    prefix = "EXPLAIN QUERY PLAN " if kind == "sqlite" else "EXPLAIN (ANALYZE, BUFFERS) "
    with store.engine.connect() as conn:
        for name, q in queries.items():
            plans[name] = [" ".join(str(c) for c in row) for row in conn.exec_driver_sql(prefix + q)]
    return plans


def run(kind: str, rows: int, samples: int, passes: int) -> dict:
    with workdir() as tmp, database(kind, tmp) as url, EmbeddedRedis() as redis_server:
        queue = queue_for(SimpleNamespace(queue_name="recordings"), redis_connection(redis_server.url))
        store = Store(url)
        try:
            log(f"store {kind}: inserting {rows} recordings + events")
            secs = fill(store.engine, kind, rows)
            with store.engine.connect() as conn:
                n = conn.exec_driver_sql("SELECT count(*) FROM recordings").scalar()
                ne = conn.exec_driver_sql("SELECT count(*) FROM recording_events").scalar()
            log(f"store {kind}: {n} recordings, {ne} events in {secs:.0f} s; measuring")
            res = {"db": kind, "rows": n, "events": ne, "fill_seconds": secs,
                   "cases": measure(store, rows, samples, passes, random.Random(7), queue),
                   "unfinished": store.backlog()[1], "plans": explain(store, kind, rows)}
            for line in res["plans"]["metrics backlog"]:
                log(f"  backlog plan: {line}")
        finally:
            store.dispose()
    return res


def table(results: list[dict]) -> str:
    rows = ["| db | rows | query | p50 ms | p99 ms | p99 / pk probe | target |", "|---|---|---|---|---|---|---|"]
    for r in results:
        for name, c in r["cases"].items():
            if name.startswith("pk"):
                target = "baseline"
            elif name.startswith("metrics"):
                target = f"{r['unfinished']:,} unfinished"
            else:
                limit = 10 if name.startswith("get") else 20
                target = f"≤{limit} ms {'met' if c['p99_ms'] <= limit else 'MISSED'}"
            rows.append(f"| {r['db']} | {r['rows']:,} | {name} | {fmt(c['p50_ms'], 2)} | {fmt(c['p99_ms'], 2)} | "
                        f"{fmt(c['p99_ratio'], 1)}x | {target} |")
    return "### Store at scale (medians of per-pass p50/p99)\n\n" + "\n".join(rows)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.store_scale")
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--db", default="sqlite,postgresql")
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--passes", type=int, default=3)
    a = p.parse_args(argv)
    kinds = a.db.split(",")
    kinds = reachable(kinds)
    res = [run(k, a.rows, a.samples, a.passes) for k in kinds]
    publish("store", res, table(res))


if __name__ == "__main__":
    main()
