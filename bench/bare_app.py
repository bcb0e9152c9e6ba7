"""The baseline for the ingest benchmark: a Flask route that parses the callback form and
returns 204, served by gunicorn with the project's own configuration."""

from flask import Flask, request

app = Flask(__name__)


@app.route("/webhooks/recording-status", methods=["POST"])
def recording_status():
    request.form  # parse the body like the real webhook does
    return "", 204


@app.route("/healthz")
def healthz():
    return "ok"
