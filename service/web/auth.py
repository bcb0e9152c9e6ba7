"""Bearer-token protection for the service's own API, checked before any other work."""

from __future__ import annotations

import hmac

from flask import current_app, request

from service.web.errors import ApiError


def require_api_token() -> None:
    expected = current_app.config["SETTINGS"].service_api_token.encode()
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    # compare_digest keeps the comparison constant-time whatever the token's length.
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
        raise ApiError(401, "missing or invalid bearer token", {"WWW-Authenticate": 'Bearer realm="api"'})
