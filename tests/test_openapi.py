"""The OpenAPI document is valid and describes exactly the routes the app serves."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate
from starlette.applications import Starlette
from starlette.routing import Route

import pg
from app_client import app_client
from commtunnel import Commtunnel, Settings
from commtunnel.testing import ManualClock, MockProvider
from commtunnel_http import create_app
from commtunnel_http.openapi import openapi_document

HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


@pytest.fixture
def ct(tmp_path: Path) -> Commtunnel:
    return Commtunnel.open(
        db=pg.fresh_db(tmp_path / "ct.db"),
        email_provider=MockProvider(),
        clock=ManualClock(),
        settings=Settings(embedded_worker=False),
    )


@pytest.fixture
async def client(ct: Commtunnel, anyio_backend: str) -> AsyncIterator[httpx.AsyncClient]:
    async with ct, app_client(create_app(ct)) as c:
        yield c


def served_operations(app: Starlette) -> set[tuple[str, str]]:
    """(path, method) for every route of the app; HEAD is Starlette's implicit twin of GET."""
    operations = set()
    for route in app.routes:
        assert isinstance(route, Route), f"unexpected route type {route!r}"
        assert route.methods is not None
        operations |= {(route.path, m.lower()) for m in route.methods if m != "HEAD"}
    return operations


def documented_operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    """(path, method) for every operation in the document."""
    return {
        (path, method)
        for path, item in document["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }


def test_document_is_valid_openapi_3_0_3() -> None:
    """The document passes the OpenAPI validator and declares version 3.0.3."""
    document = openapi_document()
    validate(document)
    assert document["openapi"] == "3.0.3"


def test_document_describes_exactly_the_served_routes(ct: Commtunnel) -> None:
    """The documented (path, method) pairs equal the app's routes, no more, no fewer."""
    served = served_operations(create_app(ct))
    assert ("/v1/public/emails/send", "post") in served
    assert documented_operations(openapi_document()) == served


def test_document_declares_auth_envelope_and_idempotency_header() -> None:
    """Bearer auth is the default, the Error envelope is defined, sends take x-idempotency-key."""
    document = openapi_document()
    components = document["components"]
    assert components["securitySchemes"]["bearerAuth"] == {
        **components["securitySchemes"]["bearerAuth"],
        "type": "http",
        "scheme": "bearer",
    }
    assert document["security"] == [{"bearerAuth": []}]
    assert set(components["schemas"]["Error"]["required"]) == {"error", "code", "requestId"}
    assert components["parameters"]["IdempotencyKey"]["name"] == "x-idempotency-key"
    send = document["paths"]["/v1/public/emails/send"]["post"]
    assert {"$ref": "#/components/parameters/IdempotencyKey"} in send["parameters"]
    for path in ("/healthz", "/v1/public/openapi.json"):
        assert document["paths"][path]["get"]["security"] == []


def test_every_documented_operation_answers_errors_in_the_envelope() -> None:
    """Every operation's 4xx, 5xx and default responses are the Error schema (or a ref to one)."""
    document = openapi_document()
    shared = document["components"]["responses"]
    for path, method in documented_operations(document):
        responses = document["paths"][path][method]["responses"]
        for status, response in responses.items():
            if status[0] in "45" or status == "default":
                ref = response.get("$ref")
                if ref is not None:
                    response = shared[ref.removeprefix("#/components/responses/")]
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/Error"}, (path, status)


@pytest.mark.anyio
async def test_document_is_served_without_auth(client: httpx.AsyncClient) -> None:
    """GET /v1/public/openapi.json needs no key and serves the same document as JSON."""
    r = await client.get("/v1/public/openapi.json")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.json() == openapi_document()


def test_sms_webhooks_declare_their_own_authentication() -> None:
    """Token-guarded SMS webhooks use ?token=; the signed provider callback needs no key."""
    document = openapi_document()
    scheme = document["components"]["securitySchemes"]["webhookToken"]
    assert (scheme["type"], scheme["in"], scheme["name"]) == ("apiKey", "query", "token")
    for path in ("inbound", "inbound-opt-out", "dlr"):
        operation = document["paths"][f"/v1/webhooks/sms/{path}"]["post"]
        assert operation["security"] == [{"webhookToken": []}], path
    assert document["paths"]["/v1/webhooks/sms/provider"]["post"]["security"] == []
    sms_send = document["paths"]["/v1/public/sms/send"]["post"]
    assert {"$ref": "#/components/parameters/IdempotencyKey"} in sms_send["parameters"]
    otp_cooldown = document["paths"]["/v1/public/sms/otp/send"]["post"]["responses"]["429"]
    assert "Retry-After" in otp_cooldown["headers"]


def test_whatsapp_routes_document_their_answers_and_authentication() -> None:
    """WhatsApp sends answer 201/200/422/502; Meta's webhook needs no key; the line is PATCHed."""
    document = openapi_document()
    paths = document["paths"]
    send = paths["/v1/public/whatsapp/send"]["post"]
    assert {"$ref": "#/components/parameters/IdempotencyKey"} in send["parameters"]
    assert {"201", "200", "409", "422", "502"} <= set(send["responses"])
    assert "Idempotent-Replayed" in send["responses"]["200"]["headers"]
    assert "200" in paths["/v1/public/whatsapp/{id}/retry"]["post"]["responses"]
    line = paths["/v1/account/whatsapp-cloud-line"]
    assert set(line) == {"get", "patch"}
    assert (
        "whatsappAccessToken" not in document["components"]["schemas"]["WhatsAppLine"]["properties"]
    )
    handshake = paths["/v1/webhooks/whatsapp"]["get"]
    assert handshake["security"] == []
    assert {p["name"] for p in handshake["parameters"]} == {
        "hub.mode",
        "hub.verify_token",
        "hub.challenge",
    }
    assert "text/plain" in handshake["responses"]["200"]["content"]
    assert "403" in handshake["responses"]
    receive = paths["/v1/webhooks/whatsapp"]["post"]
    assert receive["security"] == []
    assert receive["parameters"][0]["name"] == "X-Hub-Signature-256"
    assert "401" in receive["responses"]
