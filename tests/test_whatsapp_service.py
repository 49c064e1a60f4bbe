"""The WhatsApp Cloud channel in process: the real Graph provider against a fake Graph API.

The fake answers as Meta documents (``messages[0].id`` on success, the
``{"error": {...}}`` object on failure) and records every request, so the
tests assert the exact JSON and bearer token that left.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import pg
from commtunnel import Commtunnel, Settings
from commtunnel.domain.errors import (
    IdempotencyKeyReusedError,
    InsufficientScopeError,
    MessageNotRetryableError,
    SecretKeyMissingError,
    ValidationError,
    WebhookAuthError,
    WebhookSignatureError,
    WhatsAppDisabledError,
    WhatsAppLineInUseError,
    WhatsAppLineNotConfiguredError,
    WhatsAppProviderError,
    WhatsAppSendRejectedError,
)
from commtunnel.domain.keys import ALL_SCOPES, Principal, Scope
from commtunnel.domain.messages import Status
from commtunnel.providers.whatsapp import WhatsAppCloudProvider
from commtunnel.services.whatsapp import WhatsAppSendRequest, parse_line_map
from commtunnel.testing import ManualClock, MockProvider, MockSmsProvider
from http_fakes import FakeGraph

pytestmark = pytest.mark.anyio

PLATFORM_TOKEN = "EAAplatform-token-0123456789"
TENANT_TOKEN = "EAAtenant-token-9876543210"
APP_SECRET = "app-secret-for-tests"
TO = "+14155552671"


@pytest.fixture
def graph() -> FakeGraph:
    return FakeGraph()


def wa_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "embedded_worker": False,
        "whatsapp_enabled": True,
        "whatsapp_phone_number_id": "106540352242922",
        "whatsapp_access_token": PLATFORM_TOKEN,
        "whatsapp_app_secret": APP_SECRET,
        "whatsapp_verify_token": "verify-me",
        "secret_key": "a-long-random-secret-key-for-tests",
    }
    values.update(overrides)
    return Settings(**values)


def open_wa(db: Path, clock: ManualClock, graph: FakeGraph, **settings: Any) -> Commtunnel:
    """A facade whose WhatsApp provider talks to ``graph``, with :func:`wa_settings`."""
    provider = WhatsAppCloudProvider(
        graph_base_url="https://graph.test",
        api_version="v21.0",
        clock=clock,
        transport=httpx.MockTransport(graph.handle),
    )
    return Commtunnel.open(
        db=db,
        email_provider=MockProvider(),
        sms_provider=MockSmsProvider(),
        whatsapp_provider=provider,
        clock=clock,
        settings=wa_settings(**settings),
    )


@pytest.fixture
async def wa(tmp_path: Path, clock: ManualClock, graph: FakeGraph) -> AsyncIterator[Commtunnel]:
    async with open_wa(pg.fresh_db(tmp_path / "wa.db"), clock, graph) as ct:
        yield ct


def admin(ct: Commtunnel, org_id: str | None = None) -> Principal:
    return Principal(org_id=org_id or ct.org.id, scopes=ALL_SCOPES)


async def send(ct: Commtunnel, **fields: Any) -> Any:
    return await ct.whatsapp_service.send(admin(ct), WhatsAppSendRequest(**fields))


def signed(payload: dict[str, Any], secret: str = APP_SECRET) -> tuple[bytes, str]:
    body = json.dumps(payload).encode()
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return body, f"sha256={digest}"


def status_webhook(wamid: str, status: str, *, errors: list[dict[str, Any]] | None = None) -> Any:
    entry: dict[str, Any] = {
        "id": wamid,
        "status": status,
        "timestamp": "1767268800",
        "recipient_id": TO.lstrip("+"),
    }
    if errors:
        entry["errors"] = errors
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "102290129340398",
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {
                                "display_phone_number": "15550783881",
                                "phone_number_id": "106540352242922",
                            },
                            "statuses": [entry],
                        },
                    }
                ],
            }
        ],
    }


def inbound_webhook(
    wamid: str, text: str, *, phone_number_id: str, contacts: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """A messages webhook carrying one inbound text from TO to the line ``phone_number_id``."""
    value: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550001111", "phone_number_id": phone_number_id},
        "messages": [
            {
                "from": TO.lstrip("+"),
                "id": wamid,
                "timestamp": "1767268800",
                "type": "text",
                "text": {"body": text},
            }
        ],
    }
    if contacts is not None:
        value["contacts"] = contacts
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": "WABA", "changes": [{"field": "messages", "value": value}]}],
    }


async def deliver_webhook(ct: Commtunnel, payload: dict[str, Any]) -> Any:
    body, signature = signed(payload)
    return await ct.whatsapp_service.receive_webhook(body, signature, APP_SECRET)


# --------------------------------------------------------------------------- sending


async def test_text_send_is_handed_off_synchronously(wa: Commtunnel, graph: FakeGraph) -> None:
    """A text send reaches Graph before the call returns: SENT, with the exact request."""
    result = await send(wa, to="14155552671", body="Your order shipped")
    message = result.message
    assert (message.status, message.provider_message_id) == (Status.SENT, "wamid.HBgL0001")
    request = graph.requests[0]
    assert request.url == "https://graph.test/v21.0/106540352242922/messages"
    assert request.headers["authorization"] == f"Bearer {PLATFORM_TOKEN}"
    assert graph.sent_json() == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "14155552671",
        "type": "text",
        "text": {"preview_url": False, "body": "Your order shipped"},
    }
    events = [e.type for e in await wa.whatsapp_service.timeline(admin(wa), message.id)]
    assert events == ["whatsapp_queued", "whatsapp_processing", "whatsapp_sent"]
    status = await wa.whatsapp_service.get(admin(wa), message.id)
    assert [(a.provider, a.outcome) for a in status.attempts] == [("whatsapp_cloud", "accepted")]
    assert await wa.backend.pending_job_count() == 0  # nothing left for the worker


async def test_template_send(wa: Commtunnel, graph: FakeGraph) -> None:
    """A template send carries its name, language and body parameters to Graph."""
    template = {"name": "order_update", "language": "en_US", "variables": ["Ada", "#42"]}
    result = await send(wa, to=TO, template=template)
    assert result.message.whatsapp.kind == "template"
    sent = graph.sent_json()
    assert sent["type"] == "template"
    assert sent["template"]["name"] == "order_update"
    assert sent["template"]["language"] == {"code": "en_US"}
    assert sent["template"]["components"] == [
        {
            "type": "body",
            "parameters": [{"type": "text", "text": "Ada"}, {"type": "text", "text": "#42"}],
        }
    ]


async def test_bad_input_is_refused_and_nothing_is_sent(wa: Commtunnel, graph: FakeGraph) -> None:
    """Each bad field is named; nothing is stored or sent."""
    cases: list[tuple[dict[str, Any], str]] = [
        ({"to": "12", "body": "hi"}, "to"),
        ({"to": TO, "body": "x" * 4097}, "body"),
        ({"to": TO}, "body"),
        ({"to": TO, "body": "hi", "template": {"name": "t"}}, "template"),
        ({"to": TO, "template": {"name": "Bad Name!"}}, "template.name"),
        ({"to": TO, "template": {"name": "t", "variables": [1]}}, "template.variables"),
    ]
    for fields, field in cases:
        with pytest.raises(ValidationError) as caught:
            await send(wa, **fields)
        assert field in caught.value.details, fields
    assert graph.requests == []
    assert wa.backend.conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 0


async def test_transient_graph_failure_is_recorded_and_retried(
    wa: Commtunnel, graph: FakeGraph, clock: ManualClock
) -> None:
    """A Graph 5xx is a WhatsAppProviderError; RETRYING, then sent by the worker."""
    graph.error(131000, http_status=500, message="Something went wrong")
    with pytest.raises(WhatsAppProviderError) as caught:
        await send(wa, to=TO, body="hi")
    details = caught.value.details
    assert caught.value.http_status == 502
    assert details["errorCategory"] == "PROVIDER_OUTAGE"  # Graph 131000 over HTTP 500
    message_id = details["messageId"]
    status = await wa.whatsapp_service.get(admin(wa), message_id)
    assert status.message.status == Status.RETRYING
    assert len(status.attempts) == 1
    clock.advance(3600)
    assert await wa.run_worker_until_idle() == 1  # the worker retries it
    status = await wa.whatsapp_service.get(admin(wa), message_id)
    assert status.message.status == Status.SENT
    assert len(graph.requests) == 2


async def test_permanent_graph_failure_is_failed_and_retry_works_once(
    wa: Commtunnel, graph: FakeGraph
) -> None:
    """A permanent Graph refusal is FAILED; a retry sends it once, a second retry is refused."""
    graph.error(131047, message="Re-engagement message")
    with pytest.raises(WhatsAppSendRejectedError) as caught:
        await send(wa, to=TO, body="hi")
    assert caught.value.http_status == 422
    assert caught.value.details["errorCategory"] == "TEMPLATE_REQUIRED"
    message_id = caught.value.details["messageId"]
    assert (await wa.whatsapp_service.get(admin(wa), message_id)).message.status == Status.FAILED
    retried = await wa.whatsapp_service.retry(admin(wa), message_id)
    assert retried.message.status == Status.SENT
    with pytest.raises(MessageNotRetryableError):
        await wa.whatsapp_service.retry(admin(wa), message_id)
    numbers = [a.number for a in (await wa.whatsapp_service.get(admin(wa), message_id)).attempts]
    assert numbers == [1, 2]


async def test_idempotent_send(wa: Commtunnel, graph: FakeGraph) -> None:
    """The same key and body replay the first message; another body is refused; one Graph call."""
    first = await send(wa, to=TO, body="hi", idempotency_key="wa-1")
    again = await send(wa, to=TO, body="hi", idempotency_key="wa-1")
    assert (again.message.id, again.duplicate) == (first.message.id, True)
    assert again.message.provider_message_id == first.message.provider_message_id
    with pytest.raises(IdempotencyKeyReusedError):
        await send(wa, to=TO, body="other", idempotency_key="wa-1")
    assert len(graph.requests) == 1


async def test_expired_token_pauses_the_line_without_a_retry_storm(
    wa: Commtunnel, graph: FakeGraph, clock: ManualClock
) -> None:
    """An expired token pauses the line (one alert) until a new token resumes it."""
    graph.error(190, http_status=401, message="Error validating access token")
    with pytest.raises(WhatsAppProviderError) as caught:
        await send(wa, to=TO, body="one")
    assert caught.value.details["errorCategory"] == "AUTH"
    line = await wa.whatsapp_service.get_line(admin(wa))
    assert line.state == "PAUSED"
    alerts = wa.backend.conn.execute(
        "SELECT type FROM events WHERE message_id IS NULL AND type = 'whatsapp_line_paused'"
    ).fetchall()
    assert len(alerts) == 1
    # further sends and retries do not reach Graph while the line is paused
    with pytest.raises(WhatsAppProviderError) as paused:
        await send(wa, to=TO, body="two")
    assert paused.value.details["errorCategory"] == "LINE_PAUSED"
    clock.advance(3600)
    await wa.run_worker_until_idle()
    assert len(graph.requests) == 1
    # a new token for the organization's line resumes sending
    await wa.whatsapp_service.update_line(admin(wa), {"whatsappAccessToken": TENANT_TOKEN})
    clock.advance(3600)
    await wa.run_worker_until_idle()
    assert len(graph.requests) == 3
    assert {r.headers["authorization"] for r in graph.requests[1:]} == {f"Bearer {TENANT_TOKEN}"}


async def test_policy_block_flags_the_line_and_opt_out_is_recorded(
    wa: Commtunnel, graph: FakeGraph
) -> None:
    """A policy block flags the line; error 131050 records an opt-out."""
    graph.error(368, message="Temporarily blocked for policies violations")
    with pytest.raises(WhatsAppSendRejectedError) as caught:
        await send(wa, to=TO, body="hi")
    assert caught.value.details["errorCategory"] == "POLICY_BLOCKED"
    assert (await wa.whatsapp_service.get_line(admin(wa))).state == "FLAGGED"
    graph.error(131050, message="User stopped marketing messages")
    with pytest.raises(WhatsAppSendRejectedError) as opted:
        await send(wa, to="+442071838750", body="promo")
    assert opted.value.details["errorCategory"] == "RECIPIENT_OPTED_OUT"
    assert await wa.whatsapp_store.is_opted_out(wa.org.id, "+442071838750")


async def test_channel_disabled_and_no_line_are_clear_refusals(
    tmp_path: Path, clock: ManualClock
) -> None:
    """A disabled channel or no line answers 409 and stores nothing."""
    for settings, error in (
        (wa_settings(whatsapp_enabled=False), WhatsAppDisabledError),
        (wa_settings(whatsapp_access_token=None), WhatsAppLineNotConfiguredError),
    ):
        async with Commtunnel.open(
            db=tmp_path / f"{error.__name__}.db",
            email_provider=MockProvider(),
            sms_provider=MockSmsProvider(),
            clock=clock,
            settings=settings,
        ) as ct:
            with pytest.raises(error) as caught:
                await send(ct, to=TO, body="hi")
            assert caught.value.http_status == 409
            assert ct.backend.conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 0


async def test_scopes(wa: Commtunnel) -> None:
    """Sending needs send:whatsapp and the line settings account:manage."""
    reader = Principal(org_id=wa.org.id, scopes=frozenset({Scope.READ_WHATSAPP}))
    with pytest.raises(InsufficientScopeError):
        await wa.whatsapp_service.send(reader, WhatsAppSendRequest(to=TO, body="x"))
    with pytest.raises(InsufficientScopeError) as caught:
        await wa.whatsapp_service.get_line(reader)
    assert caught.value.details == {"requiredScope": "account:manage"}


# --------------------------------------------------------------------------- tenant lines


async def test_tenant_line_override_and_conflicts(
    wa: Commtunnel, graph: FakeGraph, tmp_path: Path
) -> None:
    """An organization's own line and encrypted token are used; nobody else may claim it."""
    info = await wa.whatsapp_service.get_line(admin(wa))
    assert (info.uses_platform_default, info.platform_line_configured) == (True, True)
    info = await wa.whatsapp_service.update_line(
        admin(wa),
        {"whatsappPhoneNumberId": "200000000000001", "whatsappAccessToken": TENANT_TOKEN},
    )
    assert (info.whatsapp_phone_number_id, info.uses_platform_default) == (
        "200000000000001",
        False,
    )
    assert info.has_own_access_token is True
    stored = wa.backend.conn.execute("SELECT access_token_enc FROM whatsapp_lines").fetchone()[0]
    assert TENANT_TOKEN not in stored  # encrypted at rest
    await send(wa, to=TO, body="from the tenant line")
    assert graph.requests[-1].url.path == "/v21.0/200000000000001/messages"
    assert graph.requests[-1].headers["authorization"] == f"Bearer {TENANT_TOKEN}"

    other = await wa.admin.ensure_org("other")
    with pytest.raises(WhatsAppLineInUseError) as caught:
        await wa.whatsapp_service.update_line(
            admin(wa, other.id), {"whatsappPhoneNumberId": "200000000000001"}
        )
    assert caught.value.code == "WHATSAPP_PHONE_NUMBER_ID_IN_USE"
    # the other organization still uses the platform default line
    await wa.whatsapp_service.send(admin(wa, other.id), WhatsAppSendRequest(to=TO, body="x"))
    assert graph.requests[-1].headers["authorization"] == f"Bearer {PLATFORM_TOKEN}"

    cleared = await wa.whatsapp_service.update_line(
        admin(wa), {"whatsappPhoneNumberId": None, "whatsappAccessToken": None}
    )
    assert (cleared.uses_platform_default, cleared.has_own_access_token) == (True, False)
    for bad in ({}, {"whatsappPhoneNumberId": "abc"}, {"colour": "red"}):
        with pytest.raises(ValidationError):
            await wa.whatsapp_service.update_line(admin(wa), bad)


async def test_storing_a_token_needs_a_secret_key(tmp_path: Path, clock: ManualClock) -> None:
    """Without COMMTUNNEL_SECRET_KEY a token is refused and nothing is stored."""
    async with Commtunnel.open(
        db=pg.fresh_db(tmp_path / "nokey.db"),
        email_provider=MockProvider(),
        sms_provider=MockSmsProvider(),
        clock=clock,
        settings=wa_settings(secret_key=None),
    ) as ct:
        with pytest.raises(SecretKeyMissingError):
            await ct.whatsapp_service.update_line(admin(ct), {"whatsappAccessToken": TENANT_TOKEN})
        assert ct.backend.conn.execute("SELECT COUNT(*) FROM whatsapp_lines").fetchone()[0] == 0


# --------------------------------------------------------------------------- Meta webhooks


async def test_status_webhooks_move_forward_once_and_never_back(wa: Commtunnel) -> None:
    """Status webhooks move a message forward once; late or repeated ones change nothing."""
    message = (await send(wa, to=TO, body="hi")).message
    wamid = message.provider_message_id
    read = await deliver_webhook(wa, status_webhook(wamid, "read"))
    assert read.statuses_applied == 1
    for late in ("delivered", "read", "sent"):  # out of order and twice: nothing moves
        result = await deliver_webhook(wa, status_webhook(wamid, late))
        assert result.statuses_applied == 0
    status = await wa.whatsapp_service.get(admin(wa), message.id)
    assert status.message.status == Status.READ
    events = [e.type for e in await wa.whatsapp_service.timeline(admin(wa), message.id)]
    assert events == ["whatsapp_queued", "whatsapp_processing", "whatsapp_sent", "whatsapp_read"]


async def test_status_event_keeps_meta_time_in_the_wire_format(wa: Commtunnel) -> None:
    """The event of a status webhook says when Meta saw it: ``details.at``, UTC ms ``Z``."""
    message = (await send(wa, to=TO, body="hi")).message
    await deliver_webhook(wa, status_webhook(message.provider_message_id, "delivered"))
    event = (await wa.whatsapp_service.timeline(admin(wa), message.id))[-1]
    assert event.type == "whatsapp_delivered"
    assert (event.details["source"], event.details["at"]) == ("meta", "2026-01-01T12:00:00.000Z")


async def test_failed_status_webhook(wa: Commtunnel) -> None:
    """A failed status with error 131050 fails the message and records an opt-out."""
    message = (await send(wa, to=TO, body="hi")).message
    errors = [{"code": 131050, "title": "User stopped marketing messages"}]
    result = await deliver_webhook(
        wa, status_webhook(message.provider_message_id, "failed", errors=errors)
    )
    assert result.statuses_applied == 1
    status = await wa.whatsapp_service.get(admin(wa), message.id)
    assert status.message.status == Status.FAILED
    assert await wa.whatsapp_store.is_opted_out(wa.org.id, TO)


async def test_webhook_signature_is_required(wa: Commtunnel) -> None:
    """Tampered, wrongly signed, unsigned or unverifiable webhooks change nothing."""
    message = (await send(wa, to=TO, body="hi")).message
    payload = status_webhook(message.provider_message_id, "delivered")
    body, good = signed(payload)
    tampered = body.replace(b"delivered", b"read")
    _, wrong_secret = signed(payload, secret="not-the-secret")
    for candidate_body, header in ((tampered, good), (body, wrong_secret), (body, None)):
        with pytest.raises(WebhookSignatureError):
            await wa.whatsapp_service.receive_webhook(candidate_body, header, APP_SECRET)
    with pytest.raises(WebhookSignatureError):  # no app secret configured: refuse all
        await wa.whatsapp_service.receive_webhook(body, good, None)
    status = await wa.whatsapp_service.get(admin(wa), message.id)
    assert status.message.status == Status.SENT


async def test_inbound_messages_go_to_the_line_owner(wa: Commtunnel) -> None:
    """An inbound message is stored for the organization owning the receiving line."""
    await wa.whatsapp_service.update_line(admin(wa), {"whatsappPhoneNumberId": "300000000000003"})
    payload = inbound_webhook(
        "wamid.IN1",
        "Where is my order?",
        phone_number_id="300000000000003",
        contacts=[{"profile": {"name": "Ada"}, "wa_id": "14155552671"}],
    )
    result = await deliver_webhook(wa, payload)
    assert result.inbound_stored == 1
    rows = wa.backend.conn.execute(
        "SELECT org_id, channel, sender, body FROM inbound_messages"
    ).fetchall()
    assert rows == [(wa.org.id, "whatsapp", TO, "Where is my order?")]


async def test_handshake(wa: Commtunnel) -> None:
    """The handshake echoes the challenge for the right token only."""
    params = {
        "hub.mode": "subscribe",
        "hub.verify_token": "verify-me",
        "hub.challenge": "1158201444",
    }
    assert wa.whatsapp_service.handshake(params, "verify-me") == "1158201444"
    with pytest.raises(WebhookAuthError):
        wa.whatsapp_service.handshake({**params, "hub.verify_token": "nope"}, "verify-me")


def test_line_map_forms() -> None:
    """WHATSAPP_LINE_MAP reads as pairs or JSON; other shapes are refused."""
    assert parse_line_map("111=acme, 222=beta") == {"111": "acme", "222": "beta"}
    assert parse_line_map('{"111": "org-1"}') == {"111": "org-1"}
    assert parse_line_map(None) == {}
    with pytest.raises(ValueError, match="not phone_number_id=org"):
        parse_line_map("111")
    with pytest.raises(ValueError, match="map strings to strings"):
        parse_line_map('{"111": 42}')


async def test_the_platform_line_and_mapped_lines_cannot_be_claimed(
    tmp_path: Path, clock: ManualClock, graph: FakeGraph
) -> None:
    """The platform line and another organization's mapped line cannot be claimed."""
    async with open_wa(
        pg.fresh_db(tmp_path / "claim.db"), clock, graph, whatsapp_line_map="400000000000004=beta"
    ) as ct:
        beta = await ct.admin.ensure_org("beta")
        for pnid in ("106540352242922", "400000000000004"):
            with pytest.raises(WhatsAppLineInUseError):
                await ct.whatsapp_service.update_line(admin(ct), {"whatsappPhoneNumberId": pnid})
        mine = await ct.whatsapp_service.update_line(
            admin(ct, beta.id), {"whatsappPhoneNumberId": "400000000000004"}
        )
        assert mine.whatsapp_phone_number_id == "400000000000004"


async def test_line_state_shows_active_after_a_new_token(wa: Commtunnel, graph: FakeGraph) -> None:
    """A paused line shows ACTIVE once its token is replaced."""
    graph.error(190, http_status=401, message="Error validating access token")
    with pytest.raises(WhatsAppProviderError):
        await send(wa, to=TO, body="one")
    assert (await wa.whatsapp_service.get_line(admin(wa))).state == "PAUSED"
    await wa.whatsapp_service.update_line(admin(wa), {"whatsappAccessToken": TENANT_TOKEN})
    assert (await wa.whatsapp_service.get_line(admin(wa))).state == "ACTIVE"


def test_short_secret_key_is_a_configuration_error() -> None:
    """A COMMTUNNEL_SECRET_KEY under 16 characters is a configuration error."""
    with pytest.raises(ValueError, match="COMMTUNNEL_SECRET_KEY"):
        Settings.from_env({"COMMTUNNEL_SECRET_KEY": "short"})


async def test_a_paused_line_holds_messages_without_spending_their_retries(
    tmp_path: Path, clock: ManualClock, graph: FakeGraph
) -> None:
    """While the token is expired, messages wait (no Graph calls) instead of ending FAILED."""
    async with open_wa(pg.fresh_db(tmp_path / "hold.db"), clock, graph, max_attempts=2) as ct:
        graph.error(190, http_status=401, message="Error validating access token")
        with pytest.raises(WhatsAppProviderError) as caught:
            await send(ct, to=TO, body="one")
        message_id = caught.value.details["messageId"]
        for _ in range(4):
            clock.advance(3600)
            await ct.run_worker_until_idle()
        status = await ct.whatsapp_service.get(admin(ct), message_id)
        assert status.message.status == Status.RETRYING
        assert len(graph.requests) == 1
        assert [a.error_category for a in status.attempts[1:]] == ["LINE_PAUSED"] * 4
        await ct.whatsapp_service.update_line(admin(ct), {"whatsappAccessToken": TENANT_TOKEN})
        clock.advance(3600)
        await ct.run_worker_until_idle()
        assert (await ct.whatsapp_service.get(admin(ct), message_id)).message.status == Status.SENT


async def test_an_undecryptable_token_fails_attempts_instead_of_jamming_the_worker(
    wa: Commtunnel, graph: FakeGraph, clock: ManualClock
) -> None:
    """A token the key cannot decrypt is a recorded transient attempt, and a 409 for new sends."""
    from commtunnel.crypto import SecretBox

    await wa.whatsapp_service.update_line(admin(wa), {"whatsappAccessToken": TENANT_TOKEN})
    graph.error(131000, http_status=500)
    with pytest.raises(WhatsAppProviderError) as caught:
        await send(wa, to=TO, body="hi")
    message_id = caught.value.details["messageId"]
    wa.whatsapp_service._box = SecretBox("a-different-secret-key-after-rotation")
    clock.advance(3600)
    assert await wa.run_worker_until_idle() == 1  # recorded, not raised
    status = await wa.whatsapp_service.get(admin(wa), message_id)
    assert status.message.status == Status.RETRYING
    assert "decrypt" in (status.attempts[-1].error_message or "")
    with pytest.raises(SecretKeyMissingError):  # a clear 409 for a new send, not a 500
        await send(wa, to=TO, body="again")


async def test_a_redelivered_inbound_webhook_is_stored_once(wa: Commtunnel) -> None:
    """Meta's redelivery of an inbound message stores it once."""
    await wa.whatsapp_service.update_line(admin(wa), {"whatsappPhoneNumberId": "300000000000003"})
    payload = inbound_webhook("wamid.SAME", "hello", phone_number_id="300000000000003")
    first = await deliver_webhook(wa, payload)
    again = await deliver_webhook(wa, payload)
    assert (first.inbound_stored, again.inbound_stored) == (1, 0)
    assert wa.backend.conn.execute("SELECT COUNT(*) FROM inbound_messages").fetchone()[0] == 1


async def test_template_fields_are_checked_before_anything_is_stored(
    wa: Commtunnel, graph: FakeGraph
) -> None:
    """A template's language, unknown fields and variables are named; nothing is stored."""
    with pytest.raises(ValidationError) as caught:
        await send(
            wa,
            to=TO,
            template={"name": "t", "language": "English", "colour": "red", "variables": 1},
        )
    assert set(caught.value.details) == {
        "template.language",
        "template.colour",
        "template.variables",
    }
    assert graph.requests == []
    assert wa.backend.conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 0


async def test_access_token_shape_is_checked(wa: Commtunnel) -> None:
    """A token outside 20-1024 characters, or with surrounding spaces, is refused unstored."""
    for bad in ("short", " " + TENANT_TOKEN, "x" * 1025, 42):
        with pytest.raises(ValidationError) as caught:
            await wa.whatsapp_service.update_line(admin(wa), {"whatsappAccessToken": bad})
        assert set(caught.value.details) == {"whatsappAccessToken"}
    assert (await wa.whatsapp_service.get_line(admin(wa))).has_own_access_token is False


async def test_signed_body_that_is_not_json_is_refused(wa: Commtunnel) -> None:
    """A correctly signed body that does not parse as JSON is a validation error on ``body``."""
    body = b"{not json"
    signature = "sha256=" + hmac.new(APP_SECRET.encode(), body, hashlib.sha256).hexdigest()
    with pytest.raises(ValidationError) as caught:
        await wa.whatsapp_service.receive_webhook(body, signature, APP_SECRET)
    assert caught.value.details == {"body": "is not JSON"}


async def test_reads_need_read_whatsapp_and_retry_needs_send(wa: Commtunnel) -> None:
    """get and timeline name read:whatsapp; retry names send:whatsapp."""
    message = (await send(wa, to=TO, body="hi")).message
    sender = Principal(org_id=wa.org.id, scopes=frozenset({Scope.SEND_WHATSAPP}))
    for read in (wa.whatsapp_service.get, wa.whatsapp_service.timeline):
        with pytest.raises(InsufficientScopeError) as caught:
            await read(sender, message.id)
        assert caught.value.details == {"requiredScope": "read:whatsapp"}
    reader = Principal(org_id=wa.org.id, scopes=frozenset({Scope.READ_WHATSAPP}))
    with pytest.raises(InsufficientScopeError) as caught:
        await wa.whatsapp_service.retry(reader, message.id)
    assert caught.value.details == {"requiredScope": "send:whatsapp"}
