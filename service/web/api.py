"""The service's own API: start a recording on a live call, and read stored recordings."""

from __future__ import annotations

import json
import logging

from flask import Blueprint, current_app, jsonify, request
from marshmallow import ValidationError

from service.signalwire.client import SignalWireError
from service.web.auth import require_api_token
from service.web.errors import ApiError
from service.web.schemas import SID, list_recordings_schema, start_recording_schema

log = logging.getLogger(__name__)
bp = Blueprint("api", __name__, url_prefix="/api")
bp.before_request(require_api_token)

# SignalWire's "call is not in progress" is a conflict with the call's state, not bad input.
CALL_NOT_IN_PROGRESS = 21220


def _json_body() -> dict:
    raw = request.get_data(cache=True)
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "request body is not valid JSON")
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    return body


def _upstream_error(exc: SignalWireError) -> ApiError:
    upstream = {k: v for k, v in (("status", exc.status), ("code", exc.code), ("message", exc.message),
                                  ("more_info", exc.more_info)) if v is not None}
    if exc.timeout:
        return ApiError(504, "SignalWire did not answer in time", signalwire=upstream)
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


@bp.post("/calls/<call_sid>/recordings")
def start_recording(call_sid: str):
    try:
        SID(call_sid)
    except ValidationError as exc:
        raise ApiError(422, "invalid request", fields={"call_sid": exc.messages})
    params = start_recording_schema.load(_json_body())
    services = current_app.extensions["services"]
    try:
        recording = services.signalwire.create_recording(
            call_sid,
            status_callback=services.settings.callback_url,
            events=params["events"],
            callback_method=params["callback_method"],
            channels=params["channels"],
            track=params["track"],
            trim=params["trim"],
        )
    except SignalWireError as exc:
        raise _upstream_error(exc)
    try:
        services.store.save_started(recording, params)
    except Exception:
        # The recording exists at SignalWire; its callbacks and the sweep will store it.
        log.exception("recording %s started but not saved yet", recording.sid)
    body = recording.to_dict()
    body["requested"] = params
    return jsonify(body), 201, {"Location": f"/api/recordings/{recording.sid}"}


@bp.get("/recordings")
def list_recordings():
    query = list_recordings_schema.load(request.args)
    store = current_app.extensions["services"].store
    try:
        items, next_cursor = store.list(**query)
    except ValueError as exc:
        raise ApiError(422, "invalid request", fields={"cursor": [str(exc)]})
    return jsonify(recordings=items, next_cursor=next_cursor)


@bp.get("/recordings/<sid>")
def get_recording(sid: str):
    try:
        SID(sid)  # one that cannot exist (a NUL would even fail PostgreSQL's query) is a 404 too
        recording = current_app.extensions["services"].store.get(sid)
    except ValidationError:
        recording = None
    if recording is None:
        raise ApiError(404, f"no recording with sid {sid!r}")
    return jsonify(recording)
