"""A second baseline for the ingest benchmark: the real webhook (signature, marshmallow, the
event) with its hand-off to Redis replaced by a no-op. What it loses against the bare route is
the cost of the web edge alone; what the real webhook loses against it is the hand-off's."""

from service import create_app

app = create_app()
app.extensions["ingest"].submit = lambda event, request_id=None: "queued"
