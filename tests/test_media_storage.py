"""Storage backends for the media archive: a folder (file://) and an S3-compatible server over
real HTTP (moto's server mode, tests/fixtures/s3.py)."""

from __future__ import annotations

import base64
import hashlib
import io
import os

import pytest

from service.media.archive import HashingReader, ShortBody
from service.media.storage import open_storage, parse_location
from service.media.storage.base import StorageError, VerificationError
from service.media.storage.s3 import S3Storage

MiB = 1024 * 1024


def source(data: bytes, expected: int | None = None) -> HashingReader:
    return HashingReader(io.BytesIO(data), len(data) if expected is None else expected)


@pytest.fixture(params=["file", "s3"])
def storage(request, tmp_path):
    if request.param == "file":
        backend = open_storage(f"file://{tmp_path / 'media'}")
    else:
        bucket = request.getfixturevalue("s3_bucket")
        # Small parts, so a few MiB already take the multipart path; moto keeps any checksum
        # it is sent, so the copy is read back.
        backend = S3Storage(bucket, "calls", verify="read", part_size=5 * MiB)
    yield backend
    backend.close()


@pytest.mark.parametrize("size", [0, 1000, 5 * MiB, 10 * MiB, 12 * MiB + 17])
def test_put_stat_verify_and_read_back(storage, size):
    data = os.urandom(size)
    key = storage.key(f"acc/2026/03/rec-{size}.wav")
    reader = source(data)
    storage.put(key, reader, content_type="audio/x-wav")
    sha256 = hashlib.sha256(data).hexdigest()
    assert (reader.size, reader.hexdigest()) == (size, sha256)
    info = storage.stat(key)
    assert (info.bytes, info.sha256, info.content_type) == (size, sha256, "audio/x-wav")
    assert storage.verify(key, size, sha256) == "read"
    with storage.open(key, size) as f:
        assert f.read() == data
        f.seek(max(0, size - 10))
        assert f.read(4) == data[max(0, size - 10):max(0, size - 10) + 4]
    with pytest.raises(VerificationError):
        storage.verify(key, size + 1, sha256)
    with pytest.raises(VerificationError):
        storage.verify(key, size, "0" * 64)


def test_missing_object(storage):
    assert storage.stat(storage.key("nope.wav")) is None
    with pytest.raises(VerificationError):
        storage.verify(storage.key("nope.wav"), 1, "0" * 64)


def test_put_replaces_an_object(storage):
    key = storage.key("acc/2026/03/rec.wav")
    storage.put(key, source(b"old bytes"), content_type="audio/x-wav")
    storage.put(key, source(b"new"), content_type="audio/mpeg")
    info = storage.stat(key)
    assert (info.bytes, info.sha256, info.content_type) == (3, hashlib.sha256(b"new").hexdigest(), "audio/mpeg")


def test_a_short_download_leaves_no_object(storage):
    data = os.urandom(11 * MiB)
    key = storage.key("acc/2026/03/short.wav")
    with pytest.raises(ShortBody):
        storage.put(key, source(data, expected=len(data) + 5), content_type="audio/x-wav")
    assert storage.stat(key) is None


def test_read_back_finds_a_corrupted_copy(storage, tmp_path):
    data = os.urandom(2000)
    key = storage.key("acc/2026/03/rec.wav")
    storage.put(key, source(data), content_type="audio/x-wav")
    sha256 = hashlib.sha256(data).hexdigest()
    corrupt = bytes([data[0] ^ 1]) + data[1:]
    if isinstance(storage, S3Storage):  # same metadata, same size, different bytes
        storage.client.put_object(Bucket=storage.bucket, Key=key, Body=corrupt, Metadata={"sha256": sha256})
    else:
        (tmp_path / "media" / key).write_bytes(corrupt)
    with pytest.raises(VerificationError):
        storage.verify(key, len(data), sha256)


def test_s3_checksum_mode_trusts_the_stores_own_checksum_and_refuses_a_different_one(s3_bucket):
    storage = S3Storage(s3_bucket, verify="checksum", part_size=5 * MiB)
    for size in (100, 11 * MiB):  # one PUT; multipart, then the store's checksum from the copy
        data = os.urandom(size)
        key = f"rec-{size}.wav"
        storage.put(key, source(data), content_type="audio/x-wav")
        sha256 = hashlib.sha256(data).hexdigest()
        assert storage.stat(key).store_checksum == base64.b64encode(hashlib.sha256(data).digest()).decode()
        assert storage.verify(key, size, sha256) == "checksum"
    # Another object under the key (same size, our metadata), whose checksum is its own:
    other = os.urandom(100)
    storage.client.put_object(Bucket=s3_bucket, Key="rec-100.wav", Body=other, Metadata={"sha256": "ab" * 32},
                              ChecksumAlgorithm="SHA256",
                              ChecksumSHA256=base64.b64encode(hashlib.sha256(other).digest()).decode())
    with pytest.raises(VerificationError):
        storage.verify("rec-100.wav", 100, "ab" * 32)


def test_s3_without_a_store_checksum_reads_back(s3_bucket):
    storage = S3Storage(s3_bucket, verify="checksum")
    storage.client.put_object(Bucket=s3_bucket, Key="plain.wav", Body=b"abc",
                              Metadata={"sha256": hashlib.sha256(b"abc").hexdigest()})
    assert storage.verify("plain.wav", 3, hashlib.sha256(b"abc").hexdigest()) == "read"


def test_s3_failed_multipart_upload_is_aborted(s3_bucket):
    storage = S3Storage(s3_bucket, part_size=5 * MiB)
    with pytest.raises(ShortBody):
        storage.put("cut.wav", source(os.urandom(12 * MiB), expected=13 * MiB), content_type="audio/x-wav")
    assert storage.client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
    assert storage.stat("cut.wav") is None


def test_s3_unreachable_is_a_storage_error(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    storage = S3Storage("some-bucket")
    storage.client.meta.config.retries["total_max_attempts"] = 1
    with pytest.raises(StorageError):
        storage.stat("a.wav")
    with pytest.raises(StorageError):
        storage.put("a.wav", source(b"abc"), content_type="audio/x-wav")


def test_file_keys_cannot_leave_the_folder(tmp_path):
    storage = open_storage(f"file://{tmp_path / 'media'}")
    with pytest.raises(StorageError):
        storage.put("../outside.wav", source(b"x"), content_type="audio/x-wav")


@pytest.mark.parametrize("url, parsed", [
    ("file:///srv/media/", ("file", "/srv/media", "")),
    ("s3://team-audio", ("s3", "team-audio", "")),
    ("s3://team-audio/calls/2026/", ("s3", "team-audio", "calls/2026")),
])
def test_storage_urls(url, parsed):
    location = parse_location(url)
    assert (location.scheme, location.root, location.prefix) == parsed
