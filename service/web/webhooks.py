"""RecordingStatusCallback receiver: verify, validate, dedupe + enqueue, acknowledge.

No outbound HTTP and no database write on this path unless Redis is down (then the inbox).
A refused callback says why on its access line (service.web.access), with what an operator
needs to see the cause (for a signature: the URL it was checked against, the URL the request
came to, the header read and how many keys were tried), never a key, a signature or the
query string.
"""

from __future__ import annotations

import logging

from flask import Blueprint, current_app, request
from marshmallow import ValidationError
from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import RequestEntityTooLarge

from service.pipelines.ingest import Unavailable
from service.domain.recordings import CallbackEvent
from service.signalwire.signatures import verify_signature
from service.web.access import OUTCOME_HEADER, callback_outcome, refuse, request_id
from service.web.errors import ApiError
from service.web.schemas import callback_schema

log = logging.getLogger(__name__)
bp = Blueprint("webhooks", __name__, url_prefix="/webhooks")
SIGNATURE_HEADERS = ("X-SignalWire-Signature", "X-Twilio-Signature")


def _signed_url(settings) -> str:
    # Rebuilt from PUBLIC_BASE_URL, not from Host/X-Forwarded-*: this is the URL SignalWire
    # was told to call, and it holds behind Heroku's router. The raw query string is used
    # byte for byte because the signature covers it that way.
    url = settings.public_base_url + request.path
    query = request.query_string.decode("latin-1")
    return f"{url}?{query}" if query else url


def _refused(status: int, message: str, reason: str, **details) -> ApiError:
    refuse(reason, **details)
    return ApiError(status, message)


def _signature_details(settings, header: str | None) -> dict:
    # Behind a proxy that rewrites the scheme, host or port, the URL the request came to
    # differs from PUBLIC_BASE_URL's: the usual cause of a mismatch, plain to see side by side.
    forwarded = request.headers.get("X-Forwarded-Proto", request.scheme)
    return {
        "checked_url": settings.public_base_url + request.path,
        "received_url": f"{forwarded}://{request.host}{request.path}",
        "query_string": "present, signed with the URL" if request.query_string else "none",
        "signature_header": header,
        "keys_tried": len(settings.signalwire_signing_keys),
    }


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
            raise _refused(403, "invalid signature: a JSON body is signed only through bodySHA256 in the URL",
                           "body_unsigned")
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise _refused(400, "callback body must be a form or a JSON object", "invalid_parameters",
                           fields=["body"])
        params = MultiDict({str(k): "" if v is None else str(v) for k, v in body.items()})
        signed_form = None
    else:
        params = request.form
        signed_form = None if raw_body is not None else list(params.items(multi=True))
    if unsigned_ok:
        return params
    header = next((name for name in SIGNATURE_HEADERS if request.headers.get(name)), None)
    if header is None:
        raise _refused(403, "missing signature: X-SignalWire-Signature header is required", "signature_missing",
                       **_signature_details(settings, None))
    signature = request.headers[header]
    if not verify_signature(settings.signalwire_signing_keys, signature, _signed_url(settings), signed_form, raw_body):
        raise _refused(403, "invalid signature", "signature_mismatch", **_signature_details(settings, header))
    return params


@bp.route("/recording-status", methods=["GET", "POST"])
def recording_status():
    settings = current_app.config["SETTINGS"]
    # Bound the body before anything reads it (werkzeug answers 413 past this).
    request.max_content_length = settings.max_callback_bytes
    # SignalWire sends each parameter once; of a repeated one the first counts.
    try:
        params = _signed_parameters(settings).to_dict()
    except RequestEntityTooLarge:
        raise _refused(413, f"callback body over {settings.max_callback_bytes} bytes", "body_too_large",
                       content_length=request.content_length, limit=settings.max_callback_bytes)
    try:
        data = callback_schema.load(params)
    except ValidationError as exc:
        refuse("invalid_parameters", fields=sorted(exc.messages))
        raise ApiError(400, "invalid callback parameters", fields=exc.messages)
    if data["AccountSid"] != settings.signalwire_project_id:
        raise _refused(403, "AccountSid does not match this service's project", "account_mismatch",
                       account_sid=data["AccountSid"][:64])

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
        outcome = current_app.extensions["ingest"].submit(event, request_id())
    except Unavailable:
        callback_outcome("unavailable")
        raise ApiError(503, "temporarily unable to accept callbacks; retry later", {"Retry-After": "5"})
    return "", 204, {OUTCOME_HEADER: outcome}
