"""Liveness (the process answers) and readiness (Redis and the database answer)."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz():
    services = current_app.extensions["services"]
    checks = {}
    for name, ping in (("redis", services.redis.ping), ("database", services.store.ping)):
        try:
            ping()
            checks[name] = "ok"
        except Exception as exc:  # report which dependency failed, never its URL
            checks[name] = f"unavailable ({type(exc).__name__})"
    failed = sorted(name for name, state in checks.items() if state != "ok")
    if failed:
        body = {"error": {"status": 503, "message": "not ready: " + ", ".join(failed)}, "checks": checks}
        return jsonify(body), 503
    return jsonify(status="ready", checks=checks)
