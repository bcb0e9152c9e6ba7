"""The notification API through the app (real store, Redis and sandbox): endpoints, secrets
shown once, rotation, deliveries and replays, and the SSRF rule at creation."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import pytest

from service import create_app
from service.config import load_settings
from service.store.notifications import FAILED
from tests.test_store import full_recording

PUBLIC_URL = "https://93.184.216.34/hooks"  # an address literal: checked without DNS


@pytest.fixture(params=[False, True], ids=["public-only", "private-allowed"])
def private_allowed(request) -> bool:
    return request.param


@pytest.fixture
def notify_app(env, store, private_allowed):
    app = create_app(load_settings({**env, "NOTIFY_ALLOW_PRIVATE": "true" if private_allowed else "false"}))
    app.testing = True
    yield app
    app.extensions["services"].close()


@pytest.fixture
def api(notify_app, auth):
    client = notify_app.test_client()

    def call(method: str, path: str, json=None, **kwargs):
        return client.open(path, method=method, json=json, headers=auth, **kwargs)

    return call


def create(api, url=PUBLIC_URL, **body):
    response = api("POST", "/api/endpoints", {"url": url, **body})
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def test_every_route_needs_the_token(notify_app):
    client = notify_app.test_client()
    for method, path in [("POST", "/api/endpoints"), ("GET", "/api/endpoints"), ("GET", "/api/endpoints/ep_x"),
                         ("POST", "/api/deliveries/msg_x/replay"), ("DELETE", "/api/endpoints/ep_x")]:
        response = client.open(path, method=method, json={})
        assert response.status_code == 401 and response.get_json()["error"]["status"] == 401


def test_create_shows_the_secret_once(api):
    created = create(api, events=["recording.completed", "recording.absent"], description="the app")
    assert re.fullmatch(r"ep_[0-9a-f]{24}", created["id"])
    assert created["secret"].startswith("whsec_")
    assert created["events"] == ["recording.absent", "recording.completed"] and created["disabled"] is False
    shown = api("GET", f"/api/endpoints/{created['id']}").get_json()
    listed = api("GET", "/api/endpoints").get_json()["endpoints"]
    assert listed == [shown] and "secret" not in shown and created["secret"] not in str(listed)
    assert {k: v for k, v in created.items() if k != "secret"} == shown


@pytest.mark.parametrize("body, field", [
    ({}, "url"), ({"url": PUBLIC_URL, "events": ["recording.nope"]}, "events"),
    ({"url": PUBLIC_URL, "events": ["recording.absent", "recording.absent"]}, "events"),
    ({"url": PUBLIC_URL, "colour": "red"}, "colour"), ({"url": PUBLIC_URL, "description": "x" * 501}, "description"),
    ({"url": "https://hooks.example.com/#frag"}, "url"), ({"url": "ftp://hooks.example.com/"}, "url"),
])
def test_bad_bodies_are_422_naming_the_field(api, body, field):
    response = api("POST", "/api/endpoints", body)
    assert response.status_code == 422 and field in response.get_json()["error"]["fields"]


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/hooks", "https://127.0.0.1/hooks", "https://localhost/hooks",
                                 "https://169.254.169.254/latest/meta-data", "https://[fd00:ec2::254]/",
                                 "https://10.0.0.1/", "https://100.64.0.1/", "https://[::1]/"])
def test_private_or_plain_http_urls_are_refused_unless_allowed(api, private_allowed, url):
    response = api("POST", "/api/endpoints", {"url": url})
    if private_allowed:
        assert response.status_code == 201
    else:
        assert response.status_code == 422
        assert re.search("https|non-public", response.get_json()["error"]["fields"]["url"][0])


def test_patch_and_delete(api, private_allowed):
    endpoint = create(api)
    path = f"/api/endpoints/{endpoint['id']}"
    changed = api("PATCH", path, {"events": ["recording.failed"], "description": "d", "disabled": True}).get_json()
    assert (changed["events"], changed["description"], changed["disabled"]) == (["recording.failed"], "d", True)
    assert changed["disabled_reason"] == "disabled through the API"
    refused = api("PATCH", path, {"url": "https://127.0.0.1/"})
    assert refused.status_code == (200 if private_allowed else 422)
    assert api("PATCH", path, {"disabled": "maybe"}).status_code == 422
    assert api("DELETE", path).status_code == 204
    for method in ("GET", "PATCH", "DELETE"):
        assert api(method, path, {} if method == "PATCH" else None).status_code == 404
    assert api("GET", "/api/endpoints/not-an-id").status_code == 404
    assert api("POST", "/api/endpoints/ep_000000000000000000000000/rotate-secret").status_code == 404


def test_rotate_secret_returns_a_new_secret_and_both_sign(api, notify_app):
    endpoint = create(api)
    rotated = api("POST", f"/api/endpoints/{endpoint['id']}/rotate-secret")
    assert rotated.status_code == 200
    secret = rotated.get_json()["secret"]
    assert secret.startswith("whsec_") and secret != endpoint["secret"]
    store = notify_app.extensions["services"].store
    store.save_metadata(full_recording("RE1"))
    [claim] = store.notifications.claim(10, lease_seconds=30)
    assert list(claim.keys) == [secret, endpoint["secret"]]


def test_deliveries_and_replays(api, notify_app):
    endpoint = create(api)
    other = create(api)
    store = notify_app.extensions["services"].store
    for i in range(3):
        store.save_metadata(full_recording(f"RE{i}"))
    for claim in store.notifications.claim(10, lease_seconds=30):
        store.notifications.finish(claim, status=FAILED, last_status=500, last_error="answered 500",
                                   next_attempt_at=None)
    path = f"/api/endpoints/{endpoint['id']}/deliveries"
    page = api("GET", path, query_string={"limit": 2}).get_json()
    rest = api("GET", path, query_string={"limit": 2, "cursor": page["next_cursor"]}).get_json()
    deliveries = page["deliveries"] + rest["deliveries"]
    assert len(deliveries) == 3 and rest["next_cursor"] is None
    first = deliveries[0]
    assert (first["event_type"], first["status"], first["attempts"], first["last_status"], first["last_error"]) == (
        "recording.completed", "failed", 1, 500, "answered 500")
    assert {"next_attempt_at", "created_at", "recording_sid"} <= set(first)
    assert api("GET", path, query_string={"status": "pending"}).get_json()["deliveries"] == []
    assert api("GET", path, query_string={"status": "lost"}).status_code == 422
    assert api("GET", path, query_string={"cursor": "nonsense"}).status_code == 422
    assert api("GET", path, query_string={"colour": "red"}).status_code == 422

    replayed = api("POST", f"/api/deliveries/{first['id']}/replay")
    assert replayed.status_code == 202 and replayed.get_json()["status"] == "pending"
    assert api("POST", "/api/deliveries/msg_000000000000000000000000_ep_000000000000000000000000/replay"
               ).status_code == 404
    assert api("POST", "/api/deliveries/nonsense/replay").status_code == 404

    replay = f"/api/endpoints/{endpoint['id']}/replay"
    assert api("POST", replay, {}).status_code == 422
    since = (datetime.now(timezone.utc) - timedelta(minutes=5)).isoformat()
    done = api("POST", replay, {"since": since})
    assert done.status_code == 202 and done.get_json() == {"replayed": 2}
    assert api("POST", replay, {"since": since}).get_json() == {"replayed": 0}
    assert api("GET", path, query_string={"status": "failed"}).get_json()["deliveries"] == []
    # The other endpoint's failures are its own.
    assert len(api("GET", f"/api/endpoints/{other['id']}/deliveries",
                   query_string={"status": "failed"}).get_json()["deliveries"]) == 3

    api("PATCH", f"/api/endpoints/{endpoint['id']}", {"disabled": True})
    assert api("POST", replay, {"since": since}).status_code == 409
    assert api("POST", f"/api/deliveries/{first['id']}/replay").status_code == 409
