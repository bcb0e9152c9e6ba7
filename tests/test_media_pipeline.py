"""Archive jobs on a real Redis with RQ's own worker: queued when a completed recording is
stored, once per recording, retried, listed and replayed by the operator commands, and queued
again by the sweep for anything left without a copy."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import pytest
from click.testing import CliRunner
from rq import Retry, SimpleWorker
from rq.job import Job

from service.cli import main
from service.config import load_settings
from service.domain.recordings import CallbackEvent
from service.media.pipeline import JOB_FUNC, enqueue_archive, job_id_for
from service.pipelines.ingest import JOB_FUNC as CALLBACK_JOB
from service.pipelines.sweep import sweep
from service.services import Services
from tests.fixtures.sandbox import wait_until


@pytest.fixture
def media_env(env, store, tmp_path, monkeypatch):
    """The worker's jobs run in-process and read these settings, as a worker process would."""
    env = {**env, "MEDIA_STORAGE_URL": f"file://{tmp_path / 'media'}", "MEDIA_DELETE_AFTER_ARCHIVE": "true"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    from workers import jobs

    jobs.services.cache_clear()
    jobs.archiver.cache_clear()
    yield env
    jobs.services().close()
    jobs.services.cache_clear()
    jobs.archiver.cache_clear()


@pytest.fixture
def services(media_env):
    s = Services(load_settings(media_env))
    yield s
    s.close()


class BurstWorker(SimpleWorker):
    """RQ's worker without its command channel (nothing here sends it commands): stopping that
    channel's thread can take up to a minute (redis-py's pub/sub thread, sleep_time=60)."""

    def subscribe(self) -> None:
        pass

    def unsubscribe(self) -> None:
        pass


def run_worker(services) -> None:
    BurstWorker([services.queue], connection=services.redis, serializer=services.queue.serializer).work(burst=True)


def completed_at_sandbox(sandbox) -> str:
    sid = sandbox.record_verb(str(uuid.uuid4()), "http://127.0.0.1:9/unused", events=[])
    assert wait_until(lambda: sandbox.recordings[sid]["status"] == "completed")
    return sid


def test_a_completed_callback_queues_the_archive_which_deletes_only_after_verifying(services, sandbox):
    sid = completed_at_sandbox(sandbox)
    event = CallbackEvent(recording_sid=sid, account_sid=sandbox.project_id, status="completed")
    services.queue.enqueue(CALLBACK_JOB, event.to_payload())
    run_worker(services)  # the callback job, then the archive job it queued
    media = services.store.get(sid)["media"]
    assert media["status"] == "archived" and media["source_deleted_at"]
    assert services.storage.stat(media["key"]).sha256 == media["sha256"]
    assert list(sandbox.deleted) == [sid]
    job = Job.fetch(job_id_for(sid), connection=services.redis, serializer=services.queue.serializer)
    assert job.return_value() == "archived; deleted at SignalWire"


def test_one_job_per_recording_while_one_is_on_its_way(services, sandbox, sw_client):
    sid = completed_at_sandbox(sandbox)
    services.store.save_metadata(sw_client.fetch_recording(sid))
    assert enqueue_archive(services.queue, services.store, sid) is True
    assert enqueue_archive(services.queue, services.store, sid) is False
    assert services.queue.get_job_ids() == [f"media_{sid}"]
    assert services.store.get(sid)["media"]["status"] == "pending"
    run_worker(services)
    assert services.store.get(sid)["media"]["status"] == "archived"
    # A finished job is replaced; the new one finds the copy and does nothing.
    assert enqueue_archive(services.queue, services.store, sid) is True
    run_worker(services)
    assert len([r for r in sandbox.media_requests if r["status"] == 200]) == 1
    assert list(sandbox.deleted) == [sid]


def test_job_ids_are_deterministic_and_valid_for_rq():
    assert job_id_for("5f0e1a52-3c5b-4d8e-9a41-6f1c2b7d9e01") == "media_5f0e1a52-3c5b-4d8e-9a41-6f1c2b7d9e01"
    odd = job_id_for("a/b c")
    assert odd.startswith("media__") and odd == job_id_for("a/b c") and odd != job_id_for("a/b d")


def test_retries_exhausted_mark_failed_then_failed_and_replay_cover_the_job(services, sandbox, sw_client, media_env,
                                                                          tmp_path):
    sid = completed_at_sandbox(sandbox)
    services.store.save_metadata(sw_client.fetch_recording(sid))
    (tmp_path / "media").write_text("a file where the storage folder should be")
    services.store.media_queued(sid)
    job = services.queue.enqueue(JOB_FUNC, sid, job_id=job_id_for(sid), retry=Retry(max=1),
                                 description=f"recording {sid} media")
    run_worker(services)
    assert job.id in services.queue.failed_job_registry.get_job_ids()
    media = services.store.get(sid)["media"]
    assert (media["status"], media["attempts"]) == ("failed", 2) and sandbox.deleted == {}

    out = CliRunner().invoke(main, ["failed"], catch_exceptions=False).output
    assert f"{job.id}  recording={sid} status=media attempts=2" in out and "StorageError" in out

    (tmp_path / "media").unlink()  # storage fixed
    assert f"{job.id}: requeued" in CliRunner().invoke(main, ["replay", job.id], catch_exceptions=False).output
    run_worker(services)
    assert services.store.get(sid)["media"]["status"] == "archived" and list(sandbox.deleted) == [sid]


def test_the_sweep_queues_completed_recordings_without_a_copy(services, sandbox, sw_client):
    sids = [completed_at_sandbox(sandbox) for _ in range(3)]
    for sid in sids:  # stored completed (say by the sweep's own fetch), never queued for archiving
        services.store.save_metadata(sw_client.fetch_recording(sid))
    services.store.media_queued(sids[0])  # queued once, but its job was lost

    def once():
        return sweep(services.store, services.signalwire, services.redis, older_than_seconds=0,
                     archive=services.enqueue_archive, now=datetime.now(timezone.utc))

    report = once()
    assert report.archive_queued == 3 and "archive_queued=3" in report.summary()
    assert once().archive_queued == 0  # all on their way
    run_worker(services)
    assert {services.store.get(sid)["media"]["status"] for sid in sids} == {"archived"}
    assert once().archive_queued == 0 and services.store.unarchived(older_than=datetime.now(timezone.utc)) == []
