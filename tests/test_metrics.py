"""GET /metrics: the workers' counts relayed through Redis and added to the web's, and the
gauges read at scrape time from Redis and the database (real Redis, both databases)."""

from __future__ import annotations

import json
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
from service.observability.logs import configure_logging
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


def test_the_worker_counts_and_logs_each_callback_job_by_how_it_ended(worker_env, sandbox, sw_client, redis_conn,
                                                                       capsys):
    from rq import Retry

    from service.config import load_settings
    from service.pipelines.ingest import Ingest
    from service.services import queue_for
    from workers.__main__ import ObservedWorker

    queue = queue_for(load_settings(worker_env), redis_conn)
    ingest = Ingest(queue, None, dedupe_ttl=60)
    recording = sw_client.create_recording(str(uuid.uuid4()), status_callback="http://127.0.0.1:9/x")
    sandbox.end_call(recording.call_sid)
    live = CallbackEvent(recording_sid=recording.sid, account_sid=recording.account_sid, status="in-progress")
    assert ingest.enqueue(live, "req-live")
    unknown = CallbackEvent(recording_sid=str(uuid.uuid4()), account_sid=recording.account_sid, status="completed")
    retried = queue.enqueue(JOB_FUNC, unknown.to_payload(), retry=Retry(max=1, interval=[3600]))  # a 404: later
    queue.enqueue("tests.jobs_for_tests.quick")  # not a callback job: logged, not counted
    before = {result: metrics.JOBS.labels(result)._value.get() for result in metrics.JOB_RESULTS}
    durations = metrics.JOB_DURATION._sum.get(), sum(b.get() for b in metrics.JOB_DURATION._buckets)
    configure_logging("INFO")
    capsys.readouterr()
    ObservedWorker([queue], connection=redis_conn, serializer=queue.serializer).work(burst=True)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    counted = {result: metrics.JOBS.labels(result)._value.get() - before[result] for result in metrics.JOB_RESULTS}
    assert counted == {"stored": 1, "retried": 1, "failed": 0}
    assert sum(b.get() for b in metrics.JOB_DURATION._buckets) - durations[1] == 2
    last = {line["job_id"]: line for line in lines if line["logger"] == "workers" and "result" in line}
    assert sorted(line["result"] for line in last.values()) == ["retried", "stored", "succeeded"]
    stored = last[f"cb_{recording.sid}_in-progress"]
    assert stored["request_id"] == "req-live" and stored["recording_sid"] == recording.sid
    assert stored["status"] == "in-progress" and stored["event"] == f"job cb_{recording.sid}_in-progress stored"
    assert last[retried.id]["result"] == "retried" and last[retried.id]["recording_sid"] == unknown.recording_sid
    # Every line of the job, RQ's own included, carries the request id.
    of_job = [line for line in lines if line.get("job_id") == f"cb_{recording.sid}_in-progress"]
    assert {line["logger"] for line in of_job} >= {"rq.worker", "workers"}
    assert all(line["request_id"] == "req-live" for line in of_job)


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
