"""gunicorn settings for the web process (`-c python:service.gunicorn_conf`).

PORT, WEB_CONCURRENCY, GUNICORN_THREADS, LOG_LEVEL and LOG_FORMAT come checked from
service.config; the app checks every other setting when it loads.
"""

import sys

from service.config import ConfigError, load_web_settings, log_options
from service.observability import logs, multiprocess

# Before any worker imports prometheus_client: the worker processes' counts are summed from here.
metrics_dir = multiprocess.prepare()

try:
    _web = load_web_settings()
    _log_level, _log_format = log_options()
except ConfigError as exc:
    # The message names the variable; a traceback from gunicorn's config loader would bury it.
    sys.exit(str(exc))

bind = f"0.0.0.0:{_web.port}"
workers = _web.web_concurrency
# Threads keep callbacks flowing while a start-recording request waits on SignalWire, and
# let callbacks that arrive together share one Redis round trip (ingest.GroupCommit).
# 2 x 16 gave the webhook its best throughput and p99 in bench/ingest.py (4, 8 and 32
# threads, and 3 processes, did worse on 2 cores).
worker_class = "gthread"
threads = _web.gunicorn_threads
# Heroku sends SIGTERM and kills 30 s later: finish in-flight requests within that.
graceful_timeout = 25
timeout = 30
keepalive = 5
# The app writes one access line per request itself (service.web.access); gunicorn's own
# lines go through the same JSON formatter as every other.
accesslog = None
logconfig_dict = logs.gunicorn_logconfig(_log_level, _log_format)

# Before reusing a connection, gunicorn reads whatever of the request body the app left
# unread, at most 64 KB; past that it closes the connection, after a response that already
# announced keep-alive, and the client's next request on it is lost. The app leaves a body
# unread when it refuses it (413 over its limit, a 401, a 404). Callbacks are at most 64 KB
# and the API's bodies far smaller, so a larger body, or one of unknown length (chunked),
# gets `Connection: close` instead: the client opens a new connection for its next request.
# Reading such a body to its end instead would hold one of the process's threads for as long
# as the sender takes to send bytes that are thrown away.
DRAINED_BODY_BYTES = 64 * 1024


def pre_request(worker, req):
    headers = dict(req.headers)  # upper-case names; gunicorn refuses a repeated Content-Length
    if "TRANSFER-ENCODING" in headers or int(headers.get("CONTENT-LENGTH") or 0) > DRAINED_BODY_BYTES:
        req.force_close()


def on_starting(server):
    multiprocess.empty(metrics_dir)  # counts of an earlier run are not this one's


def child_exit(server, worker):
    multiprocess.process_dead(worker.pid)


def on_exit(server):
    multiprocess.remove(metrics_dir)
