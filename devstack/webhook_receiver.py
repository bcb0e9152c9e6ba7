"""A notification receiver for development, the tests and the benchmarks: a threaded HTTP
server on 127.0.0.1 that checks every request it gets with the `standardwebhooks` package
(the specification's reference implementation), keeps what came, and answers as told (a
status, a share of 500s, a delay, extra headers such as Retry-After), or is down altogether."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field

from cheroot import wsgi
from cheroot.ssl.builtin import BuiltinSSLAdapter
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from werkzeug.wrappers import Request, Response

from devstack.redis_server import free_port


@dataclass
class Delivery:
    webhook_id: str
    headers: dict[str, str]
    body: bytes
    payload: dict | None  # parsed once the signature verified
    verified_with: str | None  # the secret that verified it, None if none did
    status: int
    at: float  # time.time() when answered
    path: str
    truncated: bool = False  # the body ended before its Content-Length: the sender died mid-request


@dataclass
class WebhookReceiver:
    secrets: list[str] = field(default_factory=list)
    status: int = 204
    fail_rate: float = 0.0  # this share of requests answered 500 instead
    delay: float = 0.0  # seconds before answering
    headers: dict[str, str] = field(default_factory=dict)  # added to every answer
    seed: int = 7
    received: list[Delivery] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    tls_pem: str | None = None  # a PEM file with the certificate and its key: serve https
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _server: wsgi.Server | None = None
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def __call__(self, environ, start_response):
        request = Request(environ)
        raw = request.get_data(cache=True)
        truncated = request.content_length is not None and len(raw) < request.content_length
        if self.delay:
            time.sleep(self.delay)
        verified_with, payload = None, None
        for secret in self.secrets:
            try:
                payload = Webhook(secret).verify(raw, dict(request.headers))
            except WebhookVerificationError:
                continue
            verified_with = secret
            break
        with self._cond:
            status = 500 if self.fail_rate and self._rng.random() < self.fail_rate else self.status
            if verified_with is None:
                status = 400
            self.received.append(Delivery(request.headers.get("webhook-id", ""), dict(request.headers), raw, payload,
                                          verified_with, status, time.time(), request.full_path.rstrip("?"),
                                          truncated))
            self._cond.notify_all()
        return Response(status=status, headers=self.headers)(environ, start_response)

    # --- up and down ----------------------------------------------------------------------------

    def start(self) -> "WebhookReceiver":
        # cheroot keeps connections alive, as receivers in the wild do (werkzeug's server closes
        # each one, so every delivery would pay for a new connection).
        self._server = wsgi.Server(("127.0.0.1", self.port), self, numthreads=32, shutdown_timeout=1)
        self._server.expiration_interval = 0.05
        if self.tls_pem:
            self._server.ssl_adapter = BuiltinSSLAdapter(self.tls_pem, self.tls_pem)
        self._server.prepare()
        self._thread = threading.Thread(target=self._server.serve, name="webhook-receiver", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Down: the port refuses connections until start()."""
        if self._server is not None:
            self._server.stop()
            self._server = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls_pem else 'http'}://127.0.0.1:{self.port}/hooks"

    # --- what came ------------------------------------------------------------------------------

    def wait_for(self, predicate, timeout: float = 10.0) -> list[Delivery]:
        """Block until predicate(received) holds (or the timeout passes); returns a copy."""
        with self._cond:
            self._cond.wait_for(lambda: predicate(self.received), timeout=timeout)
            return list(self.received)

    def delivered_ids(self) -> set[str]:
        with self._cond:
            return {d.webhook_id for d in self.received if 200 <= d.status < 300}
