"""Scheme B signatures against the published test vectors (twilio-python, SignalWire's SDKs and real SignalWire callbacks)."""

from __future__ import annotations

import hashlib

import pytest

from service.signalwire.signatures import _sign, compute_signature, verify_signature

KEY = "12345"
URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
V1_PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Caller": "+14158675309",
    "Digits": "1234",
    "From": "+14158675309",
    "To": "+18005551212",
}
V1_SIG = "RSOYDt4T1cUTdK1PDd93/VVr8B8="


def items(d: dict[str, str]) -> list[tuple[str, str]]:
    return list(d.items())


# --- V1 -------------------------------------------------------------------------------


def test_v1_compute():
    assert compute_signature(KEY, URL, V1_PARAMS) == V1_SIG
    assert compute_signature(KEY, URL, items(V1_PARAMS)) == V1_SIG


def test_v1_verify():
    assert verify_signature([KEY], V1_SIG, URL, items(V1_PARAMS))


@pytest.mark.parametrize(
    "url, signature",
    [
        ("https://mycompany.com/myapp.php?foo=1&bar=2", "kvajT1Ptam85bY51eRf/AJRuM3w="),  # signed with :443
        ("http://mycompany.com/myapp.php?foo=1&bar=2", "0ZXoZLH/DfblKGATFgpif+LLRf4="),  # signed with :80
        ("http://mycompany.com:1234/myapp.php?foo=1&bar=2", "Zmvh+3yNM1Phv2jhDCwEM3q5ebU="),  # as is
    ],
)
def test_v1_port_variants_accepted(url, signature):
    assert verify_signature([KEY], signature, url, items(V1_PARAMS))


def test_v1_standard_port_present_in_url_matches_portless_signature():
    assert verify_signature([KEY], V1_SIG, "https://mycompany.com:443/myapp.php?foo=1&bar=2", items(V1_PARAMS))
    assert verify_signature(
        [KEY], "0ZXoZLH/DfblKGATFgpif+LLRf4=", "http://mycompany.com:80/myapp.php?foo=1&bar=2", items(V1_PARAMS)
    )


def test_v1_nonstandard_port_is_never_stripped():
    # twilio-python accepts this; SignalWire's SDK (and we) reject it.
    assert not verify_signature([KEY], V1_SIG, "https://mycompany.com:1234/myapp.php?foo=1&bar=2", items(V1_PARAMS))


def test_v1_negative_cases():
    assert not verify_signature(["wrong"], V1_SIG, URL, items(V1_PARAMS))
    assert not verify_signature([KEY], V1_SIG, URL + "&x=1", items(V1_PARAMS))
    tampered = {**V1_PARAMS, "Digits": "9999"}
    assert not verify_signature([KEY], V1_SIG, URL, items(tampered))
    assert not verify_signature([KEY], V1_SIG, URL, None)


# --- key rotation and fail-closed ------------------------------------------------------


def test_key_rotation_any_key_matches():
    assert verify_signature(["new-key", KEY], V1_SIG, URL, items(V1_PARAMS))
    assert verify_signature([KEY, "new-key"], V1_SIG, URL, items(V1_PARAMS))


@pytest.mark.parametrize("keys", [[], [""], None, ()])
def test_no_usable_key_fails_closed(keys):
    assert not verify_signature(keys, V1_SIG, URL, items(V1_PARAMS))


@pytest.mark.parametrize("signature", [None, "", "xyz", "!!!!", "a" * 100, "%%notbase64%%", "é", 12345])
def test_garbage_signatures_are_false_without_raising(signature):
    assert verify_signature([KEY], signature, URL, items(V1_PARAMS)) is False


def test_garbage_inputs_never_raise():
    assert verify_signature([KEY], V1_SIG, None, None) is False  # type: ignore[arg-type]
    assert verify_signature([KEY], V1_SIG, "http://[::1", None) is False
    assert verify_signature([KEY], V1_SIG, URL, [("only-one",)]) is False  # type: ignore[list-item]


def test_compute_rejects_empty_key():
    with pytest.raises(ValueError):
        compute_signature("", URL, V1_PARAMS)


# --- V2: repeated keys ---------------------------------------------------------------


V2_PARAMS = [("Sid", "CA123"), ("SidAccount", "AC123"), ("Digits", "5678"), ("Digits", "1234"), ("Digits", "1234")]


def test_v2_twilio_sorted_deduplicated_values():
    assert verify_signature([KEY], "IK+Dwps556ElfBT0I3Rgjkr1wJU=", URL, V2_PARAMS)


def test_signalwire_repeated_keys_keep_submission_order():
    url = "https://example.com/hook"
    sig = compute_signature("test-key", url, [("To", "a"), ("To", "b")])
    assert sig == _sign("test-key", url + "ToaTob")
    assert verify_signature(["test-key"], sig, url, [("To", "a"), ("To", "b")])
    # A signature over the b,a submission order does not validate an a,b submission. (The reverse,
    # b,a submitted against the a,b signature, is accepted: twilio>=7.14 sorts values, and we
    # accept both rules, as senders differ. Recording callbacks never repeat a key.)
    assert not verify_signature(["test-key"], _sign("test-key", url + "TobToa"), url, [("To", "a"), ("To", "b")])


# --- V3 / V7: bodySHA256 ---------------------------------------------------------------

V3_BODY = b'{"property": "value", "boolean": true}'
V3_HASH = "0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620"


def test_v3_body_hash_vector():
    assert hashlib.sha256(V3_BODY).hexdigest() == V3_HASH
    url = f"{URL}&bodySHA256={V3_HASH}"
    assert verify_signature([KEY], "a9nBmqA0ju/hNViExpshrM61xv4=", url, raw_body=V3_BODY)


def test_v3_only_sha_param():
    url = f"https://mycompany.com/myapp.php?bodySHA256={V3_HASH}"
    assert verify_signature([KEY], "y77kIzt2vzLz71DgmJGsen2scGs=", url, raw_body=V3_BODY)


def test_v3_empty_json_body_signed_with_port():
    body = b"{}"
    digest = hashlib.sha256(body).hexdigest()
    assert digest == "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
    url = f"{URL}&bodySHA256={digest}"
    assert verify_signature([KEY], "Ldidvp12m26NI7eqEvxnEpkd9Hc=", url, raw_body=body)  # :443 variant
    assert verify_signature([KEY], "rw/jVviOgicj2+kHZULvebnA4ag=", url, raw_body=body)  # no port


def test_v3_tampered_or_missing_body_fails():
    url = f"{URL}&bodySHA256={V3_HASH}"
    assert not verify_signature([KEY], "a9nBmqA0ju/hNViExpshrM61xv4=", url, raw_body=b'{"property": "other"}')
    assert not verify_signature([KEY], "a9nBmqA0ju/hNViExpshrM61xv4=", url, raw_body=None)


def test_a_blank_body_hash_covers_no_body():
    # A URL-only signature over '?bodySHA256=' must not vouch for whatever body comes with it.
    url = f"{URL}&bodySHA256="
    signature = compute_signature(KEY, url)
    assert not verify_signature([KEY], signature, url, raw_body=b'{"forged": "1"}')
    assert not verify_signature([KEY], signature, url, raw_body=b"")


V7_KEY = "PSKtest1234567890abcdef"
V7_URL = "https://example.ngrok.io/webhook?bodySHA256=69f3cbfc18e386ef8236cb7008cd5a54b7fed637a8cb3373b5a1591d7f0fd5f4"
V7_SIG = "dfO9ek8mxyFtn2nMz24plPmPfIY="


def test_v7_signalwire_body_sha256():
    assert verify_signature([V7_KEY], V7_SIG, V7_URL, raw_body=b'{"event":"call.state"}')


def test_v7_negative_different_body():
    assert not verify_signature([V7_KEY], V7_SIG, V7_URL, raw_body=b'{"event":"DIFFERENT"}')


# --- V4: URL variants ------------------------------------------------------------------


@pytest.mark.parametrize(
    "url, signature",
    [
        ("https://user:pass@mycompany.com/myapp.php?foo=1&bar=2", "CukzLTc1tT5dXEDIHm/tKBanW10="),
        ("https://user@mycompany.com/myapp.php?foo=1&bar=2", "2YRLlVAflCqxaNicjMpJcSTgzSs="),
        ("https://user:pass@mycompany.com/myapp.php?foo=1&bar=2", "ZQFR1PTIZXF2MXB8ZnKCvnnA+rI="),  # :443
        ("https://mycompany.com/myapp.php?foo=1&bar=2&Body=It's+amazing", "dsq4Ehbj6cs+KdTkpF5sSSplOWw="),
    ],
)
def test_v4_url_variants(url, signature):
    assert verify_signature([KEY], signature, url, items(V1_PARAMS))


def test_v4_array_param():
    params = [("MessagingBinding.Address", "+1325xxxxxxx"), ("MessagingBinding.Address", "+1415xxxxxxx")]
    assert verify_signature([KEY], "83O6e2vORAoJHUNzJjDWN1jz+BA=", URL, params)
    assert compute_signature(KEY, URL, params) == "83O6e2vORAoJHUNzJjDWN1jz+BA="


# --- V5: real SignalWire callbacks -----------------------------------------------------

V5_KEY = "PSK_V3bF8oyeRNpJWGoRWHNYQMUU"


def test_v5_real_callback_http():
    params = {
        "AccountSid": "6bfbbe86-a901-4197-8759-2a0de1fa319d",
        "ApiVersion": "2010-04-01",
        "CallbackSource": "call-progress-events",
        "CallSid": "0703574f-b151-465d-aedb-28972eb513c7",
        "CallStatus": "busy",
        "Direction": "outbound-api",
        "From": "sip:+17063958228@sip.swire.io",
        "HangupBy": "sip:jpsantos@joaosantos-2a0de1fa319d.sip.swire.io",
        "HangupDirection": "inbound",
        "Timestamp": "Thu, 09 Nov 2023 17:05:04 +0000",
        "To": "sip:jpsantos@joaosantos-2a0de1fa319d.sip.swire.io",
        "SipResultCode": "486",
    }
    url = "http://0aac-189-71-169-171.ngrok-free.app/voice"
    assert compute_signature(V5_KEY, url, params) == "lf3nWPmUr2y6jSeeoMW4mg58vgI="
    assert compute_signature(V5_KEY, "http://0aac-189-71-169-171.ngrok-free.app:80/voice", params) == (
        "9sJl+qu+GGpRNykyPQl/CWJjvtA="
    )
    assert verify_signature([V5_KEY], "lf3nWPmUr2y6jSeeoMW4mg58vgI=", url, items(params))
    assert verify_signature([V5_KEY], "9sJl+qu+GGpRNykyPQl/CWJjvtA=", url, items(params))
    assert not verify_signature(["PSK_other"], "lf3nWPmUr2y6jSeeoMW4mg58vgI=", url, items(params))


def test_v5_real_callback_https():
    params = {
        "CallSid": "a97d4e8a-6047-4e2b-be48-fb96b33b5642",
        "AccountSid": "6bfbbe86-a901-4197-8759-2a0de1fa319d",
        "ApiVersion": "2010-04-01",
        "Direction": "outbound-api",
        "From": "sip:+17063958228@sip.swire.io",
        "To": "sip:jpsantos@joaosantos-2a0de1fa319d.sip.swire.io",
        "Timestamp": "Thu, 09 Nov 2023 14:40:55 +0000",
        "CallStatus": "no-answer",
        "CallbackSource": "call-progress-events",
        "HangupDirection": "outbound",
        "HangupBy": "sip:+17063958228@sip.swire.io",
        "SipResultCode": "487",
    }
    url = "https://675d-189-71-169-171.ngrok-free.app/voice"
    assert verify_signature([V5_KEY], "muUMpldcBHlzuXGZ5gbw1ETZCYA=", url, items(params))
