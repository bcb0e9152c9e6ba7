"""Property tests generated from the OpenAPI document (schemathesis): every operation, with
valid and invalid inputs, against the real app (real Redis, a real store, the SignalWire
sandbox over loopback). No answer is a 5xx; every answer conforms to the document (status,
content type, headers, body); every /api operation refuses a missing or a wrong token.

FAULT_SCALE=full raises the number of examples (see README, Reliability); tests/test_faults.py
runs the same checks against gunicorn.
"""

from __future__ import annotations

import json
import os

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings as hsettings

from service import openapi_document
from tests.fixtures.app import API_TOKEN

FULL = os.environ.get("FAULT_SCALE") == "full"
EXAMPLES = 300 if FULL else 25


def document_config(examples: int = EXAMPLES) -> schemathesis.Config:
    # CI replays a fixed sequence (a red build should mean a change broke something); the
    # full run explores new inputs every time.
    return schemathesis.Config.from_dict({
        "generation": {"mode": "all", "max-examples": examples, "deterministic": not FULL},
        # A request the schema allows may still be refused: a key reused with another body, a
        # cursor that is not one of ours (422), a call SignalWire does not know (404) or that
        # has ended (409), a webhook without SignalWire's signature (403). Never a 400 or a 5xx.
        "checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "403", "404", "409", "422"]},
                   # Over HTTP, a query string too long for gunicorn is refused before the API (414).
                   "negative_data_rejection": {"expected-statuses": [
                       "400", "401", "403", "404", "405", "406", "409", "413", "414", "415", "422", "428", "429"]}},
    })


def check_every_operation(schema, headers: dict, examples: int = EXAMPLES) -> dict[str, int]:
    """The same checks as the test below, for a schema whose requests go over HTTP (gunicorn):
    valid and invalid inputs for each operation. Returns the requests sent per operation."""
    sent: dict[str, int] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            @given(case=operation.as_strategy(mode))
            @hsettings(max_examples=examples, deadline=None, derandomize=not FULL, database=None,
                       suppress_health_check=list(HealthCheck))
            def check(case):
                case.call_and_validate(headers=headers)
                sent[operation.label] = sent.get(operation.label, 0) + 1

            check()
    return sent


# The document the app serves (tests/test_openapi.py checks it is the same), loaded once: one
# test per operation, each sent to the in-process app of its own test.
schema = schemathesis.openapi.from_dict(json.loads(openapi_document()), config=document_config())


@schema.parametrize()
@hsettings(deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_conforms_to_the_document(case, app):
    # This test's app, for the request and for the probes that resend it without the token.
    case.operation.app = case.operation.schema.app = app
    # The valid token, sent explicitly: schemathesis then also sends each request without it and
    # with a wrong one, and fails the test unless both are refused.
    case.call_and_validate(headers={"Authorization": f"Bearer {API_TOKEN}"})


DOCUMENT = json.loads(openapi_document())
API_OPERATIONS = [(path, method) for path, item in DOCUMENT["paths"].items() if path.startswith("/api/")
                  for method in item if method in ("get", "post", "put", "patch", "delete")]


@pytest.mark.parametrize("path, method", API_OPERATIONS)
@pytest.mark.parametrize("authorization", [None, "Bearer", "Bearer wrong-token-0123456789", f"Basic {API_TOKEN}",
                                           f"Bearer {API_TOKEN}x", f"bearer  {API_TOKEN[:-1]}"])
def test_every_api_operation_refuses_a_missing_or_wrong_token(client, sandbox, path, method, authorization):
    url = path.replace("{", "").replace("}", "")  # any value for the path parameters
    headers = {"Authorization": authorization} if authorization else {}
    response = client.open(url, method=method.upper(), json={}, headers=headers)
    assert response.status_code == 401
    assert response.get_json()["error"] == {"status": 401, "message": "missing or invalid bearer token"}
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="api"'
    assert sandbox.state()["api_requests"] == 0
