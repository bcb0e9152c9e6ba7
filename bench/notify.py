"""Notifications: latency from the state change to the receiver's 2xx, on the real stack.

The e2e harness (gunicorn + RQ workers + a sandbox process) with one notification endpoint: a
receiver on loopback (devstack.webhook_receiver) that verifies every request with the
`standardwebhooks` package. A paced sender posts RATE signed `completed` callbacks/s for
DURATION s; each one's worker stores the metadata and, in the same transaction, the
`recording.completed` delivery, whose body's `timestamp` is that moment. Latency is the
receiver's answer time minus that timestamp (and, for reference, minus the callback's send
time). The outbox's pending deliveries are counted each second: no backlog means that count
stays flat.

python -m bench.notify [--db sqlite|postgresql|both] [--rate 100] [--duration 60] [--workers 2]
"""

from __future__ import annotations

import argparse
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import requests
import sqlalchemy as sa

from bench.common import SERVICE_TOKEN, fmt, log, pct, publish, reachable, workdir
from bench.e2e import Harness
from devstack.webhook_receiver import WebhookReceiver
from service.store.notifications import D


def pending(h: Harness) -> int:
    with h.store.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).where(D.c.status == "pending")).scalar_one()


def run(db_kind: str = "sqlite", rate: float = 100, duration: float = 60, workers: int = 2) -> dict:
    total = int(rate * duration)
    receiver = WebhookReceiver().start()
    try:
        with workdir() as tmp, Harness(tmp, db_kind, total, workers, NOTIFY_ALLOW_PRIVATE="true") as h:
            created = requests.post(f"{h.base}/api/endpoints", json={"url": receiver.url}, timeout=10,
                                    headers={"Authorization": f"Bearer {SERVICE_TOKEN}"})
            created.raise_for_status()
            receiver.secrets.append(created.json()["secret"])
            sent: dict[str, float] = {}
            codes: dict = {}
            backlog: list[tuple[float, int]] = []
            stop = threading.Event()

            def sampler():
                t0 = time.monotonic()
                while not stop.wait(1.0) and time.monotonic() - t0 < duration + 120:
                    backlog.append((round(time.monotonic() - t0, 1), pending(h)))

            th = threading.Thread(target=sampler, daemon=True)
            log(f"notify {db_kind}: {rate}/s for {duration} s, {workers} worker(s)")
            th.start()
            cpu0 = h.cpu()
            start = time.monotonic()
            with ThreadPoolExecutor(16) as pool:
                for i in range(total):
                    delay = start + i / rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    pool.submit(h.send, i, sent, codes)
            send_elapsed = time.monotonic() - start
            accepted = sum(v for k, v in codes.items() if k == 204)
            receiver.wait_for(lambda r: len({d.webhook_id for d in r if d.status < 300}) >= accepted, timeout=120)
            stop.set()
            th.join(5)
            cpu1 = h.cpu()
    finally:
        receiver.stop()
    first_answer: dict[str, object] = {}
    for d in receiver.received:
        if 200 <= d.status < 300 and d.webhook_id not in first_answer:
            first_answer[d.webhook_id] = d
    from_change = [(d.at - datetime.fromisoformat(d.payload["timestamp"]).timestamp()) * 1000
                   for d in first_answer.values()]
    from_send = [(d.at - sent[d.payload["data"]["recording_sid"]]) * 1000 for d in first_answer.values()
                 if d.payload["data"]["recording_sid"] in sent]
    n = len(backlog)
    during = [b for t, b in backlog if t <= duration]
    first = during[: max(1, len(during) // 4)]
    last = during[-max(1, len(during) // 4):]
    res = {
        "db": db_kind, "rate": rate, "duration_s": duration, "workers": workers, "sent": len(sent),
        "achieved_rate": len(sent) / send_elapsed, "status_codes": {str(k): v for k, v in codes.items()},
        "delivered": len(first_answer), "unverified": sum(d.verified_with is None for d in receiver.received),
        "requests": len(receiver.received),
        "p50_ms": pct(from_change, 50), "p90_ms": pct(from_change, 90), "p99_ms": pct(from_change, 99),
        "max_ms": max(from_change) if from_change else None,
        "from_callback_p50_ms": pct(from_send, 50), "from_callback_p99_ms": pct(from_send, 99),
        "backlog_max": max((b for _, b in backlog), default=0),
        "backlog_first_quarter_mean": sum(first) / len(first) if first else 0,
        "backlog_last_quarter_mean": sum(last) / len(last) if last else 0,
        "backlog_series": backlog, "samples": n,
        "cpu_ms_per_event": {k: round(1000 * (cpu1[k] - cpu0.get(k, 0)) / total, 2) for k in cpu1},
    }
    log(f"notify {db_kind}: p50 {fmt(res['p50_ms'])} ms p99 {fmt(res['p99_ms'])} ms (from the callback: p50 "
        f"{fmt(res['from_callback_p50_ms'])} p99 {fmt(res['from_callback_p99_ms'])}), delivered "
        f"{res['delivered']}/{accepted}, backlog max {res['backlog_max']}; CPU ms/event {res['cpu_ms_per_event']}")
    return res


def table(results: list[dict]) -> str:
    rows = ["| db | workers | rate/s (achieved) | delivered/sent | p50 ms | p90 ms | p99 ms | max ms | from the callback p50 / p99 ms | pending max (first/last quarter mean) |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        rows.append(f"| {r['db']} | {r['workers']} | {r['rate']:.0f} ({r['achieved_rate']:.1f}) | {r['delivered']}/{r['sent']} | "
                    f"{fmt(r['p50_ms'])} | {fmt(r['p90_ms'])} | {fmt(r['p99_ms'])} | {fmt(r['max_ms'])} | "
                    f"{fmt(r['from_callback_p50_ms'])} / {fmt(r['from_callback_p99_ms'])} | "
                    f"{r['backlog_max']} ({r['backlog_first_quarter_mean']:.1f}/{r['backlog_last_quarter_mean']:.1f}) |")
    return "### Notifications (metadata stored -> receiver's 2xx)\n\n" + "\n".join(rows)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.notify")
    p.add_argument("--db", default="sqlite", help="sqlite, postgresql or both")
    p.add_argument("--rate", type=float, default=100)
    p.add_argument("--duration", type=float, default=60)
    p.add_argument("--workers", type=int, default=2)
    a = p.parse_args(argv)
    kinds = reachable(["sqlite", "postgresql"] if a.db == "both" else [a.db])
    res = [run(k, a.rate, a.duration, a.workers) for k in kinds]
    publish("notify", res, table(res))


if __name__ == "__main__":
    main()
