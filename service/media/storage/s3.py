"""`s3://bucket/prefix`: Amazon S3 or any S3-compatible store (MinIO, R2, B2, Wasabi), through boto3.

The endpoint and credentials come from boto3's own variables (AWS_ENDPOINT_URL,
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION). boto3's newer default checksums (CRC
on every request) are off (`when_required`): several S3-compatible stores reject them. We send
the SHA-256 ourselves instead, computed from the stream as it is read.

Upload, in constant memory: a body that fits in one part is one PUT with its SHA-256 checksum;
a longer one is a multipart upload, part by part (PART_SIZE each, each with its SHA-256), then
copied onto itself to put our SHA-256 of the whole object into its metadata (known only at the
end) and have the store compute its full-object SHA-256 checksum. A failed upload is aborted.

Verification (`verify`): the HEAD must show the size and our SHA-256 in the metadata; then
`checksum` mode accepts the store's own full-object SHA-256 checksum when it equals ours (S3
checks a sent checksum against the bytes it received, and computes one on copy). When the store
reports none, or in `read` mode (for stores that keep whatever checksum they are sent), the
object is read back and hashed.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO

from service.media.storage.base import ObjectInfo, Source, Storage, StorageError, VerificationError

log = logging.getLogger(__name__)

PART_SIZE = 8 * 1024 * 1024  # boto3's own multipart threshold and part size
META_SHA256 = "sha256"


def _b64(hex_digest: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_digest)).decode()


def _fill(source: Source, buf: bytearray, start: int = 0) -> int:
    """Read into `buf` from `start` until it is full or the source ends; returns the bytes in it.
    One buffer, filled in place: a part never costs two copies of itself in memory."""
    n = start
    with memoryview(buf) as view:
        while n < len(buf):
            chunk = source.read(len(buf) - n)
            if not chunk:
                break
            view[n:n + len(chunk)] = chunk
            n += len(chunk)
    return n


class S3Storage(Storage):
    scheme = "s3"

    def __init__(self, bucket: str, prefix: str = "", *, verify: str = "checksum", part_size: int = PART_SIZE,
                 client=None):
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ClientError

        self._errors = (BotoCoreError, ClientError)
        self.bucket = bucket
        self.prefix = prefix
        self.verify_mode = verify
        self.part_size = part_size
        self.client = client or boto3.session.Session().client("s3", config=Config(
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            connect_timeout=5, read_timeout=60,
            retries={"mode": "standard", "max_attempts": 3},
        ))

    def __repr__(self) -> str:
        return f"S3Storage(bucket={self.bucket!r}, prefix={self.prefix!r})"

    def close(self) -> None:
        self.client.close()

    def _fail(self, what: str, key: str, exc: Exception) -> StorageError:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code") if hasattr(exc, "response") else None
        return StorageError(f"{what} s3://{self.bucket}/{key}: {code or type(exc).__name__}")

    # --- upload ------------------------------------------------------------------------

    def put(self, key: str, source: Source, *, content_type: str) -> None:
        buf = bytearray(self.part_size)
        n = _fill(source, buf)
        more = source.read(1) if n == len(buf) else b""
        if not more:  # the whole body: one PUT
            del buf[n:]
            sha256 = source.hexdigest()
            try:
                self.client.put_object(Bucket=self.bucket, Key=key, Body=buf, ContentType=content_type,
                                       Metadata={META_SHA256: sha256}, ChecksumAlgorithm="SHA256",
                                       ChecksumSHA256=_b64(sha256))
            except self._errors as exc:
                raise self._fail("PUT", key, exc) from None
            return
        self._multipart(key, source, buf, more, content_type)

    def _multipart(self, key: str, source: Source, buf: bytearray, carry: bytes, content_type: str) -> None:
        """Part by part through two buffers (the next part is read while one is uploaded); `buf`
        holds the first part, `carry` the byte after it."""
        try:
            upload_id = self.client.create_multipart_upload(
                Bucket=self.bucket, Key=key, ContentType=content_type, ChecksumAlgorithm="SHA256")["UploadId"]
        except self._errors as exc:
            raise self._fail("starting a multipart upload of", key, exc) from None
        parts = []
        spare = bytearray(self.part_size)
        try:
            with ThreadPoolExecutor(1, thread_name_prefix="s3-part") as uploader:
                while buf:
                    sending = uploader.submit(self._upload_part, key, upload_id, len(parts) + 1, buf)
                    # Two buffers in turn: the download fills one while the other is uploaded.
                    buf, spare = spare, buf
                    buf[:len(carry)] = carry
                    n = _fill(source, buf, len(carry))
                    carry = b""
                    if n < len(buf):  # the last part (or none)
                        del buf[n:]
                    parts.append(sending.result())  # before its buffer is filled again
            self.client.complete_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id,
                                                  MultipartUpload={"Parts": parts})
        except BaseException as exc:
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            except Exception:  # the store may be the problem; a lifecycle rule cleans up leftovers
                log.warning("could not abort the multipart upload of %s", key)
            if isinstance(exc, self._errors):
                raise self._fail("multipart upload of", key, exc) from None
            raise
        # Our SHA-256 of the whole object is known only now: a copy onto itself sets the
        # metadata, and has the store compute its own full-object SHA-256 while it copies.
        try:
            self.client.copy_object(Bucket=self.bucket, Key=key, CopySource={"Bucket": self.bucket, "Key": key},
                                    MetadataDirective="REPLACE", Metadata={META_SHA256: source.hexdigest()},
                                    ContentType=content_type, ChecksumAlgorithm="SHA256")
        except self._errors as exc:
            raise self._fail("setting the metadata of", key, exc) from None

    # --- reads -------------------------------------------------------------------------

    def _upload_part(self, key: str, upload_id: str, number: int, body: bytearray) -> dict:
        checksum = base64.b64encode(hashlib.sha256(body).digest()).decode()
        answer = self.client.upload_part(Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number,
                                         Body=body, ChecksumAlgorithm="SHA256", ChecksumSHA256=checksum)
        return {"PartNumber": number, "ETag": answer["ETag"], "ChecksumSHA256": checksum}

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
        except self._errors as exc:
            status = getattr(exc, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 404:
                return None
            raise self._fail("HEAD", key, exc) from None
        return ObjectInfo(key, int(head["ContentLength"]), (head.get("Metadata") or {}).get(META_SHA256),
                          head.get("ContentType"), head.get("ChecksumSHA256"))

    def verify(self, key: str, size: int, sha256: str) -> str:
        info = self.check_info(self.stat(key), key, size, sha256)
        if self.verify_mode == "checksum" and info.store_checksum:
            if info.store_checksum == _b64(sha256):
                return "checksum"
            if "-" not in info.store_checksum:  # a full-object checksum that differs: a different object
                raise VerificationError(f"{key}: the store's SHA-256 checksum is not the download's")
        # No full-object checksum from the store (or `read` mode): read it back.
        return self.read_back(key, size, sha256)

    def open(self, key: str, size: int) -> BinaryIO:
        return io.BufferedReader(_ObjectReader(self, key, size), buffer_size=256 * 1024)


class _ObjectReader(io.RawIOBase):
    """A seekable reader over an object: one streaming GET from the current position (a
    ranged GET after a seek), so serving a byte range reads only from where it starts."""

    def __init__(self, storage: S3Storage, key: str, size: int):
        self._storage, self._key, self._size = storage, key, size
        self._pos = 0
        self._body = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        position = max(0, base + offset)
        if position != self._pos:
            self._drop()
            self._pos = position
        return self._pos

    def readinto(self, buffer) -> int:
        if self._pos >= self._size:
            return 0
        if self._body is None:
            s = self._storage
            try:
                answer = s.client.get_object(Bucket=s.bucket, Key=self._key, Range=f"bytes={self._pos}-")
            except s._errors as exc:
                status = getattr(exc, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode")
                if status == 404:
                    raise FileNotFoundError(self._key) from None
                raise s._fail("GET", self._key, exc) from None
            self._body = answer["Body"]
        try:
            data = self._body.read(len(buffer))
        except self._storage._errors as exc:
            raise self._storage._fail("reading", self._key, exc) from None
        buffer[:len(data)] = data
        self._pos += len(data)
        return len(data)

    def _drop(self) -> None:
        if self._body is not None:
            self._body.close()
            self._body = None

    def close(self) -> None:
        self._drop()
        super().close()
