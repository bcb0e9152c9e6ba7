"""GET /metrics: the workers' counts relayed through Redis and added to the web's, and the
gauges read at scrape time from Redis and the database (real Redis, both databases)."""

from __future__ import annotations

import uuid

import pytest
import redis
import sqlalchemy as sa
from prometheus_client import Counter, Histogram
from prometheus_client.parser import text_string_to_metric_families
from rq.job import Job

from devstack.redis_server import EmbeddedRedis
from service.domain.recordings import CallbackEvent, Recording
from service.observability import metrics, scrape
from service.observability.relay import RELAY_KEY, MetricsRelay
from service.pipelines.ingest import JOB_FUNC
from service.pipelines.sweep import sweep
from service.store.sql import BACKLOG
from workers import recovery

PREFIX = metrics.PREFIX


@pytest.fixture
def services(app):
    return app.extensions["services"]


def samples(text: bytes | str) -> dict[tuple, float]:
    text = text.decode() if isinstance(text, bytes) else text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def read(services) -> dict[tuple, float]:
    return samples(scrape.render(services.queue, services.store))


def worker_families():
    """What a worker process counts: the same families, as another process holds them."""
    jobs = Counter("recording_keeper_jobs_total", "", ["result"], registry=None)
    duration = Histogram("recording_keeper_job_duration_seconds", "", buckets=metrics.JOB_BUCKETS, registry=None)
    return jobs, duration


def test_a_workers_counts_are_added_to_the_webs_once_each(services, redis_conn):
    jobs, duration = worker_families()
    relay = MetricsRelay([jobs, duration])
    stored = ("recording_keeper_jobs_total", (("result", "stored"),))
    count = ("recording_keeper_job_duration_seconds_count", ())
    fast = ("recording_keeper_job_duration_seconds_bucket", (("le", "0.025"),))
    faster = ("recording_keeper_job_duration_seconds_bucket", (("le", "0.01"),))
    before = read(services)
    metrics.JOBS.labels("stored").inc()  # this process's own count: the "web" side
    jobs.labels("stored").inc(3)
    duration.observe(0.02)
    duration.observe(0.02)
    assert relay.flush(redis_conn) > 0
    assert relay.flush(redis_conn) == 0  # nothing new: nothing sent
    after = read(services)
    assert after[stored] - before[stored] == 4
    assert after[count] - before.get(count, 0) == 2
    assert after[fast] - before.get(fast, 0) == 2 and after[faster] == before.get(faster, 0)
    jobs.labels("stored").inc()
    relay.flush(redis_conn)
    assert read(services)[stored] - after[stored] == 1


def test_counts_that_could_not_be_sent_go_with_the_next_flush(services, redis_conn):
    jobs, _ = worker_families()
    relay = MetricsRelay([jobs])
    jobs.labels("failed").inc(2)
    with pytest.raises(redis.RedisError):
        relay.flush(redis.Redis(port=1, socket_connect_timeout=0.2))
    relay.flush(redis_conn)
    assert read(services)[("recording_keeper_jobs_total", (("result", "failed"),))] >= 2
    assert float(redis_conn.hget(RELAY_KEY, '["recording_keeper_jobs_total",[["result","failed"]]]')) == 2


def test_gauges_are_read_at_scrape_time(services, store, sandbox, sw_client, redis_conn):
    queue, ingest = services.queue, None
    from service.pipelines.ingest import Ingest

    ingest = Ingest(queue, store, dedupe_ttl=60)
    for _ in range(2):
        assert ingest.enqueue(CallbackEvent(recording_sid=str(uuid.uuid4()), account_sid="a", status="completed"))
    failed = queue.create_job(JOB_FUNC, args=({},), job_id="dead-letter")
    queue.failed_job_registry.add(failed, ttl=3600, exc_string="boom")
    for name in ("worker-a", "worker-b", "worker-c"):
        recovery.beat(redis_conn, name, alive_ttl=30)
    redis_conn.delete(recovery.ALIVE_KEY.format("worker-c"))  # its beat stopped
    recovery.forget(redis_conn, "worker-b")  # a clean exit
    for _ in range(3):
        store.inbox_put({"recording_sid": "x"})
    for status in ("in-progress", "in-progress"):
        store.record_event(CallbackEvent(recording_sid=str(uuid.uuid4()), account_sid="a", status=status))
    done = str(uuid.uuid4())
    store.record_event(CallbackEvent(recording_sid=done, account_sid="a", status="completed"),
                       metadata=Recording(sid=done, status="completed"))
    assert (gauge := read(services))[(PREFIX + "queue_depth", ())] == 2
    assert gauge[(PREFIX + "failed_jobs", ())] == 1 and gauge[(PREFIX + "scheduled_jobs", ())] == 0
    assert gauge[(PREFIX + "workers_alive", ())] == 1
    assert gauge[(PREFIX + "inbox_rows", ())] == 3 and gauge[(PREFIX + "unfinished_recordings", ())] == 2
    assert (PREFIX + "last_sweep_timestamp_seconds", ()) not in gauge  # no sweep yet
    assert gauge[(PREFIX + "dependency_up", (("dependency", "redis"),))] == 1
    assert redis_conn.smembers("recording-keeper:workers") == {b"worker-a"}  # the dead one dropped

    report = sweep(store, sw_client, redis_conn, older_than_seconds=0)
    assert report.checked == 2
    after = read(services)
    assert after[(PREFIX + "last_sweep_timestamp_seconds", ())] > 0
    assert Job.fetch("dead-letter", connection=redis_conn, serializer=queue.serializer)


def test_a_scrape_without_redis_shows_what_it_can(env, store):
    from service import create_app
    from service.config import load_settings

    server = EmbeddedRedis().start()
    app = create_app(load_settings(dict(env, REDIS_URL=server.url, METRICS_TOKEN="metrics-token-0123456789")))
    try:
        server.stop()
        response = app.test_client().get("/metrics", headers={"Authorization": "Bearer metrics-token-0123456789"})
        assert response.status_code == 200
        got = samples(response.text)
        assert got[(PREFIX + "dependency_up", (("dependency", "redis"),))] == 0
        assert got[(PREFIX + "dependency_up", (("dependency", "database"),))] == 1
        assert (PREFIX + "queue_depth", ()) not in got and (PREFIX + "inbox_rows", ()) in got
        assert ("recording_keeper_callbacks_total", (("outcome", "queued"),)) in got
    finally:
        app.extensions["services"].close()
        server.stop()


def test_the_backlog_counts_read_indexes_not_the_recordings_table(store):
    """At a million recordings a scrape must not scan the table: the unfinished count can be
    answered from the partial index ix_recordings_unfinished alone."""
    sql = str(BACKLOG.compile(store.engine, compile_kwargs={"literal_binds": True}))
    with store.engine.connect() as conn:
        if store.engine.dialect.name == "postgresql":
            conn.exec_driver_sql("SET enable_seqscan = off")  # the index must be usable, whatever the size
            plan = "\n".join(row[0] for row in conn.exec_driver_sql(f"EXPLAIN {sql}"))
            # (An index-only scan once the table is vacuumed; bench.store_scale shows it at 1,000,000 rows.)
            assert "Index Scan on ix_recordings_unfinished" in plan or "using ix_recordings_unfinished" in plan, plan
            assert "Seq Scan on recordings" not in plan, plan
        else:
            plan = "\n".join(str(row[-1]) for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}"))
            assert "ix_recordings_unfinished" in plan, plan
            assert "SCAN recordings\n" not in plan + "\n", plan
    assert store.backlog() == (0, 0)
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(sa.table("recordings"))).scalar() == 0
