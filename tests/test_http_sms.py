"""The SMS API over HTTP: sends, OTP, reads, retries, sender IDs, opt-outs and the webhooks.

Every route's success, and every refusal the issue names, answered with the
error envelope and leaving nothing changed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import attrs
import httpx
import pytest

import pg
from app_client import ApiEnv, app_client, assert_error
from commtunnel import Commtunnel, Settings
from commtunnel.config import DEFAULT_SMS_HELP_TEXT, DEFAULT_SMS_STOP_TEXT
from commtunnel.ports import SmsProvider
from commtunnel.providers.twilio import TwilioProvider
from commtunnel.testing import ManualClock, MockProvider, MockSmsProvider
from commtunnel_http import create_app

pytestmark = pytest.mark.anyio

SEND = "/v1/public/sms/send"
OTP = "/v1/public/sms/otp/send"
INBOUND = "/v1/webhooks/sms/inbound"
INBOUND_OPT_OUT = "/v1/webhooks/sms/inbound-opt-out"
DLR = "/v1/webhooks/sms/dlr"
PROVIDER = "/v1/webhooks/sms/provider"
REQUESTS = "/v1/sms/sender-id-requests"
OPT_OUTS = "/v1/public/sms/opt-outs"
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
SCOPES = frozenset({"send:sms", "read:sms", "sender_ids:request", "opt_outs:manage"})
PHONE = "+2348031234567"
OTHER_PHONE = "+14155552671"
SENDER = "ACME"
BRAND = "Acme Bank"
BODY = {"to": PHONE, "senderId": SENDER, "body": "Hello from Acme"}
OTP_BODY = {"to": PHONE, "brandName": BRAND, "otpCode": "482913", "purpose": "LOGIN"}


@attrs.define
class Env(ApiEnv):
    """The env (:class:`~app_client.ApiEnv`) with SMS scopes, its clock, a platform-admin key."""

    clock: ManualClock
    admin_key: str

    async def send(self, body: dict[str, Any] | None = None, /, **headers: str) -> httpx.Response:
        return await self.post(SEND, BODY if body is None else body, **headers)

    async def approve(self, value: str, flow: str = "STANDARD", key: str | None = None) -> str:
        """Request ``value`` with ``key`` (the org key) and approve it as the platform admin."""
        r = await self.post(REQUESTS, {"senderId": value, "flow": flow}, key=key)
        assert r.status_code == 201, r.text
        request_id: str = r.json()["id"]
        review = {"decision": "approve", "reason": "ok"}
        r = await self.post(f"{REQUESTS}/{request_id}/review", review, key=self.admin_key)
        assert r.status_code == 200, r.text
        return request_id

    async def token(self) -> str:
        return await self.ct.sms_service.token(self.ct.org.id)

    async def webhook(self, path: str, token: str | None = None, **kwargs: Any) -> httpx.Response:
        params = {"token": token if token is not None else await self.token()}
        return await self.client.post(path, params=params, **kwargs)

    async def status(self, message_id: str) -> str:
        r = await self.get(f"/v1/public/sms/{message_id}")
        assert r.status_code == 200, r.text
        status: str = r.json()["status"]
        return status

    async def sent_message(self, body: dict[str, Any] | None = None) -> str:
        """Send and run the worker: the id of a SENT message."""
        r = await self.send(body)
        assert r.status_code == 202, r.text
        await self.ct.run_worker_until_idle()
        message_id: str = r.json()["id"]
        assert await self.status(message_id) == "SENT"
        return message_id

    async def event_types(self, message_id: str) -> list[str]:
        r = await self.get(f"/v1/public/sms/{message_id}/timeline")
        return [e["type"] for e in r.json()["events"]]


@asynccontextmanager
async def open_env(
    tmp_path: Path,
    *,
    settings: Settings | None = None,
    sms_provider: SmsProvider | str | None = None,
    approve: bool = True,
) -> AsyncIterator[Env]:
    """Build an :class:`Env` with :data:`SENDER` and the OTP brand :data:`BRAND` approved."""
    clock = ManualClock()
    async with Commtunnel.open(
        db=pg.fresh_db(tmp_path / "ct.db"),
        email_provider=MockProvider(),
        sms_provider=sms_provider if sms_provider is not None else MockSmsProvider(),
        clock=clock,
        settings=settings or Settings(embedded_worker=False),
    ) as ct:
        _, key = await ct.keys.create(ct.org.id, scopes=SCOPES)
        platform = await ct.admin.create_org("platform")
        _, admin_key = await ct.keys.create(platform.id, scopes=frozenset({"platform:admin"}))
        async with app_client(create_app(ct)) as client:
            env = Env(ct=ct, client=client, key=key, clock=clock, admin_key=admin_key)
            if approve:
                await env.approve(SENDER)
                await env.approve(BRAND, flow="OTP")
            yield env


@pytest.fixture
async def env(tmp_path: Path, anyio_backend: str) -> AsyncIterator[Env]:
    async with open_env(tmp_path) as e:
        yield e


async def sms_total(env: Env) -> int:
    r = await env.get("/v1/sms")
    total: int = r.json()["total"]
    return total


# --------------------------------------------------------------------------- send


async def test_send_answers_202_with_segments_and_encoding(env: Env) -> None:
    """A send is accepted with the documented shape: senderId, segments and encoding."""
    r = await env.send()
    assert r.status_code == 202
    body = r.json()
    assert set(body) == {
        "id",
        "senderId",
        "status",
        "createdAt",
        "duplicate",
        "segments",
        "encoding",
    }
    assert body["senderId"] == SENDER
    assert body["status"] == "QUEUED"
    assert body["createdAt"] == "2026-01-01T12:00:00.000Z"
    assert (body["duplicate"], body["segments"], body["encoding"]) == (False, 1, "GSM7")
    assert "idempotent-replayed" not in r.headers


@pytest.mark.parametrize(
    ("text", "encoding", "segments"),
    [
        ("a" * 160, "GSM7", 1),
        ("a" * 161, "GSM7", 2),
        ("ç" * 70, "UCS2", 1),  # lower-case ç is not in the GSM-7 basic set
        ("ç" * 71, "UCS2", 2),
        ("Hi 😀", "UCS2", 1),
    ],
)
async def test_send_reports_encoding_and_segments(
    env: Env, text: str, encoding: str, segments: int
) -> None:
    """The answer carries the GSM 03.38 encoding and the segment count of the body."""
    body = (await env.send({**BODY, "body": text})).json()
    assert (body["encoding"], body["segments"]) == (encoding, segments)


async def test_send_normalises_the_recipient_to_e164(env: Env) -> None:
    """A number written with spaces is stored in E.164."""
    r = await env.send({**BODY, "to": "+234 803 123 4567"})
    message = (await env.get(f"/v1/public/sms/{r.json()['id']}")).json()
    assert message["to"] == PHONE


@pytest.mark.parametrize("to", ["08031234567", "+1234", "not a number", 2348031234567, None])
async def test_bad_e164_is_400_with_details_to(env: Env, to: Any) -> None:
    """A recipient that is not an E.164 number is refused naming ``to``; nothing is stored."""
    details = assert_error(await env.send({**BODY, "to": to}), 400, "VALIDATION_ERROR")
    assert "to" in details
    assert await sms_total(env) == 0


async def test_body_of_1601_characters_is_400(env: Env) -> None:
    """The body is limited to 1600 characters; 1600 passes, 1601 is refused naming ``body``."""
    assert (await env.send({**BODY, "body": "a" * 1600})).status_code == 202
    details = assert_error(await env.send({**BODY, "body": "a" * 1601}), 400, "VALIDATION_ERROR")
    assert "body" in details
    assert await sms_total(env) == 1


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"body": ""}, "body"),
        ({"senderId": "TOOLONGSENDER"}, "senderId"),
        ({"sendType": 3}, "sendType"),
        ({"colour": "red"}, "colour"),
    ],
)
async def test_invalid_send_field_is_400(env: Env, change: dict[str, Any], field: str) -> None:
    """Each bad field is named in details; unknown fields are refused."""
    details = assert_error(await env.send({**BODY, **change}), 400, "VALIDATION_ERROR")
    assert field in details


async def test_body_that_is_not_json_is_400(env: Env) -> None:
    """A body that is not a JSON object is INVALID_JSON."""
    r = await env.client.post(
        SEND, content=b"to=x", headers=env.auth(**{"Content-Type": "application/json"})
    )
    assert_error(r, 400, "INVALID_JSON")


async def test_no_key_is_401(env: Env) -> None:
    """Without an API key the send is refused with 401."""
    assert_error(await env.client.post(SEND, json=BODY), 401, "UNAUTHORIZED")


async def test_unapproved_sender_is_403(env: Env) -> None:
    """A sender ID the organization has not had approved is refused; nothing is stored."""
    r = await env.send({**BODY, "senderId": "OTHERCO"})
    assert assert_error(r, 403, "SMS_SENDER_ID_NOT_APPROVED") == {"senderId": "OTHERCO"}
    assert await sms_total(env) == 0


async def test_otp_brand_is_not_a_standard_sender(env: Env) -> None:
    """A brand approved for OTP does not make it a sender ID for standard messages."""
    r = await env.send({**BODY, "senderId": "AcmeBank"})
    assert_error(r, 403, "SMS_SENDER_ID_NOT_APPROVED")


async def test_rejected_sender_id_stays_refused(env: Env) -> None:
    """A request the platform rejected does not approve the sender ID."""
    request_id = (await env.post(REQUESTS, {"senderId": "NOPE"})).json()["id"]
    review = {"decision": "reject", "reason": "brand not verified"}
    r = await env.post(f"{REQUESTS}/{request_id}/review", review, key=env.admin_key)
    assert r.json()["status"] == "REJECTED"
    assert_error(await env.send({**BODY, "senderId": "NOPE"}), 403, "SMS_SENDER_ID_NOT_APPROVED")


async def test_platform_default_sender_id_is_allowed(tmp_path: Path, anyio_backend: str) -> None:
    """The platform default sender ID needs no approval (case-insensitive); others still do."""
    settings = Settings(embedded_worker=False, sms_default_sender_id="CTUNNEL")
    async with open_env(tmp_path, settings=settings, approve=False) as env:
        r = await env.send({**BODY, "senderId": "CTUNNEL"})
        assert r.status_code == 202
        assert r.json()["senderId"] == "CTUNNEL"
        assert (await env.send({**BODY, "senderId": "ctunnel"})).status_code == 202
        r = await env.send({**BODY, "senderId": SENDER})
        assert_error(r, 403, "SMS_SENDER_ID_NOT_APPROVED")


async def test_opted_out_recipient_is_403(env: Env) -> None:
    """A number on the opt-out list is refused; other numbers are not."""
    assert (await env.post(OPT_OUTS, {"phone": PHONE})).status_code == 201
    details = assert_error(await env.send(), 403, "SMS_RECIPIENT_OPTED_OUT")
    assert details == {"to": PHONE}
    assert (await env.send({**BODY, "to": OTHER_PHONE})).status_code == 202


async def test_same_idempotency_key_replays_the_original(env: Env) -> None:
    """The same key and payload answer the original message, once, with Idempotent-Replayed."""
    first = await env.send(**{"x-idempotency-key": "sms-1"})
    again = await env.send(**{"x-idempotency-key": "sms-1"})
    assert again.status_code == 202
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == {**first.json(), "duplicate": True}
    assert await env.ct.run_worker_until_idle() == 1
    assert await sms_total(env) == 1


async def test_same_idempotency_key_other_payload_is_422(env: Env) -> None:
    """The same key with a different payload is IDEMPOTENCY_KEY_REUSED; nothing new is stored."""
    await env.send(**{"x-idempotency-key": "sms-2"})
    r = await env.send({**BODY, "body": "Different"}, **{"x-idempotency-key": "sms-2"})
    assert_error(r, 422, "IDEMPOTENCY_KEY_REUSED")
    assert await sms_total(env) == 1


@pytest.mark.parametrize(
    ("scopes", "method", "path", "required"),
    [
        ({"read:sms"}, "POST", SEND, "send:sms"),
        ({"read:sms"}, "POST", OTP, "send:sms"),
        ({"send:sms"}, "GET", "/v1/sms", "read:sms"),
        ({"send:sms"}, "GET", "/v1/public/sms/inbound", "read:sms"),
        ({"read:sms"}, "POST", REQUESTS, "sender_ids:request"),
        ({"read:sms"}, "POST", OPT_OUTS, "opt_outs:manage"),
        ({"read:sms"}, "DELETE", f"{OPT_OUTS}/{PHONE}", "opt_outs:manage"),
        ({"send:sms"}, "GET", OPT_OUTS, "read:sms"),
    ],
)
async def test_missing_scope_is_403_naming_the_scope(
    env: Env, scopes: set[str], method: str, path: str, required: str
) -> None:
    """A key without the route's scope is refused with INSUFFICIENT_SCOPE naming it."""
    _, key = await env.ct.keys.create(env.ct.org.id, scopes=frozenset(scopes))
    bodies = {SEND: BODY, OTP: OTP_BODY, REQUESTS: {"senderId": "X1"}, OPT_OUTS: {"phone": PHONE}}
    r = await env.client.request(method, path, json=bodies.get(path), headers=env.auth(key))
    assert assert_error(r, 403, "INSUFFICIENT_SCOPE") == {"requiredScope": required}


# --------------------------------------------------------------------------- OTP


async def test_otp_send_answers_202_with_cooldown(env: Env) -> None:
    """An OTP under an approved brand is queued; the answer carries cooldownSeconds."""
    r = await env.post(OTP, OTP_BODY)
    assert r.status_code == 202
    body = r.json()
    assert set(body) == {"id", "status", "createdAt", "duplicate", "cooldownSeconds"}
    assert (body["status"], body["duplicate"], body["cooldownSeconds"]) == ("QUEUED", False, 60)
    message = (await env.get(f"/v1/public/sms/{body['id']}")).json()
    assert (message["flow"], message["purpose"], message["senderId"]) == ("OTP", "LOGIN", BRAND)
    assert "482913" not in message["body"]  # the passcode is never read back
    assert "******" in message["body"]
    [listed] = (await env.get("/v1/sms?flow=OTP")).json()["data"]
    assert "482913" not in listed["body"]
    assert listed["body"] == message["body"]


async def test_otp_purpose_defaults_to_phone_verification(env: Env) -> None:
    """Without a purpose the OTP is a PHONE_VERIFICATION."""
    r = await env.post(OTP, {k: v for k, v in OTP_BODY.items() if k != "purpose"})
    message = (await env.get(f"/v1/public/sms/{r.json()['id']}")).json()
    assert message["purpose"] == "PHONE_VERIFICATION"


@pytest.mark.parametrize("code", ["123", "123456789", "12a4", 123456])
async def test_otp_code_not_4_to_8_digits_is_400(env: Env, code: Any) -> None:
    """A code of 3 or 9 digits, with a letter, or as a JSON number is refused naming otpCode."""
    details = assert_error(
        await env.post(OTP, {**OTP_BODY, "otpCode": code}), 400, "VALIDATION_ERROR"
    )
    assert "otpCode" in details
    assert await sms_total(env) == 0


@pytest.mark.parametrize("purpose", ["SIGNUP", "login", ""])
async def test_unknown_otp_purpose_is_400(env: Env, purpose: str) -> None:
    """A purpose outside LOGIN | PHONE_VERIFICATION | PASSWORD_RESET is refused."""
    r = await env.post(OTP, {**OTP_BODY, "purpose": purpose})
    assert "purpose" in assert_error(r, 400, "VALIDATION_ERROR")


async def test_unapproved_brand_is_403(env: Env) -> None:
    """A brand not approved for OTP is refused, even when it is an approved sender ID."""
    r = await env.post(OTP, {**OTP_BODY, "brandName": "Other Brand"})
    assert assert_error(r, 403, "SMS_BRAND_NOT_APPROVED") == {"brandName": "Other Brand"}
    r = await env.post(OTP, {**OTP_BODY, "brandName": SENDER})
    assert_error(r, 403, "SMS_BRAND_NOT_APPROVED")
    assert await sms_total(env) == 0


async def test_otp_to_opted_out_number_is_403(env: Env) -> None:
    """OTP is refused to an opted-out number too (the organization's default policy)."""
    await env.post(OPT_OUTS, {"phone": PHONE})
    assert_error(await env.post(OTP, OTP_BODY), 403, "SMS_RECIPIENT_OPTED_OUT")


async def test_otp_cooldown_is_429_with_retry_after_until_it_passes(env: Env) -> None:
    """A second OTP inside 60 s is OTP_COOLDOWN with Retry-After; after the wait it passes."""
    assert (await env.post(OTP, OTP_BODY)).status_code == 202
    r = await env.post(OTP, {**OTP_BODY, "otpCode": "111111"})
    assert assert_error(r, 429, "OTP_COOLDOWN") == {"retryAfter": 60}
    assert r.headers["retry-after"] == "60"

    env.clock.advance(45)
    r = await env.post(OTP, {**OTP_BODY, "otpCode": "222222"})
    assert_error(r, 429, "OTP_COOLDOWN")
    assert r.headers["retry-after"] == "15"
    assert await sms_total(env) == 1

    env.clock.advance(15)
    assert (await env.post(OTP, {**OTP_BODY, "otpCode": "333333"})).status_code == 202


async def test_otp_cooldown_is_per_purpose_and_recipient(env: Env) -> None:
    """Another purpose, or another number, is not held back by the cooldown."""
    await env.post(OTP, OTP_BODY)
    assert (await env.post(OTP, {**OTP_BODY, "purpose": "PASSWORD_RESET"})).status_code == 202
    assert (await env.post(OTP, {**OTP_BODY, "to": OTHER_PHONE})).status_code == 202


async def test_otp_idempotent_replay_is_not_a_cooldown(env: Env) -> None:
    """Replaying an OTP with its idempotency key answers the original, not 429."""
    first = await env.post(OTP, OTP_BODY, **{"x-idempotency-key": "otp-1"})
    again = await env.post(OTP, OTP_BODY, **{"x-idempotency-key": "otp-1"})
    assert again.status_code == 202, again.text
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]


# --------------------------------------------------------------------------- read, timeline, retry


async def test_get_shows_the_sms_with_its_attempts(env: Env) -> None:
    """After the worker, GET shows SENT, the content, the provider id and the attempt."""
    message_id = (await env.send(**{"x-idempotency-key": "k"})).json()["id"]
    env.clock.advance(2)
    await env.ct.run_worker_until_idle()
    r = await env.get(f"/v1/public/sms/{message_id}")
    assert r.status_code == 200
    message = r.json()
    assert message == {
        "id": message_id,
        "channel": "sms",
        "status": "SENT",
        "to": PHONE,
        "senderId": SENDER,
        "body": "Hello from Acme",
        "sendType": 0,
        "encoding": "GSM7",
        "segments": 1,
        "flow": "STANDARD",
        "purpose": None,
        "scheduledAt": None,
        "sandbox": False,
        "providerMessageId": "mock-sms-1",
        "attemptCount": 1,
        "lastError": None,
        "createdAt": "2026-01-01T12:00:00.000Z",
        "updatedAt": "2026-01-01T12:00:02.000Z",
        "attempts": [message["attempts"][0]],
    }
    attempt = message["attempts"][0]
    assert (attempt["number"], attempt["provider"], attempt["outcome"], attempt["status"]) == (
        1,
        "mock-sms",
        "accepted",
        "SENT",
    )
    assert attempt["errorCategory"] is None
    assert TIMESTAMP.fullmatch(attempt["timestamp"])
    assert isinstance(attempt["durationMs"], int | float)


async def test_timeline_lists_events_oldest_first_and_honours_limit(env: Env) -> None:
    """The timeline has the same shape as email's; limit caps it; a bad limit is 400."""
    message_id = await env.sent_message()
    r = await env.get(f"/v1/public/sms/{message_id}/timeline")
    assert r.status_code == 200
    timeline = r.json()
    assert timeline["id"] == message_id
    assert [e["type"] for e in timeline["events"]] == ["sms_queued", "sms_processing", "sms_sent"]
    queued = timeline["events"][0]
    assert set(queued) == {"id", "type", "status", "createdAt", "details"}
    assert queued["details"] == {"segments": 1, "encoding": "GSM7"}
    r = await env.get(f"/v1/public/sms/{message_id}/timeline", limit=1)
    assert [e["type"] for e in r.json()["events"]] == ["sms_queued"]
    for limit in ("0", "abc", "1001"):
        r = await env.get(f"/v1/public/sms/{message_id}/timeline", limit=limit)
        assert "limit" in assert_error(r, 400, "VALIDATION_ERROR")


async def test_test_key_sends_to_the_sandbox(env: Env) -> None:
    """A ct_test_ key's SMS is marked sandbox and never reaches the provider."""
    _, test_key = await env.ct.keys.create(env.ct.org.id, scopes=SCOPES, test=True)
    message_id = (await env.post(SEND, BODY, key=test_key)).json()["id"]
    await env.ct.run_worker_until_idle()
    message = (await env.get(f"/v1/public/sms/{message_id}")).json()
    assert message["sandbox"] is True
    provider = env.ct.sms_provider
    assert isinstance(provider, MockSmsProvider)
    assert provider.sent == []


async def test_another_organizations_sms_is_404(env: Env) -> None:
    """Another organization's SMS answers 404 everywhere, like one that never existed."""
    message_id = await env.sent_message()
    other = await env.ct.admin.create_org("other")
    _, other_key = await env.ct.keys.create(other.id, scopes=SCOPES)
    for path in (f"/v1/public/sms/{message_id}", f"/v1/public/sms/{message_id}/timeline"):
        assert_error(await env.get(path, key=other_key), 404, "NOT_FOUND")
    r = await env.post(f"/v1/public/sms/{message_id}/retry", None, key=other_key)
    assert_error(r, 404, "NOT_FOUND")
    assert (await env.get("/v1/sms", key=other_key)).json()["total"] == 0
    assert_error(await env.get("/v1/public/sms/does-not-exist"), 404, "NOT_FOUND")


async def test_email_id_is_not_an_sms(env: Env) -> None:
    """An email of the same organization is not found through the SMS routes."""
    await env.ct.admin.add_sender(env.ct.org.id, "example.com")
    email = await env.ct.email.send(
        from_="hi@example.com", to="a@example.org", subject="s", text="t"
    )
    assert_error(await env.get(f"/v1/public/sms/{email.message.id}"), 404, "NOT_FOUND")


async def test_retry_requeues_a_failed_sms_once(env: Env) -> None:
    """A FAILED SMS is re-queued (202) and sent again; a second retry is MESSAGE_NOT_RETRYABLE."""
    message_id = await env.sent_message()
    r = await env.webhook(DLR, json={"message_id": message_id, "status": "FAILED"})
    assert r.json()["status"] == "FAILED"

    r = await env.post(f"/v1/public/sms/{message_id}/retry", None)
    assert r.status_code == 202
    assert r.json() == {"id": message_id, "status": "QUEUED"}
    details = assert_error(
        await env.post(f"/v1/public/sms/{message_id}/retry", None), 409, "MESSAGE_NOT_RETRYABLE"
    )
    assert details["status"] == "QUEUED"
    assert await env.ct.run_worker_until_idle() == 1
    assert await env.status(message_id) == "SENT"
    assert (await env.event_types(message_id))[-3:] == ["sms_queued", "sms_processing", "sms_sent"]


async def test_retry_of_a_message_that_did_not_fail_is_409(env: Env) -> None:
    """Only FAILED messages can be retried: QUEUED and SENT are refused."""
    queued = (await env.send()).json()["id"]
    details = assert_error(
        await env.post(f"/v1/public/sms/{queued}/retry", None), 409, "MESSAGE_NOT_RETRYABLE"
    )
    assert details["status"] == "QUEUED"
    await env.ct.run_worker_until_idle()
    r = await env.post(f"/v1/public/sms/{queued}/retry", None)
    assert_error(r, 409, "MESSAGE_NOT_RETRYABLE")


# --------------------------------------------------------------------------- listing


async def test_list_filters_by_flow_status_query_and_pages(env: Env) -> None:
    """GET /v1/sms filters by flow, status and free text, newest first, with paging."""
    sent_id = await env.sent_message({**BODY, "body": "Order 2348067 shipped"})
    env.clock.advance(1)
    queued_id = (await env.send({**BODY, "to": OTHER_PHONE, "body": "Second"})).json()["id"]
    env.clock.advance(1)
    otp_id = (await env.post(OTP, OTP_BODY)).json()["id"]

    r = await env.get("/v1/sms")
    assert r.status_code == 200
    listing = r.json()
    assert set(listing) == {"data", "page", "pageSize", "total"}
    assert (listing["page"], listing["pageSize"], listing["total"]) == (1, 20, 3)
    assert [m["id"] for m in listing["data"]] == [otp_id, queued_id, sent_id]
    assert "attempts" not in listing["data"][0]
    assert listing["data"][1]["to"] == OTHER_PHONE

    def ids(r: httpx.Response) -> list[str]:
        return [m["id"] for m in r.json()["data"]]

    assert ids(await env.get("/v1/sms", flow="OTP")) == [otp_id]
    assert ids(await env.get("/v1/sms", flow="STANDARD")) == [queued_id, sent_id]
    assert ids(await env.get("/v1/sms", status="SENT")) == [sent_id]
    assert ids(await env.get("/v1/sms", flow="STANDARD", status="QUEUED")) == [queued_id]
    assert ids(await env.get("/v1/sms", query="2348067")) == [sent_id]
    assert ids(await env.get("/v1/sms", query="4155552671")) == [queued_id]
    assert ids(await env.get("/v1/sms", query=otp_id)) == [otp_id]
    assert ids(await env.get("/v1/sms", flow="", status="")) == [otp_id, queued_id, sent_id]
    page2 = (await env.get("/v1/sms", page=2, pageSize=2)).json()
    assert ([m["id"] for m in page2["data"]], page2["total"]) == ([sent_id], 3)
    assert (await env.get("/v1/sms", page=3, pageSize=2)).json()["data"] == []


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"pageSize": "101"}, "pageSize"),
        ({"pageSize": "0"}, "pageSize"),
        ({"pageSize": "ten"}, "pageSize"),
        ({"page": "0"}, "page"),
        ({"page": "-1"}, "page"),
        ({"page": "1.5"}, "page"),
        ({"flow": "PROMO"}, "flow"),
        ({"status": "sent"}, "status"),
        ({"query": "x" * 201}, "query"),
    ],
)
async def test_bad_listing_parameters_are_400(env: Env, params: dict[str, str], field: str) -> None:
    """Paging outside 1..100, an unknown flow or status, an over-long query: 400 naming it."""
    assert field in assert_error(await env.get("/v1/sms", **params), 400, "VALIDATION_ERROR")


async def test_page_size_100_is_allowed(env: Env) -> None:
    """pageSize 100 is the largest page."""
    assert (await env.get("/v1/sms", pageSize="100")).json()["pageSize"] == 100


@pytest.mark.parametrize(
    ("path", "default_size"),
    [("/v1/sms", 20), ("/v1/public/sms/inbound", 50), (OPT_OUTS, 50)],
)
async def test_empty_paging_parameters_mean_the_defaults(
    env: Env, path: str, default_size: int
) -> None:
    """``page=`` and ``pageSize=`` left empty are the listing's defaults (page 1, its size)."""
    listing = (await env.get(path, page="", pageSize="")).json()
    assert (listing["page"], listing["pageSize"]) == (1, default_size)


@pytest.mark.parametrize("path", ["/v1/public/sms/inbound", OPT_OUTS])
@pytest.mark.parametrize(
    ("params", "field"),
    [({"pageSize": "101"}, "pageSize"), ({"pageSize": "x"}, "pageSize"), ({"page": "0"}, "page")],
)
async def test_bad_paging_of_the_other_listings_is_400(
    env: Env, path: str, params: dict[str, str], field: str
) -> None:
    """The inbound and opt-out listings refuse bad paging like ``/v1/sms`` does."""
    assert field in assert_error(await env.get(path, **params), 400, "VALIDATION_ERROR")


# --------------------------------------------------------------------------- sender IDs


async def test_sender_id_request_review_and_listing(tmp_path: Path, anyio_backend: str) -> None:
    """Request -> 201 PENDING; the admin approves -> 200 APPROVED; listed as approved."""
    async with open_env(tmp_path, approve=False) as env:
        r = await env.post(REQUESTS, {"senderId": SENDER, "reason": "our brand"})
        assert r.status_code == 201
        created = r.json()
        assert created == {
            "id": created["id"],
            "senderId": SENDER,
            "flow": "STANDARD",
            "status": "PENDING",
            "reason": "our brand",
            "reviewReason": None,
            "reviewedAt": None,
            "createdAt": "2026-01-01T12:00:00.000Z",
            "organizationId": env.ct.org.id,
        }
        listed = (await env.get(REQUESTS)).json()["data"]
        assert [x["id"] for x in listed] == [created["id"]]
        assert (await env.get("/v1/sms/sender-ids")).json() == {"data": []}

        env.clock.advance(60)
        review = {"decision": "approve", "reason": "verified"}
        r = await env.post(f"{REQUESTS}/{created['id']}/review", review, key=env.admin_key)
        assert r.status_code == 200
        reviewed = r.json()
        assert (reviewed["status"], reviewed["reviewReason"]) == ("APPROVED", "verified")
        assert reviewed["reviewedAt"] == "2026-01-01T12:01:00.000Z"
        assert reviewed["organizationId"] == env.ct.org.id

        r = await env.get("/v1/sms/sender-ids")
        assert r.json() == {
            "data": [
                {
                    "senderId": SENDER,
                    "flow": "STANDARD",
                    "approvedAt": "2026-01-01T12:01:00.000Z",
                    "requestId": created["id"],
                }
            ]
        }
        assert (await env.send()).status_code == 202


async def test_otp_brand_goes_through_the_same_review(tmp_path: Path, anyio_backend: str) -> None:
    """A brand is requested with flow OTP, approved, and listed by ?flow=OTP only."""
    async with open_env(tmp_path, approve=False) as env:
        assert_error(await env.post(OTP, OTP_BODY), 403, "SMS_BRAND_NOT_APPROVED")
        await env.approve(BRAND, flow="OTP")
        await env.approve(SENDER)
        otp_ids = (await env.get("/v1/sms/sender-ids", flow="OTP")).json()["data"]
        assert [(x["senderId"], x["flow"]) for x in otp_ids] == [(BRAND, "OTP")]
        standard = (await env.get("/v1/sms/sender-ids", flow="STANDARD")).json()["data"]
        assert [x["senderId"] for x in standard] == [SENDER]
        assert len((await env.get("/v1/sms/sender-ids")).json()["data"]) == 2
        assert (await env.post(OTP, OTP_BODY)).status_code == 202
        r = await env.get("/v1/sms/sender-ids", flow="PROMO")
        assert "flow" in assert_error(r, 400, "VALIDATION_ERROR")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "senderId"),
        ({"senderId": "TOOLONGSENDER"}, "senderId"),
        ({"senderId": "AB", "flow": "OTP"}, "senderId"),
        ({"senderId": "ACME2", "flow": "PROMO"}, "flow"),
        ({"senderId": "ACME2", "reason": 5}, "reason"),
        ({"senderId": "ACME2", "note": "x"}, "note"),
    ],
)
async def test_bad_sender_id_request_is_400(env: Env, body: dict[str, Any], field: str) -> None:
    """A sender ID, brand, flow or reason that breaks its rule is refused naming the field."""
    assert field in assert_error(await env.post(REQUESTS, body), 400, "VALIDATION_ERROR")


async def test_requesting_an_approved_sender_id_again_is_409(env: Env) -> None:
    """A value already approved (or pending) cannot be requested twice."""
    assert_error(await env.post(REQUESTS, {"senderId": SENDER}), 409, "CONFLICT")


async def test_review_by_a_non_admin_is_403(env: Env) -> None:
    """An organization key cannot review its own request; nothing changes."""
    request_id = (await env.post(REQUESTS, {"senderId": "SELFIE"})).json()["id"]
    r = await env.post(f"{REQUESTS}/{request_id}/review", {"decision": "approve"})
    assert assert_error(r, 403, "INSUFFICIENT_SCOPE") == {"requiredScope": "platform:admin"}
    [pending] = (await env.get(REQUESTS, status="PENDING")).json()["data"]
    assert pending["id"] == request_id


async def test_double_review_is_409(env: Env) -> None:
    """A request already reviewed cannot be reviewed again (either way)."""
    request_id = (await env.post(REQUESTS, {"senderId": "TWICE"})).json()["id"]
    path = f"{REQUESTS}/{request_id}/review"
    assert (await env.post(path, {"decision": "approve"}, key=env.admin_key)).status_code == 200
    r = await env.post(path, {"decision": "reject", "reason": "changed mind"}, key=env.admin_key)
    assert assert_error(r, 409, "CONFLICT")["status"] == "APPROVED"


async def test_bad_review_is_400_and_unknown_request_is_404(env: Env) -> None:
    """A decision other than approve/reject is 400; an unknown request id is 404."""
    request_id = (await env.post(REQUESTS, {"senderId": "MAYBE"})).json()["id"]
    path = f"{REQUESTS}/{request_id}/review"
    r = await env.post(path, {"decision": "perhaps"}, key=env.admin_key)
    assert "decision" in assert_error(r, 400, "VALIDATION_ERROR")
    r = await env.post(f"{REQUESTS}/nope/review", {"decision": "approve"}, key=env.admin_key)
    assert_error(r, 404, "NOT_FOUND")


async def test_review_with_an_unknown_field_is_400_and_reviews_nothing(env: Env) -> None:
    """A review body with a field the route does not know is refused naming it; still PENDING."""
    request_id = (await env.post(REQUESTS, {"senderId": "TYPO"})).json()["id"]
    review = {"decision": "approve", "reasn": "typo"}
    r = await env.post(f"{REQUESTS}/{request_id}/review", review, key=env.admin_key)
    assert assert_error(r, 400, "VALIDATION_ERROR") == {"reasn": "unknown field"}
    [pending] = (await env.get(REQUESTS, status="PENDING")).json()["data"]
    assert pending["id"] == request_id


async def test_listing_every_organizations_requests_needs_platform_admin(env: Env) -> None:
    """?all=true needs platform:admin; the admin sees other organizations' requests and filters."""
    r = await env.get(REQUESTS, all="true")
    assert assert_error(r, 403, "INSUFFICIENT_SCOPE") == {"requiredScope": "platform:admin"}
    await env.post(REQUESTS, {"senderId": "WAITING"})
    everything = (await env.get(REQUESTS, key=env.admin_key, all="true")).json()["data"]
    assert {x["senderId"] for x in everything} == {SENDER, BRAND, "WAITING"}
    assert {x["organizationId"] for x in everything} == {env.ct.org.id}
    pending = (await env.get(REQUESTS, key=env.admin_key, all="true", status="PENDING")).json()
    assert [x["senderId"] for x in pending["data"]] == ["WAITING"]
    assert "all" in assert_error(await env.get(REQUESTS, all="yes"), 400, "VALIDATION_ERROR")
    r = await env.get(REQUESTS, status="DONE")
    assert "status" in assert_error(r, 400, "VALIDATION_ERROR")


# --------------------------------------------------------------------------- opt-outs


async def test_opt_out_add_list_and_remove(env: Env) -> None:
    """POST adds (201, then 200 when listed), GET lists newest first, DELETE removes."""
    r = await env.post(OPT_OUTS, {"phone": "+234 803 123 4567"})
    assert r.status_code == 201
    assert r.json() == {"phone": PHONE, "optedOut": True, "created": True}
    r = await env.post(OPT_OUTS, {"phone": PHONE})
    assert r.status_code == 200
    assert r.json() == {"phone": PHONE, "optedOut": True, "created": False}
    env.clock.advance(1)
    await env.post(OPT_OUTS, {"phone": OTHER_PHONE})

    listing = (await env.get(OPT_OUTS)).json()
    assert (listing["page"], listing["pageSize"], listing["total"]) == (1, 50, 2)
    assert listing["data"] == [
        {"phone": OTHER_PHONE, "source": "api", "createdAt": "2026-01-01T12:00:01.000Z"},
        {"phone": PHONE, "source": "api", "createdAt": "2026-01-01T12:00:00.000Z"},
    ]
    assert len((await env.get(OPT_OUTS, pageSize=1)).json()["data"]) == 1

    r = await env.client.delete(f"{OPT_OUTS}/%2B2348031234567", headers=env.auth())
    assert r.status_code == 200
    assert r.json() == {"phone": PHONE, "optedOut": False}
    r = await env.client.delete(f"{OPT_OUTS}/%2B2348031234567", headers=env.auth())
    assert assert_error(r, 404, "NOT_FOUND") == {"phone": PHONE}
    assert (await env.send()).status_code == 202


@pytest.mark.parametrize("written", ["+14155552671", "14155552671", " 14155552671"])
async def test_opt_out_delete_accepts_a_literal_plus_and_digits(env: Env, written: str) -> None:
    """DELETE takes the number as %2B..., a literal + or digits only (a + turned into a space)."""
    await env.post(OPT_OUTS, {"phone": OTHER_PHONE})
    r = await env.client.delete(f"{OPT_OUTS}/{written}", headers=env.auth())
    assert r.status_code == 200, r.text
    assert r.json() == {"phone": OTHER_PHONE, "optedOut": False}


async def test_bad_opt_out_number_is_400(env: Env) -> None:
    """A number that is not E.164 is refused naming ``phone``, on add and on remove."""
    r = await env.post(OPT_OUTS, {"phone": "0803"})
    assert "phone" in assert_error(r, 400, "VALIDATION_ERROR")
    r = await env.post(OPT_OUTS, {"phone": PHONE, "extra": 1})
    assert "extra" in assert_error(r, 400, "VALIDATION_ERROR")
    r = await env.client.delete(f"{OPT_OUTS}/abc", headers=env.auth())
    assert "phone" in assert_error(r, 400, "VALIDATION_ERROR")
    assert (await env.get(OPT_OUTS)).json()["total"] == 0


# --------------------------------------------------------------------------- inbound MO


async def test_inbound_stop_opts_out_and_the_next_send_is_403(env: Env) -> None:
    """STOP (any case, padded) opts the number out and answers the confirmation as sms_message."""
    mo = {"sms_from": PHONE, "sms_to": "33445", "sms_message": "  stop "}
    r = await env.webhook(INBOUND, json=mo)
    assert r.status_code == 200
    body = r.json()
    assert body == {
        "id": body["id"],
        "keyword": "STOP",
        "optedOut": True,
        "sms_message": DEFAULT_SMS_STOP_TEXT,
    }
    assert_error(await env.send(), 403, "SMS_RECIPIENT_OPTED_OUT")
    [entry] = (await env.get(OPT_OUTS)).json()["data"]
    assert (entry["phone"], entry["source"]) == (PHONE, "inbound_keyword")


async def test_inbound_form_encoded_stop_then_multipart_start(env: Env) -> None:
    """Form fields work as JSON does: STOP (urlencoded) opts out, START (multipart) opts back in."""
    form = {"sms_from": PHONE.removeprefix("+"), "sms_to": "33445", "sms_message": "UNSUBSCRIBE"}
    r = await env.webhook(INBOUND, data=form)
    assert r.status_code == 200, r.text
    assert (r.json()["keyword"], r.json()["optedOut"]) == ("STOP", True)
    assert_error(await env.send(), 403, "SMS_RECIPIENT_OPTED_OUT")

    parts = {"sms_from": (None, PHONE), "sms_to": (None, "33445"), "sms_message": (None, "Start")}
    r = await env.webhook(INBOUND, files=parts)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    assert (r.json()["keyword"], r.json()["optedOut"]) == ("START", False)
    assert (await env.send()).status_code == 202


async def test_inbound_sms_from_as_a_json_number(env: Env) -> None:
    """``sms_from`` may be a JSON integer (the contract's ``integer / string``)."""
    mo = {"sms_from": 2348031234567, "sms_to": "33445", "sms_message": "hello"}
    r = await env.webhook(INBOUND, json=mo)
    assert r.status_code == 200, r.text
    [stored] = (await env.get("/v1/public/sms/inbound")).json()["data"]
    assert stored["from"] == PHONE


async def test_stop_please_is_stored_as_inbound_not_a_keyword(env: Env) -> None:
    """'STOP PLEASE' is not a keyword: stored as inbound, nothing opted out, no reply."""
    mo = {"sms_from": PHONE, "sms_to": "33445", "sms_message": "STOP PLEASE"}
    r = await env.webhook(INBOUND, json=mo)
    assert r.json() == {"id": r.json()["id"], "keyword": None}
    assert (await env.send()).status_code == 202

    listing = (await env.get("/v1/public/sms/inbound")).json()
    assert (listing["page"], listing["pageSize"], listing["total"]) == (1, 50, 1)
    assert listing["data"] == [
        {
            "id": r.json()["id"],
            "from": PHONE,
            "to": "33445",
            "body": "STOP PLEASE",
            "keyword": None,
            "createdAt": "2026-01-01T12:00:00.000Z",
        }
    ]


async def test_help_answers_the_help_text(env: Env) -> None:
    """HELP (and INFO) answer the configured help text and change nothing."""
    for word in ("HELP", "info"):
        mo = {"sms_from": PHONE, "sms_to": "33445", "sms_message": word}
        r = await env.webhook(INBOUND, json=mo)
        assert r.json() == {
            "id": r.json()["id"],
            "keyword": "HELP",
            "sms_message": DEFAULT_SMS_HELP_TEXT,
        }
    assert (await env.get(OPT_OUTS)).json()["total"] == 0
    assert (await env.get("/v1/public/sms/inbound", pageSize=1)).json()["total"] == 2


@pytest.mark.parametrize("token", [None, "", "smst_wrong"])
async def test_inbound_with_a_bad_token_is_401_and_stores_nothing(
    env: Env, token: str | None
) -> None:
    """A missing or unknown token is INVALID_WEBHOOK_TOKEN; nothing is stored or opted out."""
    await env.token()
    mo = {"sms_from": PHONE, "sms_to": "33445", "sms_message": "STOP"}
    params = {} if token is None else {"token": token}
    for path in (INBOUND, INBOUND_OPT_OUT):
        r = await env.client.post(path, params=params, json=mo)
        assert_error(r, 401, "INVALID_WEBHOOK_TOKEN")
    r = await env.client.post(INBOUND, params=params, content=b"not even json")
    assert_error(r, 401, "INVALID_WEBHOOK_TOKEN")
    assert (await env.get("/v1/public/sms/inbound")).json()["total"] == 0
    assert (await env.get(OPT_OUTS)).json()["total"] == 0


async def test_rotated_token_replaces_the_old_one(env: Env) -> None:
    """After rotation the old token is refused and the new one accepted."""
    old = await env.token()
    new = await env.ct.sms_service.token(env.ct.org.id, rotate=True)
    mo = {"sms_from": PHONE, "sms_to": "33445", "sms_message": "hi"}
    assert_error(await env.webhook(INBOUND, token=old, json=mo), 401, "INVALID_WEBHOOK_TOKEN")
    assert (await env.webhook(INBOUND, token=new, json=mo)).status_code == 200


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"json": {"sms_from": PHONE, "sms_to": "33445"}}, "VALIDATION_ERROR"),
        ({"json": {"sms_from": "0803", "sms_to": "1", "sms_message": "x"}}, "VALIDATION_ERROR"),
        ({"json": {"sms_from": PHONE, "sms_to": "1", "sms_message": 5}}, "VALIDATION_ERROR"),
        ({"data": {"sms_from": PHONE, "sms_to": "33445"}}, "VALIDATION_ERROR"),
        ({"json": ["STOP"]}, "INVALID_JSON"),
        (
            {"content": b"{not json", "headers": {"Content-Type": "application/json"}},
            "INVALID_JSON",
        ),
        ({"content": b"STOP", "headers": {"Content-Type": "text/plain"}}, "INVALID_JSON"),
        (
            {
                "content": b"--x\r\n\r\nSTOP\r\n--x--\r\n",
                "headers": {"Content-Type": "multipart/form-data; boundary=x"},
            },
            "VALIDATION_ERROR",
        ),
        (
            {
                "content": b"sms_from=%FF&sms_to=1&sms_message=x",
                "headers": {"Content-Type": "application/x-www-form-urlencoded"},
            },
            "VALIDATION_ERROR",
        ),
        ({"files": {"sms_message": ("stop.txt", b"STOP")}}, "VALIDATION_ERROR"),
        ({"data": {f"f{i}": "x" for i in range(51)}}, "VALIDATION_ERROR"),
        ({"files": {f"f{i}": (None, "x") for i in range(51)}}, "VALIDATION_ERROR"),
        (
            {"content": b"sms_from=1", "headers": {"Content-Type": "multipart/form-data"}},
            "VALIDATION_ERROR",
        ),
        (
            {
                "content": (
                    b"--x\r\nContent-Disposition: form-data; name=sms_message\r\n"
                    b"Content-Type: text/plain; charset=no-such-charset\r\n\r\nSTOP\r\n--x--\r\n"
                ),
                "headers": {"Content-Type": "multipart/form-data; boundary=x"},
            },
            "VALIDATION_ERROR",
        ),
    ],
)
async def test_malformed_inbound_is_400_and_stores_nothing(
    env: Env, kwargs: dict[str, Any], code: str
) -> None:
    """Missing fields, a bad sender, a non-object, bad JSON, forms that do not parse: 400."""
    assert_error(await env.webhook(INBOUND, **kwargs), 400, code)
    assert (await env.get("/v1/public/sms/inbound")).json()["total"] == 0


async def test_inbound_opt_out_records_only_after_a_prior_send(env: Env) -> None:
    """The inbound-opt-out route changes the list only for numbers the organization sent to."""
    mo = {"sms_from": PHONE, "sms_to": "33445", "sms_message": "STOP"}
    r = await env.webhook(INBOUND_OPT_OUT, json=mo)
    assert r.status_code == 200
    assert r.json() == {"keyword": "STOP", "recorded": False}
    assert (await env.get(OPT_OUTS)).json()["total"] == 0

    assert (await env.send()).status_code == 202
    r = await env.webhook(INBOUND_OPT_OUT, data=mo)
    assert r.json() == {
        "keyword": "STOP",
        "recorded": True,
        "optedOut": True,
        "sms_message": DEFAULT_SMS_STOP_TEXT,
    }
    assert_error(await env.send(), 403, "SMS_RECIPIENT_OPTED_OUT")
    [entry] = (await env.get(OPT_OUTS)).json()["data"]
    assert entry["source"] == "inbound_opt_out"

    r = await env.webhook(INBOUND_OPT_OUT, json={**mo, "sms_message": "hello"})
    assert r.json() == {"keyword": None, "recorded": False}
    assert (await env.get("/v1/public/sms/inbound")).json()["total"] == 0


# --------------------------------------------------------------------------- delivery receipts


async def test_dlr_moves_sent_to_delivered_with_a_timeline_event(env: Env) -> None:
    """A DELIVERED receipt answers 202 applied and adds sms_delivered to the timeline."""
    message_id = await env.sent_message()
    env.clock.advance(5)
    r = await env.webhook(DLR, json={"message_id": message_id, "status": "DELIVERED"})
    assert r.status_code == 202
    assert r.json() == {"messageId": message_id, "status": "DELIVERED", "applied": True}
    assert await env.status(message_id) == "DELIVERED"
    events = (await env.get(f"/v1/public/sms/{message_id}/timeline")).json()["events"]
    assert events[-1]["type"] == "sms_delivered"
    assert events[-1]["status"] == "DELIVERED"
    assert events[-1]["createdAt"] == "2026-01-01T12:00:05.000Z"
    assert events[-1]["details"] == {"source": "dlr", "providerStatus": "DELIVERED"}


async def test_duplicate_and_late_receipts_never_move_a_message_back(env: Env) -> None:
    """After DELIVERED, a second DELIVERED, a late SENT or a FAILED change nothing."""
    message_id = await env.sent_message()
    await env.webhook(DLR, json={"message_id": message_id, "status": "DELIVRD"})
    for status in ("DELIVERED", "SENT", "FAILED", "UNDELIV"):
        r = await env.webhook(DLR, json={"message_id": message_id, "status": status})
        assert r.status_code == 202
        assert r.json() == {"messageId": message_id, "status": "DELIVERED", "applied": False}
    assert await env.status(message_id) == "DELIVERED"
    assert (await env.event_types(message_id)).count("sms_delivered") == 1


async def test_failed_dlr_records_the_error(env: Env) -> None:
    """A FAILED receipt moves SENT -> FAILED with sms_failed and the carrier's error."""
    message_id = await env.sent_message()
    dlr = {"message_id": message_id, "status": "FAILED", "error_code": 34, "error": "absent"}
    r = await env.webhook(DLR, json=dlr)
    assert r.json() == {"messageId": message_id, "status": "FAILED", "applied": True}
    events = (await env.get(f"/v1/public/sms/{message_id}/timeline")).json()["events"]
    assert events[-1]["type"] == "sms_failed"
    assert events[-1]["details"]["errorCode"] == "34"
    assert events[-1]["details"]["error"] == "absent"


async def test_dlr_by_the_provider_message_id(tmp_path: Path, anyio_backend: str) -> None:
    """A receipt may name the provider's id; the outbox provider's is ``outbox-<id>``."""
    outbox = f"outbox://{tmp_path / 'outbox'}"
    async with open_env(tmp_path, sms_provider=outbox) as env:
        message_id = await env.sent_message()
        message = (await env.get(f"/v1/public/sms/{message_id}")).json()
        assert message["providerMessageId"] == f"outbox-{message_id}"
        r = await env.webhook(
            DLR, json={"message_id": f"outbox-{message_id}", "status": "DELIVERED"}
        )
        assert r.json() == {"messageId": message_id, "status": "DELIVERED", "applied": True}


async def test_dlr_with_a_bad_token_is_401_and_changes_nothing(env: Env) -> None:
    """A missing or wrong token is refused before the body is read; the message stays SENT."""
    message_id = await env.sent_message()
    body = {"message_id": message_id, "status": "DELIVERED"}
    assert_error(await env.webhook(DLR, token="smst_nope", json=body), 401, "INVALID_WEBHOOK_TOKEN")
    assert_error(await env.client.post(DLR, json=body), 401, "INVALID_WEBHOOK_TOKEN")
    assert await env.status(message_id) == "SENT"


async def test_dlr_for_an_unknown_or_foreign_message_is_404(env: Env) -> None:
    """An id no SMS of the token's organization has is 404, another organization's included."""
    message_id = await env.sent_message()
    r = await env.webhook(DLR, json={"message_id": "no-such-id", "status": "DELIVERED"})
    assert assert_error(r, 404, "NOT_FOUND") == {"message_id": "no-such-id"}
    other = await env.ct.admin.create_org("other")
    other_token = await env.ct.sms_service.token(other.id)
    for foreign in (message_id, "mock-sms-1"):
        body = {"message_id": foreign, "status": "DELIVERED"}
        assert_error(await env.webhook(DLR, token=other_token, json=body), 404, "NOT_FOUND")
    assert await env.status(message_id) == "SENT"


@pytest.mark.parametrize(
    ("kwargs", "code", "field"),
    [
        ({"json": {"status": "DELIVERED"}}, "VALIDATION_ERROR", "message_id"),
        ({"json": {"message_id": "MID"}}, "VALIDATION_ERROR", "status"),
        ({"json": {"message_id": "MID", "status": "HAPPY"}}, "VALIDATION_ERROR", "status"),
        ({"json": {"message_id": 5, "status": "DELIVERED"}}, "VALIDATION_ERROR", "message_id"),
        (
            {"json": {"message_id": "MID", "status": "FAILED", "error": 1}},
            "VALIDATION_ERROR",
            "error",
        ),
        ({"json": ["DELIVERED"]}, "INVALID_JSON", None),
        ({"content": b"message_id=MID&status=DELIVERED"}, "INVALID_JSON", None),
    ],
)
async def test_malformed_dlr_is_400_and_changes_nothing(
    env: Env, kwargs: dict[str, Any], code: str, field: str | None
) -> None:
    """Missing or bad fields and non-JSON bodies are refused; the message stays SENT."""
    message_id = await env.sent_message()
    if "json" in kwargs and isinstance(kwargs["json"], dict):
        kwargs = {"json": {k: message_id if v == "MID" else v for k, v in kwargs["json"].items()}}
    details = assert_error(await env.webhook(DLR, **kwargs), 400, code)
    if field is not None:
        assert field in details
    assert await env.status(message_id) == "SENT"


async def test_dlr_with_extra_aggregator_fields_is_applied(env: Env) -> None:
    """Aggregators add fields (timestamps, network codes); they are ignored, not refused."""
    message_id = await env.sent_message()
    r = await env.webhook(
        DLR,
        json={"message_id": message_id, "status": "DELIVRD", "done_date": "2601011200", "mcc": 234},
    )
    assert r.json() == {"messageId": message_id, "status": "DELIVERED", "applied": True}


async def test_dlr_before_the_provider_accepted_changes_nothing(env: Env) -> None:
    """A receipt for a message still QUEUED is not applied (only SENT moves on)."""
    message_id = (await env.send()).json()["id"]
    r = await env.webhook(DLR, json={"message_id": message_id, "status": "DELIVERED"})
    assert r.json() == {"messageId": message_id, "status": "QUEUED", "applied": False}


# --------------------------------------------------------------------------- provider callback

TWILIO_SID = "AC" + "0123456789abcdef" * 2
TWILIO_TOKEN = "f00dfacecafebeef0123456789abcdef"
SM_SID = "SM" + "7" * 32


def twilio_signature(url: str, form: dict[str, str], token: str = TWILIO_TOKEN) -> str:
    """X-Twilio-Signature, computed here from Twilio's documentation (webhooks-security)."""
    data = url + "".join(k + form[k] for k in sorted(form))
    digest = hmac.new(token.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def twilio_created(request: httpx.Request) -> httpx.Response:
    """Twilio's 201 answer to "create a message" (trimmed)."""
    return httpx.Response(201, json={"sid": SM_SID, "status": "queued"})


@asynccontextmanager
async def twilio_env(tmp_path: Path, public_url: str | None) -> AsyncIterator[Env]:
    clock = ManualClock()
    provider = TwilioProvider.from_url(
        f"twilio://{TWILIO_SID}:{TWILIO_TOKEN}@?from=%2B15005550006",
        clock=clock,
        transport=httpx.MockTransport(twilio_created),
    )
    settings = Settings(embedded_worker=False, public_url=public_url)
    async with open_env(tmp_path, settings=settings, sms_provider=provider) as env:
        yield env


def status_callback(status: str, sid: str = SM_SID) -> dict[str, str]:
    return {
        "AccountSid": TWILIO_SID,
        "MessageSid": sid,
        "MessageStatus": status,
        "To": PHONE,
        "From": SENDER,
    }


async def post_callback(env: Env, form: dict[str, str], signature: str | None) -> httpx.Response:
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if signature is not None:
        headers["X-Twilio-Signature"] = signature
    return await env.client.post(PROVIDER, content=urlencode(form).encode(), headers=headers)


async def test_twilio_callback_signed_over_the_public_url(
    tmp_path: Path, anyio_backend: str
) -> None:
    """A bad or missing signature is 401 and changes nothing; a good one delivers the message."""
    public = "https://ct.example.com"
    async with twilio_env(tmp_path, public) as env:
        message_id = await env.sent_message()
        message = (await env.get(f"/v1/public/sms/{message_id}")).json()
        assert message["providerMessageId"] == SM_SID
        form = status_callback("delivered")
        url = public + PROVIDER

        r = await post_callback(env, form, twilio_signature(url, form, token="wrong" * 6))
        assert_error(r, 401, "INVALID_WEBHOOK_SIGNATURE")
        r = await post_callback(env, form, None)
        assert_error(r, 401, "INVALID_WEBHOOK_SIGNATURE")
        # signed over the internal URL the server saw: not what Twilio signs
        r = await post_callback(env, form, twilio_signature("http://test" + PROVIDER, form))
        assert_error(r, 401, "INVALID_WEBHOOK_SIGNATURE")
        assert await env.status(message_id) == "SENT"

        r = await post_callback(env, form, twilio_signature(url, form))
        assert r.status_code == 200, r.text
        assert r.json() == {"received": 1, "applied": 1}
        assert await env.status(message_id) == "DELIVERED"
        events = (await env.get(f"/v1/public/sms/{message_id}/timeline")).json()["events"]
        assert events[-1]["type"] == "sms_delivered"
        assert events[-1]["details"] == {"source": "twilio", "providerStatus": "delivered"}

        r = await post_callback(env, form, twilio_signature(url, form))
        assert r.json() == {"received": 1, "applied": 0}


async def test_twilio_callback_signed_over_the_request_url(
    tmp_path: Path, anyio_backend: str
) -> None:
    """Without a public URL the signature covers the request's URL, query included."""
    async with twilio_env(tmp_path, None) as env:
        message_id = await env.sent_message()
        form = status_callback("undelivered")
        url = "http://test" + PROVIDER + "?attempt=1"
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": twilio_signature(url, form),
        }
        r = await env.client.post(
            PROVIDER, params={"attempt": "1"}, content=urlencode(form).encode(), headers=headers
        )
        assert r.json() == {"received": 1, "applied": 1}
        assert await env.status(message_id) == "FAILED"


async def test_twilio_callback_for_unknown_or_pending_messages(
    tmp_path: Path, anyio_backend: str
) -> None:
    """A signed callback for an unknown sid is 404; a pending status applies nothing; junk 400."""
    async with twilio_env(tmp_path, "https://ct.example.com/") as env:
        url = "https://ct.example.com" + PROVIDER
        form = status_callback("delivered", sid="SM" + "9" * 32)
        r = await post_callback(env, form, twilio_signature(url, form))
        assert_error(r, 404, "NOT_FOUND")
        form = status_callback("sending")
        r = await post_callback(env, form, twilio_signature(url, form))
        assert r.json() == {"received": 0, "applied": 0}
        form = {"MessageSid": SM_SID}
        r = await post_callback(env, form, twilio_signature(url, form))
        assert "MessageStatus" in assert_error(r, 400, "VALIDATION_ERROR")


async def test_provider_without_signed_callbacks_is_404(env: Env) -> None:
    """A provider with no status callbacks (the mock) answers 404 NOT_FOUND."""
    r = await env.client.post(PROVIDER, content=b"MessageSid=x")
    assert_error(r, 404, "NOT_FOUND")


async def test_provider_callback_without_an_sms_provider_is_404(env: Env) -> None:
    """With no SMS provider at all, nobody sends status callbacks: 404 NOT_FOUND."""
    provider, env.ct.sms_provider = env.ct.sms_provider, None
    try:
        r = await env.client.post(PROVIDER, content=b"MessageSid=x")
    finally:
        env.ct.sms_provider = provider
    assert_error(r, 404, "NOT_FOUND")
