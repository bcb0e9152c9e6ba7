"""What a worker process counts reaches the web's GET /metrics through Redis.

Heroku cannot scrape a worker dyno, and the web dyno cannot read a worker's memory. So a
worker counts in memory, as prometheus_client does by default, and a housekeeping thread
sends what was counted since the last time (every second, and once more at a clean stop) as
HINCRBYFLOAT increments into one Redis hash: one transaction for all of it, off the job's
path, however many jobs ran. /metrics reads the hash (one HGETALL) and adds it to the web's
own counts. A worker killed outright loses at most its last second of counts.

The hash holds fleet-wide totals since Redis last lost its data; Prometheus reads a counter
that starts again from zero as a reset, as it does for a restarted process.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Iterable, Mapping

import redis

from service.observability import metrics

log = logging.getLogger(__name__)

RELAY_KEY = "recording-keeper:metrics:workers"
RELAYED_TYPES = ("counter", "histogram")  # sums are meaningful across processes; gauges are not

Sample = tuple[str, tuple[tuple[str, str], ...]]  # (sample name, sorted labels)


def _field(name: str, labels: Mapping[str, str]) -> str:
    return json.dumps([name, sorted(labels.items())], separators=(",", ":"))


class MetricsRelay:
    """One per process (`RELAY`): two would each send the process's counts."""

    def __init__(self, families: Iterable = metrics.FAMILIES):
        self.families = families
        self._sent: dict[str, float] = {}
        self._lock = threading.Lock()

    def pending(self) -> dict[str, float]:
        """Increments counted since the last successful flush, by hash field."""
        deltas = {}
        for family in self.families:
            for metric in family.collect():
                if metric.type not in RELAYED_TYPES:
                    continue
                for sample in metric.samples:
                    if sample.name.endswith("_created"):
                        continue
                    field = _field(sample.name, sample.labels)
                    delta = sample.value - self._sent.get(field, 0.0)
                    if delta:
                        deltas[field] = delta
        return deltas

    def flush(self, connection: redis.Redis) -> int:
        """Sends the pending increments (all or none: a failure leaves them for the next
        flush). Returns how many fields changed."""
        with self._lock:
            deltas = self.pending()
            if not deltas:
                return 0
            with connection.pipeline(transaction=True) as pipe:
                for field, delta in deltas.items():
                    pipe.hincrbyfloat(RELAY_KEY, field, delta)
                pipe.execute()
            for field, delta in deltas.items():
                self._sent[field] = self._sent.get(field, 0.0) + delta
            return len(deltas)


RELAY = MetricsRelay()


def read_relayed(raw: Mapping[bytes | str, bytes | str]) -> dict[Sample, float]:
    """The hash as HGETALL returns it -> {(sample name, labels): value}; unreadable fields are
    skipped (written by another release, say)."""
    out: dict[Sample, float] = {}
    for field, value in raw.items():
        try:
            name, labels = json.loads(field)
            out[(str(name), tuple((str(k), str(v)) for k, v in labels))] = float(value)
        except (ValueError, TypeError):
            log.warning("unreadable relayed metric field %r", field[:100])
    return out
