"""The dashboard's pages against the JSON API answering the same query, on N recordings
(+ about two events each, seeded as bench.store_scale seeds them), in SQLite and PostgreSQL.

Each pair is timed in the same run, request by request in alternation (page, API, page, API,
...), so the machine's noise falls on both: the recordings page (50 a page) and
GET /api/recordings?limit=50 with the same filter, and a recording's page and
GET /api/recordings/{sid}. Server time: the whole WSGI request in-process (Flask's test client:
routing, session check, store, RQ lookup, rendering), without a socket; both sides are signed
in their own way (a dashboard session, a bearer token). Reported: p50 and p99 of each, and
page/API ratios of the per-pass p50 and p99 (medians over passes).

python -m bench.dashboard [--recordings 1000000] [--db sqlite,postgresql] [--samples 200] [--passes 3]
"""

from __future__ import annotations

import argparse
import random
import re
import time
from datetime import timedelta

from bench.common import EmbeddedRedis, database, fmt, log, median, pct, publish, reachable, workdir
from bench.store_scale import BASE, SPAN_S, call_of, created_of, fill, sid_of
from service.store.sql import encode_cursor

TOKEN = "bench-api-token-0123456789abcdef"
SECRET_KEY = "bench-dashboard-secret-key-0123456789abcdef"
PAGE = 50


def app_for(url: str, redis_url: str):
    from service import create_app
    from service.config import load_settings

    settings = load_settings({
        "SIGNALWIRE_SPACE": "http://127.0.0.1:9", "SIGNALWIRE_PROJECT_ID": "PA", "SIGNALWIRE_API_TOKEN": "unused",
        "ALLOW_UNSIGNED_WEBHOOKS": "true", "PUBLIC_BASE_URL": "http://127.0.0.1:5000", "SERVICE_API_TOKEN": TOKEN,
        "REDIS_URL": redis_url, "DATABASE_URL": url, "SECRET_KEY": SECRET_KEY,
        # Neither side logs per request at WARNING: the access lines would cost both the same anyway.
        "LOG_LEVEL": "WARNING",
    })
    return create_app(settings)


def signed_in_client(app):
    client = app.test_client()
    page = client.get("/dashboard/login")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    response = client.post("/dashboard/login", data={"token": TOKEN, "csrf_token": csrf})
    assert response.status_code == 302, response.status_code
    return client


def cases(rows: int, rng: random.Random) -> dict:
    """Each case: a function giving (dashboard path, API path) for one sample."""

    def day():
        start = BASE + timedelta(days=rng.randrange(SPAN_S // 86400))
        end = start + timedelta(days=1)
        return (f"/dashboard/recordings?from={start:%Y-%m-%d}&to={start:%Y-%m-%d}",
                f"/api/recordings?limit={PAGE}&created_after={start:%Y-%m-%dT%H:%M:%S}%2B00:00"
                f"&created_before={end:%Y-%m-%dT%H:%M:%S}%2B00:00")

    def deep():
        g = rng.randrange(rows // 4, 3 * rows // 4)
        cursor = encode_cursor(created_of(g, rows), sid_of(g))
        return f"/dashboard/recordings?cursor={cursor}", f"/api/recordings?limit={PAGE}&cursor={cursor}"

    def call():
        c = call_of(rng.randrange(rows))
        return f"/dashboard/recordings?call_sid={c}", f"/api/recordings?limit={PAGE}&call_sid={c}"

    def detail():
        sid = sid_of(rng.randrange(rows))
        return f"/dashboard/recordings/{sid}", f"/api/recordings/{sid}"

    return {
        "recordings, first page": lambda: ("/dashboard/recordings", f"/api/recordings?limit={PAGE}"),
        "recordings, status=completed": lambda: ("/dashboard/recordings?status=completed",
                                                 f"/api/recordings?limit={PAGE}&status=completed"),
        "recordings, status=failed": lambda: ("/dashboard/recordings?status=failed",
                                              f"/api/recordings?limit={PAGE}&status=failed"),
        "recordings, call_sid": call,
        "recordings, one day": day,
        "recordings, deep cursor": deep,
        "recording detail": detail,
    }


def measure(app, rows: int, samples: int, passes: int) -> dict:
    page_client = signed_in_client(app)
    api_client = app.test_client()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    rng = random.Random(11)
    chosen = cases(rows, rng)

    def timed(client, path, headers=None) -> float:
        t0 = time.perf_counter()
        response = client.get(path, headers=headers)
        elapsed = (time.perf_counter() - t0) * 1000
        assert response.status_code == 200, (path, response.status_code, response.text[:300])
        return elapsed

    for make in chosen.values():  # warm the pool, the template cache and the statement cache
        for _ in range(5):
            page, api = make()
            timed(page_client, page)
            timed(api_client, api, auth)
    per_pass: dict[str, list[dict]] = {name: [] for name in chosen}
    for _ in range(passes):
        for name, make in chosen.items():
            pages, apis = [], []
            for i in range(samples):
                page, api = make()
                if i % 2:  # alternate which goes first
                    apis.append(timed(api_client, api, auth))
                    pages.append(timed(page_client, page))
                else:
                    pages.append(timed(page_client, page))
                    apis.append(timed(api_client, api, auth))
            per_pass[name].append({"page_p50": pct(pages, 50), "page_p99": pct(pages, 99),
                                   "api_p50": pct(apis, 50), "api_p99": pct(apis, 99)})
    out = {}
    for name, runs in per_pass.items():
        out[name] = {
            "page_p50_ms": median(r["page_p50"] for r in runs), "page_p99_ms": median(r["page_p99"] for r in runs),
            "api_p50_ms": median(r["api_p50"] for r in runs), "api_p99_ms": median(r["api_p99"] for r in runs),
            "p50_ratio": median(r["page_p50"] / r["api_p50"] for r in runs),
            "p99_ratio": median(r["page_p99"] / r["api_p99"] for r in runs),
        }
    return out


def run(kind: str, rows: int, samples: int, passes: int) -> dict:
    from service.store.sql import Store

    with workdir() as tmp, database(kind, tmp) as url, EmbeddedRedis() as redis_server:
        store = Store(url)
        try:
            log(f"dashboard {kind}: inserting {rows} recordings + events")
            secs = fill(store.engine, kind, rows)
        finally:
            store.dispose()
        log(f"dashboard {kind}: filled in {secs:.0f} s; measuring")
        app = app_for(url, redis_server.url)
        try:
            res = {"db": kind, "rows": rows, "fill_seconds": secs, "samples": samples, "passes": passes,
                   "cases": measure(app, rows, samples, passes)}
        finally:
            app.extensions["services"].close()
    return res


def table(results: list[dict]) -> str:
    rows = ["| db | recordings | case | page p50 / p99 ms | JSON API p50 / p99 ms | page/API p50 | page/API p99 |",
            "|---|---|---|---|---|---|---|"]
    for r in results:
        for name, c in r["cases"].items():
            rows.append(f"| {r['db']} | {r['rows']:,} | {name} | {fmt(c['page_p50_ms'], 2)} / {fmt(c['page_p99_ms'], 2)} | "
                        f"{fmt(c['api_p50_ms'], 2)} / {fmt(c['api_p99_ms'], 2)} | {fmt(c['p50_ratio'], 2)}x | "
                        f"{fmt(c['p99_ratio'], 2)}x |")
    return "### Dashboard pages vs the JSON API, same query (medians of per-pass p50/p99)\n\n" + "\n".join(rows)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.dashboard")
    p.add_argument("--recordings", type=int, default=1_000_000)
    p.add_argument("--db", default="sqlite,postgresql")
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--passes", type=int, default=3)
    a = p.parse_args(argv)
    kinds = reachable(a.db.split(","))
    res = [run(k, a.recordings, a.samples, a.passes) for k in kinds]
    publish("dashboard", res, table(res))


if __name__ == "__main__":
    main()
