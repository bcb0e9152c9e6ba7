"""The archived audio of a recording: `GET /api/recordings/{sid}/media`, streamed from storage
with its content type and byte ranges (an audio player can seek), and the `media` object the
recording's own answers carry (schemas.RecordingMediaSchema)."""

from __future__ import annotations

import logging

from flask import current_app, request
from marshmallow import ValidationError
from werkzeug.wrappers import Response
from werkzeug.wsgi import FileWrapper

from service.media.storage import StorageError
from service.web.auth import require_api_token_or_dashboard_session
from service.web.errors import ApiError, ErrorSchema
from service.web.openapi import ApiBlueprint
from service.web.schemas import SID, SID_PARAM

log = logging.getLogger(__name__)
# The dashboard's audio player loads this with the operator's session cookie (GET only).
blp = ApiBlueprint("media", __name__, url_prefix="/api", description="The recordings' archived audio.",
                   guard=require_api_token_or_dashboard_session)

# werkzeug's own FileWrapper, not the server's: it passes seek() through, so a range starting
# deep into the file is read from there (gunicorn's wrapper would read and discard up to it).
BLOCK = 64 * 1024
BINARY = {"schema": {"type": "string", "format": "binary"}}
AUDIO = {"content": {"audio/x-wav": BINARY, "audio/mpeg": BINARY}}


@blp.route("/recordings/<sid>/media", methods=["GET"],
           parameters=[{"in": "path", "name": "sid", "description": "The RecordingSid.", "schema": SID_PARAM}])
@blp.response(200, description="The archived audio, whole (`Accept-Ranges: bytes`; ETag is its SHA-256).")
@blp.alt_response(206, description="The byte range the `Range` header asked for.", success=True)
@blp.doc(responses={"200": AUDIO, "206": AUDIO})
@blp.alt_response(304, description="Not modified (`If-None-Match` matched the ETag).", success=True)
@blp.alt_response(404, schema=ErrorSchema, description="No such recording, or its audio is not archived.")
@blp.alt_response(416, schema=ErrorSchema, description="The `Range` is outside the audio.")
@blp.alt_response(503, schema=ErrorSchema, description="The storage cannot be reached now.")
def get_recording_media(sid: str):
    """Get a recording's archived audio, streamed from the media archive, with Range support.

    Besides the bearer token, a signed-in dashboard session (its cookie) is accepted here, for
    GET and HEAD only: the dashboard's audio player loads it.
    """
    services = current_app.extensions["services"]
    try:
        SID(sid)
        copy = services.store.verified_copy(sid)
    except ValidationError:
        copy = None
    if copy is None:
        raise ApiError(404, f"no archived audio for recording {sid!r}")
    storage = services.storage
    if storage is None:
        raise ApiError(404, "the media archive is not configured (MEDIA_STORAGE_URL)")
    try:
        if storage.stat(copy.key) is None:  # a HEAD first: a clear 404 or 503, never a broken stream
            raise ApiError(404, f"the archived audio of {sid!r} is no longer in storage")
        reader = storage.open(copy.key, copy.bytes)
    except StorageError as exc:
        log.warning("media of %s: %s", sid, exc)
        raise ApiError(503, "the media archive cannot be reached now; retry later", {"Retry-After": "5"})
    response = Response(FileWrapper(reader, BLOCK), mimetype=copy.content_type, direct_passthrough=True)
    response.content_length = copy.bytes
    response.set_etag(copy.sha256)
    response.last_modified = copy.archived_at
    response.headers["Content-Disposition"] = f'inline; filename="{copy.key.rsplit("/", 1)[-1]}"'
    response.headers["Cache-Control"] = "private, max-age=3600"
    return response.make_conditional(request, accept_ranges=True, complete_length=copy.bytes)
