"""RecordingStatusCallback receiver: verify, validate, dedupe + enqueue, acknowledge.

No outbound HTTP and no database write on this path unless Redis is down (then the inbox).
"""

from __future__ import annotations

import logging

from flask import current_app, request
from marshmallow import ValidationError
from werkzeug.datastructures import MultiDict

from service.pipelines.ingest import Unavailable
from service.domain.recordings import CallbackEvent
from service.signalwire.signatures import verify_signature
from service.web.errors import ApiError
from service.web.openapi import ApiBlueprint, webhook_doc
from service.web.schemas import CallbackSchema, callback_schema

log = logging.getLogger(__name__)
bp = ApiBlueprint("webhooks", __name__, url_prefix="/webhooks", authenticated=False,
                  description="SignalWire's recording status callbacks (signed, not for API clients).")


def _signed_url(settings) -> str:
    # Rebuilt from PUBLIC_BASE_URL, not from Host/X-Forwarded-*: this is the URL SignalWire
    # was told to call, and it holds behind Heroku's router. The raw query string is used
    # byte for byte because the signature covers it that way.
    url = settings.public_base_url + request.path
    query = request.query_string.decode("latin-1")
    return f"{url}?{query}" if query else url


def _signed_parameters(settings) -> MultiDict:
    """The callback's parameters, taken only from what its signature covers.

    GET (and HEAD): the query string, which is part of the signed URL. POST: the form fields,
    which are signed one by one; or, with ?bodySHA256= in the signed URL, the raw body whose
    hash that is (form or JSON). A JSON body without it is covered by nothing and is refused.
    """
    unsigned_ok = settings.allow_unsigned_webhooks and not settings.signalwire_signing_keys
    # Read before the form parser consumes the stream: only the raw bytes can be hashed.
    # (The byte test spares the ack path parsing an empty query on every form POST.)
    body_signed = b"bodySHA256" in request.query_string and "bodySHA256" in request.args
    raw_body = request.get_data(cache=True) if body_signed else None
    if request.method in ("GET", "HEAD"):
        params, signed_form = request.args, None
    elif request.is_json:
        if raw_body is None and not unsigned_ok:
            raise ApiError(403, "invalid signature: a JSON body is signed only through bodySHA256 in the URL")
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise ApiError(400, "callback body must be a form or a JSON object")
        params = MultiDict({str(k): "" if v is None else str(v) for k, v in body.items()})
        signed_form = None
    else:
        params = request.form
        signed_form = None if raw_body is not None else list(params.items(multi=True))
    if unsigned_ok:
        return params
    signature = request.headers.get("X-SignalWire-Signature") or request.headers.get("X-Twilio-Signature")
    if not signature:
        raise ApiError(403, "missing signature: X-SignalWire-Signature header is required")
    if not verify_signature(settings.signalwire_signing_keys, signature, _signed_url(settings), signed_form, raw_body):
        raise ApiError(403, "invalid signature")
    return params


@bp.route("/recording-status", methods=["GET", "POST"], method_docs=webhook_doc(CallbackSchema))
def recording_status():
    """SignalWire's RecordingStatusCallback.

    Verified against the configured signing keys (the URL as configured in PUBLIC_BASE_URL, the
    form fields, or the raw body through `bodySHA256`), validated, deduplicated on
    (RecordingSid, RecordingStatus) and queued; 204 once a durable copy exists.
    """
    settings = current_app.config["SETTINGS"]
    # Bound the body before anything reads it (werkzeug answers 413 past this).
    request.max_content_length = settings.max_callback_bytes
    # SignalWire sends each parameter once; of a repeated one the first counts.
    params = _signed_parameters(settings).to_dict()
    try:
        data = callback_schema.load(params)
    except ValidationError as exc:
        raise ApiError(400, "invalid callback parameters", fields=exc.messages)
    if data["AccountSid"] != settings.signalwire_project_id:
        raise ApiError(403, "AccountSid does not match this service's project")

    event = CallbackEvent(
        recording_sid=data["RecordingSid"],
        account_sid=data["AccountSid"],
        status=data["RecordingStatus"],
        call_sid=data.get("CallSid"),
        recording_url=data.get("RecordingUrl"),
        duration=data.get("RecordingDuration"),
        channels=data.get("RecordingChannels"),
        source=data.get("RecordingSource"),
        start_time=data.get("RecordingStartTime"),
        track=data.get("RecordingTrack"),
        error_code=data.get("ErrorCode"),
        conference_sid=data.get("ConferenceSid"),
        params=params,
    )
    try:
        outcome = current_app.extensions["ingest"].submit(event)
    except Unavailable:
        raise ApiError(503, "temporarily unable to accept callbacks; retry later", {"Retry-After": "5"})
    return "", 204, {"X-Callback-Outcome": outcome}
