"""The service's own API: start a recording on a live call, and read stored recordings.

Each route is declared with flask-smorest: the schemas in its decorators validate the request,
shape the answer and make the OpenAPI document, and every status it can answer is listed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from datetime import datetime, timedelta, timezone

from flask import current_app, g, jsonify, request
from marshmallow import RAISE, ValidationError
from sqlalchemy.exc import SQLAlchemyError

from service.domain.recordings import Recording
from service.signalwire.client import SignalWireError
from service.web.errors import ApiError, ErrorSchema
from service.web.openapi import ApiBlueprint
from service.web.schemas import (
    SID, SID_PARAM, IdempotencyHeadersSchema, ListRecordingsSchema, RecordingDetailSchema, RecordingPageSchema,
    StartedRecordingSchema, StartRecordingSchema,
)

log = logging.getLogger(__name__)
blp = ApiBlueprint("recordings", __name__, url_prefix="/api", description="Start recordings and read them.")

# SignalWire's "call is not in progress" is a conflict with the call's state, not bad input.
CALL_NOT_IN_PROGRESS = 21220
# Answers kept for an Idempotency-Key: SignalWire decided (started it, or refused the request
# for good). Anything else (no answer, a 5xx, a rate limit) leaves the key free for a retry.
FINAL_STATUSES = frozenset({201, 400, 404, 409, 422})

RETRY_AFTER = {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait before retrying."}}
SIGNALWIRE_ERROR = "SignalWire's error (`error.signalwire`) comes with it."


def _upstream_error(exc: SignalWireError) -> ApiError:
    upstream = {k: v for k, v in (("status", exc.status), ("code", exc.code), ("message", exc.message),
                                  ("more_info", exc.more_info)) if v is not None}
    if exc.timeout:
        return ApiError(504, "SignalWire did not answer in time; whether the recording started is not known. "
                             "Retry with the same Idempotency-Key.", signalwire=upstream)
    if exc.status is None or exc.status >= 500:
        return ApiError(502, "SignalWire is unavailable", signalwire=upstream)
    if exc.code == CALL_NOT_IN_PROGRESS:
        return ApiError(409, exc.message, signalwire=upstream)
    if exc.status in (401, 403):
        # Our credentials were refused: a server-side misconfiguration, not the caller's fault.
        return ApiError(502, "SignalWire refused this service's credentials", signalwire=upstream)
    if exc.status not in (400, 404, 409, 422, 429):
        # Only statuses about the caller's request pass through; a redirect, 405, 408 or other
        # odd status is between this service and SignalWire, and would mislead the caller.
        return ApiError(502, f"SignalWire answered with unexpected status {exc.status}", signalwire=upstream)
    headers = {"Retry-After": str(int(exc.retry_after))} if exc.status == 429 and exc.retry_after else None
    return ApiError(exc.status, exc.message, headers, signalwire=upstream)


def _started_since(services, call_sid: str, sent_at: datetime, budget: float) -> Recording | None:
    """A recording an earlier attempt may have started without its answer reaching us: started
    through the API on this call since then, and not claimed by another start of ours."""
    since = sent_at - timedelta(seconds=1)  # SignalWire's times are whole seconds
    for recording in services.signalwire.list_recordings(call_sid=call_sid, created_after=since, budget=budget):
        if (recording.source or "").lower() != "startcallrecordingapi":
            continue
        if recording.date_created is not None and recording.date_created < since:
            continue
        stored = services.store.get(recording.sid)
        if stored is None or not stored["started_by_us"]:
            return recording
    return None


def _start(call_sid: str, params: dict, unsure_since: datetime | None = None) -> tuple[int, dict, dict]:
    """Start the recording: (status, body, headers), SignalWire's refusals included.

    `unsure_since`: an earlier attempt under the same key got no answer in time; what it may
    have started is looked for first, and taken as this start's recording if found."""
    services = current_app.extensions["services"]
    client = services.signalwire
    try:
        recording = None
        budget = client.create_budget
        if unsure_since is not None:
            started = time.monotonic()
            recording = _started_since(services, call_sid, unsure_since, budget / 2)
            budget -= time.monotonic() - started
        if recording is None:
            recording = client.create_recording(
                call_sid,
                status_callback=services.settings.callback_url,
                events=params["events"],
                callback_method=params["callback_method"],
                channels=params["channels"],
                track=params["track"],
                trim=params["trim"],
                budget=budget,
            )
    except SignalWireError as exc:
        error = _upstream_error(exc)
        return error.status, error.envelope(), error.headers
    try:
        services.store.save_started(recording, params)
    except Exception:
        # The recording exists at SignalWire; its callbacks and the sweep will store it.
        log.exception("recording %s started but not saved yet", recording.sid)
    body = StartedRecordingSchema().dump({**recording.to_dict(), "requested": params})
    return 201, body, {"Location": f"/api/recordings/{recording.sid}"}


def _start_once(key: str, call_sid: str, params: dict) -> tuple[int, dict, dict]:
    """Stripe's Idempotency-Key semantics over _start."""
    keys = current_app.extensions["services"].idempotency
    scope = g.api_token_scope
    fingerprint = hashlib.sha256(json.dumps([request.path, params], sort_keys=True).encode()).hexdigest()
    try:
        claim = keys.claim(scope, key, fingerprint)
    except SQLAlchemyError:
        log.exception("idempotency key store unavailable")
        raise ApiError(503, "the Idempotency-Key cannot be checked now; retry later", {"Retry-After": "5"})
    if claim.state == "mismatch":
        raise ApiError(422, "this Idempotency-Key was used with a different request",
                       fields={"Idempotency-Key": ["was used with a different request"]})
    if claim.state == "in_flight":
        raise ApiError(409, "a request with this Idempotency-Key is in progress; retry later", {"Retry-After": "1"})
    if claim.state == "replay":
        return claim.status, claim.body, {**claim.headers, "Idempotent-Replayed": "true"}
    sent_at = claim.sent_at or datetime.now(timezone.utc)
    status, body, headers = 500, {}, {}
    try:
        status, body, headers = _start(call_sid, params, claim.sent_at)
    finally:
        # Kept if SignalWire decided. Unsettled if it may have acted unseen (no answer in time,
        # now or in an earlier attempt): the next retry looks first. Released otherwise.
        try:
            if status in FINAL_STATUSES:
                if not keys.complete(scope, key, claim.lock, status, body, headers):
                    log.warning("idempotency key's claim expired before its answer was kept")
            elif status == 504 or claim.sent_at is not None:
                keys.unsettle(scope, key, claim.lock, sent_at)
            else:
                keys.release(scope, key, claim.lock)
        except SQLAlchemyError:
            # Held until its lease ends; then a retry may start again.
            log.exception("could not keep or release an idempotency key")
    return status, body, headers


@blp.route("/calls/<call_sid>/recordings", methods=["POST"],
           parameters=[{"in": "path", "name": "call_sid", "description": "The live call (CallSid).",
                        "schema": SID_PARAM}])
@blp.arguments(IdempotencyHeadersSchema, location="headers")
@blp.arguments(StartRecordingSchema, required=False)
@blp.response(201, StartedRecordingSchema, description="Started. SignalWire's recording, with what was asked for.",
              headers={"Location": {"schema": {"type": "string"}, "description": "/api/recordings/{sid}"},
                       "Idempotent-Replayed": {"schema": {"type": "string", "enum": ["true"]},
                                               "description": "Present when this is a replay of the first answer."}})
@blp.alt_response(400, schema=ErrorSchema, description=(
    "The body is not JSON, or not a JSON object; or SignalWire refused the request as malformed (with "
    "`error.signalwire`)."))
@blp.alt_response(404, schema=ErrorSchema, description="SignalWire knows no such call. " + SIGNALWIRE_ERROR)
@blp.alt_response(409, schema=ErrorSchema, description=(
    "The call is not in progress (SignalWire's code 21220), or SignalWire's own 409; or a request with the same "
    "Idempotency-Key is still in progress (retry after `Retry-After`)."), headers=RETRY_AFTER)
@blp.alt_response(422, schema=ErrorSchema, description=(
    "A field, the call sid or the Idempotency-Key is invalid (`error.fields` names each), the key was used with "
    "a different request, or SignalWire refused a parameter (with `error.signalwire`)."))
@blp.alt_response(429, schema=ErrorSchema, description="SignalWire's rate limit. " + SIGNALWIRE_ERROR,
                  headers=RETRY_AFTER)
@blp.alt_response(502, schema=ErrorSchema, description=(
    "SignalWire failed (a 5xx, an unexpected answer, or this service's credentials refused). Nothing was started "
    "as far as SignalWire said; a retry with the same Idempotency-Key is safe."))
@blp.alt_response(503, schema=ErrorSchema, description="The Idempotency-Key cannot be checked now.",
                  headers=RETRY_AFTER)
@blp.alt_response(504, schema=ErrorSchema, description=(
    "SignalWire did not answer in time (this request answers within 25 s in all), so whether it started the "
    "recording is not known. Retry with the same Idempotency-Key: the retry first looks for a recording started "
    "on the call since, and answers with it rather than start another."))
def start_recording(headers: dict, params: dict, call_sid: str):
    """Start recording a live call.

    Asks SignalWire to record the call with a status callback to this service, and stores the
    recording as started by us.

    **Idempotency-Key.** With the same key (scoped to the API token) and the same request (the
    path and the body once defaults are applied) within 24 hours, the first answer is returned
    again (status, body and `Location`, with `Idempotent-Replayed: true`), and SignalWire is
    asked only once, however many retries race. Kept answers are the 201 and SignalWire's
    refusals of the request (400, 404, 409, 422). After anything else (a 429, 502 or 503:
    SignalWire did not decide) the key is free again and a retry is sent to SignalWire. After
    a 504 (no answer in time: SignalWire may have started it) the key is free too, and its
    retry first lists the call's recordings started through the API since the first attempt,
    taking one that no other start of this service claims rather than starting another. The
    same key with a different request is 422; while the first request with a key is still in
    progress, others get 409. Without the header, every request is a new start.
    """
    try:
        SID(call_sid)
    except ValidationError as exc:
        raise ApiError(422, "invalid request", fields={"call_sid": exc.messages})
    key = headers.get("idempotency_key")
    status, body, extra = _start_once(key, call_sid, params) if key is not None else _start(call_sid, params)
    # Built here, as it was first answered or kept: a Response passes the 201 schema undumped.
    response = jsonify(body)
    response.status_code = status
    response.headers.update(extra)
    return response


@blp.route("/recordings", methods=["GET"])
@blp.arguments(ListRecordingsSchema, location="query", unknown=RAISE)
@blp.response(200, RecordingPageSchema, description="One page, newest first.")
def list_recordings(query: dict):
    """List stored recordings.

    Newest first, by cursor (see the paging section above); filter by call, status and time.
    A cursor that does not decode is a 422.
    """
    store = current_app.extensions["services"].store
    try:
        items, next_cursor = store.list(**query)
    except ValueError as exc:
        raise ApiError(422, "invalid request", fields={"cursor": [str(exc)]})
    return {"recordings": items, "next_cursor": next_cursor}


@blp.route("/recordings/<sid>", methods=["GET"],
           parameters=[{"in": "path", "name": "sid", "description": "The RecordingSid.", "schema": SID_PARAM}])
@blp.response(200, RecordingDetailSchema, description="The recording with its status history.")
@blp.alt_response(404, schema=ErrorSchema, description="No recording with this sid is stored.")
def get_recording(sid: str):
    """Get one recording: its metadata, status history and what was asked for."""
    try:
        SID(sid)  # one that cannot exist (a NUL would even fail PostgreSQL's query) is a 404 too
        recording = current_app.extensions["services"].store.get(sid)
    except ValidationError:
        recording = None
    if recording is None:
        raise ApiError(404, f"no recording with sid {sid!r}")
    return recording

