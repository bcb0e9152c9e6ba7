"""gunicorn settings for the web process (`-c python:service.gunicorn_conf`)."""

import os

from service.config import log_options
from service.observability import logs, multiprocess

# Before any worker imports prometheus_client: the worker processes' counts are summed from here.
metrics_dir = multiprocess.prepare()

bind = f"0.0.0.0:{os.environ.get('PORT', '5000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# Threads keep callbacks flowing while a start-recording request waits on SignalWire, and
# let callbacks that arrive together share one Redis round trip (ingest.GroupCommit).
# 2 x 16 gave the webhook its best throughput and p99 in bench/ingest.py (4, 8 and 32
# threads, and 3 processes, did worse on 2 cores).
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "16"))
# Heroku sends SIGTERM and kills 30 s later: finish in-flight requests within that.
graceful_timeout = 25
timeout = 30
keepalive = 5
# The app writes one access line per request itself (service.web.access); gunicorn's own
# lines go through the same JSON formatter as every other.
accesslog = None
logconfig_dict = logs.gunicorn_logconfig(*log_options())


def on_starting(server):
    multiprocess.empty(metrics_dir)


def child_exit(server, worker):
    multiprocess.process_dead(worker.pid)
