"""Archiving one recording's media: download it from SignalWire, stream it into storage while
hashing it, verify the stored copy against the download, and only then record it as archived
and (when asked) delete the recording at SignalWire.

No Flask, no RQ: workers.jobs.archive_media calls `Archiver.archive` and RQ's retry policy
handles a failed attempt (service.media.pipeline).

The rules it keeps:
- Idempotent. A recording already archived is not downloaded again; an object already in
  storage that verifies against its own recorded SHA-256 (a crash between upload and the
  database write) is recorded as archived without a download.
- Constant memory. The download is read in chunks and handed to storage as it comes; a body
  that ends before its Content-Length fails the attempt and nothing is recorded.
- Archived means verified. The copy is checked against the download's size and SHA-256 by
  storage.verify (read back, or the store's own checksum of what it received).
- Deletion at SignalWire needs the proof: `delete_at_source` reads the verified copy from the
  store (never from what this process believes), re-checks that storage still holds it, and
  hands it to SignalWireClient.delete_recording, which takes nothing else.
- A 404 for the media soon after completion means "not ready yet" (the metadata can say
  completed before the file is served): retried after short waits, and not counted as a failure.
"""

from __future__ import annotations

import hashlib
import logging
import time
from datetime import datetime, timedelta, timezone
from typing import Callable
from urllib.parse import quote

from urllib3.exceptions import HTTPError

from service.media.storage.base import Storage, StorageError, VerificationError
from service.signalwire.client import SignalWireClient, SignalWireError

log = logging.getLogger(__name__)

# A 404 this soon after the recording completed is media not served yet, not media gone.
NOT_READY_WINDOW = timedelta(minutes=10)
# Waits between tries within one attempt (about half a minute in all), as Twilio advises for
# the same lag: retry from a second or so, with backoff. Then the job's own retries take over.
NOT_READY_WAITS = (1, 2, 3, 5, 8, 13)
CHUNK = 256 * 1024
CONTENT_TYPES = {"wav": "audio/x-wav", "mp3": "audio/mpeg"}


class ArchiveError(Exception):
    """This attempt failed; the job's retries (or the sweep) try again."""


class ShortBody(ArchiveError):
    """The download ended before the number of bytes its Content-Length announced."""


class MediaNotReady(Exception):
    """The media still answered 404 soon after completion: not a failure, tried again later."""


class NoVerifiedCopy(Exception):
    """Refused: no verified copy of the recording exists, so it is not deleted at SignalWire."""


class HashingReader:
    """The download as storage reads it: SHA-256 and byte count kept as it is read, and a body
    shorter than its Content-Length (or a connection broken mid-body) raises ShortBody."""

    def __init__(self, response, expected: int | None):
        self._response = response
        self.expected = expected
        self._sha256 = hashlib.sha256()
        self.size = 0

    def read(self, size: int = CHUNK) -> bytes:
        try:
            data = self._response.read(min(size, CHUNK) if size > 0 else CHUNK)
        except HTTPError as exc:  # urllib3 fails a body that ends before Content-Length
            raise ShortBody(f"download broken off after {self.size} of {self.expected} bytes "
                            f"({type(exc).__name__})") from None
        if data:
            self._sha256.update(data)
            self.size += len(data)
        elif self.expected is not None and self.size != self.expected:
            raise ShortBody(f"download ended after {self.size} of {self.expected} bytes")
        return data

    def hexdigest(self) -> str:
        return self._sha256.hexdigest()


def object_key(storage: Storage, state: dict, fmt: str) -> str:
    """`{prefix}/{AccountSid}/{yyyy}/{mm}/{RecordingSid}.{ext}`: no two recordings share a key,
    and keys sort by account and month. The month is the recording's creation (stable across
    retries: it never changes once stored)."""
    when = state.get("date_created") or state["created_at"]
    account = quote(state.get("account_sid") or "unknown-account", safe="")
    return storage.key(f"{account}/{when:%Y}/{when:%m}/{quote(state['sid'], safe='')}.{fmt}")


class Archiver:
    def __init__(self, store, client: SignalWireClient, storage: Storage, *, fmt: str = "wav",
                 delete_after: bool = False, sleep: Callable[[float], None] = time.sleep):
        self.store = store
        self.client = client
        self.storage = storage
        self.fmt = fmt
        self.delete_after = delete_after
        self._sleep = sleep

    def archive(self, sid: str, *, final_attempt: bool = False) -> str:
        """Archive one recording (see the module docstring); returns what happened. A failed
        attempt is counted on the recording (`failed` when `final_attempt`) and re-raised."""
        state = self.store.archive_state(sid)
        if state is None:
            return "unknown recording"
        if state["status"] != "completed":
            return f"nothing to archive: the recording is {state['status']}"
        outcome = "already archived"
        if state["media_status"] != "archived":
            try:
                outcome = self._copy(sid, state)
            except MediaNotReady:
                raise
            except (SignalWireError, StorageError, VerificationError, ArchiveError) as exc:
                log.warning("media of %s: attempt failed: %s", sid, exc)
                self.store.media_failed(sid, str(exc), final=final_attempt)
                raise
        if self.delete_after and state["media_source_deleted_at"] is None:
            outcome += "; deleted at SignalWire" if self.delete_at_source(sid) else "; already gone at SignalWire"
        return outcome

    def delete_at_source(self, sid: str) -> bool:
        """DELETE the recording at SignalWire, only with its verified copy as proof: read from
        the store now, and re-checked in storage (there, the right size and SHA-256)."""
        copy = self.store.verified_copy(sid)
        if copy is None:
            raise NoVerifiedCopy(f"{sid}: no verified copy in the store")
        try:
            Storage.check_info(self.storage.stat(copy.key), copy.key, copy.bytes, copy.sha256)
        except VerificationError as exc:
            raise NoVerifiedCopy(f"{sid}: {exc}") from None
        deleted = self.client.delete_recording(copy)
        self.store.media_source_deleted(sid)
        log.info("recording %s %s at SignalWire", sid, "deleted" if deleted else "was already gone")
        return deleted

    # --- the copy ------------------------------------------------------------------------

    def _copy(self, sid: str, state: dict) -> str:
        key = object_key(self.storage, state, self.fmt)
        if self._already_stored(sid, key):
            return "archived (the copy was already in storage)"
        response = self._download(sid, state)
        try:
            length = response.headers.get("Content-Length")
            reader = HashingReader(response, int(length) if length and length.isdigit() else None)
            content_type = (response.headers.get("Content-Type") or "").split(";")[0].strip() \
                or CONTENT_TYPES[self.fmt]
            started = time.monotonic()
            self.storage.put(key, reader, content_type=content_type)
        except BaseException:
            response.close()  # never back to the pool with a body half read
            raise
        response.release_conn()
        how = self.storage.verify(key, reader.size, reader.hexdigest())
        self.store.media_archived(sid, key=key, size=reader.size, sha256=reader.hexdigest(), content_type=content_type)
        log.info("media of %s archived: %s, %d bytes in %.1fs, verified by %s", sid, key, reader.size,
                 time.monotonic() - started, how)
        return "archived"

    def _already_stored(self, sid: str, key: str) -> bool:
        info = self.storage.stat(key)
        if info is None or not info.sha256:
            return False
        try:
            self.storage.verify(key, info.bytes, info.sha256)
        except VerificationError as exc:
            log.warning("media of %s: the object in storage does not verify (%s); uploading again", sid, exc)
            return False
        self.store.media_archived(sid, key=key, size=info.bytes, sha256=info.sha256,
                                  content_type=info.content_type or CONTENT_TYPES[self.fmt])
        return True

    def _download(self, sid: str, state: dict):
        for wait in (*NOT_READY_WAITS, None):
            try:
                return self.client.open_media(sid, self.fmt)
            except SignalWireError as exc:
                if exc.status != 404 or not _just_completed(state):
                    raise
                if wait is None:
                    raise MediaNotReady(f"{sid}: media still 404 {sum(NOT_READY_WAITS)} s after the first try") \
                        from None
                log.info("media of %s not served yet (404); trying again in %ss", sid, wait)
                self._sleep(wait)
        raise AssertionError("unreachable")


def _just_completed(state: dict) -> bool:
    completed_at = state.get("end_time") or state.get("date_updated")
    return completed_at is None or datetime.now(timezone.utc) - completed_at < NOT_READY_WINDOW
