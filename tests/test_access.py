"""Each request's id, its one access line and its counts; every refused callback's one line
saying why (real Redis, real store, the app in-process, its lines read from stdout)."""

from __future__ import annotations

import json
import logging
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.observability import throttle
from service.observability.metrics import CALLBACK_OUTCOMES, REFUSAL_REASONS
from service.observability.request_id import request_id_from
from service.signalwire.signatures import compute_signature
from tests.fixtures.app import PUBLIC_BASE_URL
from tests.test_webhook import PATH, callback_params, post

METRICS_TOKEN = "metrics-token-0123456789"


@pytest.fixture
def env(env):
    return dict(env, METRICS_TOKEN=METRICS_TOKEN)


@pytest.fixture
def key(settings):
    return settings.signalwire_signing_keys[0]


@pytest.fixture
def project_id(settings):
    return settings.signalwire_project_id


@pytest.fixture
def lines(app, capsys):
    capsys.readouterr()

    def read() -> list[dict]:
        app.extensions["access"].drain()  # (written within a tenth of a second anyway)
        return [json.loads(line) for line in capsys.readouterr().out.splitlines()]

    return read


def access_lines(lines: list[dict]) -> list[dict]:
    return [line for line in lines if line["logger"] == "service.access"]


def scrape(client) -> dict[tuple, float]:
    response = client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert response.status_code == 200, response.text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def callbacks(samples: dict, outcome: str) -> float:
    return samples[("recording_keeper_callbacks_total", (("outcome", outcome),))]


@pytest.mark.parametrize("header, kept", [
    ("7f0c7a1e-36b5-4c57-9a2d-3e8b0e6f4d21", True),  # Heroku's
    ("a" * 200, True),
    ("a" * 201, False),
    ("has space", False),
    ('quote"', False),
    ("new\nline", False),
    ("", False),
])
def test_a_sane_request_id_is_kept_and_any_other_replaced(header, kept):
    got = request_id_from(header)
    assert (got == header) is kept
    if not kept:
        assert len(got) == 32 and int(got, 16) >= 0


def test_request_id_is_returned_and_on_the_one_access_line(client, lines):
    response = client.get("/healthz", headers={"X-Request-ID": "heroku-request-0001"})
    assert response.headers["X-Request-ID"] == "heroku-request-0001"
    generated = client.get("/healthz?x=1", headers={"X-Request-ID": "bad id"}).headers["X-Request-ID"]
    assert generated != "bad id" and len(generated) == 32
    first, second = access_lines(lines())
    assert first == {**first, "event": "GET /healthz 200", "method": "GET", "path": "/healthz", "status": 200,
                     "request_id": "heroku-request-0001", "level": "info"}
    assert first["duration_ms"] >= 0 and "outcome" not in first
    assert second["request_id"] == generated and second["path"] == "/healthz"  # never the query string


def test_a_callbacks_access_line_has_its_outcome_and_never_its_query_or_secret_headers(client, key, project_id, lines):
    params = callback_params(project_id, RecordingStatus="in-progress")
    url = f"{PUBLIC_BASE_URL}{PATH}?" + "&".join(f"{k}={v}" for k, v in params.items())
    signature = compute_signature(key, url)
    query = url.split("?", 1)[1]
    for _ in range(2):
        response = client.get(f"{PATH}?{query}", headers={"X-SignalWire-Signature": signature,
                                                          "Authorization": "Bearer some-secret-header"})
        assert response.status_code == 204
    written = lines()
    text = json.dumps(written)
    queued, duplicate = access_lines(written)
    assert queued["outcome"] == "queued" and duplicate["outcome"] == "duplicate"
    assert queued["path"] == PATH and queued["status"] == 204
    for leak in (params["RecordingSid"], signature, "some-secret-header", key):
        assert leak not in text


def refusal_lines(lines: list[dict]) -> list[dict]:
    return [line for line in lines if line["logger"] == "service.web.webhooks" and "reason" in line]


def test_every_refused_callback_leaves_one_line_saying_why(client, key, project_id, lines):
    """The refusal line is the refused request's access line (no other line for it), with its
    reason, its fields and the request id."""
    good = callback_params(project_id)
    cases = {
        "signature_missing": client.post(PATH, data=good),
        "signature_mismatch": post(client, "PSK_not_our_key", good),
        "body_unsigned": client.post(PATH, json=good, headers={"X-SignalWire-Signature": "x"}),
        "account_mismatch": post(client, key, callback_params("another-project")),
        "invalid_parameters": post(client, key, {k: v for k, v in good.items() if k != "RecordingSid"}),
        "body_too_large": post(client, key, callback_params(project_id, Padding="x" * (70 * 1024))),
    }
    assert set(cases) == set(REFUSAL_REASONS) and set(REFUSAL_REASONS) <= set(CALLBACK_OUTCOMES)
    written = lines()
    assert access_lines(written) == []  # nothing but the refusal line for each
    refused = refusal_lines(written)
    assert [line["reason"] for line in refused] == list(cases)
    for line, (reason, response) in zip(refused, cases.items()):
        assert line["level"] == "warning" and line["event"].startswith(f"callback refused ({reason}): ")
        assert line["outcome"] == reason and line["status"] == response.status_code and line["path"] == PATH
        assert line["request_id"] == response.headers["X-Request-ID"] and line["duration_ms"] >= 0
    by_reason = {line["reason"]: line for line in refused}
    mismatch = by_reason["signature_mismatch"]
    assert mismatch["checked_url"] == PUBLIC_BASE_URL + PATH and mismatch["received_url"] == "http://localhost" + PATH
    assert mismatch["signature_header"] == "X-SignalWire-Signature" and mismatch["keys_tried"] == 1
    assert by_reason["signature_missing"]["signature_header"] is None
    assert by_reason["invalid_parameters"]["fields"] == ["RecordingSid"]
    assert by_reason["body_too_large"]["limit"] == 64 * 1024
    text = json.dumps(refused)
    for leak in (key, compute_signature("PSK_not_our_key", PUBLIC_BASE_URL + PATH, good), "another-project",
                 good["RecordingSid"]):
        assert leak not in text


def test_a_flood_of_refusals_is_bounded_per_reason(app, client, project_id, lines):
    for _ in range(40):
        post(client, "PSK_not_our_key", callback_params(project_id))
    client.post(PATH, data=callback_params(project_id))  # another reason has its own allowance
    written = [line["reason"] for line in refusal_lines(lines())]
    assert written == ["signature_mismatch"] * 10 + ["signature_missing"]
    assert app.extensions["access"].refusals._windows["signature_mismatch"].held_back == 30


def test_the_held_back_count_is_said_when_the_window_closes(capsys):
    limited = throttle.Throttle(logging.getLogger("service.access"), "refused callbacks", limit=2, window=0.3)
    capsys.readouterr()
    assert [limited.allow("signature_mismatch") for _ in range(5)] == [True, True, False, False, False]
    out, deadline = "", time.monotonic() + 5
    while not out and time.monotonic() < deadline:
        time.sleep(0.05)
        out = capsys.readouterr().out
    (line,) = [json.loads(text) for text in out.splitlines()]
    assert line["reason"] == "signature_mismatch" and line["not_logged"] == 3 and line["level"] == "warning"
    assert limited.allow("signature_mismatch")  # a new window


def test_metrics_count_each_outcome_once(client, key, project_id):
    before = scrape(client)
    params = callback_params(project_id)
    post(client, key, params)
    post(client, key, params)
    post(client, "PSK_not_our_key", callback_params(project_id))
    after = scrape(client)
    deltas = {outcome: callbacks(after, outcome) - callbacks(before, outcome) for outcome in CALLBACK_OUTCOMES}
    assert deltas == {outcome: 0 for outcome in CALLBACK_OUTCOMES} | {"queued": 1, "duplicate": 1,
                                                                      "signature_mismatch": 1}
    count = ("recording_keeper_http_request_duration_seconds_count",
             (("method", "POST"), ("route", PATH), ("status", "204")))
    assert after[count] - before.get(count, 0) == 2


def test_metrics_need_the_token_and_are_absent_without_one(client, env, store):
    assert client.get("/metrics").status_code == 401
    wrong = client.get("/metrics", headers={"Authorization": "Bearer wrong-token-0123456789"})
    assert wrong.status_code == 401 and wrong.get_json()["error"]["status"] == 401
    from service import create_app
    from service.config import load_settings

    off = create_app(load_settings({k: v for k, v in env.items() if k != "METRICS_TOKEN"}))
    try:
        response = off.test_client().get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
        unknown = off.test_client().get("/no-such-path")
        assert response.status_code == 404 and response.get_json() == unknown.get_json()
    finally:
        off.extensions["services"].close()
