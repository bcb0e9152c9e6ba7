"""Notification events: their types, which stored state raises which, and the retry schedule.

No Flask, no SQL, no HTTP. A notification's body is thin: what identifies the recording and
its outcome, never SignalWire's media URL (the URL itself grants access to the audio) nor any
secret. Its data is read from the stored recording in the transaction that stores the change
(service.store.notifications), so it says what was stored.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from service.domain.recordings import is_terminal

STARTED = "recording.started"
COMPLETED = "recording.completed"
ABSENT = "recording.absent"
FAILED = "recording.failed"
ARCHIVED = "recording.archived"
EVENT_TYPES = (STARTED, COMPLETED, ABSENT, FAILED, ARCHIVED)

# The recording fields a notification's `data` carries (plus `media` once archived).
DATA_FIELDS = ("recording_sid", "call_sid", "account_sid", "status", "duration", "channels", "started_by_us")
MEDIA_FIELDS = ("sha256", "bytes", "content_type")

# Standard Webhooks' schedule: the first attempt at once, then retries after these delays.
RETRY_SCHEDULE = (0, 5, 5 * 60, 30 * 60, 2 * 3600, 5 * 3600, 10 * 3600, 14 * 3600, 20 * 3600, 24 * 3600)
# Each retry waits its delay plus up to this fraction more, so endpoints that failed together
# are not all retried in the same second.
JITTER = 0.1
# A Retry-After longer than this is read as this: a receiver cannot park a message for days.
MAX_RETRY_AFTER = 24 * 3600
# After a rotation the old secret keeps signing, alongside the new one, this long.
ROTATION_OVERLAP = timedelta(hours=24)


def terminal_event(status: str | None) -> str | None:
    """The event stored metadata with this status raises: completed and absent have their
    own, any other terminal status is a failure; a recording still live raises none."""
    if not is_terminal(status):
        return None
    return {"completed": COMPLETED, "absent": ABSENT}.get(status, FAILED)


def next_attempt(attempts: int, now: datetime, schedule: tuple[float, ...] = RETRY_SCHEDULE,
                 retry_after: float | None = None, rng: random.Random | None = None) -> datetime | None:
    """When to try again after `attempts` failed attempts, or None when the schedule is spent.

    A Retry-After (429, 503) is honoured: the next attempt is not earlier than it asked.
    """
    if attempts >= len(schedule):
        return None
    delay = schedule[attempts]
    delay += delay * JITTER * (rng or random).random()
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
    return now + timedelta(seconds=delay)
