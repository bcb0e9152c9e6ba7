"""GET /metrics: Prometheus's text format, for `Authorization: Bearer $METRICS_TOKEN`.

Without METRICS_TOKEN the route answers 404 like any unknown path: a Heroku app is public."""

from __future__ import annotations

import hmac

from flask import Blueprint, Response, current_app, request
from prometheus_client import CONTENT_TYPE_LATEST
from werkzeug.exceptions import NotFound

from service.observability import scrape
from service.web.errors import ApiError

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def metrics():
    token = current_app.config["SETTINGS"].metrics_token
    if not token:
        raise NotFound()
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    # compare_digest keeps the comparison constant-time whatever the token's length.
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise ApiError(401, "missing or invalid bearer token", {"WWW-Authenticate": 'Bearer realm="metrics"'})
    services = current_app.extensions["services"]
    access = current_app.extensions.get("access")
    if access is not None:
        access.drain()  # this process's requests so far, counted now
    return Response(scrape.render(services.queue, services.store), content_type=CONTENT_TYPE_LATEST)
