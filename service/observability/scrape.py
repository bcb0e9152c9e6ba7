"""What GET /metrics shows, gathered when it is asked, on a registry made for that scrape (in
multiprocess mode no collector may live on prometheus_client's default registry):

- the web's counts: every gunicorn worker process's, summed from the multiprocess files (or
  this process's own, when not under gunicorn);
- the workers' counts, relayed through Redis (service.observability.relay), added into the
  same families;
- gauges read now, in one Redis round trip and one database round trip: queue depth, jobs
  waiting for a retry, failed jobs, live workers, when the last sweep finished, inbox rows
  and unfinished recordings; and whether Redis and the database answered.

Nothing here scans a table: see Store.backlog().
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict

import redis
from prometheus_client import CollectorRegistry, generate_latest, values
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from rq import Queue

from service import liveness
from service.observability import metrics
from service.observability.relay import RELAY_KEY, RELAYED_TYPES, read_relayed
from service.pipelines.sweep import FINISHED_KEY

log = logging.getLogger(__name__)

_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}
_SAMPLE_ORDER = {"_bucket": 0, "_count": 1, "_sum": 2}


def render(queue: Queue, store) -> bytes:
    """The whole exposition, in Prometheus's text format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ScrapeCollector(queue, store))
    return generate_latest(registry)


class ScrapeCollector:
    def __init__(self, queue: Queue, store):
        self.queue = queue
        self.store = store

    def collect(self):
        state = self._redis()
        backlog = self._database()
        yield from counted(state["relayed"] if state else {})
        up = GaugeMetricFamily(metrics.PREFIX + "dependency_up", "1 when the dependency answered this scrape.",
                               labels=["dependency"])
        up.add_metric(["redis"], state is not None)
        up.add_metric(["database"], backlog is not None)
        yield up
        if state is not None:
            yield _gauge("queue_depth", "Callback jobs waiting in the queue.", state["queue_depth"])
            yield _gauge("scheduled_jobs", "Callback jobs waiting for their retry.", state["scheduled"])
            yield _gauge("failed_jobs", "Callback jobs that exhausted their retries (the dead letters).",
                         state["failed"])
            yield _gauge("workers_alive", "Worker processes alive (their liveness key is fresh).", state["alive"])
            if state["last_sweep"] is not None:
                yield _gauge("last_sweep_timestamp_seconds",
                             "When the last reconciliation sweep finished (Unix time).", state["last_sweep"])
        if backlog is not None:
            inbox, unfinished = backlog
            yield _gauge("inbox_rows", "Callbacks kept in the database while Redis was unavailable.", inbox)
            yield _gauge("unfinished_recordings",
                         "Recordings the sweep still has to fetch (not terminal, or no metadata for their status).",
                         unfinished)

    def _database(self) -> tuple[int, int] | None:
        return database_backlog(self.store)

    def _redis(self) -> dict | None:
        return redis_state(self.queue)


def database_backlog(store) -> tuple[int, int] | None:
    """(inbox rows, unfinished recordings), or None when the database did not answer."""
    try:
        return store.backlog()
    except Exception as exc:  # any driver's error: the gauges are left out, the scrape goes on
        log.warning("metrics: database unavailable (%s)", type(exc).__name__)
        return None


def redis_state(queue: Queue) -> dict | None:
    """Queue depth, jobs waiting for a retry, failed jobs, live workers, when the last sweep
    finished and the workers' relayed counts, in one round trip; None when Redis did not answer.
    (The dashboard's system page shows the same figures.)"""
    try:
        with queue.connection.pipeline(transaction=False) as pipe:
            pipe.llen(queue.key)
            pipe.zcard(queue.scheduled_job_registry.key)
            pipe.zcount(queue.failed_job_registry.key, time.time(), "+inf")  # scored by expiry
            liveness.count_alive(queue.connection, pipe)
            pipe.get(FINISHED_KEY)
            pipe.hgetall(RELAY_KEY)
            depth, scheduled, failed, alive, last_sweep, relayed = pipe.execute()
    except redis.RedisError as exc:
        log.warning("metrics: redis unavailable (%s)", type(exc).__name__)
        return None
    return {"queue_depth": depth, "scheduled": scheduled, "failed": failed, "alive": alive,
            "last_sweep": float(last_sweep) if last_sweep else None, "relayed": read_relayed(relayed)}


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(metrics.PREFIX + name, documentation, value=value)


def counted(relayed: dict) -> list[Metric]:
    """The counter and histogram families: the web's counts plus the relayed workers' ones."""
    families: dict[str, Metric] = {}
    family_of: dict[str, str] = {}  # sample name -> family name
    for family in metrics.FAMILIES:
        for described in family.describe():
            families[described.name] = Metric(described.name, described.documentation, described.type)
            for suffix in _SUFFIXES[described.type]:
                family_of[described.name + suffix] = described.name
    totals: dict[tuple, float] = defaultdict(float)
    for metric in _web_counts():
        families.setdefault(metric.name, Metric(metric.name, metric.documentation, metric.type))
        for sample in metric.samples:
            if not sample.name.endswith("_created"):
                totals[(metric.name, sample.name, tuple(sorted(sample.labels.items())))] += sample.value
    for (name, labels), value in relayed.items():
        if name in family_of:  # anything else was relayed by another release
            totals[(family_of[name], name, labels)] += value
    for (family, name, labels), value in sorted(totals.items(), key=_exposition_order):
        families[family].add_sample(name, dict(labels), value)
    return list(families.values())


def _web_counts() -> list[Metric]:
    if values.ValueClass._multiprocess:  # under gunicorn: every worker process's files
        return list(MultiProcessCollector(None).collect())
    return [metric for family in metrics.FAMILIES for metric in family.collect()
            if metric.type in RELAYED_TYPES]


def _exposition_order(item) -> tuple:
    # Per label set: buckets by bound (+Inf last), then _count and _sum.
    (family, name, labels), _ = item
    le = dict(labels).get("le")
    rest = tuple(pair for pair in labels if pair[0] != "le")
    return family, rest, _SAMPLE_ORDER.get(name[len(family):], 0), float(le) if le is not None else 0.0
