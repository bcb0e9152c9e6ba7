"""RecordingStatusCallback receiver: verify, validate, dedupe + enqueue, acknowledge.

No outbound HTTP and no database write on this path unless Redis is down (then the inbox).
A refused callback says why in one line (its access line, see service.web.access), never
with a key, a signature, the query string or a parameter's value.
"""

from __future__ import annotations

import logging

from flask import current_app, request
from marshmallow import ValidationError
from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import RequestEntityTooLarge

from service.pipelines.ingest import Unavailable
from service.domain.recordings import CallbackEvent
from service.signalwire.signatures import verify_signature
from service.web.access import OUTCOME_HEADER, callback_outcome, refuse, request_id
from service.web.errors import ApiError
from service.web.openapi import ApiBlueprint, webhook_doc
from service.web.schemas import CallbackSchema, callback_schema

log = logging.getLogger(__name__)
bp = ApiBlueprint("webhooks", __name__, url_prefix="/webhooks", authenticated=False,
                  description="SignalWire's recording status callbacks (signed, not for API clients).")
# Read in this order; SignalWire sends the first, Twilio-compatible senders the second.
SIGNATURE_HEADERS = ("X-SignalWire-Signature", "X-Twilio-Signature")


def _refused(status: int, reason: str, message: str, why: str, *args, logged: dict | None = None,
             **details) -> ApiError:
    """The answer to a refused callback, said once in the logs: SignalWire sees the status, the
    operator the reason (a wrong PUBLIC_BASE_URL or signing key otherwise drops every callback
    unseen). `reason` is a short fixed token for machines (one of metrics.REFUSAL_REASONS),
    `logged` the line's other fields; no key, signature or parameter value is logged."""
    refuse(reason, f"callback refused ({reason}): {why % args if args else why}", **(logged or {}))
    return ApiError(status, message, **details)


def _signature_fields(settings, header: str | None) -> dict:
    # Behind a proxy that rewrites the scheme, host or port, the URL the request came to
    # differs from PUBLIC_BASE_URL's: the usual cause of a mismatch, plain to see side by side.
    forwarded = request.headers.get("X-Forwarded-Proto", request.scheme)
    return {"checked_url": settings.public_base_url + request.path,
            "received_url": f"{forwarded}://{request.host}{request.path}",
            "signature_header": header, "keys_tried": len(settings.signalwire_signing_keys)}


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
            raise _refused(403, "body_unsigned", "invalid signature: a JSON body is signed only through bodySHA256 "
                           "in the URL", "a JSON body without bodySHA256 in the URL, which no signature covers")
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise _refused(400, "invalid_parameters", "callback body must be a form or a JSON object",
                           "a JSON body that is not an object")
        params = MultiDict({str(k): "" if v is None else str(v) for k, v in body.items()})
        signed_form = None
    else:
        params = request.form
        signed_form = None if raw_body is not None else list(params.items(multi=True))
    if unsigned_ok:
        return params
    header = next((h for h in SIGNATURE_HEADERS if request.headers.get(h)), None)
    # Logged without its query string, which carries the signed parameters.
    checked = f"{request.method} {settings.public_base_url}{request.path}"
    if header is None:
        raise _refused(403, "signature_missing", "missing signature: X-SignalWire-Signature header is required",
                       "%s: no %s header", checked, " or ".join(SIGNATURE_HEADERS),
                       logged=_signature_fields(settings, None))
    keys = settings.signalwire_signing_keys
    if not verify_signature(keys, request.headers[header], _signed_url(settings), signed_form, raw_body):
        raise _refused(403, "signature_mismatch", "invalid signature",
                       "%s%s: its %s header matches none of the %d configured signing key(s); check "
                       "PUBLIC_BASE_URL and SIGNALWIRE_SIGNING_KEY", checked,
                       " (body signed through bodySHA256)" if raw_body is not None else "", header, len(keys),
                       logged=_signature_fields(settings, header))
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
    try:
        # SignalWire sends each parameter once; of a repeated one the first counts.
        params = _signed_parameters(settings).to_dict()
    except RequestEntityTooLarge:
        limit = settings.max_callback_bytes
        raise _refused(413, "body_too_large", f"callback body over {limit} bytes",
                       "a body over the limit of %d bytes (Content-Length: %s)", limit, request.content_length,
                       logged={"limit": limit, "content_length": request.content_length}) from None
    try:
        data = callback_schema.load(params)
    except ValidationError as exc:
        # Names only, shortened and quoted: they come from the sender, their values may be anything.
        names = sorted(str(name)[:64] for name in exc.messages)
        raise _refused(400, "invalid_parameters", "invalid callback parameters", "invalid parameters %r", names,
                       logged={"fields": names}, fields=exc.messages)
    if data["AccountSid"] != settings.signalwire_project_id:
        raise _refused(403, "account_mismatch", "AccountSid does not match this service's project",
                       "the AccountSid is not SIGNALWIRE_PROJECT_ID")

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
