"""Signing in to the dashboard, and what guards its pages.

Any configured API token (SERVICE_API_TOKEN) signs in. The cookie (Flask's signed session)
never holds the token: it holds a short HMAC of it, keyed with SECRET_KEY, checked against
the tokens configured now on every request, so removing a token from the configuration ends
the sessions it opened. Forms carry Flask-WTF's CSRF token (kept in the same session); a
POST without a valid one is refused with 400 before its view runs. Only this blueprint is
checked: the webhook and the JSON API take no cookies and no CSRF tokens.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from datetime import timedelta
from urllib.parse import urlsplit

from flask import Flask, current_app, redirect, render_template, request, session, url_for
from flask.sessions import SecureCookieSessionInterface
from flask_wtf.csrf import generate_csrf, validate_csrf
from wtforms import ValidationError

from service.web.dashboard import bp

COOKIE = "rk_dashboard"
LIFETIME = timedelta(hours=12)
# Endpoints open without a session.
OPEN = frozenset({"dashboard.login", "dashboard.static"})


class DashboardSessionInterface(SecureCookieSessionInterface):
    """Flask's signed cookie, Secure when the request came over https or the service's public
    URL is https (behind Heroku's router the request itself reaches gunicorn as http)."""

    def get_cookie_secure(self, app: Flask) -> bool:
        public = app.config["SETTINGS"].public_base_url
        return request.is_secure or public.startswith("https://")


def configure(app: Flask, settings) -> None:
    app.secret_key = settings.secret_key
    app.session_interface = DashboardSessionInterface()
    app.config.update(
        SESSION_COOKIE_NAME=COOKIE,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        PERMANENT_SESSION_LIFETIME=LIFETIME,
        # The token lives as long as the session: a page left open for an hour still replays.
        WTF_CSRF_TIME_LIMIT=None,
    )
    app.jinja_env.globals["csrf_token"] = generate_csrf


def fingerprint(token: str) -> str:
    """What the session keeps of the token it was opened with: never the token itself."""
    key = current_app.config["SETTINGS"].secret_key.encode()
    return hmac.new(key, b"dashboard-session:" + token.encode(), hashlib.sha256).hexdigest()[:32]


def _matching_token(given: str) -> bool:
    # Against every token, each in constant time, no early exit (as service.web.auth does).
    digest = hashlib.sha256(given.encode()).digest()
    tokens = current_app.config["SETTINGS"].service_api_tokens
    return any([hmac.compare_digest(digest, hashlib.sha256(t.encode()).digest()) for t in tokens])


def signed_in() -> bool:
    """The request carries a dashboard session opened with a token still configured."""
    if not current_app.config["SETTINGS"].secret_key:
        return False
    held = session.get("fp")
    if not isinstance(held, str):
        return False
    tokens = current_app.config["SETTINGS"].service_api_tokens
    return any([hmac.compare_digest(held, fingerprint(t)) for t in tokens])


def csrf_valid() -> bool:
    try:
        validate_csrf(request.form.get("csrf_token"))
    except ValidationError:
        return False
    return True


def safe_next(target: str | None) -> str:
    """Only a path of this dashboard: never another host (an open redirect)."""
    if target:
        parts = urlsplit(target)
        if not parts.scheme and not parts.netloc and parts.path.startswith(bp.url_prefix + "/") \
                and not target.startswith("//") and "\\" not in target:
            return target
    return url_for("dashboard.recordings")


@bp.before_request
def _guard():
    if request.endpoint in OPEN and request.method == "GET":
        return None
    if request.method == "POST" and not csrf_valid():
        return render_template("dashboard/error.html", status=400,
                               message="The form's CSRF token is missing or invalid; nothing was changed. "
                                       "Reload the page and try again."), 400
    if request.endpoint in OPEN:
        return None
    if not signed_in():
        session.pop("fp", None)
        return redirect(url_for("dashboard.login", next=request.full_path.rstrip("?")))
    return None


@bp.after_request
def _headers(response):
    # Pages show recordings: no cache keeps them, no other site frames them, and only our own
    # stylesheet and the recordings' audio load (nothing runs even if escaping ever failed).
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; style-src 'self'; img-src 'self'; media-src 'self'; connect-src 'self'; "
        "form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'")
    return response


@bp.route("/login", methods=["GET", "POST"])
def login():
    error = None
    if request.method == "GET" and signed_in():
        return redirect(safe_next(request.args.get("next")))
    if request.method == "POST":
        token = (request.form.get("token") or "").strip()
        if token and _matching_token(token):
            session.clear()  # a fresh session (and CSRF token) on sign-in
            session.permanent = True
            session["fp"] = fingerprint(token)
            session["since"] = int(time.time())
            return redirect(safe_next(request.args.get("next")))
        error = "That token is not one of this service's API tokens."
    status = 401 if error else 200
    return render_template("dashboard/login.html", error=error, next=request.args.get("next", "")), status


@bp.route("/logout", methods=["POST"])
def logout():
    session.clear()
    return redirect(url_for("dashboard.login"))
