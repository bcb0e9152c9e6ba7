"""One delivery attempt over HTTP: POST the signed body to the endpoint, read the answer.

The endpoint's name is resolved and every address checked (service.notify.addresses) at each
attempt; the connection then goes to that checked address, with the name in the Host header
and, for https, in SNI and the certificate check, so nothing resolves the name again in
between. No redirect is followed (a 3xx is a failed attempt), no proxy is used, and an
attempt takes at most `timeout` seconds to connect and at most that long between reads.
"""

from __future__ import annotations

import collections
import dataclasses
import socket
import threading
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

import requests.certs
import urllib3

from service.notify.addresses import Resolver, UnsafeUrl, check_url, resolve

TIMEOUT = 15.0
USER_AGENT = "recording-keeper-notifications/1"
# What is read of an answer's body: only its status matters.
MAX_ANSWER_BYTES = 64 * 1024
# Pools kept alive (one per endpoint address); the least recently used beyond this is closed.
MAX_POOLS = 64


@dataclasses.dataclass(frozen=True)
class Answer:
    """How one attempt ended: an HTTP status, or an error before any status came back."""

    status: int | None = None
    error: str | None = None
    retry_after: float | None = None  # seconds, from a 429's or 503's Retry-After

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def gone(self) -> bool:
        """410 Gone: the receiver asks never to be sent anything again."""
        return self.status == 410


class HttpDeliverer:
    def __init__(self, *, allow_private: bool = False, timeout: float = TIMEOUT, pool_size: int = 8,
                 resolver: Resolver = socket.getaddrinfo, ca_certs: str | None = None):
        self.allow_private = allow_private
        self.timeout = urllib3.Timeout(connect=timeout, read=timeout)
        self.pool_size = pool_size
        self.resolver = resolver
        self.ca_certs = ca_certs or requests.certs.where()
        self._pools: collections.OrderedDict[tuple, urllib3.HTTPConnectionPool] = collections.OrderedDict()
        self._lock = threading.Lock()

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> Answer:
        try:
            scheme, host, port = check_url(url, self.allow_private)
            addresses = resolve(host, port, self.allow_private, self.resolver)
        except UnsafeUrl as exc:
            return Answer(error=f"refused: {exc}")
        parts = urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        default_port = 443 if scheme == "https" else 80
        host_header = (f"[{host}]" if ":" in host else host) + ("" if port == default_port else f":{port}")
        headers = {**headers, "Host": host_header, "User-Agent": USER_AGENT, "Content-Type": "application/json"}
        error = "no address"
        for address in addresses:
            pool = self._pool(scheme, address, port, host)
            try:
                response = pool.urlopen("POST", target, body=body, headers=headers, redirect=False, retries=False,
                                        timeout=self.timeout, preload_content=False, assert_same_host=False)
            except urllib3.exceptions.NewConnectionError as exc:
                error = _describe(exc)
                continue  # the next address, if the name has several
            except urllib3.exceptions.HTTPError as exc:
                return Answer(error=_describe(exc))
            try:
                response.read(MAX_ANSWER_BYTES)
                leftover = response.read(1)
            except urllib3.exceptions.HTTPError:
                leftover = b"?"  # the status came; a broken body does not change it
            if leftover:
                response.close()  # an answer too long to read: not worth keeping the connection for
            else:
                response.release_conn()
            retry_after = _retry_after(response.headers.get("Retry-After")) if response.status in (429, 503) else None
            return Answer(status=response.status, retry_after=retry_after)
        return Answer(error=error)

    def _pool(self, scheme: str, address: str, port: int, host: str) -> urllib3.HTTPConnectionPool:
        key = (scheme, address, port, host)
        with self._lock:
            pool = self._pools.get(key)
            if pool is not None:
                self._pools.move_to_end(key)
                return pool
            if scheme == "https":
                # Connected to the address, verified as the name: SNI and the certificate check
                # use `host`, the TCP connection `address`.
                pool = urllib3.HTTPSConnectionPool(address, port, maxsize=self.pool_size, block=False,
                                                   cert_reqs="CERT_REQUIRED", ca_certs=self.ca_certs,
                                                   server_hostname=host, assert_hostname=host)
            else:
                pool = urllib3.HTTPConnectionPool(address, port, maxsize=self.pool_size, block=False)
            self._pools[key] = pool
            while len(self._pools) > MAX_POOLS:
                self._pools.popitem(last=False)[1].close()
            return pool

    def close(self) -> None:
        with self._lock:
            for pool in self._pools.values():
                pool.close()
            self._pools.clear()


def _describe(exc: Exception) -> str:
    """A short reason, without the URL (its query may hold the receiver's token)."""
    if isinstance(exc, urllib3.exceptions.NewConnectionError):  # (a ConnectTimeoutError subclass)
        return "connection failed"
    if isinstance(exc, urllib3.exceptions.TimeoutError):
        return "timed out"
    if isinstance(exc, urllib3.exceptions.SSLError):
        return "TLS error"
    if isinstance(exc, urllib3.exceptions.ProtocolError):
        return "connection broken"
    return type(exc).__name__


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (a number of seconds or an HTTP date); None if unreadable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - datetime.now(timezone.utc)).total_seconds()
    return max(0.0, seconds) if seconds == seconds else None  # NaN is no answer
