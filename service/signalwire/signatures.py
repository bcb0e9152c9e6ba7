"""SignalWire compat (cXML/LaML) webhook signatures: the Twilio-compatible scheme SignalWire uses.

signature = base64(HMAC-SHA1(signing_key, url + concat(name + value for params sorted by name)))

No Flask here: callers pass the URL SignalWire requested, the form params and the raw body.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from urllib.parse import parse_qs, urlsplit, urlunsplit

Params = Iterable[tuple[str, str]] | Mapping[str, str] | None

_STANDARD_PORTS = {"https": "443", "http": "80"}


def _pairs(params: Params) -> list[tuple[str, str]]:
    if params is None:
        return []
    items = params.items() if isinstance(params, Mapping) else params
    return [(str(k), str(v)) for k, v in items]


def _sign(key: str, data: str) -> str:
    digest = hmac.new(key.encode("utf-8"), data.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def compute_signature(key: str, url: str, params: Params = None) -> str:
    """Sign `url` + params sorted by name; repeated keys keep their submission order (stable sort)."""
    if not key:
        raise ValueError("signing key must not be empty")
    pairs = sorted(_pairs(params), key=lambda kv: kv[0])
    return _sign(key, url + "".join(k + v for k, v in pairs))


def _twilio_data(pairs: list[tuple[str, str]]) -> str:
    """twilio-python >= 7.14: keys sorted, each key's values sorted and de-duplicated."""
    grouped: dict[str, set[str]] = {}
    for k, v in pairs:
        grouped.setdefault(k, set()).add(v)
    return "".join(k + v for k in sorted(grouped) for v in sorted(grouped[k]))


def _signalwire_data(pairs: list[tuple[str, str]]) -> str:
    """SignalWire SDK: keys sorted, repeated keys in submission order, no de-duplication."""
    return "".join(k + v for k, v in sorted(pairs, key=lambda kv: kv[0]))


def _url_variants(url: str) -> list[str]:
    """The URL as given plus its standard-port twin (no port <-> :443/:80).

    A non-standard port is used as is: stripping it (twilio-python's ':1234' variant) would
    let a signature for one service validate on another, and SignalWire's SDK rejects it too.
    """
    parts = urlsplit(url)
    standard = _STANDARD_PORTS.get(parts.scheme.lower())
    if standard is None:
        return [url]
    userinfo, at, hostport = parts.netloc.rpartition("@")
    host, colon, port = hostport.rpartition(":")
    if colon and port.isdigit() and not hostport.endswith("]"):
        if port != standard:
            return [url]
        other = host
    else:
        other = hostport + ":" + standard
    netloc = userinfo + at + other
    return [url, urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))]


def verify_signature(
    keys: Sequence[str],
    signature: str | None,
    url: str,
    params: list[tuple[str, str]] | None = None,
    raw_body: bytes | None = None,
) -> bool:
    """True when `signature` matches under any key (rotation), port variant or repeated-key rule.

    With `bodySHA256` in the URL's query, the signature covers the URL alone and the raw body's
    SHA-256 must equal the query value. Never raises: bad input of any kind is simply False.
    """
    try:
        usable = [k for k in (keys or ()) if isinstance(k, str) and k]
        if not usable or not isinstance(signature, str) or not signature or not isinstance(url, str):
            return False
        pairs = _pairs(params)
        # Present at all (even blank), it must match: the signature then covers the URL alone.
        query = parse_qs(urlsplit(url).query, keep_blank_values=True) if "bodySHA256" in url else {}
        body_hash = query.get("bodySHA256")
        if body_hash is not None:
            if raw_body is None:
                return False
            body = raw_body.encode("utf-8") if isinstance(raw_body, str) else bytes(raw_body)
            if not hmac.compare_digest(hashlib.sha256(body).hexdigest(), body_hash[0].lower()):
                return False
            pairs = []
        expected = signature.encode("utf-8")
        # The usual case (first key, URL as given, SignalWire's data) is checked alone first;
        # returning early on a match tells a sender only what the 204 tells them anyway.
        if hmac.compare_digest(_sign(usable[0], url + _signalwire_data(pairs)).encode("ascii"), expected):
            return True
        datas = {_twilio_data(pairs), _signalwire_data(pairs)}
        matched = False
        # A failure checks every candidate, so its timing says nothing about which one came close.
        for key in usable:
            for candidate in _url_variants(url):
                for data in datas:
                    matched |= hmac.compare_digest(_sign(key, candidate + data).encode("ascii"), expected)
        return matched
    except Exception:  # garbage in (odd types, bad URLs): fail closed, never raise into a handler
        return False
