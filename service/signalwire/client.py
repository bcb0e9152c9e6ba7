"""SignalWire Compatibility REST client for recordings, shared by web and workers.

One urllib3 connection pool, HTTP Basic (project id, API token), connect/read timeouts, and a
small retry policy: 429/503 always retryable; 500/502/504 and transport errors only for GET; a
POST is otherwise retried only when the request provably never left (connect failure), because
re-sending a create could start a second recording.

A create also has a budget across all its attempts and waits (`create_budget`): the API request
that waits on it must answer before Heroku's router gives up at 30 s.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timezone
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import requests
import requests.certs
import urllib3
from requests.adapters import HTTPAdapter
from requests.utils import select_proxy
from urllib3.exceptions import ConnectTimeoutError, HTTPError, NewConnectionError

from service.domain.recordings import Recording, parse_int
from service.media.verified import VerifiedCopy
from service.observability import metrics

log = logging.getLogger(__name__)

API_PREFIX = "/api/laml/2010-04-01"
DEFAULT_EVENTS = ("in-progress", "completed", "absent")
_ALWAYS_RETRYABLE = frozenset({429, 503})
_GET_RETRYABLE = frozenset({500, 502, 504})
# Sent again after a 5xx or a broken connection: repeating them changes nothing.
_IDEMPOTENT = frozenset({"GET", "DELETE"})
# Media downloads follow a redirect (to a file host, say); urllib3 drops the Authorization
# header when the host changes. Nothing else is retried here: _request's loop does that.
_MEDIA_REDIRECTS = urllib3.Retry(total=3, connect=0, read=0, status=0, other=0, redirect=3)


def space_base_url(space: str) -> str:
    """'example.signalwire.com' -> 'https://example.signalwire.com'; full URLs pass through."""
    space = space.strip().rstrip("/")
    if not space:
        raise ValueError("empty SignalWire space")
    if "://" not in space:
        space = "https://" + space
    return space


class SignalWireError(Exception):
    """Any failure talking to SignalWire: an HTTP error status, a transport error or a bad body."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: int | None = None,
        more_info: str | None = None,
        retry_after: float | None = None,
        timeout: bool = False,
        method: str = "GET",
        sent: bool = True,
        final: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.more_info = more_info
        self.retry_after = retry_after
        self.timeout = timeout
        self.method = method.upper()
        # False when the request never reached the server (connect refused/timed out).
        self.sent = sent
        self._final = final

    @property
    def retryable(self) -> bool:
        if self._final:
            return False
        if self.status in _ALWAYS_RETRYABLE:
            return True
        if self.status is None and not self.sent:
            return True
        if self.method in _IDEMPOTENT:
            return self.status is None or self.status in _GET_RETRYABLE
        return False

    def __str__(self) -> str:
        bits = [f"status={self.status}"] if self.status is not None else []
        if self.code is not None:
            bits.append(f"code={self.code}")
        return f"{self.message} ({', '.join(bits)})" if bits else self.message


# --- error bodies and rate-limit headers -------------------------------------------------


def _json(response: urllib3.BaseHTTPResponse) -> Any:
    try:
        return json.loads(response.data)
    except ValueError:  # not JSON, or not text at all
        return None


def _parse_error_body(response: urllib3.BaseHTTPResponse) -> tuple[int | None, str, str | None]:
    """(code, message, more_info) from any of SignalWire's three error body shapes, or plain text."""
    body = _json(response)
    if isinstance(body, Mapping):
        errors = body.get("errors")
        if isinstance(errors, list) and errors:
            first = errors[0]
            if isinstance(first, Mapping):  # {"errors": [{code, message, more_info}]}
                messages = [str(e.get("message", "")) for e in errors if isinstance(e, Mapping)]
                return parse_int(first.get("code")), "; ".join(m for m in messages if m), first.get("more_info")
            return None, "; ".join(str(e) for e in errors), None  # {"errors": ["msg"]}
        if "code" in body or "message" in body:  # {code, message, more_info, status}
            return parse_int(body.get("code")), str(body.get("message") or ""), body.get("more_info")
    text = response.data.decode("utf-8", "replace").strip()
    return None, text[:200], None


def _retry_after(response: urllib3.BaseHTTPResponse) -> float | None:
    """Seconds to wait, from Retry-After (seconds or HTTP date) or X-RateLimit-Reset (epoch).

    At most an hour: a longer wait is a broken header, and callers turn it into an int, which
    infinity ("1e400") cannot be. NaN is no answer, like any other unreadable value.
    """

    def seconds(wait: float) -> float | None:
        return None if wait != wait else min(3600.0, max(0.0, wait))

    value = response.headers.get("Retry-After")
    if value:
        try:
            if (wait := seconds(float(value))) is not None:
                return wait
        except ValueError:
            try:
                when = parsedate_to_datetime(value)
            except (TypeError, ValueError, IndexError):
                when = None
            if when is not None:
                if when.tzinfo is None:
                    when = when.replace(tzinfo=timezone.utc)
                return seconds((when - datetime.now(timezone.utc)).total_seconds())
    reset = response.headers.get("X-RateLimit-Reset")
    if reset and response.status in _ALWAYS_RETRYABLE:
        try:
            return seconds(float(reset) - time.time())
        except ValueError:
            return None
    return None


def _pool(base_url: str, maxsize: int) -> urllib3.PoolManager:
    """The connection pool for the space, through the proxy and with the CA bundle that the
    environment names (HTTPS_PROXY, NO_PROXY, REQUESTS_CA_BUNDLE, ...), resolved as requests
    resolves them, once: the client only ever calls its own space."""
    env = requests.Session().merge_environment_settings(base_url, {}, None, None, None)
    ca = requests.certs.where() if env["verify"] is True else env["verify"]
    tls = {"cert_reqs": "CERT_REQUIRED", ("ca_cert_dir" if os.path.isdir(ca) else "ca_certs"): ca}
    proxy = select_proxy(base_url, env["proxies"])
    if proxy:  # requests' adapter builds the proxy manager (auth, SOCKS) as it would itself
        return HTTPAdapter(pool_connections=2, pool_maxsize=maxsize).proxy_manager_for(proxy, **tls)
    return urllib3.PoolManager(num_pools=2, maxsize=maxsize, **tls)


# --- the client --------------------------------------------------------------------------


class SignalWireClient:
    def __init__(
        self,
        base_url: str,
        project_id: str,
        api_token: str,
        *,
        connect_timeout: float = 3.05,
        read_timeout: float = 10.0,
        max_retries: int = 2,
        max_retry_wait: float = 5.0,
        create_budget: float = 22.0,
    ) -> None:
        self.base_url = space_base_url(base_url)
        self.project_id = project_id
        self._token = api_token
        self.max_retries = max_retries
        self.max_retry_wait = max_retry_wait
        # Seconds a create may take in all: with the API's own work around it, the start
        # request answers within 25 s (a 504 when SignalWire is slower), under Heroku's 30 s.
        self.create_budget = create_budget
        self._account_path = f"{API_PREFIX}/Accounts/{quote(project_id, safe='')}"
        # urllib3 itself, not a requests.Session over it: a Session spent half a worker's
        # fetch in its own Python (merging settings, cookies, hooks), about 250 µs of CPU.
        self._http = _pool(self.base_url, maxsize=20)
        self._headers = {
            **urllib3.make_headers(basic_auth=f"{project_id}:{api_token}"),
            "Accept": "application/json",
            "User-Agent": "recording-keeper",
        }
        self._timeout = urllib3.Timeout(connect=connect_timeout, read=read_timeout)

    def __repr__(self) -> str:
        return f"SignalWireClient(base_url={self.base_url!r}, project_id={self.project_id!r})"

    def close(self) -> None:
        self._http.clear()

    def __enter__(self) -> "SignalWireClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- public API ----------------------------------------------------------------------

    def create_recording(
        self,
        call_sid: str,
        *,
        status_callback: str,
        events: Sequence[str] = DEFAULT_EVENTS,
        callback_method: str = "POST",
        channels: str = "mono",
        track: str = "both",
        trim: str = "do-not-trim",
        budget: float | None = None,
    ) -> Recording:
        """`budget`: seconds for every attempt together (default `create_budget`)."""
        # Trim is always sent: its default changed between versions of SignalWire's docs.
        form = {
            "RecordingChannels": channels,
            "RecordingStatusCallback": status_callback,
            "RecordingStatusCallbackEvent": " ".join(events),
            "RecordingStatusCallbackMethod": callback_method,
            "RecordingTrack": track,
            "Trim": trim,
        }
        path = f"{self._account_path}/Calls/{quote(call_sid, safe='')}/Recordings.json"
        budget = self.create_budget if budget is None else budget
        return self._recording(self._request("POST", self.base_url + path, form, budget=budget, operation="create"))

    def fetch_recording(self, sid: str) -> Recording:
        url = f"{self.base_url}{self._account_path}/Recordings/{quote(sid, safe='')}.json"
        return self._recording(self._request("GET", url, operation="fetch"))

    def check_credentials(self) -> None:
        """One cheap authenticated request (a one-item page of the account's recordings);
        raises SignalWireError when SignalWire refuses it or cannot be reached."""
        self._request("GET", f"{self.base_url}{self._account_path}/Recordings.json", {"PageSize": 1},
                      operation="list")

    def list_recordings(
        self,
        *,
        call_sid: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        page_size: int = 1000,
        budget: float | None = None,
    ) -> Iterator[Recording]:
        """Newest first; follows `next_page_uri` (relative) but never onto another host.
        `budget`: seconds for each page's attempts together (none by default)."""
        params: dict[str, Any] = {"PageSize": page_size}
        if call_sid:
            params["CallSid"] = call_sid
        if created_after is not None:
            params["DateCreated>"] = _rfc2822(created_after)
        if created_before is not None:
            params["DateCreated<"] = _rfc2822(created_before)
        url: str | None = f"{self.base_url}{self._account_path}/Recordings.json"
        while url:
            page = self._request("GET", url, params, budget=budget, operation="list")
            for item in page.get("recordings") or ():
                yield self._recording(item)
            url, params = self._next_page(page.get("next_page_uri")), None

    def media_url(self, sid: str, fmt: str = "wav") -> str:
        if fmt not in ("wav", "mp3"):
            raise ValueError(f"unsupported media format {fmt!r}")
        return f"{self.base_url}{self._account_path}/Recordings/{quote(sid, safe='')}.{fmt}"

    def open_media(self, sid: str, fmt: str = "wav") -> urllib3.BaseHTTPResponse:
        """The recording's audio as an open stream (read it, then `release_conn()`), from the
        configured space by sid, never from a URL a callback carried. Sent with the API
        credentials, so it works whether or not the account requires auth on media. Errors as
        for any GET (SignalWireError; 429, 5xx and broken connections retried); urllib3 fails a
        read that ends before Content-Length."""
        url = self.media_url(sid, fmt)
        return self._request("GET", url, send=self._open_stream, operation="media")

    def delete_recording(self, copy: VerifiedCopy) -> bool:
        """Delete the recording (media and all) at SignalWire. It takes the proof that a verified
        copy exists, and nothing else: there is no way to call it for a bare sid. True when
        deleted (204), False when it was already gone (404)."""
        if not isinstance(copy, VerifiedCopy):
            raise TypeError("delete_recording() needs the recording's VerifiedCopy")
        url = f"{self.base_url}{self._account_path}/Recordings/{quote(copy.sid, safe='')}.json"
        try:
            self._request("DELETE", url, operation="delete")
        except SignalWireError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    # --- plumbing ------------------------------------------------------------------------

    def _next_page(self, next_uri: Any) -> str | None:
        if not next_uri:
            return None
        url = urljoin(self.base_url + "/", str(next_uri))
        ours, theirs = urlsplit(self.base_url), urlsplit(url)
        if (theirs.scheme, theirs.netloc) != (ours.scheme, ours.netloc):
            raise SignalWireError("refusing to follow next_page_uri to another host", final=True)
        return url

    @staticmethod
    def _recording(data: Any) -> Recording:
        try:
            return Recording.from_api(data)
        except ValueError as exc:
            raise SignalWireError(f"unexpected recording body: {exc}", final=True) from None

    def _request(self, method: str, url: str, fields: Mapping[str, Any] | None = None, *, operation: str,
                 budget: float | None = None, send=None) -> Any:
        """`fields`: the query of a GET, the urlencoded form of a POST. `operation` names the
        request in metrics.SIGNALWIRE_REQUESTS (each attempt is counted). `budget`: seconds for
        every attempt and wait together; past it, a timeout error (no attempt is started that
        could not finish in time, no wait that would end past it). `send`: one attempt
        (default `_once`, a JSON call)."""
        deadline = None if budget is None else time.monotonic() + budget
        attempt = 0
        send = send or self._once
        while True:
            try:
                return send(method, url, fields, deadline, operation)
            except SignalWireError as err:
                if not err.retryable or attempt >= self.max_retries:
                    raise
                if err.retry_after is not None:
                    if err.retry_after > self.max_retry_wait:
                        raise
                    wait = err.retry_after
                else:
                    wait = min(self.max_retry_wait, 0.1 * 2**attempt) * (0.5 + random.random() / 2)
                if deadline is not None and time.monotonic() + wait >= deadline:
                    raise  # the answer it has is better than a timeout after waiting for nothing
                attempt += 1
                log.info("signalwire %s %s: %s; retry %d in %.2fs", method, urlsplit(url).path, err, attempt, wait)
                time.sleep(wait)

    def _once(self, method: str, url: str, fields: Mapping[str, Any] | None, deadline: float | None,
              operation: str) -> dict:
        # A GET's fields go into the query, a POST's into a urlencoded form, as SignalWire expects.
        form = {"encode_multipart": False} if method == "POST" else {}
        response = self._send(method, url, operation, fields=fields, headers=self._headers,
                              timeout=self._timeout_until(deadline, method, url), retries=False, redirect=False,
                              **form)
        if response.status == 204 and method == "DELETE":
            return {}
        body = _json(response)
        if not isinstance(body, dict):
            raise SignalWireError("response body is not a JSON object", status=response.status, final=True)
        return body

    def _open_stream(self, method: str, url: str, fields: None, deadline: float | None,
                     operation: str) -> urllib3.BaseHTTPResponse:
        return self._send(method, url, operation, headers={**self._headers, "Accept": "*/*"},
                          timeout=self._timeout_until(deadline, method, url), retries=_MEDIA_REDIRECTS,
                          preload_content=False)

    def _timeout_until(self, deadline: float | None, method: str, url: str) -> urllib3.Timeout:
        if deadline is None:
            return self._timeout
        left = deadline - time.monotonic()
        if left <= 0:
            raise SignalWireError(f"no answer within the time allowed on {method} {urlsplit(url).path}",
                                  timeout=True, method=method, final=True)
        return urllib3.Timeout(connect=min(self._timeout.connect_timeout, left),
                               read=min(self._timeout.read_timeout, left), total=left)

    def _send(self, method: str, url: str, operation: str, **options: Any) -> urllib3.BaseHTTPResponse:
        """One request; a transport error or a non-2xx answer raises SignalWireError."""
        try:
            response = self._http.request(method, url, **options)
        except HTTPError as exc:
            metrics.SIGNALWIRE_REQUESTS.labels(operation, "error").inc()
            raise SignalWireError(
                self._scrub(f"{type(exc).__name__} on {method} {urlsplit(url).path}"),
                # A refused connection is a ConnectTimeoutError to urllib3, but no timeout.
                timeout=isinstance(exc, urllib3.exceptions.TimeoutError) and not isinstance(exc, NewConnectionError),
                method=method,
                sent=not isinstance(exc, ConnectTimeoutError),  # refused, DNS, connect timeout
            ) from None
        metrics.SIGNALWIRE_REQUESTS.labels(operation, str(response.status)).inc()
        log.debug("signalwire %s %s -> %d", method, urlsplit(url).path, response.status)
        if not 200 <= response.status < 300:
            if not options.get("preload_content", True):
                response.data  # noqa: B018 - read (and keep) the error's body, then free the connection
                response.release_conn()
            code, message, more_info = _parse_error_body(response)
            raise SignalWireError(
                self._scrub(message or response.reason or "HTTP error"),
                status=response.status,
                code=code,
                more_info=more_info,
                retry_after=_retry_after(response),
                method=method,
            )
        return response

    def _scrub(self, text: str) -> str:
        """Belt and braces: never let the token out through a message echoed by a server."""
        return text.replace(self._token, "***") if self._token else text


def _rfc2822(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return format_datetime(value.astimezone(timezone.utc))
