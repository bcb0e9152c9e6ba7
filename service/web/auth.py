"""Bearer-token protection, checked before any other work: the service's API and /metrics."""

from __future__ import annotations

import hmac

from flask import current_app, request

from service.web.errors import ApiError


def require_bearer(expected: str, realm: str) -> None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    # compare_digest keeps the comparison constant-time whatever the token's length.
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise ApiError(401, "missing or invalid bearer token", {"WWW-Authenticate": f'Bearer realm="{realm}"'})


def require_api_token() -> None:
    require_bearer(current_app.config["SETTINGS"].service_api_token, "api")
