"""The media archive under faults, with the real processes (gunicorn, RQ workers, Redis,
PostgreSQL), the sandbox playing SignalWire and an S3-compatible server over HTTP (moto), with
MEDIA_DELETE_AFTER_ARCHIVE on. Each prints its figures ("[fault] ...") for the README.

In every case, at the end: every completed recording is archived with the SHA-256 of the audio
SignalWire served, the copy in storage reads back to it, and every DELETE that reached the
sandbox came after its recording's copy was verified (no DELETE without a verified copy).

CI runs them small; `FAULT_SCALE=full` runs the README's sizes.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
import uuid
from datetime import datetime
from types import SimpleNamespace
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa

from devstack.redis_server import EmbeddedRedis, free_port
from devstack.sandbox import Sandbox
from devstack.sandbox.media import media as sandbox_media
from service.media.storage.s3 import S3Storage
from service.store.sql import Store
from tests.e2e import AUTH, database, metric, scrape, stack_env, start_stack, wait_for
from tests.faults import TcpProxy, report, scaled
from tests.fixtures.sandbox import SandboxCredentials

pytestmark = [pytest.mark.fault, pytest.mark.timeout(900)]


@contextlib.contextmanager
def media_stack(tmp_path, postgres_server, s3_server, *, duration: int, workers: int = 2, **settings):
    credentials = SandboxCredentials()
    bucket = s3_server.new_bucket()
    endpoint = urlsplit(s3_server.endpoint)
    storage_proxy = TcpProxy((endpoint.hostname, endpoint.port))
    with database("postgresql", tmp_path, postgres_server) as database_url, EmbeddedRedis() as redis_server, \
            Sandbox(credentials.project_id, credentials.api_token, credentials.signing_key) as sandbox:
        sandbox.recording_seconds = 0.05
        sandbox.completed_duration = duration
        port = free_port()
        env = stack_env(redis_server.url, database_url, sandbox, credentials, port)
        env.update(s3_server.env(f"http://127.0.0.1:{storage_proxy.port}"))
        env.update(MEDIA_STORAGE_URL=f"s3://{bucket}/archive", MEDIA_VERIFY="read", MEDIA_DELETE_AFTER_ARCHIVE="true",
                   SWEEP_INTERVAL="5", SWEEP_AFTER="5")
        env.update({k.upper(): str(v) for k, v in settings.items()})
        stack = start_stack(env, port, tmp_path / "stack.log", workers=workers)
        store = Store(database_url)
        with contextlib.ExitStack() as cleanup:
            cleanup.callback(storage_proxy.close)
            cleanup.callback(store.dispose)
            cleanup.callback(stack.stop)
            yield SimpleNamespace(stack=stack, sandbox=sandbox, store=store, storage_proxy=storage_proxy,
                                  storage=S3Storage(bucket, "archive", verify="read", client=s3_server.client()),
                                  webhook=stack.base_url + "/webhooks/recording-status", log=tmp_path / "stack.log")


def record(f, n: int, per_second: float | None = None) -> list[str]:
    """n recordings whose completed callbacks the sandbox sends to the stack (at most
    `per_second` of them completing each second)."""
    sids = []
    for _ in range(n):
        sids.append(f.sandbox.record_verb(str(uuid.uuid4()), f.webhook, events=["completed"]))
        if per_second:
            time.sleep(1 / per_second)
    return sids


def media_counts(store: Store) -> dict[str, int]:
    with store.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT coalesce(media_status, 'none'), count(*) FROM recordings "
                                    "WHERE status = 'completed' GROUP BY 1")).all()
    return dict(rows)


def wait_archived(f, n: int, timeout: float) -> float:
    started = time.monotonic()
    wait_for(lambda: media_counts(f.store).get("archived", 0) >= n, timeout, interval=0.5,
             what=f"{n} recordings archived")
    return round(time.monotonic() - started, 1)


def check_every_copy(f, sids: list[str], duration: int) -> dict:
    """Archived with the served audio's SHA-256, readable back, deleted only after verification."""
    with f.store.engine.connect() as conn:
        rows = {r.sid: r for r in conn.execute(sa.text(
            "SELECT sid, media_status, media_key, media_bytes, media_sha256, media_archived_at, "
            "media_source_deleted_at, media_attempts FROM recordings WHERE sid IN :sids"
        ).bindparams(sa.bindparam("sids", expanding=True)), {"sids": sids})}
    wait_for(lambda: len(f.sandbox.deleted) >= len(sids), 60, what="every recording deleted at the sandbox")
    deleted = dict(f.sandbox.deleted)
    for sid in sids:
        row = rows[sid]
        audio = sandbox_media(sid, duration, 1, "wav")
        digest = hashlib.sha256()
        for chunk in audio:
            digest.update(chunk)
        assert row.media_status == "archived", (sid, row.media_status)
        assert (row.media_bytes, row.media_sha256) == (audio.length, digest.hexdigest()), sid
        assert f.storage.verify(row.media_key, audio.length, digest.hexdigest()) == "read"
    for sid, deleted_at in deleted.items():
        row = rows.get(sid)
        assert row is not None and row.media_status == "archived", f"DELETE of {sid} without a verified copy"
        archived_at = row.media_archived_at
        if isinstance(archived_at, str):
            archived_at = datetime.fromisoformat(archived_at)
        assert deleted_at >= archived_at.timestamp() - 0.01, f"DELETE of {sid} before its copy was verified"
    assert set(deleted) == set(sids)
    return {"archived": len(sids), "deleted_at_source": len(f.sandbox.deleted),
            "failed_attempts": sum(r.media_attempts for r in rows.values())}


def test_storage_unreachable_for_20_seconds(tmp_path, postgres_server, s3_server):
    n, outage, duration = scaled(200, 20), 20, 60
    with media_stack(tmp_path, postgres_server, s3_server, duration=duration) as f:
        f.storage_proxy.down()
        down_at = time.monotonic()
        sids = record(f, n)
        wait_for(lambda: media_counts(f.store).get("pending", 0) >= 1, 60, what="archive attempts during the outage")
        time.sleep(max(0.0, outage - (time.monotonic() - down_at)))
        during = media_counts(f.store)
        f.storage_proxy.up()
        seconds = wait_archived(f, n, scaled(600, 300))
        figures = check_every_copy(f, sids, duration)
        report("media: storage unreachable 20 s", recordings=n, outage_seconds=outage,
               archived_during_outage=during.get("archived", 0), **figures,
               archived_seconds_after_restore=seconds)
        assert during.get("archived", 0) == 0 and figures["failed_attempts"] > 0


def test_downloads_cut_mid_stream(tmp_path, postgres_server, s3_server):
    n, duration = scaled(100, 15), 120  # 1.9 MB each
    with media_stack(tmp_path, postgres_server, s3_server, duration=duration) as f:
        f.sandbox.set_knobs(media_cut_rate=0.4, seed=11)
        started = time.monotonic()
        sids = record(f, n)
        wait_archived(f, n, scaled(600, 300))
        cut = sum(1 for r in f.sandbox.media_requests if r["status"] == 200) - n
        figures = check_every_copy(f, sids, duration)
        report("media: 40% of downloads cut mid-stream", recordings=n, downloads=len(f.sandbox.media_requests),
               cut_short=cut, **figures, seconds=round(time.monotonic() - started, 1))
        assert cut > 0 and figures["failed_attempts"] >= cut


def test_worker_sigkilled_mid_upload(tmp_path, postgres_server, s3_server):
    n, duration = scaled(40, 8), 1200  # 19 MB each: a multipart upload of 3 parts
    with media_stack(tmp_path, postgres_server, s3_server, duration=duration) as f:
        started = time.monotonic()
        sids = record(f, n)
        kills, seen, deadline = 0, set(), time.monotonic() + scaled(600, 300)
        # Kill a worker whenever a new multipart upload is under way, until everything is archived
        # (an upload a kill interrupted stays listed: only new ones count).
        while media_counts(f.store).get("archived", 0) < n and time.monotonic() < deadline:
            uploads = f.storage.client.list_multipart_uploads(Bucket=f.storage.bucket).get("Uploads", [])
            fresh = {u["UploadId"] for u in uploads} - seen
            seen |= fresh
            if fresh and kills < scaled(10, 4):
                f.stack.kill(f.stack.workers()[kills % len(f.stack.workers())])
                kills += 1
                time.sleep(3)
            time.sleep(0.1)
        wait_archived(f, n, 120)
        figures = check_every_copy(f, sids, duration)
        report("media: worker SIGKILLed mid-upload", recordings=n, mb_each=round(duration * 16000 / 1e6, 1),
               kills_mid_upload=kills, **figures, seconds=round(time.monotonic() - started, 1))
        assert kills >= 1


def test_media_404_for_5_seconds_after_completion(tmp_path, postgres_server, s3_server):
    n, duration = scaled(200, 20), 30
    with media_stack(tmp_path, postgres_server, s3_server, duration=duration) as f:
        f.sandbox.set_knobs(media_not_ready_seconds=5)
        started = time.monotonic()
        sids = record(f, n, per_second=5)  # paced: each archive starts within seconds of completion
        wait_archived(f, n, scaled(600, 300))
        not_ready = sum(1 for r in f.sandbox.media_requests if r["status"] == 404)
        figures = check_every_copy(f, sids, duration)
        report("media: 404 for 5 s after completion", recordings=n, answers_404=not_ready, **figures,
               seconds=round(time.monotonic() - started, 1))
        assert not_ready > 0
        assert figures["failed_attempts"] == 0  # waiting for media that is not served yet is no failure


@pytest.mark.e2e
def test_end_to_end_the_audio_from_the_api(tmp_path, postgres_server, s3_server):
    import requests

    with media_stack(tmp_path, postgres_server, s3_server, duration=7, workers=1) as f:
        sid, = record(f, 1)
        wait_archived(f, 1, 60)
        url = f"{f.stack.base_url}/api/recordings/{sid}"
        media = requests.get(url, headers=AUTH, timeout=10).json()["media"]
        audio = requests.get(url + "/media", headers={**AUTH, "Range": "bytes=0-43"}, timeout=10)
        assert audio.status_code == 206 and audio.content.startswith(b"RIFF") and len(audio.content) == 44
        whole = requests.get(url + "/media", headers=AUTH, timeout=10)
        assert hashlib.sha256(whole.content).hexdigest() == media["sha256"]
        check_every_copy(f, [sid], 7)
        archived = "recording_keeper_media_jobs_total"  # counted by the worker, relayed through Redis
        wait_for(lambda: metric(scrape(f.stack.base_url), archived, result="archived") == 1, 30, interval=0.5,
                 what="the archive job counted in /metrics")
