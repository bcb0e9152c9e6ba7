"""The callback receiver: signature, validation, dedupe, enqueue (real Redis, real store)."""

from __future__ import annotations

import logging
import traceback
import uuid
from urllib.parse import urlencode

import pytest
import redis

from devstack.redis_server import EmbeddedRedis
from service import create_app
from service.config import load_settings
from service.pipelines.ingest import JOB_FUNC
from service.signalwire.signatures import compute_signature
from tests.fixtures.app import PUBLIC_BASE_URL

PATH = "/webhooks/recording-status"


def callback_params(project_id: str, **overrides) -> dict[str, str]:
    sid = str(uuid.uuid4())
    params = {
        "AccountSid": project_id,
        "CallSid": str(uuid.uuid4()),
        "RecordingSid": sid,
        "RecordingUrl": f"https://example.signalwire.com/api/laml/2010-04-01/Accounts/{project_id}/Recordings/{sid}",
        "RecordingStatus": "completed",
        "RecordingDuration": "94",
        "RecordingChannels": "1",
        "RecordingSource": "StartCallRecordingApi",
    }
    params.update(overrides)
    return params


@pytest.fixture
def project_id(settings):
    return settings.signalwire_project_id


@pytest.fixture
def key(settings):
    return settings.signalwire_signing_keys[0]


@pytest.fixture
def queue(app):
    return app.extensions["services"].queue


def post(client, key, params, url=PUBLIC_BASE_URL + PATH, header="X-SignalWire-Signature", **kw):
    signature = compute_signature(key, url, params)
    return client.post(PATH, data=params, headers={header: signature}, **kw)


def test_signed_post_is_enqueued_once_with_deterministic_id(client, key, project_id, queue):
    params = callback_params(project_id)
    first = post(client, key, params)
    assert first.status_code == 204 and first.headers["X-Callback-Outcome"] == "queued"
    again = post(client, key, params)
    assert again.status_code == 204 and again.headers["X-Callback-Outcome"] == "duplicate"
    assert queue.count == 1
    job = queue.jobs[0]
    assert job.id == f"cb_{params['RecordingSid']}_completed"
    assert job.func_name == JOB_FUNC
    payload = job.args[0]
    assert payload["recording_sid"] == params["RecordingSid"] and payload["duration"] == 94
    assert payload["params"] == params
    assert job.retries_left and job.retries_left > 3


def test_each_status_of_a_recording_is_its_own_event(client, key, project_id, queue):
    params = callback_params(project_id, RecordingStatus="in-progress")
    assert post(client, key, params).status_code == 204
    assert post(client, key, dict(params, RecordingStatus="completed")).status_code == 204
    assert queue.count == 2


def test_signed_get_with_query_string(client, key, project_id, queue):
    params = callback_params(project_id)
    query = urlencode(params)
    signature = compute_signature(key, f"{PUBLIC_BASE_URL}{PATH}?{query}")
    response = client.get(f"{PATH}?{query}", headers={"X-SignalWire-Signature": signature})
    assert response.status_code == 204
    assert queue.count == 1


def test_twilio_header_alias_and_standard_port_variant(client, key, project_id, queue):
    params = callback_params(project_id)
    with_port = "https://localhost:443" + PATH
    assert post(client, key, params, url=with_port, header="X-Twilio-Signature").status_code == 204
    assert queue.count == 1


@pytest.mark.parametrize("signature", [None, "", "garbage", "RSOYDt4T1cUTdK1PDd93/VVr8B8="])
def test_missing_or_bad_signature_is_403_and_nothing_enqueued(client, project_id, queue, signature):
    headers = {} if signature is None else {"X-SignalWire-Signature": signature}
    response = client.post(PATH, data=callback_params(project_id), headers=headers)
    assert response.status_code == 403
    assert "signature" in response.get_json()["error"]["message"]
    assert queue.count == 0


def test_signature_over_other_url_or_tampered_params_is_rejected(client, key, project_id, queue):
    params = callback_params(project_id)
    assert post(client, key, params, url="https://evil.example" + PATH).status_code == 403
    signature = compute_signature(key, PUBLIC_BASE_URL + PATH, params)
    tampered = dict(params, RecordingStatus="absent")
    assert client.post(PATH, data=tampered, headers={"X-SignalWire-Signature": signature}).status_code == 403
    assert queue.count == 0


def test_every_configured_key_is_tried(env, store, project_id):
    settings = load_settings(dict(env, SIGNALWIRE_SIGNING_KEY="PSK_retired, " + env["SIGNALWIRE_SIGNING_KEY"]))
    app = create_app(settings)
    try:
        client = app.test_client()
        assert post(client, "PSK_retired", callback_params(project_id)).status_code == 204
        assert post(client, env["SIGNALWIRE_SIGNING_KEY"], callback_params(project_id)).status_code == 204
        assert post(client, "PSK_unknown", callback_params(project_id)).status_code == 403
    finally:
        app.extensions["services"].close()


def test_missing_required_parameters_are_named(client, key, project_id, queue):
    params = callback_params(project_id)
    for name in ("RecordingSid", "RecordingStatus"):
        params.pop(name)
    response = post(client, key, params)
    assert response.status_code == 400
    fields = response.get_json()["error"]["fields"]
    assert set(fields) == {"RecordingSid", "RecordingStatus"}
    assert queue.count == 0


def test_nul_characters_are_400_naming_the_parameter(client, key, project_id, queue):
    # PostgreSQL could store such a callback nowhere: refused, never queued.
    params = callback_params(project_id, RecordingSource="Record\x00Verb", Extra="ok")
    response = post(client, key, params)
    assert response.status_code == 400
    assert response.get_json()["error"]["fields"] == {"RecordingSource": ["must not contain NUL characters"]}
    assert queue.count == 0


def test_other_project_is_forbidden(client, key, project_id, queue):
    response = post(client, key, callback_params(str(uuid.uuid4())))
    assert response.status_code == 403
    assert "AccountSid" in response.get_json()["error"]["message"]
    assert queue.count == 0


def test_any_status_and_lenient_numbers_are_accepted(client, key, project_id, queue):
    params = callback_params(project_id, RecordingStatus="failed", RecordingDuration="", RecordingChannels="two",
                             ErrorCode="16102", RecordingTrack="both", Extra="kept",
                             RecordingStartTime="0001-01-01T00:00:00+05:00")  # no UTC equivalent
    assert post(client, key, params).status_code == 204
    payload = queue.jobs[0].args[0]
    assert payload["status"] == "failed" and payload["duration"] is None and payload["channels"] is None
    assert payload["start_time"] is None
    assert payload["error_code"] == "16102" and payload["params"]["Extra"] == "kept"


def test_oversized_body_is_413(client, key, project_id, queue):
    params = callback_params(project_id, Padding="x" * (70 * 1024))
    response = post(client, key, params)
    assert response.status_code == 413
    assert response.get_json()["error"]["status"] == 413
    assert queue.count == 0


def test_redis_down_falls_back_to_the_inbox(env, store, project_id):
    settings = load_settings(dict(env, REDIS_URL="redis://127.0.0.1:1/0"))
    app = create_app(settings)
    try:
        params = callback_params(project_id)
        response = post(app.test_client(), env["SIGNALWIRE_SIGNING_KEY"], params)
        assert response.status_code == 204 and response.headers["X-Callback-Outcome"] == "inbox"
        rows = store.inbox_take(10)
        assert [payload["recording_sid"] for _, payload in rows] == [params["RecordingSid"]]
    finally:
        app.extensions["services"].close()


def test_a_full_redis_keeps_callbacks_in_the_inbox(env, store, project_id):
    """Out of memory under noeviction (Heroku Redis's default) is an outage, not a 500: the
    database keeps the callback until the drain can write it."""
    with EmbeddedRedis() as server:  # a server of its own: its memory limit is changed
        app = create_app(load_settings(dict(env, REDIS_URL=server.url)))
        admin = redis.Redis.from_url(server.url)
        try:
            key = env["SIGNALWIRE_SIGNING_KEY"]
            assert post(app.test_client(), key, callback_params(project_id)).status_code == 204
            admin.config_set("maxmemory-policy", "noeviction")
            admin.config_set("maxmemory", 1)
            params = callback_params(project_id)
            response = post(app.test_client(), key, params)
            assert response.status_code == 204 and response.headers["X-Callback-Outcome"] == "inbox"
            assert [p["recording_sid"] for _, p in store.inbox_take(10)] == [params["RecordingSid"]]
        finally:
            admin.close()
            app.extensions["services"].close()


def test_redis_and_database_down_is_503(env, store, project_id):
    settings = load_settings(dict(env, REDIS_URL="redis://127.0.0.1:1/0",
                                  DATABASE_URL="postgresql://nobody@127.0.0.1:1/none?connect_timeout=1"))
    app = create_app(settings)
    try:
        response = post(app.test_client(), env["SIGNALWIRE_SIGNING_KEY"], callback_params(project_id))
        assert response.status_code == 503
        assert response.headers["Retry-After"]
    finally:
        app.extensions["services"].close()


def test_inbox_drains_into_the_queue_once(app, store, project_id, queue):
    ingest = app.extensions["ingest"]
    from service.domain.recordings import CallbackEvent

    event = CallbackEvent(recording_sid=str(uuid.uuid4()), account_sid=project_id, status="completed")
    store.inbox_put(event.to_payload())
    store.inbox_put(event.to_payload())  # the same callback kept twice while Redis was down
    assert ingest.drain_inbox() == 2
    assert store.inbox_take(10) == []
    assert queue.count == 1


def test_an_unreadable_inbox_row_stays_and_holds_up_nothing(app, store, project_id, queue):
    from service.domain.recordings import CallbackEvent

    unreadable = store.inbox_put({"recording_sid": "r", "field_of_a_later_release": 1})
    events = [CallbackEvent(recording_sid=str(uuid.uuid4()), account_sid=project_id, status="completed")
              for _ in range(3)]
    for event in events:
        store.inbox_put(event.to_payload())
    assert app.extensions["ingest"].drain_inbox(batch=2) == 3
    assert [row_id for row_id, _ in store.inbox_take(10)] == [unreadable]
    assert sorted(job.args[0]["recording_sid"] for job in queue.jobs) == sorted(e.recording_sid for e in events)


def test_unsigned_callbacks_only_with_explicit_opt_out_and_a_loud_warning(env, store, project_id, caplog):
    unsigned = {k: v for k, v in env.items() if k != "SIGNALWIRE_SIGNING_KEY"}
    settings = load_settings(dict(unsigned, ALLOW_UNSIGNED_WEBHOOKS="true"))
    with caplog.at_level("WARNING"):
        app = create_app(settings)
    try:
        assert any("NOT verified" in r.getMessage() for r in caplog.records)
        response = app.test_client().post(PATH, data=callback_params(project_id))
        assert response.status_code == 204
    finally:
        app.extensions["services"].close()


def test_readiness_names_the_dependency_that_is_down(env, store):
    app = create_app(load_settings(dict(env, REDIS_URL="redis://127.0.0.1:1/0")))
    try:
        response = app.test_client().get("/readyz")
        assert response.status_code == 503
        body = response.get_json()
        assert body["error"]["message"] == "not ready: redis" and body["checks"]["database"] == "ok"
    finally:
        app.extensions["services"].close()


def test_rediss_urls_accept_herokus_self_signed_certificate():
    from service.services import redis_connection

    pool = redis_connection("rediss://:pw@redis.example.com:6380").connection_pool
    assert pool.connection_class.__name__ == "SSLConnection"
    assert pool.connection_kwargs["ssl_cert_reqs"] is None  # no certificate verification


def test_json_body_signed_through_body_sha256(client, key, project_id, queue):
    import hashlib
    import json

    body = json.dumps(callback_params(project_id)).encode()
    query = f"bodySHA256={hashlib.sha256(body).hexdigest()}"
    signature = compute_signature(key, f"{PUBLIC_BASE_URL}{PATH}?{query}")
    headers = {"X-SignalWire-Signature": signature, "Content-Type": "application/json"}
    assert client.post(f"{PATH}?{query}", data=body, headers=headers).status_code == 204
    tampered = body.replace(b"completed", b"absent")
    assert client.post(f"{PATH}?{query}", data=tampered, headers=headers).status_code == 403
    assert queue.count == 1


def test_a_get_callbacks_signature_authenticates_no_body(client, key, project_id, queue):
    """A GET callback's signature covers its URL alone; replayed with a body, the body must not count."""
    genuine = callback_params(project_id, RecordingStatus="in-progress")
    query = urlencode(genuine)
    headers = {"X-SignalWire-Signature": compute_signature(key, f"{PUBLIC_BASE_URL}{PATH}?{query}")}
    forged = callback_params(project_id, RecordingStatus="completed")

    as_json = client.post(f"{PATH}?{query}", json=forged, headers=headers)
    assert as_json.status_code == 403 and "bodySHA256" in as_json.get_json()["error"]["message"]
    assert client.post(f"{PATH}?{query}", data=forged, headers=headers).status_code == 403
    assert queue.count == 0
    # HEAD is answered like GET: from the signed query, whatever body comes with it.
    assert client.open(f"{PATH}?{query}", method="HEAD", data=forged, headers=headers).status_code == 204
    assert [job.args[0]["recording_sid"] for job in queue.jobs] == [genuine["RecordingSid"]]


# --- refusals are logged ---------------------------------------------------------------------


def _refusals(caplog) -> list[tuple[str, str]]:
    # Each request's own refusal line; not the count of held-back lines that an earlier test's
    # flood says when its minute ends, which may fall in this test.
    return [(r.reason, r.getMessage()) for r in caplog.records
            if r.name == "service.web.webhooks" and r.levelno == logging.WARNING and hasattr(r, "reason")
            and not hasattr(r, "not_logged")]


def test_each_refused_callback_logs_one_warning_with_its_reason(client, key, project_id, queue, caplog):
    """A wrong PUBLIC_BASE_URL or signing key must show in the logs, never a key or a signature."""
    wrong_signature = compute_signature("PSK_not_ours", PUBLIC_BASE_URL + PATH, callback_params(project_id))
    checked = f"{PUBLIC_BASE_URL}{PATH}"
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    cases = [
        (lambda: client.post(PATH, data=callback_params(project_id)), 403, "signature_missing",
         [f"POST {checked}:", "no X-SignalWire-Signature or X-Twilio-Signature header"]),
        (lambda: client.post(f"{PATH}?Extra=signed-query-value", data=callback_params(project_id),
                             headers={"X-Twilio-Signature": wrong_signature}), 403, "signature_mismatch",
         [f"POST {checked}:", "its X-Twilio-Signature header matches none of the 1 configured signing key(s)"]),
        (lambda: client.post(PATH, json=callback_params(project_id), headers={"X-SignalWire-Signature": "x"}),
         403, "body_unsigned", ["JSON body without bodySHA256"]),
        (lambda: post(client, key, {"AccountSid": project_id, "RecordingUrl": "value-not-logged"}), 400,
         "invalid_parameters", ["invalid parameters ['RecordingSid', 'RecordingStatus']"]),
        (lambda: post(client, key, callback_params("another-project")), 403, "account_mismatch",
         ["AccountSid is not SIGNALWIRE_PROJECT_ID"]),
        (lambda: client.post(PATH, data=b"A=" + b"x" * (70 * 1024), headers=form), 413, "body_too_large",
         [f"a body over the limit of 65536 bytes (Content-Length: {70 * 1024 + 2})"]),
    ]
    with caplog.at_level(logging.WARNING):
        for send, status, reason, fragments in cases:
            caplog.clear()
            response = send()
            client.application.extensions["access"].drain()  # the refusal line is the request's access line
            assert response.status_code == status and response.get_json()["error"]["status"] == status
            refusals = _refusals(caplog)
            assert [r for r, _ in refusals] == [reason], (reason, refusals)
            message = refusals[0][1]
            for fragment in fragments:
                assert fragment in message, (reason, message)
            for secret in (key, wrong_signature, "signed-query-value", "value-not-logged", "another-project"):
                assert secret not in caplog.text
    assert queue.count == 0


def test_an_accepted_callback_logs_no_refusal(client, key, project_id, caplog):
    with caplog.at_level(logging.WARNING):
        assert post(client, key, callback_params(project_id)).status_code == 204
        client.application.extensions["access"].drain()
    assert _refusals(caplog) == []


# --- Redis errors other than an outage ---------------------------------------------------------


def test_a_redis_error_other_than_an_outage_is_a_500_not_the_inbox(client, key, project_id, store, redis_conn,
                                                                   queue, caplog):
    """The inbox is for an unreachable Redis: a failing script would fail its drain the same way."""
    assert post(client, key, callback_params(project_id)).status_code == 204  # Redis now holds the job template
    templates = list(redis_conn.scan_iter("recording-keeper:job-template:*"))
    assert templates
    for name in templates:  # the script's HGETALL now fails: WRONGTYPE
        redis_conn.set(name, "not a hash")
    with caplog.at_level(logging.ERROR):
        response = post(client, key, callback_params(project_id))
    assert response.status_code == 500 and response.get_json()["error"]["status"] == 500
    assert store.inbox_take(10) == []
    assert queue.count == 1
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and r.exc_info]
    assert len(errors) == 1
    logged = "".join(traceback.format_exception(*errors[0].exc_info))
    # The traceback reaches the script's call, not only the hand-off between threads.
    assert "WRONGTYPE" in logged and "in enqueue_many" in logged
