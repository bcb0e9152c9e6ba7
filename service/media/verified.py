"""The proof a deletion at SignalWire needs: a recording's verified copy, as the store holds it.

Only `Store.verified_copy()` makes one, from a row whose copy was read back and checked against
the download (`service.media.archive`); `SignalWireClient.delete_recording()` takes nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class VerifiedCopy:
    sid: str
    key: str
    bytes: int
    sha256: str
    content_type: str
    archived_at: datetime
