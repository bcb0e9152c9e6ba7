"""The API's view of the media archive: `media` on a recording, the media_status filter, and the
audio itself with byte ranges, from a folder and from an S3-compatible server."""

from __future__ import annotations

import hashlib
import uuid

import pytest

from service.media.archive import Archiver
from tests.fixtures.sandbox import wait_until


@pytest.fixture(params=["file", "s3"])
def env(request, env, tmp_path):
    if request.param == "file":
        return {**env, "MEDIA_STORAGE_URL": f"file://{tmp_path / 'media'}"}
    return {**env, "MEDIA_STORAGE_URL": f"s3://{request.getfixturevalue('s3_bucket')}/calls", "MEDIA_VERIFY": "read"}


@pytest.fixture
def archived(app, sandbox, sw_client):
    """A recording completed at the sandbox and archived; returns (sid, its audio)."""
    services = app.extensions["services"]
    sid = sandbox.record_verb(str(uuid.uuid4()), "http://127.0.0.1:9/unused", events=[])
    assert wait_until(lambda: sandbox.recordings[sid]["status"] == "completed")
    sandbox.patch_recording(sid, duration=4)
    services.store.save_metadata(sw_client.fetch_recording(sid))
    Archiver(services.store, sw_client, services.storage).archive(sid)
    audio = sw_client.open_media(sid).read()
    return sid, audio


def test_recording_shows_its_media_and_the_list_filters_on_it(client, auth, archived):
    sid, audio = archived
    media = client.get(f"/api/recordings/{sid}", headers=auth).get_json()["media"]
    assert media["status"] == "archived" and media["bytes"] == len(audio)
    assert media["sha256"] == hashlib.sha256(audio).hexdigest() and media["content_type"] == "audio/x-wav"
    page = client.get("/api/recordings?media_status=archived", headers=auth).get_json()
    assert [r["sid"] for r in page["recordings"]] == [sid] and page["recordings"][0]["media"]["status"] == "archived"
    assert client.get("/api/recordings?media_status=pending", headers=auth).get_json()["recordings"] == []
    bad = client.get("/api/recordings?media_status=lost", headers=auth)
    assert bad.status_code == 422 and "media_status" in bad.get_json()["error"]["fields"]


def test_the_audio_whole_and_in_ranges(client, auth, archived):
    sid, audio = archived
    whole = client.get(f"/api/recordings/{sid}/media", headers=auth)
    assert whole.status_code == 200 and whole.data == audio
    assert whole.headers["Content-Type"] == "audio/x-wav" and int(whole.headers["Content-Length"]) == len(audio)
    assert whole.headers["Accept-Ranges"] == "bytes"
    assert whole.headers["ETag"] == f'"{hashlib.sha256(audio).hexdigest()}"'

    part = client.get(f"/api/recordings/{sid}/media", headers={**auth, "Range": "bytes=1000-1999"})
    assert part.status_code == 206 and part.data == audio[1000:2000]
    assert part.headers["Content-Range"] == f"bytes 1000-1999/{len(audio)}"
    tail = client.get(f"/api/recordings/{sid}/media", headers={**auth, "Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.data == audio[-10:]
    seek = client.get(f"/api/recordings/{sid}/media", headers={**auth, "Range": f"bytes={len(audio) - 100}-"})
    assert seek.status_code == 206 and seek.data == audio[-100:]

    outside = client.get(f"/api/recordings/{sid}/media", headers={**auth, "Range": f"bytes={len(audio) + 5}-"})
    assert outside.status_code == 416
    cached = client.get(f"/api/recordings/{sid}/media", headers={**auth, "If-None-Match": whole.headers["ETag"]})
    assert cached.status_code == 304 and cached.data == b""


def test_no_audio_without_an_archived_copy(client, auth, app, archived, sandbox, sw_client):
    store = app.extensions["services"].store
    sid = sandbox.record_verb(str(uuid.uuid4()), "http://127.0.0.1:9/unused", events=[])
    assert wait_until(lambda: sandbox.recordings[sid]["status"] == "completed")
    store.save_metadata(sw_client.fetch_recording(sid))
    store.media_queued(sid)
    for path in (f"/api/recordings/{sid}/media", "/api/recordings/nope/media", "/api/recordings/bad%20sid/media"):
        missing = client.get(path, headers=auth)
        assert missing.status_code == 404 and missing.get_json()["error"]["status"] == 404
    assert client.get(f"/api/recordings/{archived[0]}/media").status_code == 401


def test_storage_unreachable_is_a_503(client, auth, archived, monkeypatch, app):
    if app.extensions["services"].settings.media_storage_url.startswith("file:"):
        pytest.skip("a folder is never unreachable")
    app.extensions["services"].__dict__.pop("storage").close()
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    response = client.get(f"/api/recordings/{archived[0]}/media", headers=auth)
    assert response.status_code == 503 and response.headers["Retry-After"] == "5"
