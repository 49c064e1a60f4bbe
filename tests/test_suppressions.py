"""The email suppression list in process: rules, storage, the send check, expiry and hard bounces.

The HTTP routes, the events webhook and the unsubscribe links are in
``test_http_suppressions.py``; this file drives the service and the facade,
and ends with a hard bounce from a real SMTP server (aiosmtpd) answering
``550 5.1.1`` for the recipient.
"""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest
from aiosmtpd.controller import Controller

import pg
from commtunnel import Commtunnel, Settings
from commtunnel.domain.delivery import ErrorCategory, ProviderResult
from commtunnel.domain.errors import (
    EmailRecipientSuppressedError,
    InsufficientScopeError,
    InvalidUnsubscribeTokenError,
    NotFoundError,
    ValidationError,
    WebhookAuthError,
)
from commtunnel.domain.keys import Principal
from commtunnel.domain.messages import Status
from commtunnel.domain.suppressions import (
    MAX_PROVIDER_EVENTS,
    ProviderEventType,
    Suppression,
    SuppressionReason,
    UnsubscribeSigner,
    UnsubscribeToken,
    list_unsubscribe_headers,
    message_id_of,
    normalize_address,
    parse_provider_events,
    supersedes,
)
from commtunnel.domain.tracking import OpenToken, TokenSigner
from commtunnel.domain.webhooks import EVENT_TYPES
from commtunnel.ports import OutgoingEmail
from commtunnel.services.email import EmailSendRequest
from commtunnel.testing import EPOCH, ManualClock, MockProvider

pytestmark = pytest.mark.anyio

BOB = "bob@example.net"
SEND: dict[str, Any] = {"from_": "shop@example.com", "subject": "Hi", "text": "Hello"}
KEY = bytes(range(32))


def principal(ct: Commtunnel, *scopes: str, key: bool = True) -> Principal:
    """A principal of the facade's organization with only ``scopes`` (through an API key)."""
    return Principal(org_id=ct.org.id, scopes=frozenset(scopes), api_key_id="k1" if key else None)


def entry(**changes: Any) -> Suppression:
    values: dict[str, Any] = {
        "org_id": "o",
        "address": BOB,
        "reason": SuppressionReason.MANUAL,
        "origin": "api",
        "created_at": EPOCH,
    }
    return Suppression(**{**values, **changes})


def org_events(ct: Commtunnel, type_: str) -> list[dict[str, Any]]:
    """The details of the organization-level events of ``type_``, oldest first."""
    rows = ct.backend.conn.execute(
        "SELECT details FROM events WHERE org_id = ? AND type = ? AND message_id IS NULL "
        "ORDER BY created_at, id",
        (ct.org.id, type_),
    ).fetchall()
    return [json.loads(row[0]) for row in rows]


# ----------------------------------------------------------------------------- pure rules


def test_addresses_are_normalized_to_a_lower_case_addr_spec() -> None:
    """``Name <Addr>`` and any case give one key; a non-address is refused."""
    assert normalize_address("Bob <Bob@Example.NET>") == BOB
    assert normalize_address(" BOB@example.net ") == BOB
    with pytest.raises(ValueError, match="not a valid email address"):
        normalize_address("bob")


HOUR = timedelta(hours=1)


@pytest.mark.parametrize(
    ("old_expiry", "new_expiry", "replaced"),
    [
        (None, None, False),  # the first permanent entry is kept
        (None, 2 * HOUR, False),  # a temporary one never shortens a permanent one
        (2 * HOUR, None, True),  # a permanent one replaces a temporary one
        (2 * HOUR, 3 * HOUR, True),  # a later expiry extends
        (2 * HOUR, HOUR, False),  # an earlier expiry does not shorten
        (-HOUR, HOUR, True),  # an expired entry is always replaced
    ],
)
def test_which_entry_wins(
    old_expiry: timedelta | None, new_expiry: timedelta | None, replaced: bool
) -> None:
    """An active entry is replaced only by one that blocks longer; an expired one always."""
    old = entry(expires_at=None if old_expiry is None else EPOCH + old_expiry)
    new = entry(expires_at=None if new_expiry is None else EPOCH + new_expiry)
    assert supersedes(new, old, EPOCH) is replaced


def test_unsubscribe_tokens_round_trip_and_refuse_tampering() -> None:
    """A token reads back; tampered, truncated, foreign and tracking tokens are refused."""
    signer = UnsubscribeSigner(KEY)
    token = UnsubscribeToken(org_id="o", address=BOB, message_id="m")
    value = signer.sign(token)
    assert signer.read(value) == token
    tracking = TokenSigner(KEY).sign_open(OpenToken(org_id="o", message_id="m"))
    foreign = UnsubscribeSigner(bytes(reversed(range(32)))).sign(token)
    # Changed inside the signature, in its high bits (the last character may
    # carry only padding bits, which decoding ignores).
    flipped = value[:-6] + ("A" if value[-6] != "A" else "g") + value[-5:]
    for bad in (value[:-3], flipped, foreign, tracking, "", "x" * 5000, "é" + value):
        with pytest.raises(InvalidUnsubscribeTokenError):
            signer.read(bad)
    with pytest.raises(ValueError, match="32 bytes"):
        UnsubscribeSigner(b"short")


def test_list_unsubscribe_headers_are_the_one_click_pair() -> None:
    """The URL in angle brackets and the RFC 8058 POST field; a URL that breaks out is refused."""
    url = "https://ct.example/v1/unsubscribe/abc"
    assert list_unsubscribe_headers(url) == [
        ("List-Unsubscribe", f"<{url}>"),
        ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
    ]
    for bad in (url + "\r\nBcc: x@example.net", url + " x", url + ">, <mailto:x@example.net"):
        with pytest.raises(ValueError, match="must not contain"):
            list_unsubscribe_headers(bad)


def test_provider_events_are_parsed() -> None:
    """Bounces (hard by default) and complaints, by message id and/or email."""
    events = parse_provider_events(
        {
            "events": [
                {"type": "bounce", "email": "Bob <BOB@example.net>", "diagnostic": " 550 x "},
                {"type": "bounce", "messageId": "m1", "bounceType": "soft"},
                {"type": "complaint", "messageId": "m2", "email": BOB},
            ]
        }
    )
    assert [(e.type, e.address, e.message_id, e.hard) for e in events] == [
        (ProviderEventType.BOUNCE, BOB, None, True),
        (ProviderEventType.BOUNCE, None, "m1", False),
        (ProviderEventType.COMPLAINT, BOB, "m2", True),
    ]
    assert events[0].diagnostic == "550 x"


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({}, "events"),
        ({"events": []}, "events"),
        ({"events": "bounce"}, "events"),
        ({"events": [{"type": "bounce", "email": BOB}] * (MAX_PROVIDER_EVENTS + 1)}, "events"),
        ({"events": [{"type": "bounce", "email": BOB}], "extra": 1}, "extra"),
        ({"events": ["bounce"]}, "events[0]"),
        ({"events": [{"type": "open", "email": BOB}]}, "events[0].type"),
        ({"events": [{"type": "bounce", "email": BOB, "bounceType": "x"}]}, "events[0].bounceType"),
        ({"events": [{"type": "bounce"}]}, "events[0].email"),
        ({"events": [{"type": "bounce", "email": "nope"}]}, "events[0].email"),
        ({"events": [{"type": "bounce", "email": 5}]}, "events[0].email"),
        ({"events": [{"type": "bounce", "messageId": ""}]}, "events[0].messageId"),
        ({"events": [{"type": "bounce", "email": BOB, "diagnostic": 1}]}, "events[0].diagnostic"),
        ({"events": [{"type": "bounce", "email": BOB, "x": 1}]}, "events[0].x"),
    ],
)
def test_malformed_provider_events_are_refused(payload: dict[str, Any], field: str) -> None:
    """Each malformed body is refused naming the field; nothing is half-applied."""
    with pytest.raises(ValidationError) as raised:
        parse_provider_events(payload)
    assert field in raised.value.details


def test_message_references_give_our_id() -> None:
    """Our id as it is, or the local part of the Message-ID header we set."""
    assert message_id_of("0190-ab") == "0190-ab"
    assert message_id_of("<0190-ab@example.com>") == "0190-ab"
    assert message_id_of(" 0190-ab@example.com ") == "0190-ab"


def test_email_suppressed_is_in_the_event_vocabulary() -> None:
    """Customer webhooks may subscribe to ``email_suppressed`` (and ``email_complained``)."""
    assert {"email_suppressed", "email_complained"} <= EVENT_TYPES


# ----------------------------------------------------------------------------- the list


async def test_a_listed_address_refuses_sends_whatever_its_case(ct: Commtunnel) -> None:
    """A send to a listed address is refused (403) before anything is stored."""
    entry_, created = await ct.suppressions.add_suppression(ct.email.principal, "Bob@Example.NET")
    assert created and entry_.address == BOB and entry_.reason == SuppressionReason.MANUAL
    assert entry_.origin == "cli"  # in process, no API key
    for to in (BOB, "BOB@example.net", "Bob <bob@EXAMPLE.net>"):
        with pytest.raises(EmailRecipientSuppressedError) as raised:
            await ct.email.send(**SEND, to=to)
        assert raised.value.http_status == 403
        assert raised.value.details == {"to": BOB, "reason": "MANUAL"}
    count = ct.backend.conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
    assert count == 0
    await ct.email.send(**SEND, to="ann@example.net")  # others still go


async def test_an_address_suppressed_after_acceptance_is_not_delivered(
    ct: Commtunnel, provider: MockProvider, clock: ManualClock
) -> None:
    """A scheduled email whose recipient is listed meanwhile fails at its attempt, unsent."""
    scheduled = await ct.email.send(
        **SEND, to=BOB, scheduled_at=(clock.now() + timedelta(hours=1)).isoformat()
    )
    other = await ct.email.send(**SEND, to="ann@example.net")
    await ct.suppressions.add_suppression(ct.email.principal, BOB, reason="COMPLAINT")
    clock.advance(3600)
    assert await ct.run_worker_until_idle() == 2
    status = await ct.email.get(scheduled.message.id)
    assert status.message.status == Status.FAILED
    [attempt] = status.attempts
    assert (attempt.provider, attempt.error_category) == ("none", "RECIPIENT_OPTED_OUT")
    assert "suppression list (COMPLAINT)" in (attempt.error_message or "")
    assert [e.content.to for e in provider.sent] == ["ann@example.net"]
    assert (await ct.email.get(other.message.id)).message.status == Status.SENT


async def test_sandbox_sends_are_refused_too(ct: Commtunnel) -> None:
    """A sandbox send behaves like the real thing: refused."""
    await ct.suppressions.add_suppression(ct.email.principal, BOB)
    with pytest.raises(EmailRecipientSuppressedError):
        await ct.email.send(**SEND, to=BOB, sandbox_mode=True)


async def test_an_entry_expires_and_is_replaced(ct: Commtunnel, clock: ManualClock) -> None:
    """An expired entry stops blocking, leaves listings and reads, and a new one replaces it."""
    p = ct.email.principal
    await ct.suppressions.add_suppression(p, BOB, expires_at=clock.now() + HOUR)
    with pytest.raises(EmailRecipientSuppressedError):
        await ct.email.send(**SEND, to=BOB)
    clock.advance(HOUR.total_seconds())
    await ct.email.send(**SEND, to=BOB)
    assert (await ct.suppressions.list_suppressions(p)).total == 0
    with pytest.raises(NotFoundError):
        await ct.suppressions.get_suppression(p, BOB)
    with pytest.raises(NotFoundError):
        await ct.suppressions.remove_suppression(p, BOB)
    again, created = await ct.suppressions.add_suppression(
        p, BOB, reason="COMPLAINT", expires_at=(clock.now() + HOUR).isoformat()
    )
    assert created and again.reason == SuppressionReason.COMPLAINT
    assert (await ct.suppressions.get_suppression(p, BOB)) == again


async def test_a_second_add_keeps_the_first_unless_it_blocks_longer(
    ct: Commtunnel, clock: ManualClock
) -> None:
    """Adding again changes nothing (one event); a permanent entry replaces a temporary one."""
    p = ct.email.principal
    first, _ = await ct.suppressions.add_suppression(p, BOB, expires_at=clock.now() + HOUR)
    kept, created = await ct.suppressions.add_suppression(
        p, BOB, reason="UNSUBSCRIBE", expires_at=clock.now() + HOUR / 2
    )
    assert not created and kept == first
    permanent, created = await ct.suppressions.add_suppression(p, BOB, reason="COMPLAINT")
    assert created and permanent.expires_at is None
    events = org_events(ct, "email_suppressed")
    assert [(e["reason"], e["suppressed"]) for e in events] == [
        ("MANUAL", True),
        ("COMPLAINT", True),
    ]
    assert "expiresAt" in events[0] and "expiresAt" not in events[1]


async def test_removal_needs_opt_outs_manage_and_records_an_event(ct: Commtunnel) -> None:
    """A send key cannot take an address off; opt_outs:manage can, with an event, once."""
    await ct.suppressions.add_suppression(principal(ct, "send:email"), BOB)
    with pytest.raises(InsufficientScopeError) as raised:
        await ct.suppressions.remove_suppression(principal(ct, "send:email", "read:email"), BOB)
    assert raised.value.details == {"requiredScope": "opt_outs:manage"}
    manager = principal(ct, "opt_outs:manage")
    removed = await ct.suppressions.remove_suppression(manager, "Bob <BOB@example.net>")
    assert removed.address == BOB and removed.origin == "api"
    assert org_events(ct, "email_suppressed")[-1] == {
        "email": BOB,
        "suppressed": False,
        "origin": "api",
    }
    with pytest.raises(NotFoundError):
        await ct.suppressions.remove_suppression(principal(ct, "opt_outs:manage"), BOB)
    await ct.email.send(**SEND, to=BOB)


async def test_scopes_of_reading_and_adding(ct: Commtunnel) -> None:
    """Reading takes read:email or opt_outs:manage; adding send:email or opt_outs:manage."""
    service = ct.suppressions
    for scopes in (("read:email",), ("opt_outs:manage",)):
        await service.list_suppressions(principal(ct, *scopes))
    for scopes in (("send:email",), ("opt_outs:manage",)):
        await service.add_suppression(principal(ct, *scopes), BOB)
    with pytest.raises(InsufficientScopeError):
        await service.list_suppressions(principal(ct, "send:email", "read:sms"))
    with pytest.raises(InsufficientScopeError):
        await service.get_suppression(principal(ct, "send:email"), BOB)
    with pytest.raises(InsufficientScopeError):
        await service.add_suppression(principal(ct, "read:email"), BOB)


async def test_bad_additions_are_refused_field_by_field(ct: Commtunnel, clock: ManualClock) -> None:
    """Every bad field is named at once and nothing is stored."""
    p = ct.email.principal
    cases: list[tuple[dict[str, Any], set[str]]] = [
        ({"email": None}, {"email"}),
        ({"email": 7}, {"email"}),
        ({"email": "not an address"}, {"email"}),
        ({"email": BOB, "reason": "SPAM"}, {"reason"}),
        ({"email": BOB, "expires_at": "tomorrow"}, {"expiresAt"}),
        ({"email": BOB, "expires_at": "2030-01-01T00:00:00"}, {"expiresAt"}),  # naive
        ({"email": BOB, "expires_at": clock.now()}, {"expiresAt"}),  # not in the future
        ({"email": BOB, "expires_at": 5}, {"expiresAt"}),
        ({"email": BOB, "detail": "x" * 501}, {"detail"}),
        ({"email": BOB, "detail": 3}, {"detail"}),
        ({"email": "", "reason": "X", "detail": 3}, {"email", "reason", "detail"}),
    ]
    for case, fields in cases:
        args = dict(case)
        email = args.pop("email")
        with pytest.raises(ValidationError) as raised:
            await ct.suppressions.add_suppression(p, email, **args)
        assert set(raised.value.details) == fields, case
    assert (await ct.suppressions.list_suppressions(p)).total == 0


async def test_listing_filters_pages_and_stays_in_the_organization(
    ct: Commtunnel, clock: ManualClock
) -> None:
    """Newest first, by reason, paged; another organization sees none of it."""
    p = ct.email.principal
    for i, reason in enumerate(["MANUAL", "COMPLAINT", "MANUAL"]):
        await ct.suppressions.add_suppression(p, f"u{i}@example.net", reason=reason)
        clock.advance(1)
    page = await ct.suppressions.list_suppressions(p, page_size=2)
    assert [s.address for s in page.items] == ["u2@example.net", "u1@example.net"]
    assert page.total == 3
    page2 = await ct.suppressions.list_suppressions(p, page=2, page_size=2)
    assert [s.address for s in page2.items] == ["u0@example.net"]
    manual = await ct.suppressions.list_suppressions(p, reason="MANUAL")
    assert [s.address for s in manual.items] == ["u2@example.net", "u0@example.net"]
    for bad in ({"reason": "X"}, {"page": 0}, {"page_size": 101}, {"page_size": True}):
        with pytest.raises(ValidationError):
            await ct.suppressions.list_suppressions(p, **bad)
    with pytest.raises(ValidationError) as raised:
        await ct.suppressions.list_suppressions(p, reason="X", page=0, page_size=0)
    assert set(raised.value.details) == {"reason", "page", "pageSize"}  # every problem at once
    other = await ct.admin.ensure_org("other")
    stranger = Principal(org_id=other.id, scopes=p.scopes)
    assert (await ct.suppressions.list_suppressions(stranger)).total == 0
    with pytest.raises(NotFoundError):
        await ct.suppressions.get_suppression(stranger, "u0@example.net")
    await ct.suppressions.check(other.id, "u0@example.net")  # nothing raised: not listed there


async def test_events_tokens_are_made_once_and_rotated(ct: Commtunnel) -> None:
    """The token is stable until rotated; the old one then stops working."""
    service = ct.suppressions
    token = await service.events_token(ct.org.id)
    assert token.startswith("emt_") and await service.events_token(ct.org.id) == token
    assert await service.org_for_events_token(token) == ct.org.id
    rotated = await service.events_token(ct.org.id, rotate=True)
    assert rotated != token
    for bad in (token, None, "", "x" * 201, 5):
        with pytest.raises(WebhookAuthError):
            await service.org_for_events_token(bad)


async def test_old_rows_without_the_unsubscribe_key_still_read(ct: Commtunnel) -> None:
    """Content written before ``unsubscribe`` existed reads with the default (False)."""
    sent = await ct.email.send(**SEND, to=BOB, unsubscribe=True)
    conn = ct.backend.conn
    content = json.loads(
        conn.execute("SELECT content FROM messages WHERE id = ?", (sent.message.id,)).fetchone()[0]
    )
    assert content["unsubscribe"] is True
    del content["unsubscribe"]
    conn.execute(
        "UPDATE messages SET content = ? WHERE id = ?", (json.dumps(content), sent.message.id)
    )
    conn.commit()
    status = await ct.email.get(sent.message.id)
    assert status.message.email is not None and status.message.email.unsubscribe is False


async def test_the_unsubscribe_field_must_be_a_boolean(ct: Commtunnel) -> None:
    """``unsubscribe: "yes"`` is refused like any bad field."""
    with pytest.raises(ValidationError) as raised:
        await ct.email.send(**SEND, to=BOB, unsubscribe="yes")  # type: ignore[arg-type]
    assert raised.value.details == {"unsubscribe": "must be a boolean"}


async def test_unsubscribing_twice_lists_once(ct: Commtunnel) -> None:
    """The link's token lists the address as UNSUBSCRIBE; a second use changes nothing."""
    sent = await ct.email.send(**SEND, to="Bob <bob@example.net>", unsubscribe=True)
    url = await ct.suppressions.unsubscribe_url(sent.message)
    token = url.rsplit("/", 1)[1]
    assert url.startswith(f"{ct.settings.base_url}/v1/unsubscribe/")
    verified, created = await ct.suppressions.unsubscribe(token)
    assert created and verified.address == BOB and verified.message_id == sent.message.id
    _, again = await ct.suppressions.unsubscribe(token)
    assert not again
    listed = await ct.suppressions.get_suppression(ct.email.principal, BOB)
    assert (listed.reason, listed.origin, listed.message_id) == (
        SuppressionReason.UNSUBSCRIBE,
        "unsubscribe",
        sent.message.id,
    )
    with pytest.raises(InvalidUnsubscribeTokenError):
        await ct.suppressions.unsubscribe(token[:-2])


async def test_only_an_email_gets_an_unsubscribe_url(ct: Commtunnel) -> None:
    """A message without email content has no recipient address to sign: ValueError."""
    sent = await ct.email.send(**SEND, to=BOB)
    with pytest.raises(ValueError, match="no email content"):
        await ct.suppressions.unsubscribe_url(attrs.evolve(sent.message, email=None))


# ----------------------------------------------------------------------------- hard bounces


@pytest.fixture
def provider() -> MockProvider:
    """Refuses anything to ``gone@``: 550 5.1.1, permanent INVALID_RECIPIENT."""

    def answer(email: OutgoingEmail) -> ProviderResult:
        to = email.content.to.lower()
        if "gone@" in to:
            return ProviderResult.permanent(
                ErrorCategory.INVALID_RECIPIENT, "550 5.1.1 no such user (recipient gone@x)"
            )
        if "spam@" in to:
            return ProviderResult.permanent(ErrorCategory.REJECTED, "554 5.7.1 spam")
        if "busy@" in to:
            return ProviderResult.transient(ErrorCategory.PROVIDER_OUTAGE, "451 busy")
        return ProviderResult.accepted("ok")

    return MockProvider(answer)


async def test_a_permanent_invalid_recipient_is_a_hard_bounce(ct: Commtunnel) -> None:
    """The message is BOUNCED, the address listed HARD_BOUNCE with the provider's words."""
    sent = await ct.email.send(**SEND, to="Gone <GONE@example.net>")
    await ct.run_worker_until_idle()
    assert (await ct.email.get(sent.message.id)).message.status == Status.BOUNCED
    listed = await ct.suppressions.get_suppression(ct.email.principal, "gone@example.net")
    assert listed.reason == SuppressionReason.HARD_BOUNCE
    assert listed.origin == "provider"
    assert listed.message_id == sent.message.id
    assert listed.detail is not None and listed.detail.startswith("550 5.1.1")
    assert org_events(ct, "email_suppressed")[0]["messageId"] == sent.message.id
    with pytest.raises(EmailRecipientSuppressedError):
        await ct.email.send(**SEND, to="gone@example.net")


async def test_other_failures_list_nothing(ct: Commtunnel) -> None:
    """A content rejection (554) or a transient failure is not a hard bounce."""
    for to in ("spam@example.net", "busy@example.net"):
        await ct.email.send(**SEND, to=to)
    await ct.run_worker_until_idle()
    assert (await ct.suppressions.list_suppressions(ct.email.principal)).total == 0


class RefuseRecipient:
    """aiosmtpd handler: ``550 5.1.1`` for ``gone@...``, accepts everyone else."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.lock = threading.Lock()

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if address.lower().startswith("gone@"):
            return "550 5.1.1 <gone@example.net>: Recipient address rejected: User unknown"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.received.append(envelope.content)
        return "250 2.0.0 queued"


class FreePortController(Controller):
    """aiosmtpd's Controller on a port the OS picks (``port=0``)."""

    def _trigger_server(self) -> None:
        assert self.server is not None
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


@pytest.fixture
def smtp_server() -> Iterator[tuple[FreePortController, RefuseRecipient]]:
    handler = RefuseRecipient()
    controller = FreePortController(
        handler, hostname="127.0.0.1", port=0, server_hostname="localhost"
    )
    controller.start()
    yield controller, handler
    controller.stop()


async def test_a_550_from_a_real_smtp_server_suppresses_and_the_next_send_is_refused(
    tmp_path: Path,
    clock: ManualClock,
    smtp_server: tuple[FreePortController, RefuseRecipient],
) -> None:
    """aiosmtpd refuses the recipient with 550 5.1.1: BOUNCED, HARD_BOUNCE, then a 403."""
    controller, handler = smtp_server
    url = f"smtp://127.0.0.1:{controller.port}?local_hostname=localhost"
    settings = Settings(embedded_worker=False, lease_seconds=60, send_timeout=5)
    async with Commtunnel.open(
        db=pg.fresh_db(tmp_path / "ct.db"),
        email_provider=url,
        clock=clock,
        settings=settings,
        rng=random.Random(1),
    ) as ct:
        await ct.admin.add_sender(ct.org.id, "example.com")
        bounced = await ct.email.send(**SEND, to="gone@example.net")
        fine = await ct.email.send(**SEND, to=BOB, unsubscribe=True)
        await ct.run_worker_until_idle()
        assert (await ct.email.get(bounced.message.id)).message.status == Status.BOUNCED
        assert (await ct.email.get(fine.message.id)).message.status == Status.SENT
        listed = await ct.suppressions.get_suppression(ct.email.principal, "gone@example.net")
        assert listed.reason == SuppressionReason.HARD_BOUNCE
        assert listed.detail is not None and "550 5.1.1" in listed.detail
        with pytest.raises(EmailRecipientSuppressedError) as raised:
            await ct.email.send(**SEND, to="gone@example.net")
        assert (raised.value.http_status, raised.value.code) == (403, "EMAIL_RECIPIENT_SUPPRESSED")
    [data] = handler.received  # only the accepted one arrived, with its one-click headers
    assert b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n" in data
    assert b"List-Unsubscribe: " in data


def test_a_send_without_unsubscribe_keeps_the_fingerprint_of_older_versions() -> None:
    """Keys stored before the field existed still replay: unset fields are not fingerprinted."""
    base = {"from_addr": "a@example.com", "to": BOB, "subject": "s", "text": "t"}
    payload = EmailSendRequest(**base).wire_payload()
    assert "unsubscribe" not in payload and "scheduledAt" not in payload
    assert EmailSendRequest(**base, unsubscribe=True).wire_payload()["unsubscribe"] is True
