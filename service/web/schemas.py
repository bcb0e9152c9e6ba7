"""Request schemas (marshmallow) for the start-recording API, the read API and the callbacks."""

from __future__ import annotations

from datetime import timezone

from marshmallow import EXCLUDE, RAISE, Schema, ValidationError, fields, validate, validates_schema

from service.domain.recordings import CALLBACK_EVENTS, parse_int, parse_text, parse_time
from service.media import MEDIA_STATUSES

# \Z, not $: "$" would also accept a trailing newline.
SID = validate.Regexp(r"^[A-Za-z0-9_-]{1,64}\Z", error="must be 1-64 letters, digits, '-' or '_'")
STATUS = validate.Regexp(r"^[A-Za-z0-9_-]{1,32}\Z", error="must be 1-32 letters, digits, '-' or '_'")


class StartRecordingSchema(Schema):
    class Meta:
        unknown = RAISE

    channels = fields.String(load_default="mono", validate=validate.OneOf(["mono", "dual"]))
    track = fields.String(load_default="both", validate=validate.OneOf(["inbound", "outbound", "both"]))
    trim = fields.String(load_default="do-not-trim", validate=validate.OneOf(["trim-silence", "do-not-trim"]))
    events = fields.List(
        fields.String(validate=validate.OneOf(CALLBACK_EVENTS)),
        load_default=lambda: list(CALLBACK_EVENTS),
        validate=validate.Length(min=1),
    )
    callback_method = fields.String(load_default="POST", validate=validate.OneOf(["GET", "POST"]))

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


class ListRecordingsSchema(Schema):
    class Meta:
        unknown = RAISE

    call_sid = fields.String(validate=SID)
    status = fields.String(validate=STATUS)
    media_status = fields.String(validate=validate.OneOf(MEDIA_STATUSES))
    created_after = UtcDateTime()
    created_before = UtcDateTime()
    cursor = fields.String(validate=validate.Length(max=512))
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=1000))


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
