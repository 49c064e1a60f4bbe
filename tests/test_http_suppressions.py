"""The suppression list over HTTP: the API, the send refusal, the ESP events webhook,
one-click unsubscribe (page and POST) and the List-Unsubscribe headers of the built MIME.

Every refusal answers the error envelope and changes nothing.
"""

from __future__ import annotations

import email
import email.policy
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import attrs
import httpx
import pytest

import pg
from app_client import ApiEnv, app_client, assert_error
from commtunnel import Commtunnel, Settings
from commtunnel.domain.tracking import OpenToken
from commtunnel.providers.mime import build_mime
from commtunnel.testing import ManualClock, MockProvider
from commtunnel_http import create_app

pytestmark = pytest.mark.anyio

LIST = "/v1/public/suppressions"
EVENTS = "/v1/webhooks/email/events"
SEND = "/v1/public/emails/send"
BOB = "bob@example.net"
MAIL = {"from": "shop@example.com", "to": BOB, "subject": "Hi", "text": "Hello"}
SCOPES = frozenset({"send:email", "read:email", "opt_outs:manage"})
ONE_CLICK = {"List-Unsubscribe": "One-Click"}


@attrs.define
class Env(ApiEnv):
    """The env with email scopes, the provider, the clock and keys of narrower scopes."""

    provider: MockProvider
    clock: ManualClock
    send_key: str
    read_key: str
    sms_key: str

    async def delete(self, path: str, key: str | None = None) -> httpx.Response:
        return await self.client.delete(path, headers=self.auth(key))

    async def sent(self, body: dict[str, Any] | None = None) -> str:
        """Send (``MAIL`` plus ``body``), run the worker; the id of the SENT email."""
        r = await self.post(SEND, {**MAIL, **(body or {})})
        assert r.status_code == 202, r.text
        await self.ct.run_worker_until_idle()
        message_id: str = r.json()["id"]
        assert await self.status(message_id) == "SENT"
        return message_id

    async def status(self, message_id: str) -> str:
        r = await self.get(f"/v1/public/emails/{message_id}")
        assert r.status_code == 200, r.text
        status: str = r.json()["status"]
        return status

    async def event_types(self, message_id: str) -> list[str]:
        r = await self.get(f"/v1/public/emails/{message_id}/timeline")
        return [e["type"] for e in r.json()["events"]]

    async def events(self, body: Any, token: str | None = None) -> httpx.Response:
        if token is None:
            token = await self.ct.suppressions.events_token(self.ct.org.id)
        return await self.client.post(EVENTS, params={"token": token}, json=body)

    async def listed(self) -> list[dict[str, Any]]:
        r = await self.get(LIST)
        assert r.status_code == 200, r.text
        data: list[dict[str, Any]] = r.json()["data"]
        return data


@pytest.fixture
async def env(tmp_path: Path, anyio_backend: str) -> AsyncIterator[Env]:
    clock = ManualClock()
    provider = MockProvider()
    settings = Settings(embedded_worker=False, public_url="https://mail.example.com")
    async with Commtunnel.open(
        db=pg.fresh_db(tmp_path / "ct.db"), email_provider=provider, clock=clock, settings=settings
    ) as ct:
        await ct.admin.add_sender(ct.org.id, "example.com")
        keys = {}
        for name, scopes in (
            ("key", SCOPES),
            ("send_key", {"send:email"}),
            ("read_key", {"read:email"}),
            ("sms_key", {"send:sms", "read:sms"}),
        ):
            _, keys[name] = await ct.keys.create(ct.org.id, scopes=frozenset(scopes))
        async with app_client(create_app(ct)) as client:
            yield Env(ct=ct, client=client, provider=provider, clock=clock, **keys)


# ----------------------------------------------------------------------------- the list API


async def test_add_list_get_and_remove(env: Env) -> None:
    """201 then 200 (kept), listed newest first, read back, removed, then 404."""
    r = await env.post(LIST, {"email": "Bob <BOB@Example.net>", "detail": "asked by phone"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body == {
        "email": BOB,
        "reason": "MANUAL",
        "origin": "api",
        "createdAt": "2026-01-01T12:00:00.000Z",
        "expiresAt": None,
        "messageId": None,
        "detail": "asked by phone",
        "created": True,
    }
    r = await env.post(LIST, {"email": BOB, "reason": "COMPLAINT"})
    assert r.status_code == 200 and r.json()["created"] is False
    assert r.json()["reason"] == "MANUAL"
    r = await env.post(LIST, {"email": "ann@example.net", "expiresAt": "2026-02-01T00:00:00Z"})
    assert r.status_code == 201 and r.json()["expiresAt"] == "2026-02-01T00:00:00.000Z"

    r = await env.get(LIST, pageSize=1)
    assert r.status_code == 200
    assert r.json()["total"] == 2 and r.json()["pageSize"] == 1
    assert [s["email"] for s in r.json()["data"]] == ["ann@example.net"]  # same time: by address
    r = await env.get(LIST, reason="MANUAL", page=2, pageSize=1)
    assert [s["email"] for s in r.json()["data"]] == [BOB]

    r = await env.get(f"{LIST}/{quote('BOB@example.net')}", key=env.read_key)
    assert r.status_code == 200 and r.json()["email"] == BOB
    r = await env.delete(f"{LIST}/{BOB}")
    assert r.status_code == 200 and r.json() == {"email": BOB, "suppressed": False}
    assert_error(await env.get(f"{LIST}/{BOB}"), 404, "NOT_FOUND")
    assert_error(await env.delete(f"{LIST}/{BOB}"), 404, "NOT_FOUND")


async def test_a_send_to_a_listed_address_is_refused_with_403(env: Env) -> None:
    """``EMAIL_RECIPIENT_SUPPRESSED`` with the address and reason; sandbox sends too."""
    await env.post(LIST, {"email": BOB, "reason": "UNSUBSCRIBE"})
    for body in (MAIL, {**MAIL, "to": "Bob <Bob@example.NET>", "sandboxMode": True}):
        details = assert_error(await env.post(SEND, body), 403, "EMAIL_RECIPIENT_SUPPRESSED")
        assert details == {"to": BOB, "reason": "UNSUBSCRIBE"}
    r = await env.get(
        "/v1/public/emails/stats", start="2026-01-01T00:00:00Z", end="2026-01-02T00:00:00Z"
    )
    assert r.json()["total"] == 0


async def test_the_list_refuses_callers_without_the_scope(env: Env) -> None:
    """No key 401; each route without its scope 403, and nothing changes."""
    r = await env.client.get(LIST)
    assert_error(r, 401, "UNAUTHORIZED")
    await env.post(LIST, {"email": BOB})
    assert_error(await env.get(LIST, key=env.sms_key), 403, "INSUFFICIENT_SCOPE")
    assert_error(await env.get(f"{LIST}/{BOB}", key=env.send_key), 403, "INSUFFICIENT_SCOPE")
    r = await env.post(LIST, {"email": "ann@example.net"}, key=env.read_key)
    assert_error(r, 403, "INSUFFICIENT_SCOPE")
    details = assert_error(
        await env.delete(f"{LIST}/{BOB}", key=env.send_key), 403, "INSUFFICIENT_SCOPE"
    )
    assert details == {"requiredScope": "opt_outs:manage"}
    assert [s["email"] for s in await env.listed()] == [BOB]


async def test_bad_requests_are_refused_field_by_field(env: Env) -> None:
    """Unknown fields, bad values, bad paging, bad JSON and a bad path address: 400."""
    cases: list[tuple[dict[str, Any], set[str]]] = [
        ({}, {"email"}),
        ({"email": BOB, "why": "x"}, {"why"}),
        (
            {"email": "nope", "reason": "LOST", "expiresAt": "2020-01-01T00:00:00Z"},
            {"email", "reason", "expiresAt"},
        ),
    ]
    for body, fields in cases:
        details = assert_error(await env.post(LIST, body), 400, "VALIDATION_ERROR")
        assert set(details) == fields
    r = await env.client.post(LIST, content=b"[1]", headers=env.auth())
    assert_error(r, 400, "INVALID_JSON")
    for params in ({"reason": "LOST"}, {"page": "x"}, {"pageSize": "500"}):
        assert_error(await env.get(LIST, **params), 400, "VALIDATION_ERROR")
    details = assert_error(await env.get(f"{LIST}/not-an-address"), 400, "VALIDATION_ERROR")
    assert set(details) == {"email"}
    assert_error(await env.delete(f"{LIST}/not-an-address"), 400, "VALIDATION_ERROR")
    assert await env.listed() == []


# ----------------------------------------------------------------------------- events webhook


async def test_a_hard_bounce_report_bounces_the_message_and_lists_the_address(env: Env) -> None:
    """By Message-ID: SENT -> BOUNCED with email_bounced; HARD_BOUNCE, origin webhook."""
    message_id = await env.sent()
    header = f"<{message_id}@example.com>"
    event = {"type": "bounce", "messageId": header, "diagnostic": "smtp; 550 5.1.1 unknown"}
    r = await env.events({"events": [event]})
    assert r.status_code == 200, r.text
    assert r.json() == {"received": 1, "suppressed": 1, "bounced": 1, "complained": 0, "ignored": 0}
    assert await env.status(message_id) == "BOUNCED"
    assert (await env.event_types(message_id))[-1] == "email_bounced"
    [entry] = await env.listed()
    assert (entry["email"], entry["reason"], entry["origin"], entry["messageId"]) == (
        BOB,
        "HARD_BOUNCE",
        "webhook",
        message_id,
    )
    assert entry["detail"] == "smtp; 550 5.1.1 unknown"
    r = await env.events({"events": [event]})  # a redelivery changes nothing
    assert r.json() == {"received": 1, "suppressed": 0, "bounced": 0, "complained": 0, "ignored": 1}


async def test_a_complaint_lists_the_address_and_records_email_complained(env: Env) -> None:
    """COMPLAINT entry and an ``email_complained`` event; the status stays SENT."""
    message_id = await env.sent()
    r = await env.events({"events": [{"type": "complaint", "messageId": message_id}]})
    assert r.json()["suppressed"] == 1 and r.json()["complained"] == 1
    assert await env.status(message_id) == "SENT"
    assert (await env.event_types(message_id))[-1] == "email_complained"
    assert [(s["email"], s["reason"]) for s in await env.listed()] == [(BOB, "COMPLAINT")]


async def test_soft_bounces_and_foreign_messages_change_nothing(env: Env) -> None:
    """A soft bounce, and another organization's message without an email, are ignored."""
    message_id = await env.sent()
    other = await env.ct.admin.ensure_org("other")
    other_token = await env.ct.suppressions.events_token(other.id)
    r = await env.events({"events": [{"type": "bounce", "messageId": message_id}]}, other_token)
    assert r.json()["ignored"] == 1
    r = await env.events(
        {"events": [{"type": "bounce", "messageId": message_id, "bounceType": "soft"}]}
    )
    assert r.json()["ignored"] == 1
    assert await env.status(message_id) == "SENT"
    assert await env.listed() == []
    r = await env.events({"events": [{"type": "bounce", "email": "ann@example.net"}]})
    assert r.json()["suppressed"] == 1  # by address alone


async def test_the_events_webhook_refuses_bad_tokens_and_bodies(env: Env) -> None:
    """No or a wrong token: 401 before the body is read; a malformed body: 400, nothing applied."""
    good = {"events": [{"type": "bounce", "email": BOB}]}
    assert_error(await env.client.post(EVENTS, json=good), 401, "INVALID_WEBHOOK_TOKEN")
    assert_error(await env.events(good, token="emt_wrong"), 401, "INVALID_WEBHOOK_TOKEN")
    r = await env.events({"events": [{"type": "bounce", "email": BOB}, {"type": "open"}]})
    details = assert_error(r, 400, "VALIDATION_ERROR")
    assert "events[1].type" in details
    token = await env.ct.suppressions.events_token(env.ct.org.id)
    r = await env.client.post(EVENTS, params={"token": token}, content=b"not json")
    assert_error(r, 400, "INVALID_JSON")
    assert await env.listed() == []


# ----------------------------------------------------------------------------- unsubscribe


async def test_unsubscribe_true_puts_one_click_headers_on_the_message(env: Env) -> None:
    """The provider gets the link; the MIME carries both headers; without the flag neither."""
    with_link = await env.sent({"unsubscribe": True})
    without = await env.sent({"to": "ann@example.net"})
    r = await env.get(f"/v1/public/emails/{with_link}")
    assert r.json()["unsubscribe"] is True
    first, second = env.provider.sent
    assert first.message_id == with_link and second.message_id == without
    url = first.content.unsubscribe_url
    assert url is not None and url.startswith("https://mail.example.com/v1/unsubscribe/")
    parsed = email.message_from_bytes(build_mime(first), policy=email.policy.default)
    assert str(parsed["List-Unsubscribe"]).strip() == f"<{url}>"
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    plain = email.message_from_bytes(build_mime(second), policy=email.policy.default)
    assert second.content.unsubscribe_url is None
    assert plain["List-Unsubscribe"] is None and plain["List-Unsubscribe-Post"] is None
    stored = await env.ct.email.get(with_link)
    assert stored.message.email is not None and stored.message.email.unsubscribe_url is None


async def unsubscribe_path(env: Env) -> str:
    await env.sent({"unsubscribe": True})
    url = env.provider.sent[-1].content.unsubscribe_url
    assert url is not None
    return url.removeprefix("https://mail.example.com")


async def test_the_page_does_not_unsubscribe_and_the_post_does(env: Env) -> None:
    """GET (what scanners fetch) shows a form and lists nothing; the one-click POST lists."""
    path = await unsubscribe_path(env)
    for _ in range(2):
        r = await env.client.get(path)
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/html")
        assert r.headers["cache-control"] == "no-store"
        assert '<form method="post">' in r.text and BOB in r.text
        assert (await env.client.head(path)).status_code == 200
    assert await env.listed() == []
    r = await env.client.post(path, data=ONE_CLICK)
    assert r.status_code == 200 and "Unsubscribed" in r.text
    assert "location" not in r.headers
    [entry] = await env.listed()
    assert (entry["email"], entry["reason"], entry["origin"]) == (BOB, "UNSUBSCRIBE", "unsubscribe")
    assert (await env.client.post(path, data=ONE_CLICK)).status_code == 200  # twice: fine
    assert_error(await env.post(SEND, MAIL), 403, "EMAIL_RECIPIENT_SUPPRESSED")


async def test_invalid_unsubscribe_tokens_are_refused(env: Env) -> None:
    """Tampered, truncated or tracking tokens: 400 on both routes, nothing listed."""
    path = await unsubscribe_path(env)
    tracking = (await env.ct.tracking.signer()).sign_open(
        OpenToken(org_id=env.ct.org.id, message_id="m")
    )
    # A character inside the signature, changed in its high bits: the last one
    # may carry only padding bits, which base64 decoding ignores.
    flipped = path[:-6] + ("A" if path[-6] != "A" else "g") + path[-5:]
    for bad in (flipped, path[:-4], f"/v1/unsubscribe/{tracking}"):
        assert_error(await env.client.get(bad), 400, "INVALID_UNSUBSCRIBE_TOKEN")
        assert_error(await env.client.post(bad, data=ONE_CLICK), 400, "INVALID_UNSUBSCRIBE_TOKEN")
    assert await env.listed() == []
