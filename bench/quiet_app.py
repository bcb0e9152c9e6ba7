"""Baselines for the ingest benchmark's observability cost (bench.ingest --quiet), app factories.

`all_off()`: the real webhook with its request id, access line and counters off
(service.web.access's middleware removed). `lines_off()` (--quiet-off lines): the middleware
kept (the request id, its header, its way into the job) but taking no notes: no access line,
no counts. The real webhook against either is what that part costs the acknowledgement path."""

from service import create_app


def all_off():
    app = create_app()
    app.wsgi_app = app.wsgi_app.wsgi_app
    return app


def lines_off():
    app = create_app()
    app.wsgi_app.notes.add = lambda note: None
    return app
