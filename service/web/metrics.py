"""GET /metrics: Prometheus's text format, for `Authorization: Bearer $METRICS_TOKEN`.

Without METRICS_TOKEN the route answers 404 like any unknown path: a Heroku app is public."""

from __future__ import annotations

from flask import Blueprint, Response, current_app
from prometheus_client import CONTENT_TYPE_LATEST
from werkzeug.exceptions import NotFound

from service.observability import scrape
from service.web.auth import require_bearer

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def metrics():
    token = current_app.config["SETTINGS"].metrics_token
    if not token:
        raise NotFound()
    require_bearer(token, "metrics")
    services = current_app.extensions["services"]
    return Response(scrape.render(services.queue, services.store), content_type=CONTENT_TYPE_LATEST)
