"""gunicorn settings for the web process (`-c python:service.gunicorn_conf`)."""

import os

bind = f"0.0.0.0:{os.environ.get('PORT', '5000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# Threads let one worker keep acknowledging callbacks while another request waits on
# SignalWire (start-recording calls out over HTTP).
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
# Heroku sends SIGTERM and kills 30 s later: finish in-flight requests within that.
graceful_timeout = 25
timeout = 30
keepalive = 5
accesslog = None
