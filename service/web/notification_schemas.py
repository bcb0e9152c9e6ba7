"""Schemas of the notification API: endpoints, their secrets, their deliveries."""

from __future__ import annotations

from marshmallow import RAISE, Schema, ValidationError, fields, validate

from service.notify.addresses import MAX_URL_LENGTH
from service.notify.events import EVENT_TYPES
from service.store.notifications import DELIVERY_STATUSES
from service.web.openapi import ResponseSchema
from service.web.schemas import CursorPageSchema, CursorQuerySchema, UtcDateTime

ENDPOINT_ID = validate.Regexp(r"^ep_[0-9a-f]{24}\Z", error="is not an endpoint id")
DELIVERY_ID = validate.Regexp(r"^msg_[0-9a-f]{24}_ep_[0-9a-f]{24}\Z", error="is not a delivery id")
ENDPOINT_ID_PARAM = {"type": "string", "pattern": ENDPOINT_ID.regex.pattern.replace("\\Z", "$")}
DELIVERY_ID_PARAM = {"type": "string", "pattern": DELIVERY_ID.regex.pattern.replace("\\Z", "$")}
EVENTS_DOC = ("Event types to send: " + ", ".join(f"`{t}`" for t in EVENT_TYPES)
              + ". Empty or absent: all of them, including any added later.")


def _doc(text: str) -> dict:
    return {"metadata": {"description": text}}


def _unique(events: list) -> None:
    if len(set(events)) != len(events):
        raise ValidationError("must not repeat")


def _events(**kwargs) -> fields.List:
    # Validators on the list run once its items are valid: item errors are keyed by index, and
    # a message keyed by name beside them would not make a JSON object with sortable keys.
    return fields.List(fields.String(validate=validate.OneOf(EVENT_TYPES)),
                       validate=[validate.Length(max=len(EVENT_TYPES)), _unique], **kwargs)


class _EndpointInput(Schema):
    class Meta:
        unknown = RAISE


class EndpointCreateSchema(_EndpointInput):
    url = fields.String(required=True, validate=validate.Length(min=1, max=MAX_URL_LENGTH),
                        **_doc("Where to POST: https, resolving only to public addresses."))
    events = _events(load_default=list, **_doc(EVENTS_DOC))
    description = fields.String(load_default="", validate=validate.Length(max=500), **_doc("For people."))


class EndpointPatchSchema(_EndpointInput):
    url = fields.String(validate=validate.Length(min=1, max=MAX_URL_LENGTH), **_doc("A new URL (checked again)."))
    events = _events(**_doc(EVENTS_DOC))
    description = fields.String(validate=validate.Length(max=500))
    disabled = fields.Boolean(**_doc("true: send nothing (new events are not kept for it); false: send again."))


class EndpointSchema(ResponseSchema):
    id = fields.String(required=True)
    url = fields.String(required=True)
    description = fields.String(required=True)
    events = fields.List(fields.String(), required=True, **_doc("Subscribed event types; empty: all."))
    disabled = fields.Boolean(required=True)
    disabled_reason = fields.String(required=True, allow_none=True,
                                    **_doc("Why it is disabled (through the API, or the endpoint answered 410)."))
    created_at = fields.String(required=True, metadata={"format": "date-time"})
    updated_at = fields.String(required=True, metadata={"format": "date-time"})


class EndpointCreatedSchema(EndpointSchema):
    secret = fields.String(required=True, **_doc(
        "The signing secret (`whsec_` + base64), shown this once: keep it to verify signatures."))


class EndpointListSchema(ResponseSchema):
    endpoints = fields.List(fields.Nested(EndpointSchema), required=True, **_doc("Oldest first."))


class RotatedSecretSchema(ResponseSchema):
    id = fields.String(required=True)
    secret = fields.String(required=True, **_doc(
        "The new secret, shown this once. The previous ones keep signing alongside it for 24 hours."))


class DeliveryQuerySchema(CursorQuerySchema):
    status = fields.String(validate=validate.OneOf(DELIVERY_STATUSES), **_doc("Only deliveries in this state."))


class DeliverySchema(ResponseSchema):
    id = fields.String(required=True, **_doc("The message's `webhook-id`, the same on every attempt."))
    endpoint_id = fields.String(required=True)
    event_type = fields.String(required=True)
    recording_sid = fields.String(required=True)
    status = fields.String(required=True, **_doc(
        "pending (waiting for its next attempt, or being sent), delivered, or failed (the retries are spent, the "
        "endpoint answered 410, or it was disabled)."))
    attempts = fields.Integer(required=True, **_doc("Attempts made (since the last replay)."))
    last_status = fields.Integer(required=True, allow_none=True, **_doc("The HTTP status of the last attempt."))
    last_error = fields.String(required=True, allow_none=True, **_doc("Why the last attempt failed."))
    last_attempt_at = fields.String(required=True, allow_none=True, metadata={"format": "date-time"})
    next_attempt_at = fields.String(required=True, allow_none=True, metadata={"format": "date-time"})
    created_at = fields.String(required=True, metadata={"format": "date-time"})
    updated_at = fields.String(required=True, metadata={"format": "date-time"})


class DeliveryPageSchema(CursorPageSchema):
    deliveries = fields.List(fields.Nested(DeliverySchema), required=True, **_doc("Newest first."))


class ReplaySinceSchema(Schema):
    class Meta:
        unknown = RAISE

    since = UtcDateTime(required=True, **_doc("Replay the failed deliveries created at or after this time."))


class ReplayedSchema(ResponseSchema):
    replayed = fields.Integer(required=True, **_doc("How many deliveries are due again."))
