"""The notification API: endpoints that receive signed notifications, their secrets, and their
deliveries (attempts and replays)."""

from __future__ import annotations

import logging

from flask import current_app
from marshmallow import RAISE, ValidationError

from service.notify.addresses import UnsafeUrl, check_endpoint
from service.web.errors import ApiError, ErrorSchema
from service.web.notification_schemas import (
    DELIVERY_ID, DELIVERY_ID_PARAM, ENDPOINT_ID, ENDPOINT_ID_PARAM, DeliveryPageSchema, DeliveryQuerySchema,
    DeliverySchema, EndpointCreatedSchema, EndpointCreateSchema, EndpointListSchema, EndpointPatchSchema,
    EndpointSchema, ReplayedSchema, ReplaySinceSchema, RotatedSecretSchema,
)
from service.web.openapi import ApiBlueprint

log = logging.getLogger(__name__)
blp = ApiBlueprint("notifications", __name__, url_prefix="/api", description=(
    "Endpoints that receive signed notifications (Standard Webhooks) when a recording is started, stored, "
    "archived or ends absent or failed; their deliveries and replays."))

# Every event is written once per endpoint: a bound on endpoints bounds that fan-out.
MAX_ENDPOINTS = 50
ENDPOINT_PARAM = [{"in": "path", "name": "endpoint_id", "description": "The endpoint's id.",
                   "schema": ENDPOINT_ID_PARAM}]
NOT_FOUND = "No endpoint with this id."


def _notifications():
    return current_app.extensions["services"].store.notifications


def _checked_url(url: str) -> str:
    try:
        check_endpoint(url, current_app.config["SETTINGS"].notify_allow_private)
    except UnsafeUrl as exc:
        raise ApiError(422, "invalid request", fields={"url": [str(exc)]})
    return url


def _endpoint_or_404(endpoint_id: str) -> dict:
    try:
        ENDPOINT_ID(endpoint_id)  # an id that cannot exist is simply not found
    except ValidationError:
        raise ApiError(404, NOT_FOUND)
    endpoint = _notifications().get_endpoint(endpoint_id)
    if endpoint is None:
        raise ApiError(404, NOT_FOUND)
    return endpoint


@blp.route("/endpoints", methods=["POST"])
@blp.arguments(EndpointCreateSchema)
@blp.response(201, EndpointCreatedSchema, description="Created; its `secret` is shown this once.",
              headers={"Location": {"schema": {"type": "string"}, "description": "/api/endpoints/{id}"}})
@blp.alt_response(409, schema=ErrorSchema, description=f"There are already {MAX_ENDPOINTS} endpoints.")
def create_endpoint(body: dict):
    """Add an endpoint.

    The URL must be https and its host must resolve only to public addresses (not loopback,
    private, link-local, shared or cloud-metadata ones); both are checked again before every
    delivery. The answer carries the endpoint's signing secret, the only time it is shown.
    """
    notifications = _notifications()
    if len(notifications.list_endpoints()) >= MAX_ENDPOINTS:
        raise ApiError(409, f"at most {MAX_ENDPOINTS} endpoints; delete one first")
    endpoint, secret = notifications.create_endpoint(_checked_url(body["url"]), body["events"], body["description"])
    log.info("notification endpoint %s created", endpoint["id"])
    return {**endpoint, "secret": secret}, {"Location": f"/api/endpoints/{endpoint['id']}"}


@blp.route("/endpoints", methods=["GET"])
@blp.response(200, EndpointListSchema, description="Every endpoint, oldest first (secrets are never shown).")
def list_endpoints():
    """List the endpoints."""
    return {"endpoints": _notifications().list_endpoints()}


@blp.route("/endpoints/<endpoint_id>", methods=["GET"], parameters=ENDPOINT_PARAM)
@blp.response(200, EndpointSchema, description="The endpoint (its secrets are never shown).")
@blp.alt_response(404, schema=ErrorSchema, description=NOT_FOUND)
def get_endpoint(endpoint_id: str):
    """Get one endpoint."""
    return _endpoint_or_404(endpoint_id)


@blp.route("/endpoints/<endpoint_id>", methods=["PATCH"], parameters=ENDPOINT_PARAM)
@blp.arguments(EndpointPatchSchema)
@blp.response(200, EndpointSchema, description="The endpoint as changed.")
@blp.alt_response(404, schema=ErrorSchema, description=NOT_FOUND)
def update_endpoint(changes: dict, endpoint_id: str):
    """Change an endpoint's URL, event types, description, or whether it is disabled.

    Enabling a disabled endpoint does not send what it missed: replay its failed deliveries.
    """
    _endpoint_or_404(endpoint_id)
    if "url" in changes:
        _checked_url(changes["url"])
    updated = _notifications().update_endpoint(endpoint_id, **changes)
    if updated is None:
        raise ApiError(404, NOT_FOUND)
    return updated


@blp.route("/endpoints/<endpoint_id>", methods=["DELETE"], parameters=ENDPOINT_PARAM)
@blp.response(204, description="Deleted, with its deliveries.")
@blp.alt_response(404, schema=ErrorSchema, description=NOT_FOUND)
def delete_endpoint(endpoint_id: str):
    """Delete an endpoint and its deliveries."""
    _endpoint_or_404(endpoint_id)
    if not _notifications().delete_endpoint(endpoint_id):
        raise ApiError(404, NOT_FOUND)
    log.info("notification endpoint %s deleted", endpoint_id)


@blp.route("/endpoints/<endpoint_id>/rotate-secret", methods=["POST"], parameters=ENDPOINT_PARAM)
@blp.response(200, RotatedSecretSchema, description="The new secret, shown this once.")
@blp.alt_response(404, schema=ErrorSchema, description=NOT_FOUND)
def rotate_endpoint_secret(endpoint_id: str):
    """Rotate the endpoint's signing secret.

    Messages are signed with the new secret and, for 24 hours, with the previous ones too
    (`webhook-signature` then carries one signature per secret), so the receiver can switch
    to the new secret at any time within that window.
    """
    _endpoint_or_404(endpoint_id)
    secret = _notifications().rotate_secret(endpoint_id)
    if secret is None:
        raise ApiError(404, NOT_FOUND)
    log.info("notification endpoint %s: secret rotated", endpoint_id)
    return {"id": endpoint_id, "secret": secret}


@blp.route("/endpoints/<endpoint_id>/deliveries", methods=["GET"], parameters=ENDPOINT_PARAM)
@blp.arguments(DeliveryQuerySchema, location="query", unknown=RAISE)
@blp.response(200, DeliveryPageSchema, description="One page, newest first.")
@blp.alt_response(404, schema=ErrorSchema, description=NOT_FOUND)
def list_endpoint_deliveries(query: dict, endpoint_id: str):
    """List an endpoint's deliveries: each event, its state, attempts, last answer and next attempt."""
    _endpoint_or_404(endpoint_id)
    try:
        items, next_cursor = _notifications().list_deliveries(endpoint_id, **query)
    except ValueError as exc:
        raise ApiError(422, "invalid request", fields={"cursor": [str(exc)]})
    return {"deliveries": items, "next_cursor": next_cursor}


@blp.route("/endpoints/<endpoint_id>/replay", methods=["POST"], parameters=ENDPOINT_PARAM)
@blp.arguments(ReplaySinceSchema)
@blp.response(202, ReplayedSchema, description="The failed deliveries are due again.")
@blp.alt_response(404, schema=ErrorSchema, description=NOT_FOUND)
@blp.alt_response(409, schema=ErrorSchema, description="The endpoint is disabled: enable it first.")
def replay_endpoint_failures(body: dict, endpoint_id: str):
    """Replay every failed delivery of an endpoint created since a given time.

    Each is sent again with its own `webhook-id` and body, and the whole retry schedule.
    """
    if _endpoint_or_404(endpoint_id)["disabled"]:
        raise ApiError(409, "the endpoint is disabled; enable it first")
    return {"replayed": _notifications().replay_failed(endpoint_id, body["since"])}


@blp.route("/deliveries/<delivery_id>/replay", methods=["POST"],
           parameters=[{"in": "path", "name": "delivery_id", "description": "The delivery's id (its webhook-id).",
                        "schema": DELIVERY_ID_PARAM}])
@blp.response(202, DeliverySchema, description="Due again.")
@blp.alt_response(404, schema=ErrorSchema, description="No delivery with this id.")
@blp.alt_response(409, schema=ErrorSchema, description="Its endpoint is disabled: enable it first.")
def replay_delivery(delivery_id: str):
    """Send one delivery again, whatever became of it (same `webhook-id` and body, the whole retry schedule)."""
    try:
        DELIVERY_ID(delivery_id)
    except ValidationError:
        raise ApiError(404, "no delivery with this id")
    notifications = _notifications()
    delivery = notifications.get_delivery(delivery_id)
    if delivery is None:
        raise ApiError(404, "no delivery with this id")
    endpoint = notifications.get_endpoint(delivery["endpoint_id"])
    if endpoint is None or endpoint["disabled"]:
        raise ApiError(409, "its endpoint is disabled; enable it first")
    replayed = notifications.replay(delivery_id)
    if replayed is None:
        raise ApiError(404, "no delivery with this id")
    return replayed
