"""The operators' dashboard: server-rendered pages under /dashboard (Jinja, autoescaped),
signed in with an API token, every change behind a CSRF token.

- session.py: sign-in and sign-out, the session cookie, CSRF (Flask-WTF's tokens);
- views.py: the pages (recordings, one recording, failed work, system);
- templates/dashboard/, static/dashboard.css: what they render, shipped here (no CDN).

Off (no routes, so 404) when SECRET_KEY is unset: the cookie and the tokens need a key.
"""

from __future__ import annotations

from flask import Blueprint, Flask

bp = Blueprint("dashboard", __name__, url_prefix="/dashboard", template_folder="templates",
               static_folder="static", static_url_path="/static")


def register(app: Flask) -> None:
    settings = app.config["SETTINGS"]
    if not settings.secret_key:
        return
    from service.web.dashboard import session, views  # noqa: F401  (their routes join bp)

    session.configure(app, settings)
    app.register_blueprint(bp)
