"""Schemas (marshmallow) of the API's requests and answers, and of the callbacks.

They validate what comes in, shape what goes out, and are what the OpenAPI document is
generated from (service/web/openapi.py), so the three cannot disagree.
"""

from __future__ import annotations

from datetime import timezone

from marshmallow import EXCLUDE, RAISE, Schema, ValidationError, fields, validate, validates_schema

from service.domain.recordings import CALLBACK_EVENTS, parse_int, parse_text, parse_time
from service.media import MEDIA_STATUSES
from service.web.openapi import ResponseSchema

# \Z, not $: "$" would also accept a trailing newline.
SID = validate.Regexp(r"^[A-Za-z0-9_-]{1,64}\Z", error="must be 1-64 letters, digits, '-' or '_'")
# A path parameter's schema in the document (ECMA-262 anchors there).
SID_PARAM = {"type": "string", "pattern": SID.regex.pattern.replace("\\Z", "$")}
STATUS = validate.Regexp(r"^[A-Za-z0-9_-]{1,32}\Z", error="must be 1-32 letters, digits, '-' or '_'")


def _doc(text: str, **more) -> dict:
    return {"metadata": {"description": text, **more}}


class StartRecordingSchema(Schema):
    """What to record; every key is optional. Unknown keys are rejected."""

    class Meta:
        unknown = RAISE

    channels = fields.String(load_default="mono", validate=validate.OneOf(["mono", "dual"]),
                             **_doc("One channel, or one per leg of the call."))
    track = fields.String(load_default="both", validate=validate.OneOf(["inbound", "outbound", "both"]),
                          **_doc("Which audio to record."))
    trim = fields.String(load_default="do-not-trim", validate=validate.OneOf(["trim-silence", "do-not-trim"]),
                         **_doc("Trim leading and trailing silence; always sent to SignalWire explicitly."))
    events = fields.List(
        fields.String(validate=validate.OneOf(CALLBACK_EVENTS)),
        load_default=lambda: list(CALLBACK_EVENTS),
        validate=validate.Length(min=1),
        **_doc("The status callbacks to ask SignalWire for; none repeated."),
    )
    callback_method = fields.String(load_default="POST", validate=validate.OneOf(["GET", "POST"]),
                                    **_doc("How SignalWire calls this service's webhook."))

    @validates_schema
    def _unique_events(self, data, **kwargs):
        events = data.get("events") or []
        if len(set(events)) != len(events):
            raise ValidationError("events must not repeat", "events")


class UtcDateTime(fields.AwareDateTime):
    """An ISO 8601 time with its offset, in UTC; one with no UTC equivalent is out of range."""

    def _deserialize(self, value, attr, data, **kwargs):
        try:
            return super()._deserialize(value, attr, data, **kwargs).astimezone(timezone.utc)
        except OverflowError:
            raise ValidationError("is out of range once converted to UTC")


class CursorQuerySchema(Schema):
    """The paging half of a list's query; a list's own query schema adds its filters."""

    class Meta:
        unknown = RAISE

    cursor = fields.String(validate=validate.Length(max=512),
                           **_doc("`next_cursor` of the previous page; omit for the first page."))
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=1000),
                           **_doc("Items per page."))


class CursorPageSchema(ResponseSchema):
    """One page of a list; a list's own page schema adds the items under a plural name."""

    next_cursor = fields.String(required=True, allow_none=True,
                                **_doc("Pass as `cursor` for the next page; null on the last page."))


class ListRecordingsSchema(CursorQuerySchema):
    call_sid = fields.String(validate=SID, **_doc("Only this call's recordings."))
    status = fields.String(validate=STATUS, **_doc("Only recordings with this status."))
    media_status = fields.String(validate=validate.OneOf(MEDIA_STATUSES),
                                 **_doc("Only recordings whose audio archive is in this state."))
    created_after = UtcDateTime(**_doc("Created at or after this time (ISO 8601 with its offset)."))
    created_before = UtcDateTime(**_doc("Created before this time (ISO 8601 with its offset)."))


class IdempotencyHeadersSchema(Schema):
    class Meta:
        unknown = EXCLUDE  # every other header

    idempotency_key = fields.String(
        data_key="Idempotency-Key",
        # Printable ASCII; spaces only inside (HTTP strips them at the ends).
        validate=validate.Regexp(r"^[\x21-\x7e](?:[\x20-\x7e]{0,253}[\x21-\x7e])?\Z",
                                 error="must be 1-255 printable ASCII characters, not starting or ending with a space"),
        **_doc("Any unique string of 1-255 printable ASCII characters (a UUID, say), chosen by the client for "
               "this one start; send it again with every retry of the same start."),
    )


# --- answers ---------------------------------------------------------------------------

def _time(text: str) -> fields.String:
    # Stored and returned as ISO 8601 text already (the store's rows are JSON-ready).
    return fields.String(required=True, allow_none=True, metadata={"description": text, "format": "date-time"})


def _text(text: str) -> fields.String:
    return fields.String(required=True, allow_none=True, **_doc(text))


def _int(text: str) -> fields.Integer:
    return fields.Integer(required=True, allow_none=True, **_doc(text))


class RecordingSchema(ResponseSchema):
    """A recording's metadata as SignalWire describes it (null where not known yet)."""

    sid = fields.String(required=True, **_doc("The RecordingSid."))
    account_sid = _text("The SignalWire project.")
    api_version = _text("SignalWire's API version.")
    call_sid = _text("The recorded call.")
    conference_sid = _text("The recorded conference, if any.")
    channels = _int("1 or 2.")
    date_created = _time("When SignalWire created it.")
    date_updated = _time("When SignalWire last changed it.")
    start_time = _time("When recording started.")
    end_time = _time("When recording ended.")
    duration = _int("Seconds.")
    price = _text("As SignalWire reports it (a decimal string, often negative).")
    price_unit = _text("The price's currency.")
    source = _text("What started it (StartCallRecordingApi for this service's starts).")
    status = _text("in-progress, paused, stopped, completed, absent, failed, deleted, ...")
    error_code = _text("SignalWire's error code, if it failed.")
    uri = _text("SignalWire's URI of the recording.")
    subresource_uris = fields.Dict(required=True, allow_none=True, **_doc("SignalWire's subresource URIs."))
    track = _text("inbound, outbound or both.")
    trim = _text("trim-silence or do-not-trim.")
    extra = fields.Dict(required=True, allow_none=True, **_doc("Whatever else SignalWire sent, as it sent it."))


class StartedRecordingSchema(RecordingSchema):
    requested = fields.Nested(StartRecordingSchema, required=True, **_doc("What was asked for, defaults applied."))


class RecordingMediaSchema(ResponseSchema):
    """The recording's audio in the media archive (null until it is queued for archiving)."""

    status = fields.String(required=True, validate=validate.OneOf(MEDIA_STATUSES),
                           **_doc("pending (queued or being retried), archived (a verified copy exists) or failed "
                                  "(no retry left; the sweep queues it again later)."))
    key = _text("The copy's key in storage.")
    bytes = _int("The copy's size.")
    sha256 = _text("SHA-256 of the audio (hex), checked on the copy.")
    content_type = _text("audio/x-wav or audio/mpeg.")
    archived_at = _time("When the copy was verified.")
    source_deleted_at = _time("When the recording was deleted at SignalWire (after archiving).")
    attempts = fields.Integer(required=True, **_doc("Archive attempts that failed."))
    error = _text("The last failed attempt's error.")


class StoredRecordingSchema(RecordingSchema):
    requested = fields.Nested(StartRecordingSchema, required=True, allow_none=True,
                              **_doc("What this service asked for, if it started the recording."))
    started_by_us = fields.Boolean(required=True, **_doc("Started through this API (not only seen in callbacks)."))
    created_at = _time("Sort key of the list: date_created when known, else first_seen_at.")
    first_seen_at = _time("When this service first heard of it.")
    last_fetched_at = _time("When its metadata was last fetched for its current status (null: not yet).")
    updated_at = _time("When this service last changed it.")
    attempts = fields.Integer(required=True, **_doc("Metadata fetches that failed."))
    last_error = _text("The last fetch's error, if it failed.")
    media = fields.Nested(RecordingMediaSchema, required=True, allow_none=True,
                          **_doc("The audio's archived copy (null: archiving is off, or not queued yet)."))


class RecordingEventSchema(ResponseSchema):
    status = fields.String(required=True, **_doc("The callback's RecordingStatus."))
    params = fields.Dict(required=True, **_doc("Every parameter of the callback, as it came."))
    received_at = _time("When the callback arrived.")


class RecordingDetailSchema(StoredRecordingSchema):
    events = fields.List(fields.Nested(RecordingEventSchema), required=True,
                         **_doc("The status history: one entry per status, oldest first."))


class RecordingPageSchema(CursorPageSchema):
    recordings = fields.List(fields.Nested(StoredRecordingSchema), required=True, **_doc("Newest first."))


class _Lenient(fields.Field):
    """Never rejects a value: callbacks are advisory and a 4xx only makes SignalWire retry."""

    def __init__(self, parse, **kwargs):
        super().__init__(**kwargs)
        self._parse = parse

    def _deserialize(self, value, attr, data, **kwargs):
        return self._parse(value)


class CallbackSchema(Schema):
    """RecordingStatusCallback parameters as SignalWire documents them. Unknown keys are allowed and
    kept in the event's raw params; any RecordingStatus string is accepted."""

    class Meta:
        unknown = EXCLUDE

    AccountSid = fields.String(required=True, validate=validate.Length(min=1, max=64))
    RecordingSid = fields.String(required=True, validate=SID)
    RecordingStatus = fields.String(required=True, validate=validate.Length(min=1, max=32))
    CallSid = fields.String(validate=validate.Length(max=64))
    RecordingUrl = fields.String(validate=validate.Length(max=2048))
    RecordingDuration = _Lenient(parse_int)
    RecordingChannels = _Lenient(parse_int)
    RecordingSource = _Lenient(parse_text)
    RecordingStartTime = _Lenient(parse_time)
    RecordingTrack = _Lenient(parse_text)
    ErrorCode = _Lenient(parse_text)
    ConferenceSid = _Lenient(parse_text)

    @validates_schema(pass_original=True)
    def _no_nul(self, data, original, **kwargs):
        # PostgreSQL can store NUL in neither text nor JSON: a job carrying one could never be
        # stored, so it is refused here rather than accepted and lost to the dead letters.
        bad = {key: ["must not contain NUL characters"] for key, value in original.items()
               if "\x00" in key or "\x00" in value}
        if bad:
            raise ValidationError(bad)


start_recording_schema = StartRecordingSchema()
list_recordings_schema = ListRecordingsSchema()
callback_schema = CallbackSchema()
