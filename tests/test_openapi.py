"""The OpenAPI document: served without a token, complete, the same as the committed copy; and
the rendered reference, whose every asset this app serves itself."""

from __future__ import annotations

import json
import re
from pathlib import Path

from click.testing import CliRunner

from service import openapi_document
from service.cli import main as cli

COMMITTED = Path(__file__).resolve().parent.parent / "docs" / "openapi.json"
REGENERATE = ".venv/bin/python -m service openapi -o docs/openapi.json"
METHODS = ("get", "put", "post", "delete", "patch")


def operations(doc):
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                yield path, method, operation


def test_committed_copy_is_the_generated_document():
    # An API change shows in the diff of docs/openapi.json: regenerate it with the change.
    assert COMMITTED.read_text(encoding="utf-8") == openapi_document(), (
        f"docs/openapi.json is not the document the code generates; regenerate it: {REGENERATE}")


def test_cli_prints_and_writes_the_document(tmp_path):
    printed = CliRunner().invoke(cli, ["openapi"], env={})  # no configuration needed
    assert printed.exit_code == 0 and json.loads(printed.output) == json.loads(openapi_document())
    written = CliRunner().invoke(cli, ["openapi", "-o", str(tmp_path / "doc.json")])
    assert written.exit_code == 0 and (tmp_path / "doc.json").read_text() == openapi_document()


def test_document_is_served_without_a_token_and_covers_every_route(app, client):
    response = client.get("/api/openapi.json")
    assert response.status_code == 200 and response.is_json
    doc = response.get_json()
    assert doc["openapi"].startswith("3.") and doc == json.loads(openapi_document())
    documented = {(path, method) for path, method, _ in operations(doc)}
    # Every route of the app that is not the document itself, health or a static asset is in it.
    routes = {(re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule), method.lower())
              for rule in app.url_map.iter_rules() for method in rule.methods - {"HEAD", "OPTIONS"}
              if rule.rule.startswith(("/api/", "/webhooks/")) and not rule.endpoint.startswith("api-docs")}
    assert routes == documented
    assert {"/api/calls/{call_sid}/recordings", "/api/recordings", "/api/recordings/{sid}",
            "/webhooks/recording-status"} <= set(doc["paths"])
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http", "scheme": "bearer", "description": doc["components"]["securitySchemes"]["bearerAuth"][
            "description"]}


def _schema_of(doc, response):
    if "$ref" in response:
        response = doc["components"]["responses"][response["$ref"].rsplit("/", 1)[-1]]
    return response.get("content", {}).get("application/json", {}).get("schema")


def test_every_operation_documents_its_token_ids_and_error_envelope():
    doc = json.loads(openapi_document())
    ids = [operation["operationId"] for _, _, operation in operations(doc)]
    assert len(ids) == len(set(ids))
    for path, method, operation in operations(doc):
        responses = operation["responses"]
        assert "default" not in responses, (path, method)  # each status is listed where it can happen
        if path.startswith("/api/"):
            assert operation["security"] == [{"bearerAuth": []}], (path, method)
            assert "401" in responses, (path, method)
        else:
            assert "security" not in operation
        if "requestBody" in operation:
            assert {"400", "413"} <= set(responses), (path, method)
        assert "414" in responses  # gunicorn's own answer to a request line it will not read
        for status, response in responses.items():
            if int(status) >= 400 and status != "414":
                assert _schema_of(doc, response) == {"$ref": "#/components/schemas/Error"}, (path, method, status)
    webhook = doc["paths"]["/webhooks/recording-status"]
    for method in ("get", "post"):
        names = {p["name"] for p in webhook[method]["parameters"]}
        assert "X-SignalWire-Signature" in names
    assert {"RecordingSid", "RecordingStatus", "AccountSid"} <= {p["name"] for p in webhook["get"]["parameters"]}
    assert "application/x-www-form-urlencoded" in webhook["post"]["requestBody"]["content"]
    start = doc["paths"]["/api/calls/{call_sid}/recordings"]["post"]
    assert "Idempotency-Key" in {p["name"] for p in start["parameters"]}
    assert {"Location", "Idempotent-Replayed"} <= set(start["responses"]["201"]["headers"])
    page = doc["components"]["schemas"]["RecordingPage"]
    assert {"recordings", "next_cursor"} <= set(page["required"])
    query = {p["name"] for p in doc["paths"]["/api/recordings"]["get"]["parameters"]}
    assert {"cursor", "limit"} <= query


def test_reference_page_and_each_of_its_assets_come_from_this_app(client):
    page = client.get("/api/docs")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert len(assets) >= 3, html  # the stylesheet, the bundle, the preset
    for url in assets:
        assert url.startswith("/"), f"{url} is not served by this app"
        response = client.get(url)
        assert response.status_code == 200 and len(response.get_data()) > 1000, url
    assert "/api/openapi.json" in html
    # Swagger UI would otherwise send the document to an online validator for its badge.
    assert '"validatorUrl": null' in html
    assert client.get("/api/docs/assets/../../openapi.json").status_code == 404
