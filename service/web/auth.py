"""Bearer-token protection for the service's own API, checked before any other work.

Several tokens may be valid at once (SERVICE_API_TOKEN is comma-separated), so a token can be
rotated without downtime: add the new one, move the clients, remove the old one.
"""

from __future__ import annotations

import hashlib
import hmac

from flask import current_app, g, request

from service.web.errors import ApiError


def token_scope(token: str) -> str:
    """What identifies a token where one must be remembered (idempotency keys): its SHA-256."""
    return hashlib.sha256(token.encode()).hexdigest()


def require_api_token() -> None:
    tokens = current_app.config["SETTINGS"].service_api_tokens
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    # Digests of equal length, each compared in constant time, against every token (no early
    # exit): neither the time taken nor which token matched tells a caller anything.
    digest = hashlib.sha256(given.strip().encode()).digest()
    matches = [hmac.compare_digest(digest, hashlib.sha256(token.encode()).digest()) for token in tokens]
    if scheme.lower() != "bearer" or not any(matches):
        raise ApiError(401, "missing or invalid bearer token", {"WWW-Authenticate": 'Bearer realm="api"'})
    g.api_token_scope = token_scope(given.strip())


def require_api_token_or_dashboard_session() -> None:
    """For what the dashboard's pages load themselves (the audio player's source): a GET (or
    HEAD) with a signed-in dashboard session is let through; anything else needs the token."""
    if request.method in ("GET", "HEAD"):
        from service.web.dashboard.session import signed_in

        if signed_in():
            return
    require_api_token()
