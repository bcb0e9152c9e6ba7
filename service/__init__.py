"""Recording keeper: start SignalWire recordings, receive their callbacks, keep their metadata.

`create_app()` is the web process's entry point (gunicorn serves `service:create_app()`).
"""

from __future__ import annotations

import logging

from flask import Flask

from service.config import Settings, load_settings

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or load_settings()
    app = Flask(__name__, instance_relative_config=True)
    # The API's bodies are small; callbacks get their own tighter bound.
    app.config.update(SETTINGS=settings, MAX_CONTENT_LENGTH=256 * 1024, JSON_SORT_KEYS=False)
    # No HTML redirects for '//' in a path: every answer of this API is JSON (found by fuzzing).
    app.url_map.merge_slashes = False
    register_logging(settings)
    register_services(app, settings)
    register_access(app)
    register_blueprints(app)
    register_api(app)
    register_dashboard(app)
    register_error_handlers(app)
    return app


def register_logging(settings: Settings) -> None:
    from service.observability.logs import configure_logging

    configure_logging(settings.log_level, settings.secrets, settings.log_format)
    if settings.allow_unsigned_webhooks and not settings.signalwire_signing_keys:
        log.warning("!!! ALLOW_UNSIGNED_WEBHOOKS is on: recording callbacks are NOT verified. Never do this in production. !!!")
    if settings.notify_allow_private:
        from service.notify.addresses import ALLOW_PRIVATE_WARNING

        log.warning(ALLOW_PRIVATE_WARNING)


def register_services(app: Flask, settings: Settings) -> None:
    from service.pipelines.ingest import Ingest
    from service.services import Services

    services = Services(settings)
    app.extensions["services"] = services
    app.extensions["ingest"] = Ingest(services.queue, services.store, settings.dedupe_ttl)


def register_access(app: Flask) -> None:
    from service.web import access

    # Around the whole app: every request has its id before anything can log.
    access.register(app)


def register_blueprints(app: Flask) -> None:
    from service.web import health, metrics

    app.register_blueprint(health.bp)
    app.register_blueprint(metrics.bp)  # operational, not part of the API's document


def register_api(app: Flask):
    """The API's routes and the webhook, each in the OpenAPI document (service/web/openapi.py)."""
    from service.web import api as recordings, endpoints, media, webhooks
    from service.web.openapi import create_api

    api = create_api(app)
    api.register_blueprint(recordings.blp)
    api.register_blueprint(media.blp)
    api.register_blueprint(endpoints.blp)
    api.register_blueprint(webhooks.bp)
    return api


def register_dashboard(app: Flask) -> None:
    """The operators' pages under /dashboard; not part of the API (nor of its document), and
    off when SECRET_KEY is unset."""
    from service.web.dashboard import register

    register(app)


def openapi_document() -> str:
    """The OpenAPI document as JSON text, built without configuration or connections (it
    depends on the code alone): `python -m service openapi` and docs/openapi.json."""
    from service.web.openapi import document_text

    return document_text(register_api(Flask(__name__)))


def register_error_handlers(app: Flask) -> None:
    from service.web.errors import register_error_handlers as register

    register(app)
