"""Where archived media goes, chosen by MEDIA_STORAGE_URL: `file:///path` (file.py) or
`s3://bucket/prefix` (s3.py, any S3-compatible store). base.py is the interface both keep."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from service.media.storage.base import ObjectInfo, Storage, StorageError

__all__ = ["Location", "ObjectInfo", "Storage", "StorageError", "open_storage", "parse_location"]

# S3's bucket naming rules (3-63 lower-case letters, digits, dots and hyphens).
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]\Z")
VERIFY_MODES = ("checksum", "read")


@dataclass(frozen=True)
class Location:
    scheme: str  # "file" or "s3"
    root: str  # the folder (file) or the bucket (s3)
    prefix: str  # key prefix inside it, without leading or trailing '/'; may be empty


def parse_location(url: str) -> Location:
    """'file:///srv/media' or 's3://bucket/some/prefix'; ValueError says what is wrong."""
    parts = urlsplit(url.strip())
    if parts.query or parts.fragment:
        raise ValueError("must not have a query string or a fragment")
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError("file:// URLs take an absolute path (file:///srv/media)")
        path = unquote(parts.path)
        if not path.startswith("/") or path.rstrip("/") == "":
            raise ValueError("file:// URLs take an absolute folder other than / (file:///srv/media)")
        return Location("file", path.rstrip("/"), "")
    if parts.scheme == "s3":
        bucket = parts.netloc
        if not _BUCKET.match(bucket) or ".." in bucket:
            raise ValueError(f"{bucket!r} is not an S3 bucket name (3-63 lower-case letters, digits, '.' or '-')")
        prefix = unquote(parts.path).strip("/")
        return Location("s3", bucket, prefix)
    raise ValueError("must be a file:///path or an s3://bucket/prefix URL")


def open_storage(url: str, verify: str = "checksum") -> Storage:
    """The backend for a MEDIA_STORAGE_URL; boto3 is imported only for s3://."""
    location = parse_location(url)
    if location.scheme == "file":
        from service.media.storage.file import FileStorage

        return FileStorage(location.root)
    from service.media.storage.s3 import S3Storage

    return S3Storage(location.root, location.prefix, verify=verify)
