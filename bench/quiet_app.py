"""A baseline for the ingest benchmark's observability cost: the real webhook with its request
id, access line and counters off (service.web.access's middleware removed). The real webhook
against it is what they cost the acknowledgement path."""

from service import create_app

app = create_app()
app.wsgi_app = app.wsgi_app.wsgi_app
