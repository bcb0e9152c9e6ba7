"""Every error leaves as JSON: {"error": {"status", "message", ...details}}.

`ErrorSchema` describes that envelope in the OpenAPI document (every error response of every
route refers to it); the handlers below are what produce it, for our own `ApiError`s, for
webargs' validation errors and for anything werkzeug raises.
"""

from __future__ import annotations

import logging

from flask import Flask, jsonify
from marshmallow import EXCLUDE, Schema, ValidationError, fields
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None, **details):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.details = details

    def envelope(self) -> dict:
        return envelope(self.status, self.message, **self.details)


class ErrorDetailSchema(Schema):
    class Meta:
        unknown = EXCLUDE  # documented as an open object: an error may gain details

    status = fields.Integer(required=True, metadata={"description": "The HTTP status, repeated."})
    message = fields.String(required=True, metadata={"description": "What went wrong, for a person."})
    fields_ = fields.Dict(
        data_key="fields", keys=fields.String(), values=fields.Raw(),
        metadata={"description": "Validation errors (422): each rejected field, parameter or header with its "
                                 "messages; unknown keys are named too."})
    signalwire = fields.Dict(
        metadata={"description": "SignalWire's own error, when it caused this one: its `status`, `code`, "
                                 "`message` and `more_info`, as far as it gave them."})


class ErrorSchema(Schema):
    """The error envelope: the body of every 4xx and 5xx answer."""

    class Meta:
        unknown = EXCLUDE

    error = fields.Nested(ErrorDetailSchema, required=True)


def envelope(status: int, message: str, **details) -> dict:
    return {"error": {"status": status, "message": message, **details}}


def error_response(status: int, message: str, headers: dict | None = None, **details):
    return jsonify(envelope(status, message, **details)), status, headers or {}


def validation_fields(messages) -> dict:
    """webargs keys its messages by location ({"json": {...}, "query": {...}}): callers see the
    fields themselves, as the API always named them."""
    if not isinstance(messages, dict):
        return {"_request": messages}
    flat: dict = {}
    for errors in messages.values():
        flat.update(errors if isinstance(errors, dict) else {"_request": errors})
    return flat


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        return error_response(exc.status, exc.message, exc.headers, **exc.details)

    @app.errorhandler(ValidationError)
    def _validation(exc: ValidationError):
        return error_response(422, "invalid request", fields=exc.messages)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException):
        # The response's own headers (a 405's Allow) stay; its HTML content type does not.
        headers = {k: v for k, v in exc.get_headers() if k.lower() != "content-type"}
        data = getattr(exc, "data", None) or {}  # set by webargs when a request fails validation
        if "messages" in data and exc.code == 422:
            return error_response(422, "invalid request", headers, fields=validation_fields(data["messages"]))
        if "messages" in data:
            return error_response(exc.code or 400, _first_message(data["messages"]) or exc.name, headers)
        return error_response(exc.code or 500, exc.description or exc.name, headers)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error")
        return error_response(500, "internal error")


def _first_message(messages) -> str | None:
    for errors in (messages.values() if isinstance(messages, dict) else [messages]):
        if isinstance(errors, list) and errors and isinstance(errors[0], str):
            return errors[0]
    return None
