"""The archiver against real parts: the sandbox (media over HTTP, DELETE), the store (SQLite and
PostgreSQL) and storage (a folder, and an S3-compatible server over HTTP)."""

from __future__ import annotations

import dataclasses
import hashlib
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from devstack.sandbox.media import media as sandbox_media
from service.media.archive import Archiver, MediaNotReady, NoVerifiedCopy, ShortBody
from service.media.storage import open_storage
from service.media.storage.base import StorageError
from service.media.storage.s3 import S3Storage
from service.media.verified import VerifiedCopy
from service.signalwire.client import SignalWireError
from tests.fixtures.sandbox import wait_until


@pytest.fixture(params=["file", "s3"])
def storage(request, tmp_path):
    if request.param == "file":
        backend = open_storage(f"file://{tmp_path / 'media'}")
    else:
        backend = S3Storage(request.getfixturevalue("s3_bucket"), "archive", verify="read")
    yield backend
    backend.close()


def completed(sandbox, sw_client, store, duration: int = 3) -> str:
    """A recording completed at the sandbox, its metadata stored as the callback job would."""
    sid = sandbox.record_verb(str(uuid.uuid4()), "http://127.0.0.1:9/unused", events=[])
    assert wait_until(lambda: sandbox.recordings[sid]["status"] == "completed")
    sandbox.patch_recording(sid, duration=duration)
    store.save_metadata(sw_client.fetch_recording(sid))
    return sid


def expected(sid: str, duration: int, fmt: str = "wav") -> tuple[int, str]:
    digest = hashlib.sha256()
    for chunk in sandbox_media(sid, duration, 1, fmt):
        digest.update(chunk)
    return sandbox_media(sid, duration, 1, fmt).length, digest.hexdigest()


def archiver(store, sw_client, storage, **options) -> Archiver:
    options.setdefault("sleep", lambda seconds: None)
    return Archiver(store, sw_client, storage, **options)


def test_a_completed_recording_is_archived_verified_under_its_key(store, sandbox, sw_client, storage):
    sid = completed(sandbox, sw_client, store, duration=5)
    assert archiver(store, sw_client, storage).archive(sid) == "archived"
    size, sha256 = expected(sid, 5)
    assert size == 44 + 5 * 16000  # 128 kbps
    media = store.get(sid)["media"]
    created = store.get(sid)["date_created"][:7].replace("-", "/")
    assert media["key"] == storage.key(f"{sandbox.project_id}/{created}/{sid}.wav")
    assert (media["status"], media["bytes"], media["sha256"], media["content_type"]) == \
        ("archived", size, sha256, "audio/x-wav")
    assert media["archived_at"] and media["source_deleted_at"] is None
    info = storage.stat(media["key"])
    assert (info.bytes, info.sha256, info.content_type) == (size, sha256, "audio/x-wav")
    with storage.open(media["key"], size) as copy:
        assert hashlib.sha256(copy.read()).hexdigest() == sha256
    # The download came from the configured space, by sid, with the API credentials.
    assert [(r["sid"], r["ext"], r["with_auth"]) for r in sandbox.media_requests] == [(sid, "wav", True)]
    assert sandbox.deleted == {}


def test_archiving_again_does_nothing(store, sandbox, sw_client, storage):
    sid = completed(sandbox, sw_client, store)
    keeper = archiver(store, sw_client, storage)
    keeper.archive(sid)
    before = store.get(sid)["media"]
    assert keeper.archive(sid) == "already archived"
    assert store.get(sid)["media"] == before and len(sandbox.media_requests) == 1


def test_a_copy_already_in_storage_is_verified_and_recorded_without_a_download(store, sandbox, sw_client, storage,
                                                                             database_url, tmp_path):
    sid = completed(sandbox, sw_client, store)
    archiver(store, sw_client, storage).archive(sid)
    key = store.get(sid)["media"]["key"]
    # The same copy, but the database write never happened (a worker killed in between):
    with store.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE recordings SET media_status = 'pending', media_key = NULL")
    assert archiver(store, sw_client, storage).archive(sid) == "archived (the copy was already in storage)"
    assert store.get(sid)["media"]["key"] == key and len(sandbox.media_requests) == 1


def test_a_download_cut_short_fails_the_attempt_and_the_next_one_archives(store, sandbox, sw_client, storage):
    sid = completed(sandbox, sw_client, store, duration=700)  # 11 MB: multipart in S3
    sandbox.set_knobs(media_cut_rate=1.0)
    keeper = archiver(store, sw_client, storage)
    with pytest.raises(ShortBody):
        keeper.archive(sid)
    media = store.get(sid)["media"]
    assert (media["status"], media["attempts"]) == ("pending", 1) and "broken off" in media["error"]
    assert storage.stat(storage.key(f"{sandbox.project_id}/x")) is None
    sandbox.set_knobs(media_cut_rate=0.0)
    assert keeper.archive(sid) == "archived"
    assert store.get(sid)["media"]["sha256"] == expected(sid, 700)[1]


def test_media_not_served_yet_is_waited_for_and_not_counted(store, sandbox, sw_client, storage):
    sid = completed(sandbox, sw_client, store)
    sandbox.set_knobs(media_not_ready_seconds=2.0)
    started = time.monotonic()
    assert archiver(store, sw_client, storage, sleep=time.sleep).archive(sid) == "archived"
    assert time.monotonic() - started >= 1.0
    statuses = [r["status"] for r in sandbox.media_requests]
    assert statuses[0] == 404 and statuses[-1] == 200
    assert store.get(sid)["media"]["attempts"] == 0


def test_media_still_missing_after_the_waits_is_not_ready_not_failed(store, sandbox, sw_client, storage):
    sid = completed(sandbox, sw_client, store)
    sandbox.set_knobs(media_not_ready_seconds=3600)
    slept = []
    with pytest.raises(MediaNotReady):
        archiver(store, sw_client, storage, sleep=slept.append).archive(sid, final_attempt=True)
    assert slept == [1, 2, 3, 5, 8, 13]
    media = store.get(sid)["media"]
    assert media is None or (media["status"] != "failed" and media["attempts"] == 0)


def test_a_404_long_after_completion_is_a_failure(store, sandbox, sw_client, storage):
    sid = completed(sandbox, sw_client, store)
    old = datetime.now(timezone.utc) - timedelta(days=2)
    store.save_metadata(dataclasses.replace(sw_client.fetch_recording(sid), end_time=old, date_updated=old))
    sandbox.set_knobs(media_not_ready_seconds=3600)
    slept = []
    with pytest.raises(SignalWireError):
        archiver(store, sw_client, storage, sleep=slept.append).archive(sid, final_attempt=True)
    assert slept == []
    assert store.get(sid)["media"]["status"] == "failed"


def test_delete_after_archive_deletes_once_with_a_verified_copy(store, sandbox, sw_client, storage):
    sid = completed(sandbox, sw_client, store)
    keeper = archiver(store, sw_client, storage, delete_after=True)
    assert keeper.archive(sid) == "archived; deleted at SignalWire"
    assert list(sandbox.deleted) == [sid] and sid not in sandbox.recordings
    media = store.get(sid)["media"]
    assert media["source_deleted_at"] and media["source_deleted_at"] >= media["archived_at"]
    assert keeper.archive(sid) == "already archived"  # no second DELETE
    assert list(sandbox.deleted) == [sid]


def test_a_recording_already_gone_at_signalwire(store, sandbox, sw_client, storage):
    sid = completed(sandbox, sw_client, store)
    archiver(store, sw_client, storage).archive(sid)
    assert sw_client.delete_recording(store.verified_copy(sid)) is True  # someone else deleted it
    assert archiver(store, sw_client, storage, delete_after=True).delete_at_source(sid) is False
    assert store.get(sid)["media"]["source_deleted_at"]


def test_no_delete_without_a_verified_copy(store, sandbox, sw_client, storage, tmp_path):
    sid = completed(sandbox, sw_client, store)
    keeper = archiver(store, sw_client, storage, delete_after=True)
    with pytest.raises(NoVerifiedCopy):  # never archived
        keeper.delete_at_source(sid)
    store.media_queued(sid)
    with pytest.raises(NoVerifiedCopy):  # pending
        keeper.delete_at_source(sid)
    # The store says archived, but storage no longer holds that copy:
    store.media_archived(sid, key=storage.key("elsewhere.wav"), size=10, sha256="ab" * 32, content_type="audio/x-wav")
    with pytest.raises(NoVerifiedCopy):
        keeper.delete_at_source(sid)
    assert sandbox.deleted == {}
    with pytest.raises(TypeError):
        sw_client.delete_recording(sid)  # a bare sid is no proof
    assert sandbox.deleted == {}


def test_storage_failure_is_counted_and_nothing_is_deleted(store, sandbox, sw_client, tmp_path):
    sid = completed(sandbox, sw_client, store)
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the storage folder should be")
    broken = open_storage(f"file://{blocked}")
    keeper = archiver(store, sw_client, broken, delete_after=True)
    with pytest.raises(StorageError):
        keeper.archive(sid)
    with pytest.raises(StorageError):
        keeper.archive(sid, final_attempt=True)
    media = store.get(sid)["media"]
    assert (media["status"], media["attempts"]) == ("failed", 2)
    assert sandbox.deleted == {}


def test_only_completed_recordings_are_archived(store, sandbox, sw_client, storage):
    call = str(uuid.uuid4())
    sandbox.make_silent(call)
    sid = sandbox.record_verb(call, "http://127.0.0.1:9/unused", events=[])
    assert wait_until(lambda: sandbox.recordings[sid]["status"] == "absent")
    store.save_metadata(sw_client.fetch_recording(sid))
    assert archiver(store, sw_client, storage).archive(sid) == "nothing to archive: the recording is absent"
    assert archiver(store, sw_client, storage).archive("unknown") == "unknown recording"
    assert sandbox.media_requests == []


def test_mp3_through_a_redirect_without_credentials_on_the_other_host(store, sandbox, sw_client, storage):
    sid = completed(sandbox, sw_client, store, duration=60)
    sandbox.set_knobs(media_redirect=True)
    assert archiver(store, sw_client, storage, fmt="mp3").archive(sid) == "archived"
    media = store.get(sid)["media"]
    assert media["key"].endswith(f"{sid}.mp3") and media["content_type"] == "audio/mpeg"
    assert (media["bytes"], media["sha256"]) == expected(sid, 60, "mp3")
    assert 4000 * 60 * 0.95 < media["bytes"] < 4000 * 60 * 1.05  # about 32 kbps
    first, second = sandbox.media_requests
    assert first["with_auth"] and not second["with_auth"] and first["host"] != second["host"]


def test_verified_copy_is_the_only_thing_delete_takes(sw_client):
    copy = VerifiedCopy("rec", "k", 1, "ab" * 32, "audio/x-wav", datetime.now(timezone.utc))
    assert sw_client.delete_recording(copy) is False  # unknown at the sandbox: 404, already gone
