"""A SignalWire sandbox: the parts of the Compatibility API we use, served over real HTTP.

It plays SignalWire as a peer (tests and the local demo talk to it over loopback): create,
fetch, list and media for recordings, the recording lifecycle with signed
RecordingStatusCallbacks, and fault knobs. Choices where SignalWire's documentation is silent or inconsistent:

- create returns HTTP 201 (a non-200 2xx keeps clients honest about "any 2xx");
- a call that is not live gives HTTP 400 with error 21220;
- an unknown parameter gives 400/10000; a bad value gives 422 (13621 event, 13699 trim, else 10000);
- a recording on an `absent_calls` or silent call ends `absent` (error_code 16102), whatever Trim says,
  because no audio was received;
- `DateCreated>` / `DateCreated<` are inclusive, at one-second precision;
- in-progress callbacks carry RecordingDuration "0".
"""

from __future__ import annotations

import hmac
import heapq
import itertools
import logging
import math
import random
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timezone
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any
from urllib.parse import urlencode, urlsplit

import requests
from flask import Flask, Response, jsonify, request
from requests.adapters import HTTPAdapter
from cheroot import wsgi

from devstack.sandbox.media import media as make_media
from service.signalwire.signatures import compute_signature

log = logging.getLogger("devstack.sandbox")

API = "/api/laml/2010-04-01"
MORE_INFO = "https://signalwire.com/docs/compatibility-api/reference/errors"
CREATE_KEYS = frozenset(
    {"RecordingChannels", "RecordingStatusCallback", "RecordingStatusCallbackEvent",
     "RecordingStatusCallbackMethod", "RecordingTrack", "Trim"}
)
ENUMS = {
    "RecordingChannels": ("mono", "dual"),
    "RecordingStatusCallbackMethod": ("GET", "POST"),
    "RecordingTrack": ("inbound", "outbound", "both"),
    "Trim": ("trim-silence", "do-not-trim"),
}
EVENTS = ("in-progress", "completed", "absent")
DEFAULT_CODES = {401: 20003, 404: 20404, 429: 20429, 500: 20504, 502: 20504, 503: 20504, 504: 20504}
SHAPES = ("object", "errors", "error_strings", "text")
KNOBS = (
    "latency", "error_rate", "error_statuses", "retry_after", "callback_drop_rate",
    "callback_duplicates", "callback_reorder", "metadata_lag", "recording_seconds",
    "callback_retry_delay", "seed",
    # media: the duration completed recordings report (their audio's length; None: the wall time
    # they took), the share of media downloads cut off mid-stream, how long media answers 404
    # after completion, and answering media with a redirect to another host name (localhost).
    "completed_duration", "media_cut_rate", "media_not_ready_seconds", "media_redirect",
)


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def _rfc2822(value: datetime | None) -> str | None:
    return format_datetime(value) if value is not None else None


def _parse_date(text: str) -> datetime | None:
    try:
        parsed = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


class _Scheduler:
    """One thread running delayed jobs (recording completions), instead of a Timer per recording."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="sandbox-scheduler", daemon=True)
        self._thread.start()

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        with self._cond:
            heapq.heappush(self._heap, (time.monotonic() + delay, next(self._seq), fn))
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join(timeout=2)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and (not self._heap or self._heap[0][0] > time.monotonic()):
                    self._cond.wait(None if not self._heap else self._heap[0][0] - time.monotonic())
                if self._stopped:
                    return
                _, _, fn = heapq.heappop(self._heap)
            try:
                fn()
            except Exception:  # a failing job must not kill the scheduler
                log.exception("sandbox scheduled job failed")


class Sandbox:
    """A SignalWire Compatibility API look-alike on loopback. See the module docstring."""

    def __init__(self, project_id: str, api_token: str, signing_key: str, host: str = "127.0.0.1", port: int = 0):
        self.project_id = project_id
        self._token = api_token
        self._signing_key = signing_key
        self.host, self.port = host, port
        self._lock = threading.RLock()
        self._recordings: dict[str, dict] = {}
        self._meta: dict[str, dict] = {}  # sid -> callback settings and lifecycle bookkeeping
        self._created_seq = itertools.count()
        self._callbacks: list[dict] = []
        self._create_requests: list[dict] = []
        self._forced: deque[dict] = deque()
        self.callbacks_dropped = 0
        self.api_requests = 0
        self.ended_calls: set[str] = set()
        self.absent_calls: set[str] = set()
        self.silent_calls: set[str] = set()
        # knobs
        self.latency = 0.0
        self.error_rate = 0.0
        self.error_statuses: list[int] = [429, 500, 503]
        self.retry_after: float | None = None
        self.callback_drop_rate = 0.0
        self.callback_duplicates = 1
        self.callback_reorder = False
        self.metadata_lag = 0.0
        self.recording_seconds = 0.2
        self.callback_retry_delay = 0.05
        self.completed_duration: int | None = None
        self.media_cut_rate = 0.0
        self.media_not_ready_seconds = 0.0
        self.media_redirect = False
        self.media_requests: list[dict] = []  # each media request: sid, ext, status, with_auth
        self.deleted: dict[str, float] = {}  # sid -> time.time() of its DELETE
        self._seed: int | None = None
        self._rng = random.Random()
        self.app = self._build_app()
        self._server: wsgi.Server | None = None
        self._thread: threading.Thread | None = None
        self._scheduler: _Scheduler | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._http: requests.Session | None = None
        self._stopping = threading.Event()

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> "Sandbox":
        self._scheduler = _Scheduler()
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="sandbox-callback")
        self._http = requests.Session()
        self._http.mount("http://", HTTPAdapter(pool_connections=8, pool_maxsize=32, max_retries=0))
        self._http.mount("https://", HTTPAdapter(pool_connections=8, pool_maxsize=32, max_retries=0))
        # cheroot keeps connections alive, as the real API does (werkzeug's server closes
        # each one, which made every client call pay for a new connection and thread).
        self._server = wsgi.Server((self.host, self.port), self.app, numthreads=16, shutdown_timeout=1)
        self._server.expiration_interval = 0.05  # how long stop() waits for the accept loop
        server_error_log = self._server.error_log

        def error_log(msg: str = "", level: int = logging.INFO, traceback: bool = False) -> None:
            if sys.exc_info()[0] is ConnectionAbortedError:  # a download cut short on purpose
                log.info("sandbox: media download cut short")
                return
            server_error_log(msg, level, traceback)

        self._server.error_log = error_log
        self._server.prepare()
        self.port = self._server.bind_addr[1]
        self._thread = threading.Thread(target=self._server.serve, name="sandbox-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # in-flight deliveries stop retrying
        if self._server is not None:
            self._server.stop()
            self._server = None
        if self._scheduler is not None:
            self._scheduler.stop()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        if self._http is not None:
            self._http.close()

    def __enter__(self) -> "Sandbox":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"Sandbox(base_url={self.base_url!r}, project_id={self.project_id!r})"

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def account_path(self) -> str:
        return f"{API}/Accounts/{self.project_id}"

    # --- state for tests -------------------------------------------------------------------

    @property
    def recordings(self) -> dict[str, dict]:
        with self._lock:
            return {sid: dict(rec) for sid, rec in self._recordings.items()}

    @property
    def callbacks_sent(self) -> list[dict]:
        with self._lock:
            return [dict(cb) for cb in self._callbacks]

    @property
    def create_requests(self) -> list[dict]:
        """Each create as received: call_sid and the form as a dict of lists."""
        with self._lock:
            return [dict(r) for r in self._create_requests]

    def state(self) -> dict[str, Any]:
        with self._lock:
            by_status: dict[str, int] = {}
            for rec in self._recordings.values():
                by_status[rec["status"]] = by_status.get(rec["status"], 0) + 1
            return {
                "recordings": len(self._recordings),
                "recordings_by_status": by_status,
                "callbacks_sent": len(self._callbacks),
                "callbacks_dropped": self.callbacks_dropped,
                "create_requests": len(self._create_requests),
                "api_requests": self.api_requests,
                "forced_pending": len(self._forced),
                "media_requests": len(self.media_requests),
                "deleted": len(self.deleted),
            }

    # --- knobs ---------------------------------------------------------------------------

    @property
    def seed(self) -> int | None:
        return self._seed

    @seed.setter
    def seed(self, value: int | None) -> None:
        with self._lock:
            self._seed = value
            self._rng = random.Random(value)

    def _chance(self, rate: float) -> bool:
        if rate <= 0:
            return False
        with self._lock:
            return self._rng.random() < rate

    def set_knobs(self, **knobs: Any) -> None:
        unknown = set(knobs) - set(KNOBS)
        if unknown:
            raise ValueError(f"unknown knobs: {sorted(unknown)}")
        with self._lock:
            for name, value in knobs.items():
                setattr(self, name, value)

    def knobs(self) -> dict[str, Any]:
        with self._lock:
            return {name: getattr(self, name) for name in KNOBS}

    def fail_next(
        self,
        status: int,
        shape: str = "object",
        retry_after: float | str | None = None,
        count: int = 1,
        code: int | None = None,
        message: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Force the next `count` API responses to be this error, in this body shape (plus headers)."""
        if shape not in SHAPES:
            raise ValueError(f"shape must be one of {SHAPES}")
        with self._lock:
            for _ in range(count):
                self._forced.append(
                    {"status": status, "shape": shape, "retry_after": retry_after, "code": code, "message": message,
                     "headers": dict(headers or {})}
                )

    def patch_recording(self, sid: str, **fields: Any) -> None:
        """Change how a recording is served (e.g. numbers as strings) to exercise lenient clients."""
        with self._lock:
            self._recordings[sid].update(fields)

    def end_call(self, call_sid: str) -> None:
        """The call hangs up: later creates fail with 21220; its live recordings complete now."""
        with self._lock:
            self.ended_calls.add(call_sid)
            live = [sid for sid, rec in self._recordings.items()
                    if rec["call_sid"] == call_sid and rec["status"] == "in-progress"]
        for sid in live:
            self._finish(sid)

    def make_silent(self, call_sid: str) -> None:
        with self._lock:
            self.silent_calls.add(call_sid)

    def record_verb(
        self,
        call_sid: str,
        callback_url: str,
        events: Iterable[str] = ("completed",),
        method: str = "POST",
        channels: str = "mono",
        trim: str = "trim-silence",
    ) -> str:
        """A recording started by a `<Record>` verb rather than by our REST call."""
        rec = self._start_recording(call_sid, callback_url, list(events), method, channels, trim, "RecordVerb")
        return rec["sid"]

    # --- recording lifecycle -----------------------------------------------------------------

    def _start_recording(
        self, call_sid: str, callback: str | None, events: list[str], method: str, channels: str, trim: str, source: str
    ) -> dict:
        sid = str(uuid.uuid4())
        now = _now()
        n = "2" if channels == "dual" else "1"
        rec = {
            "sid": sid,
            "account_sid": self.project_id,
            "api_version": "2010-04-01",
            "call_sid": call_sid,
            "conference_sid": None,
            "channel": n,
            "channels": n,
            "date_created": _rfc2822(now),
            "date_updated": _rfc2822(now),
            "start_time": _rfc2822(now),
            "end_time": None,
            "duration": 0,
            "price": None,
            "price_unit": "USD",
            "source": source,
            "status": "in-progress",
            "error_code": None,
            "uri": f"{self.account_path}/Recordings/{sid}.json",
            "subresource_uris": {"transcriptions": f"{self.account_path}/Recordings/{sid}/Transcriptions.json"},
            "encryption_details": None,
            "trim": trim,
        }
        meta = {
            "callback": callback, "events": events, "method": method, "created": now,
            "seq": next(self._created_seq), "started": time.monotonic(), "completed_at": None, "in_progress": None,
            # With `callback_reorder`, in-progress is held back and sent after the final status.
            "deferred_progress": bool(callback and "in-progress" in events and self.callback_reorder),
        }
        with self._lock:
            self._recordings[sid] = rec
            self._meta[sid] = meta
        if callback and "in-progress" in events and not meta["deferred_progress"]:
            meta["in_progress"] = self._send_event(sid, "in-progress")
        assert self._scheduler is not None, "sandbox not started"
        self._scheduler.call_later(self.recording_seconds, lambda: self._finish(sid))
        return dict(rec)

    def _finish(self, sid: str) -> None:
        with self._lock:
            rec, meta = self._recordings[sid], self._meta[sid]
            if rec["status"] != "in-progress":
                return  # already finished (the call ended first)
            end = _now()
            absent = rec["call_sid"] in self.absent_calls or rec["call_sid"] in self.silent_calls
            if absent:
                rec.update(status="absent", duration=0, error_code="16102", price=None)
            else:
                duration = self.completed_duration or max(1, round(time.monotonic() - meta["started"]))
                price = -0.0025 * math.ceil(duration / 60)
                rec.update(status="completed", duration=duration, price=f"{price:.4f}")
            rec.update(end_time=_rfc2822(end), date_updated=_rfc2822(end))
            meta["completed_at"] = time.monotonic()
            final = rec["status"]
            wanted_final = meta["callback"] and final in meta["events"]
            reorder = meta["deferred_progress"]
        if reorder:
            # Final status first, in-progress only after it has been delivered.
            first = self._send_event(sid, final) if wanted_final else []
            self._after(first, lambda: self._send_event(sid, "in-progress"))
        elif wanted_final:
            # Keep the natural order: the final event waits for in-progress to be delivered.
            self._after(meta["in_progress"] or [], lambda: self._send_event(sid, final))

    @staticmethod
    def _after(futures: list[Future], fn: Callable[[], Any]) -> None:
        """Run `fn` once every future is done (without blocking a pool thread)."""
        if not futures:
            fn()
            return
        remaining = [len(futures)]
        lock = threading.Lock()

        def done(_: Future) -> None:
            with lock:
                remaining[0] -= 1
                last = remaining[0] == 0
            if last:
                fn()

        for fut in futures:
            fut.add_done_callback(done)

    # --- callbacks ---------------------------------------------------------------------------

    def _callback_params(self, sid: str, event: str) -> dict[str, str]:
        with self._lock:
            rec = self._recordings[sid]
            params = {
                "AccountSid": self.project_id,
                "CallSid": rec["call_sid"],
                "RecordingSid": sid,
                "RecordingUrl": f"{self.base_url}{self.account_path}/Recordings/{sid}",
                "RecordingStatus": event,
                "RecordingDuration": "0" if event == "in-progress" else str(rec["duration"]),
                "RecordingChannels": rec["channels"],
                "RecordingSource": rec["source"],
                "RecordingStartTime": rec["start_time"],
            }
            if event == "absent":
                params["ErrorCode"] = rec["error_code"] or "16102"
        return params

    def _send_event(self, sid: str, event: str) -> list[Future]:
        """Deliver one event (maybe dropped, maybe duplicated); returns the delivery futures."""
        if self._chance(self.callback_drop_rate):
            with self._lock:
                self.callbacks_dropped += 1
            log.info("sandbox dropped %s callback for %s", event, sid)
            return []
        params = self._callback_params(sid, event)
        copies = max(1, int(self.callback_duplicates))
        assert self._pool is not None
        try:
            return [self._pool.submit(self._deliver, sid, event, params) for _ in range(copies)]
        except RuntimeError:  # pool shut down: the sandbox is stopping
            return []

    def _deliver(self, sid: str, event: str, params: dict[str, str]) -> None:
        meta = self._meta[sid]
        url, method = meta["callback"], meta["method"]
        body: dict[str, str] | None = params
        if method == "GET":
            url = url + ("&" if "?" in url else "?") + urlencode(params)
            body = None
        signature = compute_signature(self._signing_key, url, body)
        assert self._http is not None
        for attempt in range(1, 4):  # SignalWire: three attempts in total (its webhook docs)
            if self._stopping.is_set():
                return
            status: int | None = None
            try:
                response = self._http.request(
                    method, url, data=body, timeout=(2, 5), allow_redirects=False,
                    headers={"X-SignalWire-Signature": signature},
                )
                status = response.status_code
                response.close()
            except requests.RequestException as exc:
                log.info("sandbox callback %s %s attempt %d failed: %s", event, sid, attempt, type(exc).__name__)
            with self._lock:
                self._callbacks.append({
                    "url": url, "method": method, "params": dict(params), "status": status, "attempt": attempt,
                    "recording_sid": sid, "event": event, "signature": signature,
                })
            if status is not None and status < 500:
                return
            time.sleep(self.callback_retry_delay * attempt)

    # --- HTTP ---------------------------------------------------------------------------------

    def _error(self, status: int, code: int | None, message: str, shape: str = "object",
               retry_after: float | str | None = None) -> Response:
        code = code if code is not None else DEFAULT_CODES.get(status, 10000)
        if shape == "errors":
            response = jsonify({"errors": [{"code": str(code), "message": message, "more_info": MORE_INFO}]})
        elif shape == "error_strings":
            response = jsonify({"errors": [message]})
        elif shape == "text":
            response = Response(f"<html><body>{status} {message}</body></html>", mimetype="text/html")
        else:
            response = jsonify({"code": code, "message": message, "more_info": MORE_INFO, "status": status})
        response.status_code = status
        if retry_after is not None:
            response.headers["Retry-After"] = str(retry_after)
        if status == 401:
            response.headers["WWW-Authenticate"] = 'Basic realm="SignalWire"'
        return response

    def _authorized(self, account_sid: str) -> bool:
        auth = request.authorization
        if auth is None or auth.type != "basic":
            return False
        user_ok = hmac.compare_digest((auth.username or "").encode(), self.project_id.encode())
        token_ok = hmac.compare_digest((auth.password or "").encode(), self._token.encode())
        return user_ok and token_ok and account_sid == self.project_id

    def _unauthorized(self) -> Response:
        return self._error(401, 20003, "Authentication failed")

    def _inject_faults(self) -> Response | None:
        if not request.path.startswith(API):
            return None
        with self._lock:
            self.api_requests += 1
        if self.latency > 0:
            time.sleep(self.latency)
        with self._lock:
            forced = self._forced.popleft() if self._forced else None
        if forced is not None:
            message = forced["message"] or f"Sandbox forced error {forced['status']}"
            response = self._error(forced["status"], forced["code"], message, forced["shape"], forced["retry_after"])
            response.headers.update(forced["headers"])
            return response
        if self._chance(self.error_rate):
            with self._lock:
                status = self._rng.choice(list(self.error_statuses))
            return self._error(status, None, f"Sandbox random error {status}", retry_after=self.retry_after)
        return None

    @staticmethod
    def _log_request(response: Response) -> Response:
        # One line per request (never the headers, which carry the token).
        log.info('%s "%s %s" %s', request.remote_addr, request.method, request.full_path.rstrip("?"),
                 response.status_code)
        return response

    def _build_app(self) -> Flask:
        app = Flask("devstack.sandbox")
        app.before_request(self._inject_faults)
        app.after_request(self._log_request)
        acct = f"{API}/Accounts/<account_sid>"
        app.add_url_rule(f"{acct}/Calls/<call_sid>/Recordings", view_func=self._create, methods=["POST"])
        app.add_url_rule(f"{acct}/Calls/<call_sid>/Recordings.json", view_func=self._create, methods=["POST"],
                         endpoint="create_json")
        app.add_url_rule(f"{acct}/Recordings", view_func=self._list, methods=["GET"])
        app.add_url_rule(f"{acct}/Recordings.json", view_func=self._list, methods=["GET"], endpoint="list_json")
        app.add_url_rule(f"{acct}/Recordings/<name>", view_func=self._recording, methods=["GET"])
        app.add_url_rule(f"{acct}/Recordings/<name>", view_func=self._delete, methods=["DELETE"], endpoint="delete")
        app.add_url_rule("/_sandbox/media/<account_sid>/<name>", view_func=self._redirected_media)
        app.add_url_rule("/_sandbox/state", view_func=lambda: jsonify(self.state()))
        app.add_url_rule("/_sandbox/knobs", view_func=self._knobs_view, methods=["GET", "POST"])
        return app

    def _create(self, account_sid: str, call_sid: str) -> Response:
        if not self._authorized(account_sid):
            return self._unauthorized()
        form = request.form
        with self._lock:
            self._create_requests.append({"call_sid": call_sid, "params": form.to_dict(flat=False)})
        unknown = sorted(set(form) - CREATE_KEYS)
        if unknown:
            return self._error(400, 10000, f"Unknown parameter(s): {', '.join(unknown)}")
        for key, allowed in ENUMS.items():
            value = form.get(key)
            if value is not None and value not in allowed:
                code = 13699 if key == "Trim" else 10000
                return self._error(422, code, f"{key} must be one of {', '.join(allowed)}")
        raw_events = " ".join(form.getlist("RecordingStatusCallbackEvent")).split()
        events = raw_events or ["completed"]
        bad = [e for e in events if e not in EVENTS]
        if bad:
            return self._error(422, 13621, f"The provided event is not a valid recording callback event: {bad[0]}")
        callback = form.get("RecordingStatusCallback") or None
        if callback is not None and urlsplit(callback).scheme not in ("http", "https"):
            return self._error(422, 10000, "RecordingStatusCallback must be an absolute http(s) URL")
        with self._lock:
            ended = call_sid in self.ended_calls
        if ended:
            return self._error(400, 21220, "A recording cannot be started for a call that is not in-progress")
        rec = self._start_recording(
            call_sid, callback, events,
            form.get("RecordingStatusCallbackMethod", "POST"),
            form.get("RecordingChannels", "mono"),
            form.get("Trim", "do-not-trim"),
            "StartCallRecordingApi",
        )
        response = jsonify(rec)
        response.status_code = 201
        return response

    def _recording(self, account_sid: str, name: str) -> Response:
        sid, dot, ext = name.partition(".")
        ext = ext if dot else "wav"
        with self._lock:
            rec = self._recordings.get(sid)
            completed_at = self._meta[sid]["completed_at"] if rec else None
        if ext == "json":
            if not self._authorized(account_sid):
                return self._unauthorized()
            lagging = completed_at is not None and time.monotonic() - completed_at < self.metadata_lag
            if rec is None or lagging:
                return self._error(404, 20404, "The requested resource was not found")
            return jsonify(rec)
        # Media needs no auth (SignalWire's retrieve-recording docs) but must belong to this account.
        if rec is not None and account_sid == self.project_id and ext in ("wav", "mp3") and self.media_redirect:
            host = "localhost" if self.host == "127.0.0.1" else "127.0.0.1"
            with self._lock:
                self.media_requests.append({"sid": sid, "ext": ext, "status": 302, "host": request.host,
                                            "with_auth": request.authorization is not None})
            return Response(status=302, headers={"Location": f"http://{host}:{self.port}/_sandbox/media/{account_sid}/{name}"})
        return self._media(account_sid, sid, ext, rec, completed_at)

    def _redirected_media(self, account_sid: str, name: str) -> Response:
        sid, _, ext = name.partition(".")
        with self._lock:
            rec = self._recordings.get(sid)
            completed_at = self._meta[sid]["completed_at"] if rec else None
        return self._media(account_sid, sid, ext, rec, completed_at)

    def _media(self, account_sid: str, sid: str, ext: str, rec: dict | None, completed_at: float | None) -> Response:
        """The recording's audio, streamed with its Content-Length; 404 while it is not ready."""
        not_ready = completed_at is None or time.monotonic() - completed_at < self.media_not_ready_seconds
        if rec is None or account_sid != self.project_id or ext not in ("wav", "mp3") or not_ready:
            status = 404
        else:
            status = 200
        with self._lock:
            self.media_requests.append({"sid": sid, "ext": ext, "status": status, "host": request.host,
                                        "with_auth": request.authorization is not None})
        if status == 404:
            return self._error(404, 20404, "The requested resource was not found")
        audio = make_media(sid, rec["duration"], int(rec["channels"]), ext)
        chunks = iter(audio)
        if self._chance(self.media_cut_rate):
            with self._lock:
                after = self._rng.randrange(1, max(2, audio.length))
            chunks = self._cut(chunks, after)
        return Response(chunks, mimetype=audio.content_type, headers={"Content-Length": str(audio.length)},
                        direct_passthrough=True)

    @staticmethod
    def _cut(chunks, after: int):
        """The stream, broken off after `after` bytes (the connection drops: a short body)."""
        sent = 0
        for chunk in chunks:
            if sent + len(chunk) >= after:
                yield chunk[: after - sent]
                raise ConnectionAbortedError("sandbox: media download cut short")
            sent += len(chunk)
            yield chunk

    def _delete(self, account_sid: str, name: str) -> Response:
        """DELETE …/Recordings/{sid}[.json]: 204, then the recording and its media are gone (404)."""
        if not self._authorized(account_sid):
            return self._unauthorized()
        sid = name[:-5] if name.endswith(".json") else name
        with self._lock:
            if self._recordings.pop(sid, None) is None:
                return self._error(404, 20404, "The requested resource was not found")
            self.deleted[sid] = time.time()
        return Response(status=204)

    def _list(self, account_sid: str) -> Response:
        if not self._authorized(account_sid):
            return self._unauthorized()
        args = request.args
        try:
            page_size = int(args.get("PageSize", 50))
            page = int(args.get("Page", 0))
        except ValueError:
            return self._error(400, 10000, "Page and PageSize must be integers")
        if not 1 <= page_size <= 1000 or page < 0:
            return self._error(400, 10000, "PageSize must be 1..1000 and Page >= 0")
        bounds = {}
        for key in ("DateCreated>", "DateCreated<", "DateCreated"):
            if key in args:
                parsed = _parse_date(args[key])
                if parsed is None:
                    return self._error(400, 10000, f"{key} is not a date")
                bounds[key] = parsed
        call_sid = args.get("CallSid")
        with self._lock:
            rows = [(self._meta[sid], dict(rec)) for sid, rec in self._recordings.items()]
        selected = []
        for meta, rec in rows:
            created = meta["created"]
            if call_sid and rec["call_sid"] != call_sid:
                continue
            if "DateCreated>" in bounds and created < bounds["DateCreated>"]:
                continue
            if "DateCreated<" in bounds and created > bounds["DateCreated<"]:
                continue
            if "DateCreated" in bounds and created.date() != bounds["DateCreated"].date():
                continue
            selected.append((meta["created"], meta["seq"], rec))
        selected.sort(key=lambda row: (row[0], row[1]), reverse=True)  # newest first
        ordered = [rec for _, _, rec in selected]
        token = args.get("PageToken")
        if token and token.startswith("PA"):
            # The token names the last item of the previous page, so inserts don't shift pages.
            sids = [rec["sid"] for rec in ordered]
            start = sids.index(token[2:]) + 1 if token[2:] in sids else len(sids)
        else:
            start = page * page_size
        items = ordered[start:start + page_size]
        filters = [(k, v) for k, v in args.items(multi=True) if k not in ("Page", "PageSize", "PageToken")]
        base = f"{self.account_path}/Recordings"

        def page_uri(n: int, extra: list[tuple[str, str]] = []) -> str:  # noqa: B006 - never mutated
            return base + "?" + urlencode(filters + [("Page", str(n)), ("PageSize", str(page_size))] + extra)

        more = start + page_size < len(ordered)
        return jsonify({
            "uri": page_uri(page, [("PageToken", token)] if token else []),
            "first_page_uri": page_uri(0),
            "next_page_uri": page_uri(page + 1, [("PageToken", "PA" + items[-1]["sid"])]) if more and items else None,
            "previous_page_uri": page_uri(page - 1) if page > 0 else None,
            "page": page,
            "page_size": page_size,
            "recordings": items,
        })

    def _knobs_view(self) -> Response:
        if request.method == "POST":
            body = request.get_json(silent=True)
            if not isinstance(body, dict):
                return self._error(400, 10000, "expected a JSON object")
            body = dict(body)
            try:
                for call in body.pop("end_calls", []):
                    self.end_call(call)
                for call in body.pop("silent_calls", []):
                    self.make_silent(call)
                with self._lock:
                    self.absent_calls.update(body.pop("absent_calls", []))
                forced = body.pop("fail_next", None)
                for spec in [forced] if isinstance(forced, dict) else forced or []:
                    self.fail_next(**spec)
                self.set_knobs(**body)
            except (TypeError, ValueError) as exc:
                return self._error(400, 10000, str(exc))
        return jsonify(self.knobs())
