"""Recordings and their states: the domain shared by the web app, the client, the store and the jobs.

Nothing here imports Flask, SQLAlchemy or HTTP code. SignalWire's wire types drift (the
OpenAPI document, 2018 responses and older docs disagree on strings vs numbers), so every
parser here is lenient and keeps what it does not know instead of failing on it.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any, Mapping

# Status order. A recording's state only moves forward: a late `in-progress` callback
# never overwrites `completed`. Statuses we do not know rank with the live ones, so they
# are stored and shown but never undo a terminal state.
_RANK = {
    "queued": 0,
    "in-progress": 1,
    "paused": 1,
    "resumed": 1,
    "stopped": 2,
    "processing": 2,
    "completed": 3,
    "absent": 3,
    "failed": 3,
    "deleted": 4,
}
TERMINAL_STATUSES = frozenset({"completed", "absent", "failed", "deleted"})
LIVE_STATUSES = frozenset({"queued", "in-progress", "paused", "resumed"})
CALLBACK_EVENTS = ("in-progress", "completed", "absent")


def status_rank(status: str | None) -> int:
    if status is None:
        return -1
    return _RANK.get(status, 1)


def is_terminal(status: str | None) -> bool:
    return status in TERMINAL_STATUSES


def needs_metadata(status: str) -> bool:
    """Live statuses are only recorded; every other status (terminal or unknown) is fetched."""
    return status not in LIVE_STATUSES


# --- lenient parsing -------------------------------------------------------------------


def parse_int(value: Any) -> int | None:
    """'94', 94, 94.0, '' and None all parse; garbage becomes None rather than an error."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    try:
        text = str(value).strip()
        if not text:
            return None
        number = float(text)
        # Callbacks are fuzzed by the world: 'inf', 'nan' and 1e309 must not raise either.
        return int(number) if abs(number) < 2**63 else None
    except (TypeError, ValueError, OverflowError):
        return None


def parse_text(value: Any) -> str | None:
    """Numbers become their text ('-0.0025', 0.0 -> '0.0'); empty strings become None."""
    if value is None:
        return None
    if isinstance(value, float):
        return repr(value)
    text = str(value)
    return text if text != "" else None


def parse_time(value: Any) -> datetime | None:
    """RFC 2822 (SignalWire's format) or ISO 8601; always returned in UTC."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        parsed = value
    else:
        text = str(value).strip()
        try:
            parsed = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            try:
                parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    try:
        return parsed.astimezone(timezone.utc)
    except OverflowError:  # year 1 ahead of UTC, or 9999 behind it: no UTC time exists
        return None


def format_time(value: datetime | None) -> str | None:
    return value.astimezone(timezone.utc).isoformat() if value is not None else None


# --- the recording as SignalWire describes it ------------------------------------------


@dataclasses.dataclass(frozen=True)
class Recording:
    """One recording's metadata, normalised from the REST API's JSON."""

    sid: str
    account_sid: str | None = None
    api_version: str | None = None
    call_sid: str | None = None
    conference_sid: str | None = None
    channels: int | None = None
    date_created: datetime | None = None
    date_updated: datetime | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    duration: int | None = None
    price: str | None = None
    price_unit: str | None = None
    source: str | None = None
    status: str | None = None
    error_code: str | None = None
    uri: str | None = None
    subresource_uris: dict | None = None
    track: str | None = None
    trim: str | None = None
    # Keys the API sent that are not modelled above (`channel`, `encryption_details`, ...).
    extra: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> "Recording":
        if not isinstance(data, Mapping) or not data.get("sid"):
            raise ValueError("recording JSON has no sid")
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        subresources = data.get("subresource_uris")
        channels = data.get("channels", data.get("channel"))
        return cls(
            sid=str(data["sid"]),
            account_sid=parse_text(data.get("account_sid")),
            api_version=parse_text(data.get("api_version")),
            call_sid=parse_text(data.get("call_sid")),
            conference_sid=parse_text(data.get("conference_sid")),
            channels=parse_int(channels),
            date_created=parse_time(data.get("date_created")),
            date_updated=parse_time(data.get("date_updated")),
            start_time=parse_time(data.get("start_time")),
            end_time=parse_time(data.get("end_time")),
            duration=parse_int(data.get("duration")),
            price=parse_text(data.get("price")),
            price_unit=parse_text(data.get("price_unit")),
            source=parse_text(data.get("source")),
            status=parse_text(data.get("status")),
            error_code=parse_text(data.get("error_code")),
            uri=parse_text(data.get("uri")),
            subresource_uris=dict(subresources) if isinstance(subresources, Mapping) else None,
            track=parse_text(data.get("track")),
            trim=parse_text(data.get("trim")),
            extra={k: v for k, v in data.items() if k not in known},
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (times as ISO 8601 UTC)."""
        out = dataclasses.asdict(self)
        for name in ("date_created", "date_updated", "start_time", "end_time"):
            out[name] = format_time(out[name])
        return out


# --- the status callback ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CallbackEvent:
    """One RecordingStatusCallback as received (already verified and validated)."""

    recording_sid: str
    account_sid: str
    status: str
    call_sid: str | None = None
    recording_url: str | None = None
    duration: int | None = None
    channels: int | None = None
    source: str | None = None
    start_time: datetime | None = None
    track: str | None = None
    error_code: str | None = None
    conference_sid: str | None = None
    # Every parameter exactly as it arrived, for the history.
    params: dict = dataclasses.field(default_factory=dict)
    received_at: datetime = dataclasses.field(default_factory=lambda: datetime.now(timezone.utc))

    @property
    def dedupe_key(self) -> str:
        return f"{self.recording_sid}:{self.status}"

    def to_payload(self) -> dict[str, Any]:
        """Plain, JSON-safe form used for the queue and the inbox."""
        # A shallow copy: asdict() deep-copies every value, on the webhook's hot path.
        out = {name: getattr(self, name) for name in _EVENT_FIELD_NAMES}
        out["params"] = dict(self.params)
        out["start_time"] = format_time(self.start_time)
        out["received_at"] = format_time(self.received_at)
        return out

    @classmethod
    def from_payload(cls, data: Mapping[str, Any]) -> "CallbackEvent":
        values = dict(data)
        values["start_time"] = parse_time(values.get("start_time"))
        values["received_at"] = parse_time(values.get("received_at")) or datetime.now(timezone.utc)
        return cls(**values)


_EVENT_FIELD_NAMES = tuple(f.name for f in dataclasses.fields(CallbackEvent))
