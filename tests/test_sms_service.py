"""The SMS service end to end in process: real SQLite file, manual clock, a recording provider."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pg
from commtunnel import Commtunnel, Settings
from commtunnel.domain.delivery import ErrorCategory, ProviderResult
from commtunnel.domain.errors import (
    ConflictError,
    IdempotencyKeyReusedError,
    InsufficientScopeError,
    MessageNotRetryableError,
    NotFoundError,
    OtpCooldownError,
    SmsBrandNotApprovedError,
    SmsRecipientOptedOutError,
    SmsSenderIdNotApprovedError,
    ValidationError,
    WebhookAuthError,
)
from commtunnel.domain.keys import ALL_SCOPES, Principal, Scope
from commtunnel.domain.messages import Status
from commtunnel.ports import DeliveryReceipt, OutgoingSms
from commtunnel.services.sms import OtpSendRequest, SmsSendRequest
from commtunnel.testing import ManualClock, MockProvider, MockSmsProvider

pytestmark = pytest.mark.anyio

TO = "+14155552671"
OTHER = "+442071838750"


async def approve(ct: Commtunnel, value: str, flow: str = "STANDARD") -> None:
    """Request and approve a sender ID (or OTP brand) for the facade's organization."""
    org = Principal(org_id=ct.org.id, scopes=ALL_SCOPES)
    request = await ct.sms_service.request_sender_id(org, sender_id=value, flow=flow)
    await ct.sms_service.review_sender_id(org, request.id, decision="approve")


def count(ct: Commtunnel, sql: str, *params: object) -> int:
    return int(ct.backend.conn.execute(sql, params).fetchone()[0])


def open_sms(
    db: Path, clock: ManualClock, provider: MockSmsProvider | None = None, **settings: Any
) -> Commtunnel:
    """A facade on its own database, with ``settings`` and no embedded worker."""
    return Commtunnel.open(
        db=db,
        email_provider=MockProvider(),
        sms_provider=provider or MockSmsProvider(),
        clock=clock,
        settings=Settings(embedded_worker=False, **settings),
    )


# --------------------------------------------------------------------------- sending


async def test_send_is_queued_then_delivered_with_segments(
    ct: Commtunnel, sms_provider: MockSmsProvider
) -> None:
    """A send is QUEUED with its encoding and segments, then SENT by the worker with one attempt."""
    await approve(ct, "ACME")
    result = await ct.sms.send(to="+1 (415) 555-2671", sender_id="ACME", body="x" * 161)
    message = result.message
    assert result.duplicate is False
    assert message.status == Status.QUEUED
    assert message.sms is not None
    assert (message.sms.to, message.sms.encoding, message.sms.segments) == (TO, "GSM7", 2)
    assert await ct.run_worker_until_idle() == 1
    assert len(sms_provider.sent) == 1
    sent: OutgoingSms = sms_provider.sent[0]
    assert (sent.content.sender_id, sent.content.to, sent.content.body) == ("ACME", TO, "x" * 161)
    status = await ct.sms.get(message.id)
    assert status.message.status == Status.SENT
    assert status.message.provider_message_id == "mock-sms-1"
    assert [a.provider for a in status.attempts] == ["mock-sms"]
    events = [e.type for e in await ct.sms.timeline(message.id)]
    assert events == ["sms_queued", "sms_processing", "sms_sent"]


async def test_unicode_and_flash_send_types(ct: Commtunnel) -> None:
    """sendType 2 forces UCS-2, non-GSM text picks it alone, sendType 1 is kept as flash."""
    await approve(ct, "ACME")
    forced = await ct.sms.send(to=TO, sender_id="ACME", body="hello", send_type=2)
    assert forced.message.sms is not None
    assert (forced.message.sms.encoding, forced.message.sms.send_type) == ("UCS2", 2)
    accent = await ct.sms.send(to=TO, sender_id="ACME", body="ça va")
    assert accent.message.sms is not None and accent.message.sms.encoding == "UCS2"
    flash = await ct.sms.send(to=TO, sender_id="ACME", body="now", send_type=1)
    assert flash.message.sms is not None and flash.message.sms.send_type == 1


async def test_every_bad_field_is_reported_and_nothing_is_stored(ct: Commtunnel) -> None:
    """Every bad send field is named in one error, and nothing is stored."""
    request = SmsSendRequest(to="12345", sender_id="WAY_TOO_LONG_ID", body="", send_type=7)
    with pytest.raises(ValidationError) as caught:
        await ct.sms_service.send(Principal(org_id=ct.org.id, scopes=ALL_SCOPES), request)
    assert set(caught.value.details) == {"to", "senderId", "body", "sendType"}
    assert count(ct, "SELECT COUNT(*) FROM messages") == 0


async def test_body_over_1600_characters_is_refused(ct: Commtunnel) -> None:
    """1601 characters are refused; 1600 are sent in 11 GSM-7 parts."""
    await approve(ct, "ACME")
    with pytest.raises(ValidationError) as caught:
        await ct.sms.send(to=TO, sender_id="ACME", body="a" * 1601)
    assert "body" in caught.value.details
    ok = await ct.sms.send(to=TO, sender_id="ACME", body="a" * 1600)
    assert ok.message.sms is not None and ok.message.sms.segments == 11  # ceil(1600 / 153)


async def test_unapproved_sender_id_is_refused(ct: Commtunnel) -> None:
    """A sender ID the organization has not had approved is refused, naming it."""
    with pytest.raises(SmsSenderIdNotApprovedError) as caught:
        await ct.sms.send(to=TO, sender_id="ACME", body="hi")
    assert caught.value.details == {"senderId": "ACME"}
    assert count(ct, "SELECT COUNT(*) FROM messages") == 0


async def test_pending_and_rejected_requests_do_not_approve(ct: Commtunnel) -> None:
    """Only an approved request lets a sender ID send; one live request per value."""
    org = Principal(org_id=ct.org.id, scopes=ALL_SCOPES)
    pending = await ct.sms_service.request_sender_id(org, sender_id="ACME", reason="brand")
    with pytest.raises(SmsSenderIdNotApprovedError):
        await ct.sms.send(to=TO, sender_id="ACME", body="hi")
    with pytest.raises(ConflictError):  # one live request per value and flow
        await ct.sms_service.request_sender_id(org, sender_id="acme")
    rejected = await ct.sms_service.review_sender_id(
        org, pending.id, decision="reject", reason="trademark"
    )
    assert (rejected.status, rejected.review_reason) == ("REJECTED", "trademark")
    with pytest.raises(SmsSenderIdNotApprovedError):
        await ct.sms.send(to=TO, sender_id="ACME", body="hi")
    with pytest.raises(ConflictError):  # reviewed once only
        await ct.sms_service.review_sender_id(org, pending.id, decision="approve")
    again = await ct.sms_service.request_sender_id(org, sender_id="ACME")  # may ask again
    await ct.sms_service.review_sender_id(org, again.id, decision="approve")
    result = await ct.sms.send(to=TO, sender_id="acme", body="hi")  # case-insensitive match
    assert result.message.status == Status.QUEUED


async def test_review_needs_platform_admin(ct: Commtunnel) -> None:
    """Reviewing needs platform:admin; an unknown request is NotFound."""
    tenant = Principal(org_id=ct.org.id, scopes=frozenset({Scope.SENDER_IDS_REQUEST}))
    request = await ct.sms_service.request_sender_id(tenant, sender_id="ACME")
    with pytest.raises(InsufficientScopeError) as caught:
        await ct.sms_service.review_sender_id(tenant, request.id, decision="approve")
    assert caught.value.details == {"requiredScope": "platform:admin"}
    with pytest.raises(NotFoundError):
        await ct.sms_service.review_sender_id(
            Principal(org_id=ct.org.id, scopes=ALL_SCOPES), "nope", decision="approve"
        )


async def test_approval_is_per_organization(ct: Commtunnel) -> None:
    """A sender ID approved for one organization is refused for another."""
    await approve(ct, "ACME")
    other = await ct.admin.ensure_org("other")
    with pytest.raises(SmsSenderIdNotApprovedError):
        await ct.sms_service.send(
            Principal(org_id=other.id, scopes=ALL_SCOPES),
            SmsSendRequest(to=TO, sender_id="ACME", body="hi"),
        )


async def test_platform_default_sender_id(
    tmp_path: Path, clock: ManualClock, sms_provider: MockSmsProvider
) -> None:
    """The platform default sender ID needs no approval; others still do."""
    async with open_sms(
        pg.fresh_db(tmp_path / "d.db"), clock, sms_provider, sms_default_sender_id="INFO"
    ) as ct:
        result = await ct.sms.send(to=TO, sender_id="INFO", body="hi")
        assert result.message.sms is not None and result.message.sms.sender_id == "INFO"
        with pytest.raises(SmsSenderIdNotApprovedError):
            await ct.sms.send(to=TO, sender_id="OTHER", body="hi")


async def test_idempotent_send(ct: Commtunnel, sms_provider: MockSmsProvider) -> None:
    """The same key and body replay the first SMS; another body is refused; one is sent."""
    await approve(ct, "ACME")
    first = await ct.sms.send(to=TO, sender_id="ACME", body="hi", idempotency_key="k1")
    again = await ct.sms.send(to=TO, sender_id="ACME", body="hi", idempotency_key="k1")
    assert (again.message.id, again.duplicate) == (first.message.id, True)
    with pytest.raises(IdempotencyKeyReusedError):
        await ct.sms.send(to=TO, sender_id="ACME", body="other", idempotency_key="k1")
    await ct.run_worker_until_idle()
    assert len(sms_provider.sent) == 1


async def test_sandbox_key_never_reaches_the_provider(
    ct: Commtunnel, sms_provider: MockSmsProvider
) -> None:
    """A ct_test_ key's SMS walks the timeline to SENT through the sandbox only."""
    await approve(ct, "ACME")
    test_key = Principal(org_id=ct.org.id, scopes=ALL_SCOPES, sandbox=True)
    result = await ct.sms_service.send(test_key, SmsSendRequest(to=TO, sender_id="ACME", body="hi"))
    await ct.run_worker_until_idle()
    assert sms_provider.sent == []
    status = await ct.sms.get(result.message.id)
    assert status.message.status == Status.SENT
    assert [a.provider for a in status.attempts] == ["sandbox"]


async def test_scopes(ct: Commtunnel) -> None:
    """Sending, reading and opt-out management each need their scope."""
    reader = Principal(org_id=ct.org.id, scopes=frozenset({Scope.READ_SMS}))
    with pytest.raises(InsufficientScopeError) as caught:
        await ct.sms_service.send(reader, SmsSendRequest(to=TO, sender_id="A", body="x"))
    assert caught.value.details == {"requiredScope": "send:sms"}
    sender = Principal(org_id=ct.org.id, scopes=frozenset({Scope.SEND_SMS}))
    with pytest.raises(InsufficientScopeError):
        await ct.sms_service.get(sender, "x")
    with pytest.raises(InsufficientScopeError):
        await ct.sms_service.add_opt_out(sender, TO)


# --------------------------------------------------------------------------- provider results


async def test_outage_leaves_message_retrying_then_failed(
    tmp_path: Path, clock: ManualClock
) -> None:
    """Transient outages leave the SMS RETRYING, then FAILED once attempts are used up."""
    provider = MockSmsProvider(
        lambda sms: ProviderResult.transient(ErrorCategory.PROVIDER_OUTAGE, "connection refused")
    )
    async with open_sms(
        pg.fresh_db(tmp_path / "o.db"), clock, provider, max_attempts=2, retry_base_delay=10
    ) as ct:
        await approve(ct, "ACME")
        message = (await ct.sms.send(to=TO, sender_id="ACME", body="hi")).message
        await ct.run_worker_until_idle()
        status = await ct.sms.get(message.id)
        assert status.message.status == Status.RETRYING
        assert [(a.outcome, a.error_category) for a in status.attempts] == [
            ("transient", "PROVIDER_OUTAGE")
        ]
        clock.advance(3600)
        await ct.run_worker_until_idle()
        status = await ct.sms.get(message.id)
        assert status.message.status == Status.FAILED
        assert len(status.attempts) == 2

        # An explicit retry starts a fresh budget of attempts; numbering continues.
        retried = await ct.sms.retry(message.id)
        assert retried.status == Status.QUEUED
        with pytest.raises(MessageNotRetryableError) as caught:
            await ct.sms.retry(message.id)  # works once: the message is no longer FAILED
        assert caught.value.details["status"] == "QUEUED"
        await ct.run_worker_until_idle()
        status = await ct.sms.get(message.id)
        assert status.message.status == Status.RETRYING  # not FAILED at once: budget reset
        clock.advance(3600)
        await ct.run_worker_until_idle()
        status = await ct.sms.get(message.id)
        assert status.message.status == Status.FAILED
        assert [a.number for a in status.attempts] == [1, 2, 3, 4]
        events = [e.type for e in await ct.sms.timeline(message.id)]
        assert events.count("sms_queued") == 2
        assert events[-1] == "sms_failed"


async def test_retry_of_a_failed_message_delivers_it(ct: Commtunnel, clock: ManualClock) -> None:
    """A FAILED SMS retried is sent again; a second retry is refused."""
    outcomes = iter([ProviderResult.permanent(ErrorCategory.REJECTED, "content refused"), None])

    def handler(sms: OutgoingSms) -> ProviderResult:
        result = next(outcomes)
        return result or ProviderResult.accepted("SM2")

    ct.sms_provider = MockSmsProvider(handler)
    ct._dispatcher = None  # rebuild with the new provider
    await approve(ct, "ACME")
    message = (await ct.sms.send(to=TO, sender_id="ACME", body="hi")).message
    await ct.run_worker_until_idle()
    assert (await ct.sms.get(message.id)).message.status == Status.FAILED
    await ct.sms.retry(message.id)
    await ct.run_worker_until_idle()
    status = await ct.sms.get(message.id)
    assert (status.message.status, status.message.provider_message_id) == (Status.SENT, "SM2")
    with pytest.raises(MessageNotRetryableError):
        await ct.sms.retry(message.id)


async def test_retry_of_unknown_or_other_channel_is_not_found(ct: Commtunnel) -> None:
    """Retrying an email's id or an unknown id as an SMS is NotFound."""
    email = await ct.email.send(from_="a@example.com", to="b@example.org", subject="s", text="t")
    with pytest.raises(NotFoundError):
        await ct.sms.retry(email.message.id)
    with pytest.raises(NotFoundError):
        await ct.sms.retry("no-such-id")


# --------------------------------------------------------------------------- OTP


async def test_otp_send_cooldown_and_purposes(ct: Commtunnel, clock: ManualClock) -> None:
    """An OTP is built from brand, code and purpose; the cooldown is per number and purpose."""
    await approve(ct, "Acme Bank", flow="OTP")
    first = await ct.sms.send_otp(to=TO, brand_name="Acme Bank", otp_code="012345")
    assert first.cooldown_seconds == 60
    assert first.message.sms is not None
    assert first.message.sms.flow == "OTP"
    assert first.message.sms.purpose == "PHONE_VERIFICATION"
    assert "012345" in first.message.sms.body
    assert first.message.sms.sender_id == "Acme Bank"
    clock.advance(20)
    with pytest.raises(OtpCooldownError) as caught:
        await ct.sms.send_otp(to=TO, brand_name="Acme Bank", otp_code="999999")
    assert caught.value.retry_after == 40
    assert caught.value.code == "OTP_COOLDOWN"
    # another purpose, another number: separate cooldowns
    await ct.sms.send_otp(to=TO, brand_name="Acme Bank", otp_code="1111", purpose="LOGIN")
    await ct.sms.send_otp(to=OTHER, brand_name="Acme Bank", otp_code="2222")
    clock.advance(40)
    again = await ct.sms.send_otp(to=TO, brand_name="Acme Bank", otp_code="3333")
    assert again.message.id != first.message.id
    assert count(ct, "SELECT COUNT(*) FROM messages") == 4


async def test_otp_refusals(ct: Commtunnel) -> None:
    """Unapproved brands (a STANDARD approval is not one), bad codes and purposes store nothing."""
    with pytest.raises(SmsBrandNotApprovedError):
        await ct.sms.send_otp(to=TO, brand_name="Acme", otp_code="1234")
    await approve(ct, "ACME")  # a STANDARD sender ID is not an OTP brand
    with pytest.raises(SmsBrandNotApprovedError):
        await ct.sms.send_otp(to=TO, brand_name="ACME", otp_code="1234")
    await approve(ct, "ACME", flow="OTP")
    for code in ("123", "123456789", "12a4"):
        with pytest.raises(ValidationError) as caught:
            await ct.sms.send_otp(to=TO, brand_name="ACME", otp_code=code)
        assert "otpCode" in caught.value.details
    with pytest.raises(ValidationError) as caught:
        await ct.sms.send_otp(to=TO, brand_name="ACME", otp_code="1234", purpose="SIGNUP")
    assert "purpose" in caught.value.details
    assert count(ct, "SELECT COUNT(*) FROM messages") == 0
    assert count(ct, "SELECT COUNT(*) FROM otp_cooldowns") == 0


async def test_otp_replay_is_a_duplicate_not_a_cooldown(ct: Commtunnel) -> None:
    """Replaying an OTP's key answers the original, not a cooldown refusal."""
    await approve(ct, "Acme", flow="OTP")
    first = await ct.sms.send_otp(
        to=TO, brand_name="Acme", otp_code="1234", idempotency_key="otp-1"
    )
    replay = await ct.sms.send_otp(
        to=TO, brand_name="Acme", otp_code="1234", idempotency_key="otp-1"
    )
    assert (replay.message.id, replay.duplicate) == (first.message.id, True)


async def test_otp_refused_by_cooldown_stores_nothing_and_frees_its_key(
    ct: Commtunnel, clock: ManualClock
) -> None:
    """A cooldown refusal stores no idempotency key, so the key works once it passes."""
    await approve(ct, "Acme", flow="OTP")
    await ct.sms.send_otp(to=TO, brand_name="Acme", otp_code="1234")
    with pytest.raises(OtpCooldownError):
        await ct.sms.send_otp(to=TO, brand_name="Acme", otp_code="5678", idempotency_key="k")
    assert count(ct, "SELECT COUNT(*) FROM idempotency_keys") == 0
    clock.advance(60)
    later = await ct.sms.send_otp(to=TO, brand_name="Acme", otp_code="5678", idempotency_key="k")
    assert later.duplicate is False


async def test_concurrent_otps_yield_one_message(ct: Commtunnel) -> None:
    """Concurrent OTPs to one number and purpose: one is queued, the rest wait out the cooldown."""
    await approve(ct, "Acme", flow="OTP")
    outcomes = await asyncio.gather(
        *(ct.sms.send_otp(to=TO, brand_name="Acme", otp_code="1234") for _ in range(12)),
        return_exceptions=True,
    )
    accepted = [o for o in outcomes if not isinstance(o, BaseException)]
    refused = [o for o in outcomes if isinstance(o, OtpCooldownError)]
    assert (len(accepted), len(refused)) == (1, 11)
    assert count(ct, "SELECT COUNT(*) FROM messages") == 1


# --------------------------------------------------------------------------- opt-outs


async def test_opted_out_number_is_refused_for_standard_and_otp(ct: Commtunnel) -> None:
    """An opted-out number gets nothing, unless the organization lets OTP through."""
    await approve(ct, "ACME")
    await approve(ct, "ACME", flow="OTP")
    number, created = await ct.sms_service.add_opt_out(
        Principal(org_id=ct.org.id, scopes=ALL_SCOPES), "+1 415 555 2671"
    )
    assert (number, created) == (TO, True)
    with pytest.raises(SmsRecipientOptedOutError) as caught:
        await ct.sms.send(to=TO, sender_id="ACME", body="hi")
    assert caught.value.code == "SMS_RECIPIENT_OPTED_OUT"
    with pytest.raises(SmsRecipientOptedOutError):
        await ct.sms.send_otp(to=TO, brand_name="ACME", otp_code="1234")
    assert count(ct, "SELECT COUNT(*) FROM messages") == 0
    # the organization may let OTP through (a code the user asked for)
    assert await ct.sms_store.set_otp_ignores_opt_out(ct.org.id, True)
    otp = await ct.sms.send_otp(to=TO, brand_name="ACME", otp_code="1234")
    assert otp.message.status == Status.QUEUED
    with pytest.raises(SmsRecipientOptedOutError):
        await ct.sms.send(to=TO, sender_id="ACME", body="still refused")


async def test_opt_out_changes_emit_events(ct: Commtunnel) -> None:
    """Adding and removing a number record one sms_opt_out event each; repeats record none."""
    admin = Principal(org_id=ct.org.id, scopes=ALL_SCOPES)
    assert (await ct.sms_service.add_opt_out(admin, TO))[1] is True
    assert (await ct.sms_service.add_opt_out(admin, TO))[1] is False  # no second event
    page = await ct.sms_service.list_opt_outs(admin)
    assert [(o.phone, o.source) for o in page.items] == [(TO, "cli")]
    assert await ct.sms_service.remove_opt_out(admin, TO) == TO
    with pytest.raises(NotFoundError):
        await ct.sms_service.remove_opt_out(admin, TO)
    rows = ct.backend.conn.execute(
        "SELECT message_id, type, details FROM events WHERE type = 'sms_opt_out' "
        "ORDER BY created_at, id"
    ).fetchall()
    assert [(r[0], r[1]) for r in rows] == [(None, "sms_opt_out")] * 2
    assert ['"optedOut":true' in rows[0][2], '"optedOut":false' in rows[1][2]] == [True, True]


# --------------------------------------------------------------------------- inbound MO


async def test_inbound_keywords(ct: Commtunnel) -> None:
    """STOP opts out, START opts in, HELP answers the help text; every MO is stored."""
    await approve(ct, "ACME")
    token = await ct.sms_service.token(ct.org.id)
    assert await ct.sms_service.token(ct.org.id) == token  # stable until rotated
    stop = await ct.sms_service.receive_inbound(
        token, {"sms_from": "14155552671", "sms_to": "12345", "sms_message": "  stop \n"}
    )
    assert (stop.keyword, stop.opted_out) == ("STOP", True)
    assert stop.reply is not None and "START" in stop.reply
    with pytest.raises(SmsRecipientOptedOutError):
        await ct.sms.send(to=TO, sender_id="ACME", body="hi")
    chat = await ct.sms_service.receive_inbound(
        token, {"sms_from": TO, "sms_to": "12345", "sms_message": "STOP PLEASE"}
    )
    assert (chat.keyword, chat.reply, chat.opted_out) == (None, None, None)
    start = await ct.sms_service.receive_inbound(
        token, {"sms_from": 14155552671, "sms_to": "12345", "sms_message": "Unstop"}
    )
    assert (start.keyword, start.opted_out) == ("START", False)
    await ct.sms.send(to=TO, sender_id="ACME", body="welcome back")
    helped = await ct.sms_service.receive_inbound(
        token, {"sms_from": TO, "sms_to": "12345", "sms_message": "info"}
    )
    assert helped.keyword == "HELP"
    assert helped.reply == ct.settings.sms_help_text
    inbound = await ct.sms_service.list_inbound(Principal(org_id=ct.org.id, scopes=ALL_SCOPES))
    assert inbound.total == 4
    assert [m.body for m in inbound.items][-2:] == ["STOP PLEASE", "  stop \n"]


async def test_inbound_refusals_store_nothing(ct: Commtunnel) -> None:
    """Bad tokens and malformed MO bodies store nothing; a rotated token replaces the old one."""
    token = await ct.sms_service.token(ct.org.id)
    for bad in (None, "", "smst_wrong"):
        with pytest.raises(WebhookAuthError):
            await ct.sms_service.receive_inbound(
                bad, {"sms_from": TO, "sms_to": "1", "sms_message": "STOP"}
            )
    with pytest.raises(ValidationError) as caught:
        await ct.sms_service.receive_inbound(token, {"sms_from": TO})
    assert set(caught.value.details) == {"sms_to", "sms_message"}
    with pytest.raises(ValidationError):
        await ct.sms_service.receive_inbound(
            token, {"sms_from": "hello", "sms_to": "1", "sms_message": "STOP"}
        )
    assert count(ct, "SELECT COUNT(*) FROM inbound_messages") == 0
    assert count(ct, "SELECT COUNT(*) FROM sms_opt_outs") == 0
    rotated = await ct.sms_service.token(ct.org.id, rotate=True)
    assert rotated != token
    with pytest.raises(WebhookAuthError):
        await ct.sms_service.org_for_token(token)
    assert await ct.sms_service.org_for_token(rotated) == ct.org.id


async def test_inbound_opt_out_needs_an_earlier_send(ct: Commtunnel) -> None:
    """The inbound-opt-out route changes the list only for numbers sent to before."""
    await approve(ct, "ACME")
    token = await ct.sms_service.token(ct.org.id)
    stop = {"sms_from": TO, "sms_to": "12345", "sms_message": "STOP"}
    never = await ct.sms_service.inbound_opt_out(token, stop)
    assert never.recorded is False
    assert await ct.sms_store.is_opted_out(ct.org.id, TO) is False
    await ct.sms.send(to=TO, sender_id="ACME", body="hi")
    after = await ct.sms_service.inbound_opt_out(token, stop)
    assert (after.recorded, after.opted_out) == (True, True)
    assert await ct.sms_store.is_opted_out(ct.org.id, TO) is True
    chat = await ct.sms_service.inbound_opt_out(token, {**stop, "sms_message": "hello"})
    assert chat.recorded is False
    assert count(ct, "SELECT COUNT(*) FROM inbound_messages") == 0


# --------------------------------------------------------------------------- receipts


async def sent_message(ct: Commtunnel) -> str:
    await approve(ct, "ACME")
    message = (await ct.sms.send(to=TO, sender_id="ACME", body="hi")).message
    await ct.run_worker_until_idle()
    return message.id


async def test_dlr_moves_sent_to_delivered_once(ct: Commtunnel) -> None:
    """A DLR moves SENT to DELIVERED once; duplicates and late failures change nothing."""
    message_id = await sent_message(ct)
    token = await ct.sms_service.token(ct.org.id)
    first = await ct.sms_service.receive_dlr(token, {"message_id": message_id, "status": "DELIVRD"})
    assert (first.applied, first.message.status) == (True, Status.DELIVERED)
    again = await ct.sms_service.receive_dlr(
        token, {"message_id": "mock-sms-1", "status": "delivered"}
    )
    assert (again.applied, again.message.status) == (False, Status.DELIVERED)
    late = await ct.sms_service.receive_dlr(token, {"message_id": message_id, "status": "FAILED"})
    assert (late.applied, late.message.status) == (False, Status.DELIVERED)
    events = [e.type for e in await ct.sms.timeline(message_id)]
    assert events == ["sms_queued", "sms_processing", "sms_sent", "sms_delivered"]


async def test_dlr_refusals_change_nothing(ct: Commtunnel) -> None:
    """Bad tokens, unknown ids, bad words and another organization's token change nothing."""
    message_id = await sent_message(ct)
    token = await ct.sms_service.token(ct.org.id)
    with pytest.raises(WebhookAuthError):
        await ct.sms_service.receive_dlr("bad", {"message_id": message_id, "status": "DELIVERED"})
    with pytest.raises(NotFoundError):
        await ct.sms_service.receive_dlr(token, {"message_id": "nope", "status": "DELIVERED"})
    with pytest.raises(ValidationError) as caught:
        await ct.sms_service.receive_dlr(token, {"message_id": message_id, "status": "GREAT"})
    assert "status" in caught.value.details
    with pytest.raises(ValidationError):
        await ct.sms_service.receive_dlr(token, {"status": "DELIVERED"})
    # another organization's token cannot touch this message
    other = await ct.admin.ensure_org("other")
    other_token = await ct.sms_service.token(other.id)
    with pytest.raises(NotFoundError):
        await ct.sms_service.receive_dlr(
            other_token, {"message_id": message_id, "status": "DELIVERED"}
        )
    assert (await ct.sms.get(message_id)).message.status == Status.SENT


async def test_failed_dlr_then_retry(ct: Commtunnel, sms_provider: MockSmsProvider) -> None:
    """A failed DLR records the error; a retry sends the SMS again."""
    message_id = await sent_message(ct)
    token = await ct.sms_service.token(ct.org.id)
    failed = await ct.sms_service.receive_dlr(
        token,
        {"message_id": message_id, "status": "UNDELIV", "error_code": 30003, "error": "off"},
    )
    assert failed.message.status == Status.FAILED
    assert failed.message.last_error == "off"
    await ct.sms.retry(message_id)
    await ct.run_worker_until_idle()
    assert len(sms_provider.sent) == 2
    assert (await ct.sms.get(message_id)).message.status == Status.SENT


async def test_receipt_before_the_send_is_recorded_changes_nothing(ct: Commtunnel) -> None:
    """A receipt for a message the worker has not sent yet is not applied."""
    await approve(ct, "ACME")
    message = (await ct.sms.send(to=TO, sender_id="ACME", body="hi")).message
    token = await ct.sms_service.token(ct.org.id)
    early = await ct.sms_service.receive_dlr(
        token, {"message_id": message.id, "status": "DELIVERED"}
    )
    assert (early.applied, early.message.status) == (False, Status.QUEUED)


RECEIPT_WORDS = ["DELIVERED", "DELIVRD", "FAILED", "UNDELIV", "EXPIRED", "SENT", "ENROUTE"]
FINAL_OF = {"DELIVERED": "DELIVERED", "DELIVRD": "DELIVERED"} | dict.fromkeys(
    ["FAILED", "UNDELIV", "EXPIRED"], "FAILED"
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(words=st.lists(st.sampled_from(RECEIPT_WORDS), min_size=1, max_size=6))
async def test_receipts_in_any_order_never_move_backwards(
    tmp_path_factory: pytest.TempPathFactory, words: list[str]
) -> None:
    """Whatever receipts arrive, in whatever order, the first final one wins, once."""
    clock = ManualClock()
    async with open_sms(tmp_path_factory.mktemp("dlr") / "ct.db", clock) as ct:
        message_id = await sent_message(ct)
        token = await ct.sms_service.token(ct.org.id)
        for word in words:
            clock.advance(1)
            await ct.sms_service.receive_dlr(token, {"message_id": message_id, "status": word})
        finals = [FINAL_OF[w] for w in words if w in FINAL_OF]
        status = (await ct.sms.get(message_id)).message.status
        assert str(status) == (finals[0] if finals else "SENT")
        events = [e.type for e in await ct.sms.timeline(message_id)]
        assert len(events) == 3 + (1 if finals else 0)


# --------------------------------------------------------------------------- listing


async def test_listing_filters_and_pages(ct: Commtunnel, clock: ManualClock) -> None:
    """Listing pages newest first and filters by flow, status and literal query text."""
    await approve(ct, "ACME")
    await approve(ct, "Acme", flow="OTP")
    ids = []
    for n in range(5):
        clock.advance(1)
        result = await ct.sms.send(to=TO, sender_id="ACME", body=f"order {n} shipped")
        ids.append(result.message.id)
    otp = await ct.sms.send_otp(to=OTHER, brand_name="Acme", otp_code="4321")
    page = await ct.sms.list(page=1, page_size=2)
    assert page.total == 6
    assert [m.id for m in page.items] == [otp.message.id, ids[4]]
    assert [m.id for m in (await ct.sms.list(flow="OTP")).items] == [otp.message.id]
    assert (await ct.sms.list(flow="STANDARD")).total == 5
    assert [m.id for m in (await ct.sms.list(query="order 3")).items] == [ids[3]]
    assert (await ct.sms.list(query="2071838")).total == 1  # recipient digits
    assert (await ct.sms.list(query="100%")).total == 0  # LIKE wildcards are literal
    assert (await ct.sms.list(status="QUEUED")).total == 6
    await ct.run_worker_until_idle()
    assert (await ct.sms.list(status="SENT")).total == 6
    for bad in ({"flow": "BULK"}, {"status": "LOST"}, {"page": 0}, {"page_size": 101}):
        with pytest.raises(ValidationError):
            await ct.sms.list(**bad)  # type: ignore[arg-type]


async def test_reads_are_scoped_to_the_organization(ct: Commtunnel) -> None:
    """Another organization's SMS is NotFound and not listed."""
    message_id = await sent_message(ct)
    other = await ct.admin.ensure_org("other")
    outsider = Principal(org_id=other.id, scopes=ALL_SCOPES)
    with pytest.raises(NotFoundError):
        await ct.sms_service.get(outsider, message_id)
    with pytest.raises(NotFoundError):
        await ct.sms_service.timeline(outsider, message_id)
    assert (await ct.sms_service.list_messages(outsider)).total == 0


async def test_sync_facade_sends_sms(tmp_path: Path) -> None:
    """The blocking facade sends and reads SMS like the async one."""
    from commtunnel import SyncCommtunnel

    sms_provider = MockSmsProvider()
    with SyncCommtunnel(
        db=pg.fresh_db(tmp_path / "s.db"),
        email_provider=MockProvider(),
        sms_provider=sms_provider,
        settings=Settings(embedded_worker=False, sms_default_sender_id="INFO"),
    ) as sc:
        result = sc.sms.send(to=TO, sender_id="INFO", body="from sync code")
        assert sc.run_worker_until_idle() == 1
        assert sc.sms.get(result.message.id).message.status == Status.SENT
        assert sms_provider.sent[0].content.body == "from sync code"


async def test_provider_opt_out_answer_feeds_the_opt_out_list(
    tmp_path: Path, clock: ManualClock
) -> None:
    """A provider saying the recipient unsubscribed (Twilio 21610) puts the number on the list."""
    provider = MockSmsProvider(
        lambda sms: ProviderResult.permanent(ErrorCategory.RECIPIENT_OPTED_OUT, "21610")
    )
    async with open_sms(pg.fresh_db(tmp_path / "p.db"), clock, provider) as ct:
        await approve(ct, "ACME")
        message = (await ct.sms.send(to=TO, sender_id="ACME", body="hi")).message
        await ct.run_worker_until_idle()
        assert (await ct.sms.get(message.id)).message.status == Status.FAILED
        listed = await ct.sms_service.list_opt_outs(Principal(org_id=ct.org.id, scopes=ALL_SCOPES))
        assert [(o.phone, o.source) for o in listed.items] == [(TO, "provider")]
        with pytest.raises(SmsRecipientOptedOutError):
            await ct.sms.send(to=TO, sender_id="ACME", body="again")


def test_redact_url_masks_passwords_and_bare_tokens() -> None:
    """Provider URLs print with passwords and bare tokens masked."""
    from commtunnel.providers import redact_url

    assert redact_url("smtp://user:secret@host:587") == "smtp://user:***@host:587"
    assert redact_url("sms+https://tok123@sms.example.com/send") == (
        "sms+https://***@sms.example.com/send"
    )
    assert redact_url("outbox:///var/out") == "outbox:///var/out"


async def test_replay_answers_the_original_even_after_an_opt_out(ct: Commtunnel) -> None:
    """DESIGN.md: the same key and payload answer the original, whatever changed since."""
    await approve(ct, "ACME")
    await approve(ct, "Acme", flow="OTP")
    first = await ct.sms.send(to=TO, sender_id="ACME", body="hi", idempotency_key="k1")
    otp = await ct.sms.send_otp(to=TO, brand_name="Acme", otp_code="1234", idempotency_key="o1")
    await ct.sms_service.add_opt_out(Principal(org_id=ct.org.id, scopes=ALL_SCOPES), TO)
    again = await ct.sms.send(to=TO, sender_id="ACME", body="hi", idempotency_key="k1")
    assert (again.message.id, again.duplicate) == (first.message.id, True)
    otp_again = await ct.sms.send_otp(
        to=TO, brand_name="Acme", otp_code="1234", idempotency_key="o1"
    )
    assert (otp_again.message.id, otp_again.duplicate) == (otp.message.id, True)
    with pytest.raises(IdempotencyKeyReusedError):
        await ct.sms.send(to=TO, sender_id="ACME", body="changed", idempotency_key="k1")
    with pytest.raises(SmsRecipientOptedOutError):  # a new key is checked as usual
        await ct.sms.send(to=TO, sender_id="ACME", body="hi", idempotency_key="k2")


async def test_long_otp_brand_is_named_in_the_text_not_used_as_sender(ct: Commtunnel) -> None:
    """An alphanumeric sender ID holds 11 characters; a 20-character brand does not fit."""
    await approve(ct, "Acme Holdings Bank", flow="OTP")
    result = await ct.sms.send_otp(to=TO, brand_name="Acme Holdings Bank", otp_code="1234")
    assert result.message.sms is not None
    assert result.message.sms.sender_id == "AcmeHolding"
    assert "Acme Holdings Bank" in result.message.sms.body


async def test_help_text_is_configurable(
    tmp_path: Path, clock: ManualClock, sms_provider: MockSmsProvider
) -> None:
    """The HELP reply is the configured help text."""
    help_text = "Acme: call 0800 123 456"
    async with open_sms(
        pg.fresh_db(tmp_path / "h.db"), clock, sms_provider, sms_help_text=help_text
    ) as ct:
        token = await ct.sms_service.token(ct.org.id)
        helped = await ct.sms_service.receive_inbound(
            token, {"sms_from": TO, "sms_to": "1", "sms_message": "HELP"}
        )
        assert helped.reply == "Acme: call 0800 123 456"


# --------------------------------------------------------------------------- refusals


async def test_sandbox_mode_must_be_a_boolean(ct: Commtunnel) -> None:
    """``sandboxMode: "yes"`` is refused for both sends, named with the other bad fields."""
    admin = Principal(org_id=ct.org.id, scopes=ALL_SCOPES)
    with pytest.raises(ValidationError) as caught:
        await ct.sms_service.send(
            admin, SmsSendRequest(to=TO, sender_id="ACME", body="", sandbox_mode="yes")
        )
    assert set(caught.value.details) == {"body", "sandboxMode"}
    with pytest.raises(ValidationError) as caught:
        await ct.sms_service.send_otp(
            admin, OtpSendRequest(to=TO, brand_name="Acme", otp_code="1234", sandbox_mode=1)
        )
    assert caught.value.details == {"sandboxMode": "must be a boolean"}
    assert count(ct, "SELECT COUNT(*) FROM messages") == 0


async def test_reasons_over_500_characters_are_refused(ct: Commtunnel) -> None:
    """A request's or a review's reason is a string of at most 500 characters."""
    admin = Principal(org_id=ct.org.id, scopes=ALL_SCOPES)
    with pytest.raises(ValidationError) as caught:
        await ct.sms_service.request_sender_id(admin, sender_id="ACME", reason="x" * 501)
    assert set(caught.value.details) == {"reason"}
    request = await ct.sms_service.request_sender_id(admin, sender_id="ACME", reason="x" * 500)
    with pytest.raises(ValidationError) as caught:
        await ct.sms_service.review_sender_id(admin, request.id, decision="maybe", reason=5)
    assert set(caught.value.details) == {"decision", "reason"}
    assert (await ct.sms_service.list_sender_id_requests(admin))[0].status == "PENDING"


async def test_listing_refusals_and_alternative_scopes(ct: Commtunnel) -> None:
    """Listings take either of their scopes, name the first when both lack, and check filters."""
    manager = Principal(org_id=ct.org.id, scopes=frozenset({Scope.OPT_OUTS_MANAGE}))
    assert (await ct.sms_service.list_opt_outs(manager)).total == 0
    sender = Principal(org_id=ct.org.id, scopes=frozenset({Scope.SEND_SMS}))
    with pytest.raises(InsufficientScopeError) as caught:
        await ct.sms_service.list_opt_outs(sender)
    assert caught.value.details == {"requiredScope": "read:sms"}
    with pytest.raises(InsufficientScopeError) as caught:
        await ct.sms_service.list_sender_ids(sender)
    assert caught.value.details == {"requiredScope": "read:sms"}
    requester = Principal(org_id=ct.org.id, scopes=frozenset({Scope.SENDER_IDS_REQUEST}))
    assert await ct.sms_service.list_sender_ids(requester) == []
    with pytest.raises(ValidationError) as caught:
        await ct.sms_service.list_sender_ids(requester, flow="PROMO")
    assert set(caught.value.details) == {"flow"}
    with pytest.raises(ValidationError) as caught:
        await ct.sms_service.list_sender_id_requests(requester, status="DONE")
    assert set(caught.value.details) == {"status"}
    with pytest.raises(InsufficientScopeError) as caught:
        await ct.sms_service.list_sender_id_requests(requester, all_orgs=True)
    assert caught.value.details == {"requiredScope": "platform:admin"}
    with pytest.raises(ValidationError) as caught:
        await ct.sms.list(query="x" * 201)
    assert set(caught.value.details) == {"query"}


async def test_webhook_token_and_mo_field_refusals(ct: Commtunnel) -> None:
    """An over-long token is refused before any lookup; MO fields keep their types and limits."""
    token = await ct.sms_service.token(ct.org.id)
    assert token.startswith("smst_") and len(token) == 5 + 43
    with pytest.raises(WebhookAuthError):
        await ct.sms_service.org_for_token(token + "x" * 200)
    with pytest.raises(ValidationError) as caught:
        await ct.sms_service.receive_inbound(
            token, {"sms_from": TO, "sms_to": 12345, "sms_message": "hi"}
        )
    assert caught.value.details == {"sms_to": "must be a string"}
    with pytest.raises(ValidationError) as caught:
        await ct.sms_service.receive_inbound(
            token, {"sms_from": TO, "sms_to": "1", "sms_message": "x" * 1601}
        )
    assert caught.value.details == {"sms_message": "must be at most 1600 characters"}
    assert count(ct, "SELECT COUNT(*) FROM inbound_messages") == 0


async def test_dlr_error_code_must_be_text_or_a_number(ct: Commtunnel) -> None:
    """An ``error_code`` that is neither a string nor an integer is refused; nothing moves."""
    message_id = await sent_message(ct)
    token = await ct.sms_service.token(ct.org.id)
    with pytest.raises(ValidationError) as caught:
        await ct.sms_service.receive_dlr(
            token, {"message_id": message_id, "status": "FAILED", "error_code": [1]}
        )
    assert caught.value.details == {"error_code": "must be a string or integer"}
    assert (await ct.sms.get(message_id)).message.status == Status.SENT


async def test_provider_receipts_for_unknown_messages_are_404(ct: Commtunnel) -> None:
    """Receipts none of which names a message here answer NotFound; a 'sent' one moves nothing."""
    message_id = await sent_message(ct)
    unknown = DeliveryReceipt(
        provider_message_id="SMnope", status=Status.DELIVERED, provider_status="delivered"
    )
    with pytest.raises(NotFoundError) as caught:
        await ct.sms_service.receive_provider_receipts([unknown], provider="twilio")
    assert caught.value.details == {"providerMessageId": "SMnope"}
    assert await ct.sms_service.receive_provider_receipts([], provider="twilio") == []
    sent = DeliveryReceipt(
        provider_message_id="mock-sms-1", status=Status.SENT, provider_status="sent"
    )
    [result] = await ct.sms_service.receive_provider_receipts([unknown, sent], provider="twilio")
    assert (result.applied, result.message.id, result.message.status) == (
        False,
        message_id,
        Status.SENT,
    )


async def test_in_process_reads_mask_the_otp_passcode(ct: Commtunnel) -> None:
    """The passcode is the recipient's secret: masked on every read, sent in clear."""
    await approve(ct, "Acme", flow="OTP")
    result = await ct.sms.send_otp(to=TO, brand_name="Acme", otp_code="482913")
    assert result.message.sms is not None and "482913" in result.message.sms.body
    status = await ct.sms.get(result.message.id)
    assert status.message.sms is not None
    assert "482913" not in status.message.sms.body
    assert "******" in status.message.sms.body
    listed = (await ct.sms.list(flow="OTP")).items
    assert len(listed) == 1 and listed[0].sms is not None
    assert "482913" not in listed[0].sms.body
    await ct.run_worker_until_idle()
    assert "482913" in ct.sms_provider.sent[0].content.body  # type: ignore[union-attr]


async def test_otp_policy_of_an_unknown_organization_is_not_found(ct: Commtunnel) -> None:
    with pytest.raises(NotFoundError):
        await ct.sms_service.set_otp_ignores_opt_out("no-such-org", True)


async def test_provider_callback_without_a_provider_is_not_found(ct: Commtunnel) -> None:
    with pytest.raises(NotFoundError):
        await ct.sms_service.receive_provider_callback(None, url="http://x/", headers={}, body=b"")
