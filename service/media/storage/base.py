"""The interface every storage backend keeps, and what they share.

A backend stores an object under a key from a stream it reads to the end (never whole in
memory), reports what it holds (size, our SHA-256 and content type from the object's metadata),
verifies a copy against what was downloaded, and opens an object for reading (seekable, so the
API can serve byte ranges).
"""

from __future__ import annotations

import abc
import hashlib
from dataclasses import dataclass
from typing import BinaryIO, Protocol

CHUNK = 1024 * 1024


class StorageError(Exception):
    """The store could not be reached, or refused an operation."""


class VerificationError(Exception):
    """The stored copy is not the bytes that were downloaded (or is not there)."""


class Source(Protocol):
    """What put() reads from: the download, hashed as it is read (service.media.archive)."""

    def read(self, size: int) -> bytes: ...

    @property
    def size(self) -> int: ...  # bytes read so far; all of them once read() returned b""

    def hexdigest(self) -> str: ...  # SHA-256 of what was read; final once read() returned b""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    bytes: int
    sha256: str | None  # our SHA-256 (hex), from the object's metadata
    content_type: str | None
    # The store's own SHA-256 checksum (base64), when it reports one: computed by the store
    # from what it received, or checked by it against the one we sent (S3 refuses a mismatch).
    store_checksum: str | None = None


class Storage(abc.ABC):
    scheme: str
    prefix: str = ""  # keys start with it ("" for none)

    def key(self, relative: str) -> str:
        return f"{self.prefix}/{relative}" if self.prefix else relative

    @abc.abstractmethod
    def put(self, key: str, source: Source, *, content_type: str) -> None:
        """Store the source's bytes, read to the end, with its SHA-256 and the content type in
        the object's metadata. Replaces an object already under that key."""

    @abc.abstractmethod
    def stat(self, key: str) -> ObjectInfo | None:
        """What the store holds under `key`, or None."""

    @abc.abstractmethod
    def verify(self, key: str, size: int, sha256: str) -> str:
        """Check the stored object is exactly `size` bytes hashing to `sha256` (hex), reading it
        back where the store's own checksum cannot prove it. Returns how it was checked
        ("checksum" or "read"); raises VerificationError otherwise."""

    @abc.abstractmethod
    def open(self, key: str, size: int) -> BinaryIO:
        """A seekable binary reader over the object (its size known from the store)."""

    def close(self) -> None:
        pass

    def read_back(self, key: str, size: int, sha256: str) -> str:
        """Verification by reading the whole object and hashing it."""
        digest, count = hashlib.sha256(), 0
        try:
            with self.open(key, size) as reader:
                while chunk := reader.read(CHUNK):
                    digest.update(chunk)
                    count += len(chunk)
        except FileNotFoundError:
            raise VerificationError(f"{key}: not found when read back") from None
        if count != size or digest.hexdigest() != sha256:
            raise VerificationError(f"{key}: read back {count} bytes with SHA-256 {digest.hexdigest()[:12]}…, "
                                    f"expected {size} bytes with {sha256[:12]}…")
        return "read"

    @staticmethod
    def check_info(info: ObjectInfo | None, key: str, size: int, sha256: str) -> ObjectInfo:
        if info is None:
            raise VerificationError(f"{key}: not in storage")
        if info.bytes != size:
            raise VerificationError(f"{key}: {info.bytes} bytes stored, {size} downloaded")
        if info.sha256 != sha256:
            raise VerificationError(f"{key}: metadata SHA-256 {str(info.sha256)[:12]}… is not {sha256[:12]}…")
        return info
