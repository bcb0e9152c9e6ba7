"""The service's Prometheus metric families, and the API to count with.

Count with the objects below, from any process: `metrics.JOBS.labels(result="stored").inc()`,
`metrics.JOB_DURATION.observe(seconds)`. Where the counts go depends on the process, not on
the caller:
- a web process (gunicorn, several worker processes) counts into prometheus_client's
  multiprocess files, which GET /metrics sums (PROMETHEUS_MULTIPROC_DIR is set by
  service/gunicorn_conf.py before anything imports prometheus_client);
- any other process (the RQ workers, the CLI) counts in memory, and its counters and
  histograms are relayed to Redis (service.observability.relay), because a worker dyno cannot
  be scraped; GET /metrics adds them in.

A new family: define it here with `counter()` or `histogram()`, named `recording_keeper_...`;
it then reaches /metrics from web and workers alike. Gauges are read at scrape time instead
(service.observability.scrape), never counted here.
"""

from __future__ import annotations

from typing import Iterable

from prometheus_client import Counter, Histogram

PREFIX = "recording_keeper_"
# Every family counted here; /metrics and the relay read them from this list (not from
# prometheus_client's default registry, which multiprocess mode must not carry collectors).
FAMILIES: list[Counter | Histogram] = []

HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
JOB_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

# A callback's outcome: handed off (queued, duplicate, inbox), not taken (unavailable: the
# sender retries), or refused, one outcome per reason.
ACCEPTED_OUTCOMES = ("queued", "duplicate", "inbox")
REFUSAL_REASONS = ("signature_missing", "signature_mismatch", "body_unsigned", "account_mismatch",
                   "invalid_parameters", "body_too_large")
CALLBACK_OUTCOMES = (*ACCEPTED_OUTCOMES, "unavailable", *REFUSAL_REASONS)
JOB_RESULTS = ("stored", "retried", "failed")
MEDIA_RESULTS = ("archived", "retried", "failed")
DELIVERY_RESULTS = ("delivered", "retried", "failed")


def counter(name: str, documentation: str, labelnames: Iterable[str] = (),
            initial: Iterable[dict] = ()) -> Counter:
    """A counter family; `initial` label sets are shown at 0 before anything is counted."""
    assert name.startswith(PREFIX) and name.endswith("_total"), name
    family = Counter(name, documentation, labelnames, registry=None)
    for labels in initial:
        family.labels(**labels)
    FAMILIES.append(family)
    return family


def histogram(name: str, documentation: str, labelnames: Iterable[str] = (),
              buckets: tuple[float, ...] = HTTP_BUCKETS) -> Histogram:
    assert name.startswith(PREFIX), name
    family = Histogram(name, documentation, labelnames, buckets=buckets, registry=None)
    FAMILIES.append(family)
    return family


CALLBACKS = counter(
    "recording_keeper_callbacks_total", "Recording status callbacks received, by outcome.", ["outcome"],
    initial=[{"outcome": outcome} for outcome in CALLBACK_OUTCOMES],
)
HTTP_DURATION = histogram(
    "recording_keeper_http_request_duration_seconds", "Time to answer an HTTP request.",
    ["route", "method", "status"],
)
SIGNALWIRE_REQUESTS = counter(
    "recording_keeper_signalwire_requests_total",
    "Requests to SignalWire's REST API, by operation (create, fetch, list, media, delete) and HTTP status "
    "(or error: no answer).",
    ["operation", "status"],
)
JOBS = counter(
    "recording_keeper_jobs_total", "Callback jobs run by the workers, by result (stored, retried, failed).",
    ["result"], initial=[{"result": result} for result in JOB_RESULTS],
)
JOB_DURATION = histogram(
    "recording_keeper_job_duration_seconds", "Time a worker took to run a callback job.", buckets=JOB_BUCKETS,
)
MEDIA_JOBS = counter(
    "recording_keeper_media_jobs_total",
    "Archive jobs (a recording's audio copied to the media storage) run by the workers, by result "
    "(archived, retried, failed).",
    ["result"], initial=[{"result": result} for result in MEDIA_RESULTS],
)
DELIVERIES = counter(
    "recording_keeper_notification_deliveries_total",
    "Attempts to deliver a notification to an endpoint, by result (delivered; retried: to be attempted again; "
    "failed: no attempt left, or the endpoint disabled).",
    ["result"], initial=[{"result": result} for result in DELIVERY_RESULTS],
)
