"""The WhatsApp Cloud API over HTTP: sends, reads, retries, the tenant line and Meta's webhook.

The real Graph provider runs against a fake Graph API on ``httpx.MockTransport``
that answers as Meta documents (``messages[0].id`` on success, the
``{"error": {...}}`` object on failure) and records every request, so the
tests assert the exact JSON and bearer token that left, for the right line.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest

import pg
from app_client import ApiEnv, app_client, assert_error
from commtunnel import Commtunnel, Settings
from commtunnel.domain.messages import Channel
from commtunnel.providers.whatsapp import WhatsAppCloudProvider
from commtunnel.testing import ManualClock, MockProvider, MockSmsProvider
from commtunnel_http import create_app
from http_fakes import FakeGraph

pytestmark = pytest.mark.anyio

SEND = "/v1/public/whatsapp/send"
LINE = "/v1/account/whatsapp-cloud-line"
WEBHOOK = "/v1/webhooks/whatsapp"
SCOPES = frozenset({"send:whatsapp", "read:whatsapp", "account:manage"})
PLATFORM_PNID = "106540352242922"
TENANT_PNID = "200000000000001"
PLATFORM_TOKEN = "EAAplatform-token-0123456789"
TENANT_TOKEN = "EAAtenant-token-9876543210"
APP_SECRET = "app-secret-for-tests"
VERIFY_TOKEN = "verify-me"
TO = "+14155552671"
TEXT = {"to": TO, "body": "Your order shipped"}
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def wa_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "embedded_worker": False,
        "whatsapp_enabled": True,
        "whatsapp_phone_number_id": PLATFORM_PNID,
        "whatsapp_access_token": PLATFORM_TOKEN,
        "whatsapp_app_secret": APP_SECRET,
        "whatsapp_verify_token": VERIFY_TOKEN,
        "secret_key": "a-long-random-secret-key-for-tests",
    }
    values.update(overrides)
    return Settings(**values)


@attrs.define
class Env(ApiEnv):
    """The env (:class:`~app_client.ApiEnv`) with WhatsApp scopes, its clock and its fake Graph."""

    clock: ManualClock
    graph: FakeGraph

    async def patch_line(self, body: Any, key: str | None = None) -> httpx.Response:
        return await self.client.patch(LINE, json=body, headers=self.auth(key))

    async def send(self, body: Any = None, /, **headers: str) -> httpx.Response:
        return await self.post(SEND, TEXT if body is None else body, **headers)

    async def sent(self, body: Any = None) -> dict[str, Any]:
        """Send: the 201 answer of a message Graph took."""
        r = await self.send(body)
        assert r.status_code == 201, r.text
        answer: dict[str, Any] = r.json()
        return answer

    async def message(self, message_id: str, key: str | None = None) -> dict[str, Any]:
        r = await self.get(f"/v1/public/whatsapp/{message_id}", key=key)
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    async def event_types(self, message_id: str) -> list[str]:
        r = await self.get(f"/v1/public/whatsapp/{message_id}/timeline")
        assert r.status_code == 200, r.text
        return [e["type"] for e in r.json()["events"]]

    async def org_key(self, name: str, scopes: frozenset[str] = SCOPES) -> tuple[str, str]:
        """A new organization ``name``: its id and a key with ``scopes``."""
        org = await self.ct.admin.ensure_org(name)
        _, key = await self.ct.keys.create(org.id, scopes=scopes)
        return org.id, key

    async def webhook(self, payload: Any, secret: str = APP_SECRET) -> httpx.Response:
        body, header = signed(payload, secret)
        headers = {"Content-Type": "application/json", "X-Hub-Signature-256": header}
        return await self.client.post(WEBHOOK, content=body, headers=headers)


@asynccontextmanager
async def open_env(tmp_path: Path, *, settings: Settings | None = None) -> AsyncIterator[Env]:
    clock = ManualClock()
    graph = FakeGraph()
    provider = WhatsAppCloudProvider(
        graph_base_url="https://graph.test",
        api_version="v21.0",
        clock=clock,
        transport=httpx.MockTransport(graph.handle),
    )
    async with Commtunnel.open(
        db=pg.fresh_db(tmp_path / "ct.db"),
        email_provider=MockProvider(),
        sms_provider=MockSmsProvider(),
        whatsapp_provider=provider,
        clock=clock,
        settings=settings or wa_settings(),
    ) as ct:
        _, key = await ct.keys.create(ct.org.id, scopes=SCOPES)
        async with app_client(create_app(ct)) as client:
            yield Env(ct=ct, client=client, key=key, clock=clock, graph=graph)


@pytest.fixture
async def env(tmp_path: Path, anyio_backend: str) -> AsyncIterator[Env]:
    async with open_env(tmp_path) as e:
        yield e


def signature(body: bytes, secret: str = APP_SECRET) -> str:
    """``X-Hub-Signature-256`` as Meta computes it: HMAC-SHA256 of the raw body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signed(payload: Any, secret: str = APP_SECRET) -> tuple[bytes, str]:
    """``payload`` as a JSON body and its signature."""
    body = json.dumps(payload).encode()
    return body, signature(body, secret)


def change(value: dict[str, Any], pnid: str = PLATFORM_PNID) -> dict[str, Any]:
    """A messages webhook with one change carrying ``value`` for the line ``pnid``."""
    metadata = {"display_phone_number": "15550783881", "phone_number_id": pnid}
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "102290129340398",
                "changes": [
                    {
                        "field": "messages",
                        "value": {"messaging_product": "whatsapp", "metadata": metadata, **value},
                    }
                ],
            }
        ],
    }


def status_update(wamid: str, status: str, **extra: Any) -> dict[str, Any]:
    entry = {"id": wamid, "status": status, "timestamp": "1767268800", "recipient_id": "1415"}
    return change({"statuses": [{**entry, **extra}]})


def inbound(text: str, pnid: str) -> dict[str, Any]:
    message = {
        "from": TO.lstrip("+"),
        "id": "wamid.IN1",
        "timestamp": "1767268800",
        "type": "text",
        "text": {"body": text},
    }
    contacts = [{"profile": {"name": "Ada"}, "wa_id": TO.lstrip("+")}]
    return change({"contacts": contacts, "messages": [message]}, pnid)


def message_count(env: Env) -> int:
    count: int = env.ct.backend.conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
    return count


# --------------------------------------------------------------------------- send


async def test_text_send_is_201_sent_with_the_exact_graph_request(env: Env) -> None:
    """A text send reaches Graph before the answer: 201 SENT with the wamid."""
    r = await env.send({"to": "14155552671", "body": "Your order shipped"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert set(body) == {"id", "status", "duplicate", "providerMessageId"}
    assert (body["status"], body["duplicate"], body["providerMessageId"]) == (
        "SENT",
        False,
        "wamid.HBgL0001",
    )
    assert "idempotent-replayed" not in r.headers
    [request] = env.graph.requests
    assert request.method == "POST"
    assert request.url == f"https://graph.test/v21.0/{PLATFORM_PNID}/messages"
    assert request.headers["authorization"] == f"Bearer {PLATFORM_TOKEN}"
    assert request.headers["content-type"] == "application/json"
    assert env.graph.sent_json() == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "14155552671",
        "type": "text",
        "text": {"preview_url": False, "body": "Your order shipped"},
    }


async def test_template_send_builds_the_graph_template(env: Env) -> None:
    """A template send carries name, language and positional body parameters."""
    template = {"name": "order_update", "language": "en_US", "variables": ["Ada", "#42"]}
    answer = await env.sent({"to": TO, "template": template})
    assert env.graph.sent_json() == {
        "messaging_product": "whatsapp",
        "to": "14155552671",
        "type": "template",
        "template": {
            "name": "order_update",
            "language": {"code": "en_US"},
            "components": [
                {
                    "type": "body",
                    "parameters": [
                        {"type": "text", "text": "Ada"},
                        {"type": "text", "text": "#42"},
                    ],
                }
            ],
        },
    }
    message = await env.message(answer["id"])
    assert (message["kind"], message["body"], message["template"]) == ("template", None, template)


async def test_get_shows_the_message_with_its_attempts(env: Env) -> None:
    """GET answers the documented shape: content, line, provider id, attempts."""
    answer = await env.sent()
    message = await env.message(answer["id"])
    attempts = message.pop("attempts")
    assert message == {
        "id": answer["id"],
        "channel": "whatsapp",
        "status": "SENT",
        "to": TO,
        "kind": "text",
        "body": "Your order shipped",
        "template": None,
        "phoneNumberId": PLATFORM_PNID,
        "providerMessageId": "wamid.HBgL0001",
        "sandbox": False,
        "attemptCount": 1,
        "lastError": None,
        "createdAt": message["createdAt"],
        "updatedAt": message["updatedAt"],
    }
    assert TIMESTAMP.fullmatch(message["createdAt"])
    assert TIMESTAMP.fullmatch(message["updatedAt"])
    [attempt] = attempts
    assert set(attempt) == {
        "number",
        "provider",
        "status",
        "outcome",
        "errorCategory",
        "errorMessage",
        "durationMs",
        "timestamp",
    }
    assert (attempt["number"], attempt["provider"], attempt["outcome"]) == (
        1,
        "whatsapp_cloud",
        "accepted",
    )


async def test_timeline_lists_events_oldest_first_and_honours_limit(env: Env) -> None:
    """The timeline is {id, events} oldest first; ?limit= cuts it; a bad limit is 400."""
    message_id = (await env.sent())["id"]
    r = await env.get(f"/v1/public/whatsapp/{message_id}/timeline")
    assert r.status_code == 200
    body = r.json()
    assert body["id"] == message_id
    assert [e["type"] for e in body["events"]] == [
        "whatsapp_queued",
        "whatsapp_processing",
        "whatsapp_sent",
    ]
    assert set(body["events"][0]) == {"id", "type", "status", "createdAt", "details"}
    r = await env.get(f"/v1/public/whatsapp/{message_id}/timeline", limit="1")
    assert [e["type"] for e in r.json()["events"]] == ["whatsapp_queued"]
    for bad in ("0", "x", "1001"):
        r = await env.get(f"/v1/public/whatsapp/{message_id}/timeline", limit=bad)
        assert "limit" in assert_error(r, 400, "VALIDATION_ERROR")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"to": "12", "body": "hi"}, "to"),
        ({"to": TO, "body": "x" * 4097}, "body"),
        ({"to": TO}, "body"),
        ({"to": TO, "body": "hi", "template": {"name": "t"}}, "template"),
        ({"to": TO, "template": {"name": "Bad Name!"}}, "template.name"),
        ({"to": TO, "template": {"name": "t", "variables": [1]}}, "template.variables"),
        ({"to": TO, "body": "hi", "colour": "red"}, "colour"),
    ],
)
async def test_bad_send_is_400_and_nothing_reaches_graph(
    env: Env, body: dict[str, Any], field: str
) -> None:
    """Invalid input answers VALIDATION_ERROR naming the field; nothing is stored or sent."""
    assert field in assert_error(await env.send(body), 400, "VALIDATION_ERROR")
    assert env.graph.requests == []
    assert message_count(env) == 0


async def test_body_of_4096_characters_is_accepted(env: Env) -> None:
    """Meta's limit is 4096 characters: exactly that many is sent."""
    await env.sent({"to": TO, "body": "x" * 4096})
    assert len(env.graph.sent_json()["text"]["body"]) == 4096


async def test_no_key_is_401_and_json_errors_are_400(env: Env) -> None:
    """No bearer key answers 401; a body that is not a JSON object answers INVALID_JSON."""
    r = await env.client.post(SEND, json=TEXT)
    assert_error(r, 401, "UNAUTHORIZED")
    r = await env.client.post(SEND, content=b"[1]", headers=env.auth())
    assert_error(r, 400, "INVALID_JSON")
    assert env.graph.requests == []


async def test_test_key_sends_to_the_sandbox(env: Env) -> None:
    """A ct_test_ key's message is SENT in the sandbox and never reaches Graph."""
    _, test_key = await env.ct.keys.create(env.ct.org.id, scopes=SCOPES, test=True)
    r = await env.post(SEND, TEXT, key=test_key)
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "SENT"
    assert (await env.message(r.json()["id"]))["sandbox"] is True
    assert env.graph.requests == []


# --------------------------------------------------------------------------- idempotency


async def test_repeated_key_answers_200_with_the_current_status(env: Env) -> None:
    """The same key replays the first message (its status now), header or body key alike."""
    first = await env.send(TEXT, **{"x-idempotency-key": "wa-1"})
    assert first.status_code == 201
    message_id = first.json()["id"]
    wamid = first.json()["providerMessageId"]
    assert (await env.webhook(status_update(wamid, "delivered"))).status_code == 200
    again = await env.send({**TEXT, "idempotencyKey": "wa-1"})
    assert again.status_code == 200, again.text
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == {
        "id": message_id,
        "status": "DELIVERED",
        "duplicate": True,
        "providerMessageId": wamid,
    }
    assert len(env.graph.requests) == 1


async def test_same_key_other_payload_is_422_and_keys_must_agree(env: Env) -> None:
    """Reusing a key for another message is 422; header and body keys that differ are 400."""
    assert (await env.send(TEXT, **{"x-idempotency-key": "wa-2"})).status_code == 201
    r = await env.send({"to": TO, "body": "other"}, **{"x-idempotency-key": "wa-2"})
    assert_error(r, 422, "IDEMPOTENCY_KEY_REUSED")
    r = await env.send({**TEXT, "idempotencyKey": "a"}, **{"x-idempotency-key": "b"})
    assert "idempotencyKey" in assert_error(r, 400, "VALIDATION_ERROR")
    assert len(env.graph.requests) == 1


async def test_replay_of_a_send_graph_refused_for_now(env: Env) -> None:
    """A key whose first send failed transiently replays the RETRYING message, no new call."""
    env.graph.error(131000, http_status=500, message="Something went wrong")
    first = await env.send(TEXT, **{"x-idempotency-key": "wa-3"})
    message_id = assert_error(first, 502, "WHATSAPP_PROVIDER_ERROR")["messageId"]
    again = await env.send(TEXT, **{"x-idempotency-key": "wa-3"})
    assert again.status_code == 200
    assert again.json() == {
        "id": message_id,
        "status": "RETRYING",
        "duplicate": True,
        "providerMessageId": None,
    }
    assert len(env.graph.requests) == 1


# --------------------------------------------------------------------------- Graph failures


async def test_transient_failure_is_502_retrying_and_the_worker_delivers(env: Env) -> None:
    """Graph 131000/HTTP 500 answers 502 with details; the worker sends it later."""
    env.graph.error(131000, http_status=500, message="Something went wrong")
    r = await env.send()
    details = assert_error(r, 502, "WHATSAPP_PROVIDER_ERROR")
    assert details["errorCategory"] == "PROVIDER_OUTAGE"
    assert details["status"] == "RETRYING"
    message_id = details["messageId"]
    message = await env.message(message_id)
    assert (message["status"], message["attemptCount"]) == ("RETRYING", 1)
    assert message["attempts"][0]["outcome"] == "transient"
    assert message["attempts"][0]["status"] == "RETRYING"
    assert await env.ct.run_worker_until_idle() == 0  # not due yet
    env.clock.advance(3600)
    assert await env.ct.run_worker_until_idle() == 1
    message = await env.message(message_id)
    assert (message["status"], message["providerMessageId"]) == ("SENT", "wamid.HBgL0001")
    assert [a["outcome"] for a in message["attempts"]] == ["transient", "accepted"]
    assert [a["status"] for a in message["attempts"]] == ["RETRYING", "SENT"]
    assert len(env.graph.requests) == 2


async def test_permanent_failure_is_422_failed_then_retry_200_then_409(env: Env) -> None:
    """Graph 131026 answers 422 FAILED; retry re-sends it (200 SENT); a second retry is 409."""
    env.graph.error(131026, message="Message undeliverable")
    details = assert_error(await env.send(), 422, "WHATSAPP_SEND_REJECTED")
    assert (details["errorCategory"], details["status"]) == ("UNDELIVERABLE", "FAILED")
    message_id = details["messageId"]
    message = await env.message(message_id)
    assert message["status"] == "FAILED"
    assert message["lastError"]
    r = await env.post(f"/v1/public/whatsapp/{message_id}/retry", None)
    assert r.status_code == 200, r.text
    assert r.json() == {"id": message_id, "status": "SENT", "providerMessageId": "wamid.HBgL0001"}
    r = await env.post(f"/v1/public/whatsapp/{message_id}/retry", None)
    assert assert_error(r, 409, "MESSAGE_NOT_RETRYABLE")["status"] == "SENT"
    message = await env.message(message_id)
    assert [a["number"] for a in message["attempts"]] == [1, 2]
    assert len(env.graph.requests) == 2


async def test_retry_refused_again_by_graph_is_422(env: Env) -> None:
    """A retry Graph refuses again answers the send's envelope and leaves it FAILED."""
    env.graph.error(131026)
    message_id = assert_error(await env.send(), 422, "WHATSAPP_SEND_REJECTED")["messageId"]
    env.graph.error(131049, message="Ecosystem engagement")
    r = await env.post(f"/v1/public/whatsapp/{message_id}/retry", None)
    details = assert_error(r, 422, "WHATSAPP_SEND_REJECTED")
    assert (details["messageId"], details["errorCategory"]) == (message_id, "UNDELIVERABLE")
    assert (await env.message(message_id))["status"] == "FAILED"


async def test_retry_of_unknown_or_foreign_message_is_404(env: Env) -> None:
    """Retry, GET and timeline of an id that is not the caller's WhatsApp message answer 404."""
    message_id = (await env.sent())["id"]
    _, other_key = await env.org_key("other")
    for method, path in (
        ("GET", f"/v1/public/whatsapp/{message_id}"),
        ("GET", f"/v1/public/whatsapp/{message_id}/timeline"),
        ("POST", f"/v1/public/whatsapp/{message_id}/retry"),
        ("GET", "/v1/public/whatsapp/no-such-id"),
    ):
        r = await env.client.request(method, path, headers=env.auth(other_key))
        assert_error(r, 404, "NOT_FOUND")


@pytest.mark.parametrize(
    ("code", "http_status", "status", "error_code", "category", "message_status"),
    [
        (130429, 400, 502, "WHATSAPP_PROVIDER_ERROR", "RATE_LIMITED", "RETRYING"),
        (131056, 400, 502, "WHATSAPP_PROVIDER_ERROR", "RATE_LIMITED", "RETRYING"),
        (131000, 500, 502, "WHATSAPP_PROVIDER_ERROR", "PROVIDER_OUTAGE", "RETRYING"),
        (190, 401, 502, "WHATSAPP_PROVIDER_ERROR", "AUTH", "RETRYING"),
        (131047, 400, 422, "WHATSAPP_SEND_REJECTED", "TEMPLATE_REQUIRED", "FAILED"),
        (131026, 400, 422, "WHATSAPP_SEND_REJECTED", "UNDELIVERABLE", "FAILED"),
        (131049, 400, 422, "WHATSAPP_SEND_REJECTED", "UNDELIVERABLE", "FAILED"),
        (131048, 400, 422, "WHATSAPP_SEND_REJECTED", "POLICY_BLOCKED", "FAILED"),
        (368, 400, 422, "WHATSAPP_SEND_REJECTED", "POLICY_BLOCKED", "FAILED"),
        (131050, 400, 422, "WHATSAPP_SEND_REJECTED", "RECIPIENT_OPTED_OUT", "FAILED"),
        (100, 400, 422, "WHATSAPP_SEND_REJECTED", "REJECTED", "FAILED"),
    ],
)
async def test_graph_error_codes_are_classified(
    env: Env,
    code: int,
    http_status: int,
    status: int,
    error_code: str,
    category: str,
    message_status: str,
) -> None:
    """Each documented Graph error code answers its status, code and errorCategory."""
    env.graph.error(code, http_status=http_status, message=f"Graph error {code}")
    details = assert_error(await env.send(), status, error_code)
    assert details["errorCategory"] == category
    assert details["status"] == message_status
    message = await env.message(details["messageId"])
    assert message["status"] == message_status
    assert message["attempts"][0]["errorCategory"] == category


async def test_expired_token_pauses_the_line_until_a_new_token(env: Env) -> None:
    """190 pauses the line (GET shows PAUSED); later sends do not reach Graph."""
    env.graph.error(190, http_status=401, message="Error validating access token")
    assert_error(await env.send(), 502, "WHATSAPP_PROVIDER_ERROR")
    line = (await env.get(LINE)).json()
    assert line["state"] == "PAUSED"
    details = assert_error(
        await env.send({"to": TO, "body": "two"}), 502, "WHATSAPP_PROVIDER_ERROR"
    )
    assert details["errorCategory"] == "LINE_PAUSED"
    assert len(env.graph.requests) == 1
    assert (await env.patch_line({"whatsappAccessToken": TENANT_TOKEN})).status_code == 200
    await env.sent({"to": TO, "body": "three"})
    assert env.graph.requests[-1].headers["authorization"] == f"Bearer {TENANT_TOKEN}"


async def test_policy_block_flags_the_line_and_opt_out_is_recorded(env: Env) -> None:
    """131048 flags the line; 131050 records the recipient's opt-out."""
    env.graph.error(131048, message="Spam rate limit hit")
    assert_error(await env.send(), 422, "WHATSAPP_SEND_REJECTED")
    assert (await env.get(LINE)).json()["state"] == "FLAGGED"
    env.graph.error(131050, message="User stopped marketing messages")
    assert_error(
        await env.send({"to": "+442071838750", "body": "promo"}), 422, "WHATSAPP_SEND_REJECTED"
    )
    assert await env.ct.whatsapp_store.is_opted_out(env.ct.org.id, "+442071838750")


# --------------------------------------------------------------------------- channel and line


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"whatsapp_enabled": False}, "WHATSAPP_CHANNEL_DISABLED"),
        ({"whatsapp_access_token": None}, "WHATSAPP_LINE_NOT_CONFIGURED"),
        ({"whatsapp_phone_number_id": None}, "WHATSAPP_LINE_NOT_CONFIGURED"),
    ],
)
async def test_no_channel_or_no_line_is_409(
    tmp_path: Path, anyio_backend: str, overrides: dict[str, Any], code: str
) -> None:
    """A disabled channel or a missing line is a clear 409; nothing is stored or sent."""
    async with open_env(tmp_path, settings=wa_settings(**overrides)) as env:
        assert_error(await env.send(), 409, code)
        assert env.graph.requests == []
        assert message_count(env) == 0


async def test_line_defaults_to_the_platform_line(env: Env) -> None:
    """GET shows the platform default in use, and never a token."""
    r = await env.get(LINE)
    assert r.status_code == 200
    assert r.json() == {
        "whatsappPhoneNumberId": None,
        "usesPlatformDefault": True,
        "platformLineConfigured": True,
        "hasOwnAccessToken": False,
        "state": "ACTIVE",
    }


async def test_tenant_line_is_used_and_another_org_keeps_the_default(env: Env) -> None:
    """A tenant line's id and token are used for its sends; others use the platform line."""
    r = await env.patch_line(
        {"whatsappPhoneNumberId": TENANT_PNID, "whatsappAccessToken": TENANT_TOKEN}
    )
    assert r.status_code == 200, r.text
    assert r.json() == {
        "whatsappPhoneNumberId": TENANT_PNID,
        "usesPlatformDefault": False,
        "platformLineConfigured": True,
        "hasOwnAccessToken": True,
        "state": "ACTIVE",
    }
    assert TENANT_TOKEN not in r.text
    assert TENANT_TOKEN not in (await env.get(LINE)).text
    stored = env.ct.backend.conn.execute("SELECT access_token_enc FROM whatsapp_lines").fetchone()
    assert TENANT_TOKEN not in stored[0]  # encrypted at rest

    answer = await env.sent()
    assert env.graph.requests[-1].url.path == f"/v21.0/{TENANT_PNID}/messages"
    assert env.graph.requests[-1].headers["authorization"] == f"Bearer {TENANT_TOKEN}"
    assert (await env.message(answer["id"]))["phoneNumberId"] == TENANT_PNID

    _, other_key = await env.org_key("other")
    r = await env.patch_line({"whatsappPhoneNumberId": TENANT_PNID}, key=other_key)
    details = assert_error(r, 409, "WHATSAPP_PHONE_NUMBER_ID_IN_USE")
    assert details == {"whatsappPhoneNumberId": TENANT_PNID}
    assert (await env.get(LINE, key=other_key)).json()["usesPlatformDefault"] is True
    r = await env.post(SEND, TEXT, key=other_key)
    assert r.status_code == 201, r.text
    assert env.graph.requests[-1].url.path == f"/v21.0/{PLATFORM_PNID}/messages"
    assert env.graph.requests[-1].headers["authorization"] == f"Bearer {PLATFORM_TOKEN}"


async def test_line_fields_clear_with_null(env: Env) -> None:
    """null clears a field: the organization is back on the platform line."""
    await env.patch_line(
        {"whatsappPhoneNumberId": TENANT_PNID, "whatsappAccessToken": TENANT_TOKEN}
    )
    r = await env.patch_line({"whatsappAccessToken": None})
    assert (r.json()["whatsappPhoneNumberId"], r.json()["hasOwnAccessToken"]) == (
        TENANT_PNID,
        False,
    )
    r = await env.patch_line({"whatsappPhoneNumberId": None})
    assert r.json()["usesPlatformDefault"] is True
    await env.sent()
    assert env.graph.requests[-1].headers["authorization"] == f"Bearer {PLATFORM_TOKEN}"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "whatsappPhoneNumberId"),
        ({"whatsappPhoneNumberId": "abc"}, "whatsappPhoneNumberId"),
        ({"whatsappPhoneNumberId": 123}, "whatsappPhoneNumberId"),
        ({"whatsappAccessToken": "short"}, "whatsappAccessToken"),
        ({"whatsappPhoneNumberId": TENANT_PNID, "colour": "red"}, "colour"),
    ],
)
async def test_bad_line_update_is_400_and_changes_nothing(
    env: Env, body: dict[str, Any], field: str
) -> None:
    """Bad PATCH bodies name the field; the line stays as it was."""
    assert field in assert_error(await env.patch_line(body), 400, "VALIDATION_ERROR")
    assert (await env.get(LINE)).json()["usesPlatformDefault"] is True


async def test_storing_a_token_needs_the_secret_key(tmp_path: Path, anyio_backend: str) -> None:
    """Without COMMTUNNEL_SECRET_KEY a token cannot be stored (409), and nothing is."""
    async with open_env(tmp_path, settings=wa_settings(secret_key=None)) as env:
        r = await env.patch_line({"whatsappAccessToken": TENANT_TOKEN})
        assert_error(r, 409, "SECRET_KEY_NOT_CONFIGURED")
        assert (await env.get(LINE)).json()["hasOwnAccessToken"] is False


@pytest.mark.parametrize(
    ("scopes", "method", "path", "required"),
    [
        ({"read:whatsapp", "account:manage"}, "POST", SEND, "send:whatsapp"),
        ({"send:whatsapp", "account:manage"}, "GET", "/v1/public/whatsapp/x", "read:whatsapp"),
        (
            {"send:whatsapp", "account:manage"},
            "GET",
            "/v1/public/whatsapp/x/timeline",
            "read:whatsapp",
        ),
        (
            {"read:whatsapp", "account:manage"},
            "POST",
            "/v1/public/whatsapp/x/retry",
            "send:whatsapp",
        ),
        ({"send:whatsapp", "read:whatsapp"}, "GET", LINE, "account:manage"),
        ({"send:whatsapp", "read:whatsapp"}, "PATCH", LINE, "account:manage"),
        ({"send:sms", "read:sms"}, "POST", SEND, "send:whatsapp"),
    ],
)
async def test_missing_scope_is_403_naming_the_scope(
    env: Env, scopes: set[str], method: str, path: str, required: str
) -> None:
    """Each route needs its scope; without it, 403 with details.requiredScope."""
    _, key = await env.ct.keys.create(env.ct.org.id, scopes=frozenset(scopes))
    body = {"whatsappPhoneNumberId": TENANT_PNID} if method == "PATCH" else TEXT
    kwargs = {"json": body} if method != "GET" else {}
    r = await env.client.request(method, path, headers=env.auth(key), **kwargs)
    assert assert_error(r, 403, "INSUFFICIENT_SCOPE") == {"requiredScope": required}
    assert env.graph.requests == []


# --------------------------------------------------------------------------- Meta webhook


def hub(**overrides: str) -> dict[str, str]:
    params = {
        "hub.mode": "subscribe",
        "hub.verify_token": VERIFY_TOKEN,
        "hub.challenge": "1158201444",
    }
    params.update({f"hub.{k}": v for k, v in overrides.items()})
    return params


async def test_handshake_echoes_the_challenge_as_text(env: Env) -> None:
    """The subscription check answers 200 text/plain with hub.challenge, without an API key."""
    r = await env.client.get(WEBHOOK, params=hub())
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    assert r.text == "1158201444"


@pytest.mark.parametrize(
    "params",
    [
        hub(verify_token="nope"),
        hub(mode="unsubscribe"),
        {"hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1"},
        {"hub.mode": "subscribe", "hub.challenge": "1"},
        {},
    ],
)
async def test_handshake_refused_is_403(env: Env, params: dict[str, str]) -> None:
    """A wrong token or mode (or none) answers 403 with the envelope, never the challenge."""
    r = await env.client.get(WEBHOOK, params=params)
    assert_error(r, 403, "INVALID_WEBHOOK_TOKEN")
    assert "1158201444" not in r.text


async def test_handshake_without_a_configured_token_is_403(
    tmp_path: Path, anyio_backend: str
) -> None:
    """With no WHATSAPP_VERIFY_TOKEN every subscription check is refused."""
    async with open_env(tmp_path, settings=wa_settings(whatsapp_verify_token=None)) as env:
        r = await env.client.get(WEBHOOK, params=hub(verify_token=""))
        assert_error(r, 403, "INVALID_WEBHOOK_TOKEN")


async def test_signed_status_webhook_is_applied(env: Env) -> None:
    """A correctly signed status update moves the message and answers the counts."""
    answer = await env.sent()
    r = await env.webhook(status_update(answer["providerMessageId"], "delivered"))
    assert r.status_code == 200, r.text
    assert r.json() == {"statusesApplied": 1, "statusesIgnored": 0, "inboundStored": 0}
    assert (await env.message(answer["id"]))["status"] == "DELIVERED"


async def test_bad_signatures_are_401_and_change_nothing(env: Env) -> None:
    """A tampered body, a wrong secret, a missing or malformed header: 401, message unchanged."""
    answer = await env.sent()
    body, good = signed(status_update(answer["providerMessageId"], "delivered"))
    _, wrong_secret = signed(status_update(answer["providerMessageId"], "delivered"), "other")
    tampered = body.replace(b"delivered", b"read")
    cases: list[tuple[bytes, str | None]] = [
        (tampered, good),
        (body, wrong_secret),
        (body, None),
        (body, good.replace("sha256=", "sha1=")),
        (body, ""),
    ]
    for content, header in cases:
        headers = {"Content-Type": "application/json"}
        if header is not None:
            headers["X-Hub-Signature-256"] = header
        r = await env.client.post(WEBHOOK, content=content, headers=headers)
        assert_error(r, 401, "INVALID_WEBHOOK_SIGNATURE")
    assert (await env.message(answer["id"]))["status"] == "SENT"
    assert await env.event_types(answer["id"]) == [
        "whatsapp_queued",
        "whatsapp_processing",
        "whatsapp_sent",
    ]


async def test_webhook_without_an_app_secret_is_401(tmp_path: Path, anyio_backend: str) -> None:
    """With no WHATSAPP_APP_SECRET nothing is accepted, whatever the signature."""
    async with open_env(tmp_path, settings=wa_settings(whatsapp_app_secret=None)) as env:
        answer = await env.sent()
        r = await env.webhook(status_update(answer["providerMessageId"], "read"))
        assert_error(r, 401, "INVALID_WEBHOOK_SIGNATURE")
        assert (await env.message(answer["id"]))["status"] == "SENT"


@pytest.mark.parametrize(
    "payload",
    [
        {"object": "page", "entry": []},
        {"object": "whatsapp_business_account"},
        [1, 2],
        {
            "object": "whatsapp_business_account",
            "entry": [{"changes": [{"field": "messages", "value": {"metadata": {}}}]}],
        },
    ],
)
async def test_malformed_signed_webhook_is_400(env: Env, payload: Any) -> None:
    """A signed body that is not a WhatsApp messages webhook answers VALIDATION_ERROR."""
    assert_error(await env.webhook(payload), 400, "VALIDATION_ERROR")


async def test_signed_body_that_is_not_json_is_400(env: Env) -> None:
    """Signed garbage is refused after the signature check, with 400."""
    body = b"not json"
    headers = {"X-Hub-Signature-256": signature(body)}
    r = await env.client.post(WEBHOOK, content=body, headers=headers)
    assert_error(r, 400, "VALIDATION_ERROR")


async def test_oversized_webhook_is_413(tmp_path: Path, anyio_backend: str) -> None:
    """A body over COMMTUNNEL_MAX_BODY_BYTES is refused before it is checked or parsed."""
    async with open_env(tmp_path, settings=wa_settings(max_body_bytes=1024)) as env:
        r = await env.webhook(inbound("x" * 2000, PLATFORM_PNID))
        assert assert_error(r, 413, "PAYLOAD_TOO_LARGE") == {"limitBytes": 1024}


async def test_delivered_then_read_twice_moves_forward_once(env: Env) -> None:
    """delivered then read are applied once each; repeats are ignored; the end is READ."""
    answer = await env.sent()
    wamid = answer["providerMessageId"]
    counts = []
    for word in ("delivered", "read", "delivered", "read", "sent"):
        r = await env.webhook(status_update(wamid, word))
        assert r.status_code == 200, r.text
        counts.append((r.json()["statusesApplied"], r.json()["statusesIgnored"]))
    assert counts == [(1, 0), (1, 0), (0, 1), (0, 1), (0, 1)]
    assert (await env.message(answer["id"]))["status"] == "READ"
    assert await env.event_types(answer["id"]) == [
        "whatsapp_queued",
        "whatsapp_processing",
        "whatsapp_sent",
        "whatsapp_delivered",
        "whatsapp_read",
    ]


async def test_read_before_delivered_stays_read(env: Env) -> None:
    """Out of order (read, then delivered): READ, and no event moves it backwards."""
    answer = await env.sent()
    wamid = answer["providerMessageId"]
    assert (await env.webhook(status_update(wamid, "read"))).json()["statusesApplied"] == 1
    late = await env.webhook(status_update(wamid, "delivered"))
    assert late.json() == {"statusesApplied": 0, "statusesIgnored": 1, "inboundStored": 0}
    assert (await env.message(answer["id"]))["status"] == "READ"
    events = await env.event_types(answer["id"])
    assert events[-1] == "whatsapp_read"
    assert "whatsapp_delivered" not in events


async def test_failed_status_records_the_error(env: Env) -> None:
    """A failed status moves SENT to FAILED with Meta's error in the event."""
    answer = await env.sent()
    errors = [{"code": 131026, "title": "Message undeliverable"}]
    r = await env.webhook(status_update(answer["providerMessageId"], "failed", errors=errors))
    assert r.json()["statusesApplied"] == 1
    assert (await env.message(answer["id"]))["status"] == "FAILED"
    events = (await env.get(f"/v1/public/whatsapp/{answer['id']}/timeline")).json()["events"]
    assert events[-1]["type"] == "whatsapp_failed"
    assert events[-1]["details"]["error"] == "Message undeliverable"


async def test_status_of_an_unknown_wamid_is_ignored(env: Env) -> None:
    """A status for a message we did not send is counted as ignored, not an error."""
    r = await env.webhook(status_update("wamid.UNKNOWN", "delivered"))
    assert r.json() == {"statusesApplied": 0, "statusesIgnored": 1, "inboundStored": 0}


async def test_inbound_is_stored_for_the_org_owning_the_line(env: Env) -> None:
    """An inbound message on a tenant line is stored for that organization only."""
    other_id, other_key = await env.org_key("other")
    r = await env.patch_line({"whatsappPhoneNumberId": TENANT_PNID}, key=other_key)
    assert r.status_code == 200, r.text
    r = await env.webhook(inbound("Where is my order?", TENANT_PNID))
    assert r.json() == {"statusesApplied": 0, "statusesIgnored": 0, "inboundStored": 1}
    store = env.ct.sms_store
    items, total = await store.list_inbound(other_id, Channel.WHATSAPP, offset=0, limit=10)
    assert total == 1
    assert (items[0].sender, items[0].body) == (TO, "Where is my order?")
    _, mine = await store.list_inbound(env.ct.org.id, Channel.WHATSAPP, offset=0, limit=10)
    assert mine == 0


async def test_inbound_on_a_line_nobody_owns_is_dropped(env: Env) -> None:
    """A message on an unknown line is acknowledged (200) but stored for no one."""
    r = await env.webhook(inbound("hello", "999999999999999"))
    assert r.json()["inboundStored"] == 0


async def test_inbound_follows_the_line_map(tmp_path: Path, anyio_backend: str) -> None:
    """WHATSAPP_LINE_MAP assigns a phone number id to an organization by name."""
    settings = wa_settings(whatsapp_line_map="300000000000003=mapped")
    async with open_env(tmp_path, settings=settings) as env:
        mapped_id, _ = await env.org_key("mapped")
        r = await env.webhook(inbound("hi", "300000000000003"))
        assert r.json()["inboundStored"] == 1
        _, total = await env.ct.sms_store.list_inbound(
            mapped_id, Channel.WHATSAPP, offset=0, limit=10
        )
        assert total == 1
