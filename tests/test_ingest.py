"""The webhook's hand-off to RQ: one script for dedupe + enqueue, with a job hash RQ built,
and the group commit that lets concurrent requests share a round trip."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest
import redis
from rq.job import Job

from service.pipelines.ingest import INBOX_TRIES, JOB_FUNC, RETRY_INTERVALS, GroupCommit, Ingest, job_id_for
from service.domain.recordings import CallbackEvent
from service.services import queue_for

SETTINGS = SimpleNamespace(queue_name="recordings")


def test_template_is_rewritten_when_redis_lost_it(redis_conn):
    queue = queue_for(SETTINGS, redis_conn)
    ingest = Ingest(queue, store=None, dedupe_ttl=60)
    assert ingest.enqueue(CallbackEvent(recording_sid="r1", account_sid="a", status="completed"))
    redis_conn.flushdb()  # a Redis that restarted empty
    event = CallbackEvent(recording_sid="r2", account_sid="a", status="completed")
    assert ingest.enqueue(event)
    job = Job.fetch(job_id_for(event), connection=redis_conn, serializer=queue.serializer)
    assert job.func_name == JOB_FUNC and job.origin == queue.name


def test_a_changed_template_is_written_afresh_not_read_from_redis(redis_conn, monkeypatch):
    """A deploy that changes the jobs' shared fields (here the retry count) must not enqueue
    with the template an older release left in Redis."""
    queue = queue_for(SETTINGS, redis_conn)
    old = CallbackEvent(recording_sid="r1", account_sid="a", status="completed")
    assert Ingest(queue, store=None, dedupe_ttl=60).enqueue(old)
    monkeypatch.setattr("service.pipelines.ingest.RETRY_INTERVALS", (1, 2))
    new = CallbackEvent(recording_sid="r2", account_sid="a", status="completed")
    assert Ingest(queue, store=None, dedupe_ttl=60).enqueue(new)
    fetch = lambda event: Job.fetch(job_id_for(event), connection=redis_conn, serializer=queue.serializer)  # noqa: E731
    assert fetch(old).retries_left == len(RETRY_INTERVALS)
    assert fetch(new).retries_left == 2 and len(fetch(new).retry_intervals) == 2


def test_jobs_do_not_share_one_retry_schedule(redis_conn):
    # A burst of failures (a rate limit) must not come back as one burst.
    queue = queue_for(SETTINGS, redis_conn)
    events = [CallbackEvent(recording_sid=f"r{i}", account_sid="a", status="completed") for i in range(20)]
    Ingest(queue, store=None, dedupe_ttl=60).enqueue_many([(event, None) for event in events])
    schedules = {redis_conn.hget(Job.key_for(job_id_for(event)), "retry_intervals") for event in events}
    assert len(schedules) > 10


def test_jobs_keep_retrying_through_an_outage_of_hours():
    # The dead letters need an operator; an outage of the database or of SignalWire shorter
    # than this must end with every accepted callback stored by its own retries.
    assert sum(RETRY_INTERVALS) >= 6 * 3600
    assert max(RETRY_INTERVALS) <= 3600  # and once it is over, stored within the hour


def test_duplicate_enqueue(redis_conn):
    queue = queue_for(SETTINGS, redis_conn)
    ingest = Ingest(queue, store=None, dedupe_ttl=60)
    event = CallbackEvent(recording_sid="r1", account_sid="a", status="in-progress")
    assert ingest.enqueue(event) is True
    assert ingest.enqueue(event) is False  # dedupe key
    redis_conn.delete(f"dedupe:{event.dedupe_key}")
    assert ingest.enqueue(event) is False  # the job itself still exists
    assert queue.count == 1


def test_distinct_callbacks_never_share_a_job(redis_conn):
    """Callbacks that differ only where RQ's id alphabet cannot follow (or in where the sid
    ends and the status begins) are each queued: a shared job id would drop the second."""
    queue = queue_for(SETTINGS, redis_conn)
    ingest = Ingest(queue, store=None, dedupe_ttl=60)
    events = [CallbackEvent(recording_sid=sid, account_sid="a", status=status)
              for sid, status in (("r1", "a b"), ("r1", "a_b"), ("r1", "a.b"), ("r1_a", "b"), ("r1", "completed"))]
    assert ingest.enqueue_many([(event, None) for event in events]) == [True] * len(events)
    assert len(set(queue.job_ids)) == len(events)
    assert job_id_for(events[-1]) == "cb_r1_completed"  # SignalWire's own sids and statuses stay readable


def test_batch_queues_each_event_once_in_order(redis_conn):
    queue = queue_for(SETTINGS, redis_conn)
    ingest = Ingest(queue, store=None, dedupe_ttl=60)
    a, b = (CallbackEvent(recording_sid=sid, account_sid="acct", status="completed") for sid in ("ra", "rb"))
    assert ingest.enqueue_many([(a, "r-1"), (b, "r-2"), (a, "r-3")]) == [True, True, False]
    assert ingest.enqueue_many([(b, "r-4")]) == [False]
    assert queue.job_ids == [job_id_for(a), job_id_for(b)]
    for event in (a, b):
        job = Job.fetch(job_id_for(event), connection=redis_conn, serializer=queue.serializer)
        assert list(job.args) == [event.to_payload()] and job.get_status() == "queued"
    # Each job carries the request id of the callback that queued it, not another's in its batch.
    assert [Job.fetch(job_id_for(e), connection=redis_conn, serializer=queue.serializer).meta for e in (a, b)] == [
        {"request_id": "r-1"}, {"request_id": "r-2"}]
    assert ingest.enqueue_many([]) == []


class _Gate:
    """A send function whose first call blocks until released, so the others queue up."""

    def __init__(self, fail_on=None):
        self.calls: list[list] = []
        self.release = threading.Event()
        self.fail_on = fail_on

    def __call__(self, items):
        self.calls.append(list(items))
        if len(self.calls) == 1:
            assert self.release.wait(10)
        if self.fail_on is not None and self.fail_on in items:
            raise redis.ConnectionError("connection refused")
        return [item * 10 for item in items]


def _run_behind_gate(gate: _Gate, limit: int, items: list):
    """The first item leads and holds the gate, the rest line up behind it, then it opens."""
    group = GroupCommit(gate, limit=limit)
    results: dict = {}

    def run(item):
        try:
            results[item] = group.submit(item)
        except Exception as exc:  # recorded per item, asserted by the test
            results[item] = exc

    threads = [threading.Thread(target=run, args=(item,)) for item in items]
    threads[0].start()
    _wait_for(lambda: len(group._waiting) == 1)
    for thread in threads[1:]:
        thread.start()
    _wait_for(lambda: len(group._waiting) == len(items))
    gate.release.set()
    for thread in threads:
        thread.join(10)
    assert not group._waiting
    return group, results


def _wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def test_group_commit_sends_waiting_items_together_and_answers_each():
    gate = _Gate()
    _, results = _run_behind_gate(gate, 64, list(range(1, 11)))
    assert results == {i: i * 10 for i in range(1, 11)}
    assert gate.calls[0] == [1] and sorted(gate.calls[1]) == list(range(2, 11)) and len(gate.calls) == 2


def test_group_commit_respects_its_limit():
    gate = _Gate()
    _, results = _run_behind_gate(gate, 3, list(range(1, 9)))
    assert results == {i: i * 10 for i in range(1, 9)}
    assert [len(c) for c in gate.calls] == [1, 3, 3, 1]


def test_group_commit_failure_reaches_every_item_of_that_batch_only():
    gate = _Gate(fail_on=5)
    group, results = _run_behind_gate(gate, 64, list(range(1, 7)))
    assert results[1] == 10  # the first batch went through before the failure
    failed = [results[i] for i in range(2, 7)]
    assert all(isinstance(exc, redis.ConnectionError) for exc in failed)
    assert len({id(exc) for exc in failed}) == len(failed)  # each thread raised its own copy
    assert group.submit(7) == 70  # the next batch is not poisoned


def test_group_commit_answers_every_waiter_when_send_returns_too_few_results():
    group = GroupCommit(lambda items: [], limit=64)
    with pytest.raises(RuntimeError, match="0 results for 1 items"):
        group.submit(1)
    assert not group._waiting


def test_group_commit_under_contention_answers_every_item_once():
    sent: list = []
    batches: list = []

    def send(items):
        sent.extend(items)
        batches.append(len(items))
        time.sleep(0.0002)  # a round trip's worth of waiting, so others queue behind it
        return [item * 10 for item in items]

    group = GroupCommit(send, limit=8)
    answers: dict = {}

    def run(base):
        for n in range(base, base + 200):
            answers[n] = group.submit(n)

    threads = [threading.Thread(target=run, args=(t * 1000,)) for t in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    items = [t * 1000 + n for t in range(16) for n in range(200)]
    assert answers == {i: i * 10 for i in items}
    assert sorted(sent) == items  # each sent exactly once
    assert max(batches) <= 8 and len(batches) < len(items) / 2  # shared round trips, within the limit
    assert not group._waiting


# --- the inbox drain --------------------------------------------------------------------


def test_unreadable_inbox_rows_hold_up_nothing_and_are_set_aside(store, redis_conn, caplog):
    queue = queue_for(SETTINGS, redis_conn)
    ingest = Ingest(queue, store, dedupe_ttl=60)
    # A whole batch of rows this release cannot read at the head of the inbox.
    unreadable = [store.inbox_put({"recording_sid": f"r{i}", "field_of_a_later_release": 1}) for i in range(2)]
    events = [CallbackEvent(recording_sid=f"ok-{i}", account_sid="a", status="completed") for i in range(3)]
    for event in events:
        store.inbox_put(event.to_payload())

    assert ingest.drain_inbox(batch=2) == 3
    assert sorted(job.args[0]["recording_sid"] for job in queue.jobs) == [e.recording_sid for e in events]
    assert [row_id for row_id, _ in store.inbox_take(10)] == unreadable  # kept, tried again next time

    for _ in range(INBOX_TRIES - 1):
        assert ingest.drain_inbox(batch=2) == 0
    assert store.inbox_take(10) == []  # set aside: no longer taken (nor logged)
    aside = store.inbox_set_aside()
    assert [row["id"] for row in aside] == unreadable
    assert all(row["attempts"] == INBOX_TRIES and row["set_aside_at"] for row in aside)
    assert "unexpected keyword argument 'field_of_a_later_release'" in aside[0]["last_error"]
    caplog.clear()
    assert ingest.drain_inbox(batch=2) == 0 and "cannot be read" not in caplog.text
