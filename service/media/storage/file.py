"""`file:///path`: objects are files under a folder (the local run's default, in instance/).

Each object is written to a temporary file beside its final name, flushed to disk and renamed
into place, so a reader never sees half a file; its metadata (size, SHA-256, content type) is a
small JSON file next to it (`<key>.meta.json`), written the same way after it. A copy is
verified by reading it back and hashing it: a file system keeps no checksum of its own.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import BinaryIO

from service.media.storage.base import CHUNK, ObjectInfo, Source, Storage, StorageError

META_SUFFIX = ".meta.json"


class FileStorage(Storage):
    scheme = "file"

    def __init__(self, root: str):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"FileStorage({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise StorageError(f"key {key!r} leaves the storage folder")
        return path

    def _write_atomically(self, path: Path, write) -> None:
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
        try:
            with open(tmp, "wb") as out:
                write(out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def put(self, key: str, source: Source, *, content_type: str) -> None:
        path = self._path(key)
        meta_path = path.with_name(path.name + META_SUFFIX)

        def copy(out: BinaryIO) -> None:
            while chunk := source.read(CHUNK):
                out.write(chunk)

        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            meta_path.unlink(missing_ok=True)  # the old metadata must never describe the new file
            self._write_atomically(path, copy)
            meta = {"bytes": source.size, "sha256": source.hexdigest(), "content_type": content_type}
            self._write_atomically(meta_path, lambda out: out.write(json.dumps(meta).encode()))
        except OSError as exc:
            raise StorageError(f"{type(exc).__name__} writing {key}: {exc.strerror or exc}") from None

    def stat(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        try:
            meta = json.loads(path.with_name(path.name + META_SUFFIX).read_bytes())
            size = path.stat().st_size
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise StorageError(f"{type(exc).__name__} reading {key}'s metadata") from None
        return ObjectInfo(key, size, meta.get("sha256"), meta.get("content_type"))

    def verify(self, key: str, size: int, sha256: str) -> str:
        self.check_info(self.stat(key), key, size, sha256)
        return self.read_back(key, size, sha256)

    def open(self, key: str, size: int) -> BinaryIO:
        try:
            return open(self._path(key), "rb")
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise StorageError(f"{type(exc).__name__} opening {key}") from None
