"""Every refusal answers the one error envelope, with its stable code, and stores nothing."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
from starlette.applications import Starlette

import pg
from app_client import ApiEnv, app_client, assert_error
from commtunnel import Commtunnel, Settings
from commtunnel.domain.errors import ProviderConfigError, RateLimitedError
from commtunnel.testing import ManualClock, MockProvider
from commtunnel_http import create_app
from commtunnel_http.errors import error_response

pytestmark = pytest.mark.anyio

SEND = "/v1/public/emails/send"
EMAIL_SCOPES = frozenset({"send:email", "read:email"})
BODY = {"from": "hi@example.com", "to": "ada@example.org", "subject": "Hi", "text": "Hello"}
LIMIT = 4096


@attrs.define
class Env(ApiEnv):
    """The env (:class:`~app_client.ApiEnv`) with a :data:`LIMIT`-byte body limit, and its app."""

    app: Starlette

    async def send(self, body: Any = None, **headers: str) -> httpx.Response:
        return await self.client.post(
            SEND, json=BODY if body is None else body, headers=self.auth(**headers)
        )

    async def pending(self) -> int:
        return await self.ct.backend.pending_job_count()


@asynccontextmanager
async def open_env(tmp_path: Path) -> AsyncIterator[Env]:
    async with Commtunnel.open(
        db=pg.fresh_db(tmp_path / "ct.db"),
        email_provider=MockProvider(),
        clock=ManualClock(),
        settings=Settings(embedded_worker=False, max_body_bytes=LIMIT),
    ) as ct:
        await ct.admin.add_sender(ct.org.id, "example.com")
        _, key = await ct.keys.create(ct.org.id, scopes=EMAIL_SCOPES)
        app = create_app(ct)
        async with app_client(app) as client:
            yield Env(ct=ct, client=client, key=key, app=app)


@pytest.fixture
async def env(tmp_path: Path, anyio_backend: str) -> AsyncIterator[Env]:
    async with open_env(tmp_path) as e:
        yield e


# --------------------------------------------------------------------------- bad bodies


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b'{"from": ', "application/json"),
        (b'[{"from": "hi@example.com"}]', "application/json"),
        (b'"just a string"', "application/json"),
        (b"", "application/json"),
        (b'{"subject": NaN}', "application/json"),
        (b'{"subject": "\xff"}', "application/json"),
        (b"from=hi%40example.com", "application/x-www-form-urlencoded"),
    ],
    ids=["malformed", "array", "string", "empty", "nan", "not-utf8", "form"],
)
async def test_body_that_is_not_a_json_object_is_invalid_json(
    env: Env, content: bytes, content_type: str
) -> None:
    """Malformed JSON, a non-object, or a non-JSON content type answer 400 INVALID_JSON."""
    headers = env.auth(**{"content-type": content_type, "x-idempotency-key": "k"})
    r = await env.client.post(SEND, content=content, headers=headers)
    assert_error(r, 400, "INVALID_JSON")
    assert await env.pending() == 0


_CRLF = "Hi\r\nBcc: victim@example.net"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"to": "not-an-address"}, "to"),
        ({"from": "hi@"}, "from"),
        ({"text": None}, "html"),
        ({"templateId": "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", "text": None}, "templateId"),
        ({"subject": "x" * 999}, "subject"),
        ({"subject": _CRLF}, "subject"),
        ({"to": "ada@example.org\r\nBcc: victim@example.net"}, "to"),
        ({"from": "hi@example.com\nBcc: victim@example.net"}, "from"),
        ({"cc": "someone@example.org"}, "cc"),
        ({"tracking": "yes"}, "tracking"),
    ],
    ids=[
        "bad-to",
        "bad-from",
        "no-body",
        "unknown-template",
        "long-subject",
        "crlf-subject",
        "crlf-to",
        "lf-from",
        "unknown-field",
        "tracking-not-bool",
    ],
)
async def test_invalid_field_is_400_and_stores_nothing(
    env: Env, change: dict[str, Any], field: str
) -> None:
    """A bad field answers 400 VALIDATION_ERROR naming it; the key is then still free."""
    body = {k: v for k, v in {**BODY, **change}.items() if v is not None}
    r = await env.send(body, **{"x-idempotency-key": "k1"})
    details = assert_error(r, 400, "VALIDATION_ERROR")
    assert field in details
    assert await env.pending() == 0
    fixed = await env.send(**{"x-idempotency-key": "k1"})
    assert fixed.status_code == 202
    assert fixed.json()["duplicate"] is False


@pytest.mark.parametrize("key", ["", "k" * 256], ids=["empty", "256-chars"])
async def test_bad_idempotency_key_is_400(env: Env, key: str) -> None:
    """An empty or over-long x-idempotency-key answers 400 VALIDATION_ERROR."""
    details = assert_error(await env.send(**{"x-idempotency-key": key}), 400, "VALIDATION_ERROR")
    assert "idempotencyKey" in details
    assert await env.pending() == 0


async def test_idempotency_key_of_255_chars_is_accepted(env: Env) -> None:
    """The longest allowed key (255 characters) is accepted."""
    assert (await env.send(**{"x-idempotency-key": "k" * 255})).status_code == 202


async def test_preview_unknown_field_and_bad_tracking_are_400(env: Env) -> None:
    """Preview refuses fields it does not know and a non-boolean ``tracking``."""
    body = {"text": "x", "to": "a@b.org", "tracking": "yes"}
    r = await env.client.post("/v1/public/emails/preview", json=body, headers=env.auth())
    details = assert_error(r, 400, "VALIDATION_ERROR")
    assert details == {"to": "unknown field", "tracking": "must be a boolean"}


# --------------------------------------------------------------------------- query parameters


@pytest.mark.parametrize("limit", ["abc", "0", "1001", "-1", "1.5", " 5", ""])
async def test_bad_timeline_limit_is_400(env: Env, limit: str) -> None:
    """A limit that is not an integer in 1..1000 answers 400 naming ``limit``."""
    message_id = (await env.send()).json()["id"]
    r = await env.client.get(
        f"/v1/public/emails/{message_id}/timeline", params={"limit": limit}, headers=env.auth()
    )
    assert "limit" in assert_error(r, 400, "VALIDATION_ERROR")


@pytest.mark.parametrize(
    ("params", "fields"),
    [
        ({}, {"start", "end"}),
        ({"start": "2026-01-01T00:00:00Z"}, {"end"}),
        ({"start": "yesterday", "end": "2026-01-02T00:00:00Z"}, {"start"}),
        ({"start": "2026-01-01T00:00:00", "end": "2026-01-02T00:00:00Z"}, {"start"}),
        ({"start": "2026-01-02T00:00:00Z", "end": "2026-01-01T00:00:00Z"}, {"end"}),
    ],
    ids=["missing", "no-end", "not-a-date", "naive", "reversed"],
)
async def test_bad_stats_window_is_400(env: Env, params: dict[str, str], fields: set[str]) -> None:
    """Missing, unparsable, naive or reversed stats dates answer 400 with details per parameter."""
    r = await env.client.get("/v1/public/emails/stats", params=params, headers=env.auth())
    assert set(assert_error(r, 400, "VALIDATION_ERROR")) == fields


# --------------------------------------------------------------------------- who may call


@pytest.mark.parametrize(
    "authorization",
    [None, "Basic dXNlcjpwYXNz", "Bearer ", "Bearer ct_live_" + "x" * 43, "Bearer nonsense"],
    ids=["missing", "basic", "empty-bearer", "unknown", "malformed"],
)
async def test_no_valid_key_is_401(env: Env, authorization: str | None) -> None:
    """Missing, malformed or unknown keys answer 401 UNAUTHORIZED with WWW-Authenticate."""
    headers = {} if authorization is None else {"Authorization": authorization}
    r = await env.client.post(SEND, json=BODY, headers=headers)
    assert_error(r, 401, "UNAUTHORIZED")
    assert r.headers["www-authenticate"] == "Bearer"
    assert await env.pending() == 0


async def test_revoked_key_is_401_on_the_next_request(env: Env) -> None:
    """A revoked key is refused by the very next request."""
    record, key = await env.ct.keys.create(env.ct.org.id, scopes=EMAIL_SCOPES)
    assert (await env.client.post(SEND, json=BODY, headers=env.auth(key))).status_code == 202
    await env.ct.keys.revoke(env.ct.org.id, record.id)
    r = await env.client.post(SEND, json=BODY, headers=env.auth(key))
    assert_error(r, 401, "UNAUTHORIZED")


@pytest.mark.parametrize(
    ("scopes", "method", "path", "required"),
    [
        ({"read:email"}, "POST", SEND, "send:email"),
        ({"read:email"}, "POST", "/v1/public/emails/preview", "send:email"),
        ({"send:email"}, "GET", "/v1/public/emails/some-id", "read:email"),
        ({"send:email"}, "GET", "/v1/public/emails/some-id/timeline", "read:email"),
        ({"send:sms"}, "GET", "/v1/public/emails/stats", "read:email"),
    ],
)
async def test_missing_scope_is_403(
    env: Env, scopes: set[str], method: str, path: str, required: str
) -> None:
    """A key without the needed scope answers 403 INSUFFICIENT_SCOPE naming the scope."""
    _, key = await env.ct.keys.create(env.ct.org.id, scopes=frozenset(scopes))
    params = {"start": "2026-01-01T00:00:00Z", "end": "2026-01-02T00:00:00Z"}
    body = BODY if path == SEND else {"text": "Hello"}
    r = await env.client.request(method, path, json=body, params=params, headers=env.auth(key))
    assert assert_error(r, 403, "INSUFFICIENT_SCOPE") == {"requiredScope": required}
    assert await env.pending() == 0


async def test_unverified_sender_is_403(env: Env) -> None:
    """A from address outside the verified senders answers 403 SENDER_NOT_VERIFIED."""
    r = await env.send({**BODY, "from": "hi@elsewhere.example"})
    assert_error(r, 403, "SENDER_NOT_VERIFIED")
    assert await env.pending() == 0


# --------------------------------------------------------------------------- size limit


async def test_declared_content_length_over_limit_is_413(env: Env) -> None:
    """A Content-Length over the limit answers 413 before the body is read."""
    pulled = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal pulled
        for _ in range(8):
            pulled += 1
            yield b" " * 512

    headers = env.auth(**{"content-type": "application/json", "content-length": str(2 * LIMIT)})
    r = await env.client.post(SEND, content=body(), headers=headers)
    assert assert_error(r, 413, "PAYLOAD_TOO_LARGE") == {"limitBytes": LIMIT}
    assert pulled == 0


async def test_oversized_json_body_is_413(env: Env) -> None:
    """A plain JSON body over the limit answers 413 and stores nothing."""
    r = await env.send({**BODY, "text": "x" * LIMIT})
    assert assert_error(r, 413, "PAYLOAD_TOO_LARGE") == {"limitBytes": LIMIT}
    assert await env.pending() == 0


async def test_chunked_body_over_limit_is_413_without_reading_it_all(env: Env) -> None:
    """A chunked body is refused at the chunk that crosses the limit; the rest is never read."""
    pulled = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal pulled
        for _ in range(64):
            pulled += 1
            yield b" " * 256

    r = await env.client.post(SEND, content=body(), headers=env.auth())
    assert "content-length" not in r.request.headers
    assert_error(r, 413, "PAYLOAD_TOO_LARGE")
    assert pulled == LIMIT // 256 + 1


# --------------------------------------------------------------------------- routing and crashes


async def test_unknown_route_is_404_envelope(env: Env) -> None:
    """An unknown path answers the envelope with NOT_FOUND, a trailing slash included."""
    for path in ("/v1/public/nothing", "/healthz/"):
        assert_error(await env.client.get(path), 404, "NOT_FOUND")


async def test_wrong_method_is_405_envelope(env: Env) -> None:
    """A known path with the wrong method answers 405 METHOD_NOT_ALLOWED with Allow."""
    r = await env.client.delete(SEND, headers=env.auth())
    assert_error(r, 405, "METHOD_NOT_ALLOWED")
    assert r.headers["allow"] == "POST"


async def test_unexpected_failure_is_500_without_traceback(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    """A crash answers 500 INTERNAL_ERROR with a generic message; the traceback is only logged."""
    await env.ct.backend.aclose()  # storage now raises RuntimeError on every call
    with caplog.at_level(logging.ERROR, logger="commtunnel.http"):
        r = await env.send()
    assert assert_error(r, 500, "INTERNAL_ERROR") == {}
    assert "Traceback" not in r.text
    assert "RuntimeError" not in r.text
    assert "not open" not in r.text
    [record] = caplog.records
    assert record.exc_info is not None
    assert r.headers["x-request-id"] in record.getMessage()


# --------------------------------------------------------------------------- request ids


async def test_sane_request_id_is_echoed(env: Env) -> None:
    """A well-formed incoming X-Request-Id comes back on success and in the envelope."""
    ok = await env.client.get("/healthz", headers={"X-Request-Id": "trace-1.a_B"})
    assert ok.headers["x-request-id"] == "trace-1.a_B"
    failed = await env.client.get("/nowhere", headers={"X-Request-Id": "trace-2"})
    assert failed.headers["x-request-id"] == failed.json()["requestId"] == "trace-2"


@pytest.mark.parametrize("incoming", ["a" * 129, "has space", "semi;colon", "é"])
async def test_unsafe_request_id_is_replaced(env: Env, incoming: str) -> None:
    """An over-long or oddly-charactered X-Request-Id is replaced by a generated one."""
    r = await env.client.get("/healthz", headers={"X-Request-Id": incoming.encode()})
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])


async def test_request_ids_are_unique(env: Env) -> None:
    """Generated request ids differ between requests."""
    ids = {(await env.client.get("/healthz")).headers["x-request-id"] for _ in range(5)}
    assert len(ids) == 5


# --------------------------------------------------------------------------- mapping rules


def test_rate_limited_error_carries_retry_after() -> None:
    """RateLimitedError answers 429 RATE_LIMITED, Retry-After in seconds, echoed as retryAfter."""
    r = error_response(RateLimitedError("Slow down", retry_after=7), "rid")
    assert r.status_code == 429
    assert r.headers["retry-after"] == "7"
    assert json.loads(r.body) == {
        "error": "Slow down",
        "code": "RATE_LIMITED",
        "requestId": "rid",
        "details": {"retryAfter": 7},
        "retryAfter": 7,
    }


def test_internal_commtunnel_error_keeps_its_code_and_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A CommtunnelError with a 5xx status keeps its code and message, and is logged."""
    with caplog.at_level(logging.ERROR, logger="commtunnel.http"):
        r = error_response(ProviderConfigError("no provider for 'foo://'"), "rid")
    assert r.status_code == 500
    assert json.loads(r.body)["code"] == "PROVIDER_CONFIG_ERROR"
    assert len(caplog.records) == 1


async def test_client_gone_mid_body_gets_no_answer(env: Env) -> None:
    """A client that disconnects while sending its body is not answered and nothing is stored."""
    sent: list[dict[str, Any]] = []
    chunks = [
        {"type": "http.request", "body": b'{"from": ', "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive() -> dict[str, Any]:
        return chunks.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": SEND,
        "raw_path": SEND.encode(),
        "query_string": b"",
        "root_path": "",
        "scheme": "http",
        "headers": [(b"authorization", f"Bearer {env.key}".encode())],
        "client": ("127.0.0.1", 1),
        "server": ("test", 80),
    }
    await env.app(scope, receive, send)
    assert sent == []
    assert await env.pending() == 0
