"""Property-based fuzzing of the webhook and the API (hypothesis): whatever arrives, the
answer is never a 5xx, and nothing is queued or stored from a request whose signature is wrong.

FAULT_SCALE=full raises the number of examples (see README, Reliability)."""

from __future__ import annotations

import os
import uuid
from urllib.parse import urlencode

from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from service.signalwire.signatures import compute_signature
from tests.fixtures.app import PUBLIC_BASE_URL

PATH = "/webhooks/recording-status"
FULL = os.environ.get("FAULT_SCALE") == "full"
# CI replays a fixed sequence (a red build should mean a change broke something); the full
# run explores new inputs every time.
FUZZ = hsettings(max_examples=1000 if FULL else 60, derandomize=not FULL, deadline=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

NAMES = st.sampled_from(["AccountSid", "CallSid", "RecordingSid", "RecordingUrl", "RecordingStatus",
                         "RecordingDuration", "RecordingChannels", "RecordingSource", "RecordingStartTime",
                         "RecordingTrack", "ErrorCode", "ConferenceSid", "bodySHA256"]) | st.text(max_size=20)
VALUES = st.text(max_size=80) | st.integers().map(str) | st.sampled_from(["", "completed", "-1", "1e309", "NaN"])
FORMS = st.dictionaries(NAMES, VALUES, max_size=14)
# Header values a client can actually send (no control characters).
SIGNATURES = st.none() | st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40) | st.binary(
    max_size=30).map(lambda b: b.hex())


@FUZZ
@given(form=FORMS, signature=SIGNATURES, use_get=st.booleans(), twilio_header=st.booleans())
def test_webhook_with_wrong_signature_never_5xx_and_queues_nothing(client, app, form, signature, use_get,
                                                                   twilio_header):
    queue = app.extensions["services"].queue
    headers = {}
    if signature is not None:
        headers["X-Twilio-Signature" if twilio_header else "X-SignalWire-Signature"] = signature
    if use_get:
        response = client.get(f"{PATH}?{urlencode(form)}", headers=headers)
    else:
        response = client.post(PATH, data=form, headers=headers)
    assert response.status_code == 403, response.get_data(as_text=True)
    assert response.is_json and "error" in response.get_json()
    assert queue.count == 0


@FUZZ
@given(form=FORMS, status=st.text(min_size=1, max_size=40), keep_account=st.booleans())
def test_webhook_with_valid_signature_never_5xx(client, app, settings, form, status, keep_account):
    key = settings.signalwire_signing_keys[0]
    form = dict(form, RecordingSid=str(uuid.uuid4()), RecordingStatus=status)
    if keep_account:
        form["AccountSid"] = settings.signalwire_project_id
    signature = compute_signature(key, PUBLIC_BASE_URL + PATH, form)
    response = client.post(PATH, data=form, headers={"X-SignalWire-Signature": signature})
    assert response.status_code < 500, response.get_data(as_text=True)
    if response.status_code == 204:
        assert form.get("AccountSid") == settings.signalwire_project_id
    else:
        assert response.is_json and response.get_json()["error"]["message"]


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                                       max_size=4), max_leaves=10)
API_BODIES = st.dictionaries(st.sampled_from(["channels", "track", "trim", "events", "callback_method"])
                             | st.text(max_size=12), JSON_VALUES, max_size=6)


@FUZZ
@given(body=API_BODIES | JSON_VALUES, call_sid=st.text(min_size=1, max_size=70))
def test_start_recording_api_never_5xx(client, auth, sandbox, body, call_sid):
    from urllib.parse import quote

    response = client.post(f"/api/calls/{quote(call_sid, safe='')}/recordings", json=body, headers=auth)
    assert response.status_code < 500 or response.status_code in (502, 504), response.get_data(as_text=True)
    assert response.status_code in (201, 400, 404, 405, 409, 422), response.get_data(as_text=True)
    assert response.is_json


@FUZZ
@given(query=st.dictionaries(st.sampled_from(["call_sid", "status", "created_after", "created_before", "cursor",
                                              "limit"]) | st.text(max_size=8), st.text(max_size=40), max_size=5))
def test_list_api_never_5xx(client, auth, query):
    response = client.get(f"/api/recordings?{urlencode(query)}", headers=auth)
    assert response.status_code in (200, 422), response.get_data(as_text=True)
