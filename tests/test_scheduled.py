"""Scheduled sends and cancels: held until due on the manual clock, every refusal named.

In process (the ``ct`` fixture: real SQLite file, manual clock, recording
providers) and over HTTP (``POST /v1/public/{emails,sms}/{id}/cancel``,
``scheduledAt`` on the send routes).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest

import pg
from app_client import ApiEnv, app_client, assert_error
from commtunnel import Commtunnel, Settings
from commtunnel.domain.errors import (
    IdempotencyKeyReusedError,
    InsufficientScopeError,
    MessageNotCancelableError,
    NotFoundError,
    ValidationError,
)
from commtunnel.domain.keys import ALL_SCOPES, Principal
from commtunnel.domain.messages import Status
from commtunnel.domain.webhooks import EVENT_TYPES
from commtunnel.services.email import EmailSendRequest
from commtunnel.services.sms import SmsSendRequest
from commtunnel.testing import EPOCH, ManualClock, MockProvider, MockSmsProvider
from commtunnel_http import create_app

pytestmark = pytest.mark.anyio

BASE: dict[str, Any] = {
    "from_": "Team <hi@example.com>",
    "to": "ada@example.org",
    "subject": "Hi",
    "text": "Hello",
}
WIRE = {"from": "Team <hi@example.com>", "to": "ada@example.org", "subject": "Hi", "text": "Hi"}
PHONE = "+14155552671"
IN_AN_HOUR = EPOCH + timedelta(hours=1)


async def approve(ct: Commtunnel, value: str = "ACME") -> None:
    """Request and approve a standard sender ID for the facade's organization."""
    org = Principal(org_id=ct.org.id, scopes=ALL_SCOPES)
    request = await ct.sms_service.request_sender_id(org, sender_id=value, flow="STANDARD")
    await ct.sms_service.review_sender_id(org, request.id, decision="approve")


def count(ct: Commtunnel, sql: str, *params: object) -> int:
    return int(ct.backend.conn.execute(sql, params).fetchone()[0])


async def event_types(ct: Commtunnel, message_id: str) -> list[str]:
    return [e.type for e in await ct.email.timeline(message_id)]


# --------------------------------------------------------------------------- scheduled email


async def test_scheduled_email_is_held_until_due_then_sent(
    ct: Commtunnel, clock: ManualClock, provider: MockProvider
) -> None:
    """SCHEDULED until its time; then queued, processing and sent in order, never before."""
    result = await ct.email.send(**BASE, scheduled_at="2026-01-01T13:00:00Z")
    message = result.message
    assert (message.status, message.scheduled_at) == (Status.SCHEDULED, IN_AN_HOUR)
    assert await ct.run_worker_until_idle() == 0
    clock.advance(3599)
    assert await ct.run_worker_until_idle() == 0
    assert provider.sent == []
    assert (await ct.email.get(message.id)).message.status == Status.SCHEDULED
    clock.advance(1)
    assert await ct.run_worker_until_idle() == 1
    assert len(provider.sent) == 1
    got = (await ct.email.get(message.id)).message
    assert (got.status, got.scheduled_at) == (Status.SENT, IN_AN_HOUR)
    events = await ct.email.timeline(message.id)
    assert [(e.type, e.status) for e in events] == [
        ("email_scheduled", Status.SCHEDULED),
        ("email_queued", Status.QUEUED),
        ("email_processing", Status.PROCESSING),
        ("email_sent", Status.SENT),
    ]
    assert events[0].details == {"scheduledAt": "2026-01-01T13:00:00.000Z"}
    assert events[0].created_at == EPOCH
    assert events[1].details == {"scheduled": True}
    assert events[1].created_at == events[2].created_at == IN_AN_HOUR


async def test_offset_times_and_datetimes_are_read_as_utc(ct: Commtunnel) -> None:
    """``+02:00`` is converted to UTC; in process an aware datetime is taken as is."""
    by_text = await ct.email.send(**BASE, scheduled_at="2026-01-01T15:00:00+02:00")
    assert by_text.message.scheduled_at == IN_AN_HOUR
    by_datetime = await ct.email.send(**BASE, scheduled_at=IN_AN_HOUR)
    assert by_datetime.message.scheduled_at == IN_AN_HOUR


async def test_the_horizon_itself_is_accepted(ct: Commtunnel) -> None:
    """Exactly the horizon ahead (30 days by default) is still accepted."""
    when = EPOCH + timedelta(seconds=ct.settings.schedule_horizon)
    result = await ct.email.send(**BASE, scheduled_at=when)
    assert result.message.scheduled_at == when


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("2026-01-01T13:00:00", "must include a timezone (e.g. Z or +02:00)"),
        ("2026-01-01", "must include a timezone (e.g. Z or +02:00)"),
        ("2026-01-01T11:59:59Z", "must be in the future"),
        ("2026-01-01T12:00:00Z", "must be in the future"),
        ("2026-01-31T12:00:00.001Z", "must be at most 30 days ahead"),
        ("tomorrow", "must be an ISO 8601 date-time with a timezone, e.g. 2026-06-03T12:00:00Z"),
        ("", "must be an ISO 8601 date-time with a timezone, e.g. 2026-06-03T12:00:00Z"),
        (1767272400, "must be a string (an ISO 8601 date-time with a timezone)"),
        (True, "must be a string (an ISO 8601 date-time with a timezone)"),
    ],
)
async def test_bad_times_are_refused_and_store_nothing(
    ct: Commtunnel, value: Any, reason: str
) -> None:
    """Naive, past, now, beyond the horizon, not ISO, not a string: 400 on scheduledAt."""
    with pytest.raises(ValidationError) as caught:
        await ct.email.send(**BASE, scheduled_at=value)
    assert caught.value.details == {"scheduledAt": reason}
    assert count(ct, "SELECT COUNT(*) FROM messages") == 0
    assert await ct.backend.pending_job_count() == 0


async def test_a_bad_time_is_reported_with_the_other_bad_fields(ct: Commtunnel) -> None:
    """A malformed scheduledAt is named together with every other bad field."""
    with pytest.raises(ValidationError) as caught:
        await ct.email.send(**{**BASE, "to": "nobody"}, scheduled_at="soon")
    assert set(caught.value.details) == {"to", "scheduledAt"}


async def test_replay_after_the_time_passed_answers_the_original(
    ct: Commtunnel, clock: ManualClock
) -> None:
    """A keyed retry after its time has passed still replays; another time reuses the key: 422."""
    first = await ct.email.send(**BASE, scheduled_at=IN_AN_HOUR, idempotency_key="k")
    clock.advance(7200)
    again = await ct.email.send(**BASE, scheduled_at=IN_AN_HOUR, idempotency_key="k")
    assert again.duplicate and again.message.id == first.message.id
    later = IN_AN_HOUR + timedelta(hours=5)
    with pytest.raises(IdempotencyKeyReusedError):
        await ct.email.send(**BASE, scheduled_at=later, idempotency_key="k")


async def test_unscheduled_fingerprint_is_unchanged_by_the_new_field(ct: Commtunnel) -> None:
    """A send without scheduledAt fingerprints as before the field existed (old keys replay)."""
    request = EmailSendRequest(from_addr="a@example.com", to="b@example.org", subject="s")
    assert "scheduledAt" not in request.wire_payload()
    scheduled = attrs.evolve(request, scheduled_at="2026-01-01T13:00:00Z")
    assert scheduled.wire_payload()["scheduledAt"] == "2026-01-01T13:00:00Z"


async def test_stats_count_scheduled_and_canceled(ct: Commtunnel) -> None:
    """Stats count SCHEDULED and CANCELED messages and their events by type."""
    kept = await ct.email.send(**BASE, scheduled_at=IN_AN_HOUR)
    dropped = await ct.email.send(**BASE, scheduled_at=IN_AN_HOUR)
    await ct.email.cancel(dropped.message.id)
    stats = await ct.email.stats(start=EPOCH, end=EPOCH + timedelta(days=1))
    assert stats.by_status == {"SCHEDULED": 1, "CANCELED": 1}
    assert stats.events == {"email_scheduled": 2, "email_canceled": 1}
    assert kept.message.status == Status.SCHEDULED


def test_the_new_events_can_be_subscribed_to() -> None:
    """Webhook endpoints may filter on the scheduled and canceled events of each channel."""
    assert {"email_scheduled", "email_canceled", "sms_scheduled", "sms_canceled"} <= EVENT_TYPES


# --------------------------------------------------------------------------- scheduled SMS


async def test_scheduled_sms_is_held_until_due_then_sent(
    ct: Commtunnel, clock: ManualClock, sms_provider: MockSmsProvider
) -> None:
    """A scheduled SMS waits on the manual clock like an email, then goes out."""
    await approve(ct)
    result = await ct.sms.send(to=PHONE, sender_id="ACME", body="hi", scheduled_at=IN_AN_HOUR)
    assert result.message.status == Status.SCHEDULED
    clock.advance(1800)
    assert await ct.run_worker_until_idle() == 0
    assert sms_provider.sent == []
    clock.advance(1800)
    assert await ct.run_worker_until_idle() == 1
    assert len(sms_provider.sent) == 1
    events = await ct.sms.timeline(result.message.id)
    assert [e.type for e in events] == ["sms_scheduled", "sms_queued", "sms_processing", "sms_sent"]
    assert events[0].details == {
        "segments": 1,
        "encoding": "GSM7",
        "scheduledAt": "2026-01-01T13:00:00.000Z",
    }


async def test_a_scheduled_sms_to_a_number_that_opted_out_meanwhile_is_not_sent(
    ct: Commtunnel, clock: ManualClock, sms_provider: MockSmsProvider
) -> None:
    """STOP before the send time: the attempt records FAILED, RECIPIENT_OPTED_OUT, unsent."""
    await approve(ct)
    result = await ct.sms.send(to=PHONE, sender_id="ACME", body="hi", scheduled_at=IN_AN_HOUR)
    await ct.sms_service.opt_out(ct.org.id, PHONE, source="mo")
    clock.advance(3600)
    assert await ct.run_worker_until_idle() == 1
    status = await ct.sms.get(result.message.id)
    assert status.message.status == Status.FAILED
    [attempt] = status.attempts
    assert (attempt.provider, attempt.error_category) == ("none", "RECIPIENT_OPTED_OUT")
    assert sms_provider.sent == []


async def test_scheduled_sms_refuses_a_past_time(ct: Commtunnel) -> None:
    """The SMS send applies the same rule: a past time is a 400 on scheduledAt."""
    await approve(ct)
    with pytest.raises(ValidationError) as caught:
        await ct.sms.send(to=PHONE, sender_id="ACME", body="hi", scheduled_at=EPOCH)
    assert caught.value.details == {"scheduledAt": "must be in the future"}


async def test_sms_reports_a_bad_time_with_the_other_bad_fields(ct: Commtunnel) -> None:
    """A malformed SMS scheduledAt is named together with the other bad fields."""
    bad = SmsSendRequest(to="12", sender_id="ACME", body="hi", scheduled_at="2026-01-01T13:00")
    with pytest.raises(ValidationError) as caught:
        await ct.sms_service.send(ct.sms.principal, bad)
    assert set(caught.value.details) == {"to", "scheduledAt"}


async def test_a_receipt_does_not_move_a_scheduled_sms(ct: Commtunnel) -> None:
    """A delivery receipt for an SMS still SCHEDULED changes nothing (never backwards)."""
    await approve(ct)
    result = await ct.sms.send(to=PHONE, sender_id="ACME", body="hi", scheduled_at=IN_AN_HOUR)
    token = await ct.sms_service.token(ct.org.id)
    receipt = await ct.sms_service.receive_dlr(
        token, {"message_id": result.message.id, "status": "DELIVERED"}
    )
    assert (receipt.applied, receipt.message.status) == (False, Status.SCHEDULED)


# --------------------------------------------------------------------------- cancel


async def test_cancel_a_scheduled_email_means_it_is_never_sent(
    ct: Commtunnel, clock: ManualClock, provider: MockProvider
) -> None:
    """SCHEDULED -> CANCELED with its event; the job is gone, nothing is sent when due."""
    sent = await ct.email.send(**BASE, scheduled_at=IN_AN_HOUR)
    clock.advance(60)
    canceled = await ct.email.cancel(sent.message.id)
    assert canceled.message.status == Status.CANCELED
    assert canceled.message.updated_at == EPOCH + timedelta(seconds=60)
    assert canceled.attempts == []
    assert await ct.backend.pending_job_count() == 0
    clock.advance(7200)
    assert await ct.run_worker_until_idle() == 0
    assert provider.sent == []
    events = await ct.email.timeline(sent.message.id)
    assert [e.type for e in events] == ["email_scheduled", "email_canceled"]
    assert (events[1].status, events[1].details) == (
        Status.CANCELED,
        {"previousStatus": "SCHEDULED"},
    )
    assert (await ct.email.get(sent.message.id)).message.status == Status.CANCELED


async def test_cancel_a_queued_email(ct: Commtunnel, provider: MockProvider) -> None:
    """A QUEUED email no worker has claimed can be cancelled too."""
    sent = await ct.email.send(**BASE)
    canceled = await ct.email.cancel(sent.message.id)
    assert canceled.message.status == Status.CANCELED
    assert await ct.run_worker_until_idle() == 0
    assert provider.sent == []
    assert await event_types(ct, sent.message.id) == ["email_queued", "email_canceled"]


async def test_cancel_refuses_a_message_a_worker_is_sending(
    ct: Commtunnel, provider: MockProvider
) -> None:
    """A claimed (PROCESSING) message is not cut off: 409 with its status; it is then sent."""
    sent = await ct.email.send(**BASE)
    [job] = await ct.dispatcher.claim(1)
    with pytest.raises(MessageNotCancelableError) as caught:
        await ct.email.cancel(sent.message.id)
    assert caught.value.http_status == 409
    assert caught.value.details == {"id": sent.message.id, "status": "PROCESSING"}
    assert await ct.dispatcher.process(job)
    assert len(provider.sent) == 1


@pytest.mark.parametrize("cancel_first", [True, False])
async def test_cancel_racing_a_claim_has_one_winner(
    ct: Commtunnel, provider: MockProvider, cancel_first: bool
) -> None:
    """A cancel and a claim committed together: either it is cancelled or it is sent, not both."""
    sent = await ct.email.send(**BASE)

    async def cancel() -> bool:
        try:
            await ct.email.cancel(sent.message.id)
        except MessageNotCancelableError:
            return False
        return True

    async def claim() -> int:
        return len(await ct.dispatcher.claim(1))

    if cancel_first:
        canceled, claimed = await asyncio.gather(cancel(), claim())
    else:
        claimed, canceled = await asyncio.gather(claim(), cancel())
    assert (canceled, claimed) in {(True, 0), (False, 1)}
    if pg.BACKEND == "sqlite":  # PostgreSQL reads off the loop: either write may go first
        assert canceled is cancel_first
    expected = Status.CANCELED if canceled else Status.PROCESSING
    assert (await ct.email.get(sent.message.id)).message.status == expected
    assert await ct.backend.pending_job_count() == claimed


@pytest.mark.parametrize("status", ["SENT", "CANCELED"])
async def test_cancel_refuses_a_message_past_the_queue(ct: Commtunnel, status: str) -> None:
    """A SENT or already CANCELED message answers 409 MESSAGE_NOT_CANCELABLE, changing nothing."""
    sent = await ct.email.send(**BASE)
    if status == "SENT":
        await ct.run_worker_until_idle()
    else:
        await ct.email.cancel(sent.message.id)
    before = await event_types(ct, sent.message.id)
    with pytest.raises(MessageNotCancelableError) as caught:
        await ct.email.cancel(sent.message.id)
    assert caught.value.details["status"] == status
    assert await event_types(ct, sent.message.id) == before


async def test_cancel_of_another_orgs_or_an_unknown_message_is_not_found(ct: Commtunnel) -> None:
    """Another organization's message, an unknown id and another channel's all answer 404."""
    sent = await ct.email.send(**BASE, scheduled_at=IN_AN_HOUR)
    other = await ct.admin.create_org("other")
    stranger = ct.email_for(Principal(org_id=other.id, scopes=ALL_SCOPES))
    for client, message_id in ((stranger, sent.message.id), (ct.email, "nope")):
        with pytest.raises(NotFoundError):
            await client.cancel(message_id)
    with pytest.raises(NotFoundError):
        await ct.sms.cancel(sent.message.id)
    assert (await ct.email.get(sent.message.id)).message.status == Status.SCHEDULED


async def test_cancel_needs_the_send_scope(ct: Commtunnel) -> None:
    """A read-only key may not cancel (403 naming send:email)."""
    sent = await ct.email.send(**BASE, scheduled_at=IN_AN_HOUR)
    reader = ct.email_for(Principal(org_id=ct.org.id, scopes=frozenset({"read:email"})))
    with pytest.raises(InsufficientScopeError) as caught:
        await reader.cancel(sent.message.id)
    assert caught.value.details == {"requiredScope": "send:email"}


async def test_cancel_a_scheduled_sms(
    ct: Commtunnel, clock: ManualClock, sms_provider: MockSmsProvider
) -> None:
    """An SMS cancels the same way, with an sms_canceled event, and is never sent."""
    await approve(ct)
    result = await ct.sms.send(to=PHONE, sender_id="ACME", body="hi", scheduled_at=IN_AN_HOUR)
    canceled = await ct.sms.cancel(result.message.id)
    assert canceled.message.status == Status.CANCELED
    clock.advance(7200)
    assert await ct.run_worker_until_idle() == 0
    assert sms_provider.sent == []
    types = [e.type for e in await ct.sms.timeline(result.message.id)]
    assert types == ["sms_scheduled", "sms_canceled"]


async def test_cancel_masks_an_otp_code(ct: Commtunnel) -> None:
    """Cancelling a queued OTP answers it as reads do: the passcode masked."""
    org = Principal(org_id=ct.org.id, scopes=ALL_SCOPES)
    request = await ct.sms_service.request_sender_id(org, sender_id="Acme Bank", flow="OTP")
    await ct.sms_service.review_sender_id(org, request.id, decision="approve")
    otp = await ct.sms.send_otp(to=PHONE, brand_name="Acme Bank", otp_code="482913")
    canceled = await ct.sms.cancel(otp.message.id)
    assert canceled.message.sms is not None
    assert "482913" not in canceled.message.sms.body


# --------------------------------------------------------------------------- HTTP


@attrs.define
class Env(ApiEnv):
    """The env with email and SMS scopes, its clock, and a read-only key."""

    clock: ManualClock
    reader: str


@pytest.fixture
async def env(tmp_path: Path, anyio_backend: str) -> AsyncIterator[Env]:
    clock = ManualClock()
    async with Commtunnel.open(
        db=pg.fresh_db(tmp_path / "ct.db"),
        email_provider=MockProvider(),
        sms_provider=MockSmsProvider(),
        clock=clock,
        settings=Settings(embedded_worker=False, schedule_horizon=86_400),
    ) as ct:
        await ct.admin.add_sender(ct.org.id, "example.com")
        await approve(ct)
        scopes = frozenset({"send:email", "read:email", "send:sms", "read:sms"})
        _, key = await ct.keys.create(ct.org.id, scopes=scopes)
        _, reader = await ct.keys.create(ct.org.id, scopes=frozenset({"read:email"}))
        async with app_client(create_app(ct)) as client:
            yield Env(ct=ct, client=client, key=key, clock=clock, reader=reader)


async def test_http_scheduled_email_then_cancel(env: Env) -> None:
    """202 SCHEDULED; GET shows scheduledAt; POST .../cancel answers the email, CANCELED."""
    r = await env.post("/v1/public/emails/send", {**WIRE, "scheduledAt": "2026-01-01T13:00:00Z"})
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "SCHEDULED"
    message_id = r.json()["id"]
    got = (await env.get(f"/v1/public/emails/{message_id}")).json()
    assert (got["status"], got["scheduledAt"]) == ("SCHEDULED", "2026-01-01T13:00:00.000Z")
    r = await env.post(f"/v1/public/emails/{message_id}/cancel", None)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["id"], body["status"], body["scheduledAt"]) == (
        message_id,
        "CANCELED",
        "2026-01-01T13:00:00.000Z",
    )
    assert body["attempts"] == []
    timeline = (await env.get(f"/v1/public/emails/{message_id}/timeline")).json()
    assert [e["type"] for e in timeline["events"]] == ["email_scheduled", "email_canceled"]


async def test_http_unscheduled_sends_show_a_null_time(env: Env) -> None:
    """GET of an email and an SMS sent at once shows scheduledAt null."""
    r = await env.post("/v1/public/emails/send", WIRE)
    got = (await env.get(f"/v1/public/emails/{r.json()['id']}")).json()
    assert got["scheduledAt"] is None
    r = await env.post("/v1/public/sms/send", {"to": PHONE, "senderId": "ACME", "body": "x"})
    got = (await env.get(f"/v1/public/sms/{r.json()['id']}")).json()
    assert got["scheduledAt"] is None


async def test_http_scheduled_sms_then_cancel(env: Env) -> None:
    """An SMS scheduled over HTTP is cancelled with POST /v1/public/sms/{id}/cancel."""
    body = {"to": PHONE, "senderId": "ACME", "body": "x", "scheduledAt": "2026-01-01T13:00:00Z"}
    r = await env.post("/v1/public/sms/send", body)
    assert (r.status_code, r.json()["status"]) == (202, "SCHEDULED")
    r = await env.post(f"/v1/public/sms/{r.json()['id']}/cancel", None)
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["scheduledAt"]) == (
        "CANCELED",
        "2026-01-01T13:00:00.000Z",
    )


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("2026-01-01T13:00:00", "must include a timezone (e.g. Z or +02:00)"),
        ("2026-01-01T11:00:00Z", "must be in the future"),
        ("2026-01-02T12:00:01Z", "must be at most 1 day ahead"),
        (42, "must be a string (an ISO 8601 date-time with a timezone)"),
    ],
)
@pytest.mark.parametrize("route", ["emails", "sms"])
async def test_http_bad_times_answer_400(env: Env, route: str, value: Any, reason: str) -> None:
    """Each refusal is a 400 VALIDATION_ERROR naming scheduledAt (horizon from the settings)."""
    body = WIRE if route == "emails" else {"to": PHONE, "senderId": "ACME", "body": "x"}
    r = await env.post(f"/v1/public/{route}/send", {**body, "scheduledAt": value})
    assert assert_error(r, 400, "VALIDATION_ERROR") == {"scheduledAt": reason}


async def test_http_otp_takes_no_scheduled_time(env: Env) -> None:
    """An OTP is for now: scheduledAt on the OTP route is an unknown field."""
    body = {"to": PHONE, "brandName": "Acme Bank", "otpCode": "123456"}
    r = await env.post("/v1/public/sms/otp/send", {**body, "scheduledAt": "2026-01-01T13:00:00Z"})
    assert assert_error(r, 400, "VALIDATION_ERROR") == {"scheduledAt": "unknown field"}


async def test_http_cancel_refusals(env: Env) -> None:
    """409 with details.status once sent, 404 for an unknown id, 403 without scope, 401 no key."""
    r = await env.post("/v1/public/emails/send", WIRE)
    message_id = r.json()["id"]
    r = await env.post(f"/v1/public/emails/{message_id}/cancel", None, key=env.reader)
    assert assert_error(r, 403, "INSUFFICIENT_SCOPE") == {"requiredScope": "send:email"}
    r = await env.client.post(f"/v1/public/emails/{message_id}/cancel")
    assert_error(r, 401, "UNAUTHORIZED")
    await env.ct.run_worker_until_idle()
    r = await env.post(f"/v1/public/emails/{message_id}/cancel", None)
    details = assert_error(r, 409, "MESSAGE_NOT_CANCELABLE")
    assert details == {"id": message_id, "status": "SENT"}
    r = await env.post("/v1/public/emails/unknown/cancel", None)
    assert_error(r, 404, "NOT_FOUND")
    r = await env.post(f"/v1/public/sms/{message_id}/cancel", None)
    assert_error(r, 404, "NOT_FOUND")


async def test_http_cancel_of_another_orgs_message_is_not_found(env: Env) -> None:
    """Another organization's key cannot tell the message exists."""
    r = await env.post("/v1/public/emails/send", {**WIRE, "scheduledAt": "2026-01-01T13:00:00Z"})
    other = await env.ct.admin.create_org("other")
    _, stranger = await env.ct.keys.create(other.id, scopes=frozenset({"send:email"}))
    r = await env.post(f"/v1/public/emails/{r.json()['id']}/cancel", None, key=stranger)
    assert_error(r, 404, "NOT_FOUND")


async def test_http_scheduled_sms_goes_out_when_due(env: Env) -> None:
    """Over HTTP too, the worker leaves a scheduled SMS alone until the clock reaches it."""
    body = {"to": PHONE, "senderId": "ACME", "body": "x", "scheduledAt": "2026-01-01T12:30:00Z"}
    message_id = (await env.post("/v1/public/sms/send", body)).json()["id"]
    assert await env.ct.run_worker_until_idle() == 0
    env.clock.advance(1800)
    assert await env.ct.run_worker_until_idle() == 1
    got: httpx.Response = await env.get(f"/v1/public/sms/{message_id}")
    assert got.json()["status"] == "SENT"
