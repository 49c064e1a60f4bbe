"""The email suppression list: its API, the send check, bounces, complaints and unsubscribes.

The rules (reasons, normalization, which entry wins, token shapes, the
provider events' shape) are pure and live in
:mod:`commtunnel.domain.suppressions`; this module adds what needs storage,
the clock and the instance secret:

* :meth:`SuppressionService.check`, ``EmailService``'s ``recipient_check``:
  a send to an active entry is refused with 403
  ``EMAIL_RECIPIENT_SUPPRESSED`` before anything is stored (sandbox sends
  included, so a test run behaves like the real thing);
* :meth:`SuppressionService.after_attempt`: a permanent ``INVALID_RECIPIENT``
  result (an SMTP ``550 5.1.1`` on ``RCPT TO``) lists the address as
  ``HARD_BOUNCE``;
* :meth:`SuppressionService.receive_provider_events`: the email events
  webhook (``POST /v1/webhooks/email/events?token=``), where an ESP reports
  hard bounces (``HARD_BOUNCE``, and the message SENT/DELIVERED -> BOUNCED)
  and complaints (``COMPLAINT``, and an ``email_complained`` event);
* :meth:`SuppressionService.prepare_email` and :meth:`SuppressionService.unsubscribe`:
  the signed ``List-Unsubscribe`` link of an email sent with
  ``unsubscribe: true`` and the ``UNSUBSCRIBE`` entry its use makes.

Each change to the list records an organization-level ``email_suppressed``
event (``suppressed`` true or false), which customer webhooks receive.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any

import attrs

from commtunnel import crypto
from commtunnel.domain.delivery import ErrorCategory, Outcome, ProviderResult
from commtunnel.domain.errors import (
    EmailRecipientSuppressedError,
    NotFoundError,
    ValidationError,
)
from commtunnel.domain.events import format_timestamp, parse_timestamp
from commtunnel.domain.keys import Principal, Scope
from commtunnel.domain.messages import Channel, EmailContent, Message, Status
from commtunnel.domain.suppressions import (
    EMAIL_COMPLAINED,
    EMAIL_SUPPRESSED,
    MAX_DETAIL_CHARS,
    UNSUBSCRIBE_PATH,
    Origin,
    ProviderEvent,
    ProviderEventType,
    Suppression,
    SuppressionReason,
    UnsubscribeSigner,
    UnsubscribeToken,
    clip,
    message_id_of,
    normalize_address,
    parse_provider_events,
)
from commtunnel.ports import Clock, SmsStorage, Storage, SuppressionStorage
from commtunnel.services.auth import new_webhook_token, org_for_webhook_token, require
from commtunnel.services.sms import Page, page_problems
from commtunnel.services.timeline import apply_receipt, message_event, org_event

#: The name of the server-made secret in ``Storage.instance_secret``.
INSTANCE_SECRET_NAME = "unsubscribe"  # noqa: S105 - a name, not a secret
_HKDF_INFO = b"commtunnel unsubscribe tokens v1"
#: The default page size of a listing.
DEFAULT_PAGE_SIZE = 50
#: The prefix of an email events webhook token.
TOKEN_PREFIX = "emt_"  # noqa: S105 - a prefix, not a secret
REASONS = tuple(SuppressionReason)


def derive_key(secret: str) -> bytes:
    """The 32-byte unsubscribe-token key for a secret (HKDF-SHA256, its own ``info``).

    The ``info`` differs from the tracking tokens' and the secret box's, so one
    ``COMMTUNNEL_SECRET_KEY`` gives unrelated keys for the three uses.
    """
    return crypto.derive_key(secret, _HKDF_INFO)


@attrs.frozen(kw_only=True)
class ProviderEventsResult:
    """What one call of the email events webhook did.

    Attributes:
        received: events in the body.
        suppressed: events that put an address on the list (new or extended entry).
        bounced: messages moved to BOUNCED.
        complained: ``email_complained`` events written.
        ignored: events that changed nothing: soft bounces, and events whose
            message is not the organization's and that carry no ``email``.
    """

    received: int
    suppressed: int
    bounced: int
    complained: int
    ignored: int


def _address(value: Any, field: str = "email") -> str:
    """A normalized address from untrusted input.

    Raises:
        ValidationError: not a string holding one valid address (``details[field]``).
    """
    if not isinstance(value, str) or not value:
        raise ValidationError.from_fields({field: "is required (an email address)"})
    try:
        return normalize_address(value)
    except ValueError as exc:
        raise ValidationError.from_fields({field: str(exc)}) from None


class SuppressionService:
    """The organization's email suppression list and everything that feeds it.

    Args:
        store: the list and the webhook tokens.
        storage: messages, events (``append_event``) and the server-made secret.
        receipts: applies the BOUNCED move of a reported message
            (``SmsStorage.apply_receipt``, any channel).
        clock: every "now".
        base_url: this server's public base URL (``Settings.base_url``);
            unsubscribe links point at it.
        secret_key: ``COMMTUNNEL_SECRET_KEY``; None to use a server-made secret.
    """

    def __init__(
        self,
        store: SuppressionStorage,
        storage: Storage,
        receipts: SmsStorage,
        clock: Clock,
        *,
        base_url: str,
        secret_key: str | None = None,
    ) -> None:
        self._store = store
        self._storage = storage
        self._receipts = receipts
        self._clock = clock
        self._base_url = base_url.rstrip("/")
        self._secret_key = secret_key
        self._signer: UnsubscribeSigner | None = None

    # ------------------------------------------------------------------ the list

    async def suppress(
        self,
        org_id: str,
        address: str,
        reason: SuppressionReason,
        origin: str,
        *,
        message_id: str | None = None,
        detail: str | None = None,
        expires_at: datetime | None = None,
    ) -> tuple[Suppression, bool]:
        """List a normalized address with an ``email_suppressed`` event.

        Returns:
            (the entry now stored, True when this one was written; False when
            an entry that blocks at least as long was kept, with no event).
        """
        now = self._clock.now()
        entry = Suppression(
            org_id=org_id,
            address=address,
            reason=reason,
            origin=str(origin),
            created_at=now,
            expires_at=expires_at,
            message_id=message_id,
            detail=clip(detail),
        )
        details: dict[str, Any] = {
            "email": address,
            "suppressed": True,
            "reason": str(reason),
            "origin": str(origin),
        }
        if message_id is not None:
            details["messageId"] = message_id
        if expires_at is not None:
            details["expiresAt"] = format_timestamp(expires_at)
        event = org_event(org_id, EMAIL_SUPPRESSED, at=now, details=details)
        return await self._store.add_suppression(entry, event)

    @staticmethod
    def _origin(principal: Principal) -> str:
        return Origin.API if principal.api_key_id else Origin.CLI

    async def list_suppressions(
        self,
        principal: Principal,
        *,
        reason: Any = None,
        page: Any = 1,
        page_size: Any = DEFAULT_PAGE_SIZE,
    ) -> Page:
        """Active entries, newest first (``page`` from 1, ``page_size`` 1..100).

        Raises:
            InsufficientScopeError: the key has neither ``read:email`` nor ``opt_outs:manage``.
            ValidationError: an unknown ``reason``, a page out of range.
        """
        require(principal, Scope.READ_EMAIL, Scope.OPT_OUTS_MANAGE)
        problems = page_problems(page, page_size)
        if reason is not None and reason not in REASONS:
            problems["reason"] = f"must be one of {', '.join(REASONS)}"
        if problems:
            raise ValidationError.from_fields(problems)
        items, total = await self._store.list_suppressions(
            principal.org_id,
            now=self._clock.now(),
            reason=reason,
            offset=(page - 1) * page_size,
            limit=page_size,
        )
        return Page(items=items, page=page, page_size=page_size, total=total)

    async def get_suppression(self, principal: Principal, email: Any) -> Suppression:
        """The active entry for an address.

        Raises:
            InsufficientScopeError: the key has neither ``read:email`` nor ``opt_outs:manage``.
            ValidationError: not a valid address.
            NotFoundError: the address is not (or no longer) on the list.
        """
        require(principal, Scope.READ_EMAIL, Scope.OPT_OUTS_MANAGE)
        address = _address(email)
        found = await self._store.get_suppression(principal.org_id, address, now=self._clock.now())
        if found is None:
            raise NotFoundError(
                "This address is not on the suppression list", details={"email": address}
            )
        return found

    async def add_suppression(
        self,
        principal: Principal,
        email: Any,
        *,
        reason: Any = SuppressionReason.MANUAL,
        expires_at: Any = None,
        detail: Any = None,
    ) -> tuple[Suppression, bool]:
        """Put an address on the list (origin ``api``, or ``cli`` without an API key).

        Args:
            email: ``addr`` or ``Name <addr>``; stored normalized.
            reason: one of the four reasons (MANUAL by default; importing an
                older list may use the others).
            expires_at: when the entry stops blocking: a timezone-aware
                datetime or ISO 8601 text with a timezone, in the future;
                None for never.
            detail: a note, at most 500 characters.

        Returns:
            (the entry now stored, True when added; False when an entry that
            blocks at least as long was already there and is kept as it is).

        Raises:
            InsufficientScopeError: the key has neither ``send:email`` nor ``opt_outs:manage``.
            ValidationError: bad ``email``, ``reason``, ``expiresAt`` or ``detail``
                (every problem at once).
        """
        require(principal, Scope.SEND_EMAIL, Scope.OPT_OUTS_MANAGE)
        now = self._clock.now()
        problems: dict[str, str] = {}
        address = None
        try:
            address = _address(email)
        except ValidationError as exc:
            problems.update(exc.details)
        if reason not in REASONS:
            problems["reason"] = f"must be one of {', '.join(REASONS)}"
        expiry = self._expiry(expires_at, now, problems)
        if detail is not None and (not isinstance(detail, str) or len(detail) > MAX_DETAIL_CHARS):
            problems["detail"] = f"must be a string of at most {MAX_DETAIL_CHARS} characters"
        if problems or address is None:
            raise ValidationError.from_fields(problems)
        return await self.suppress(
            principal.org_id,
            address,
            SuppressionReason(reason),
            self._origin(principal),
            detail=detail,
            expires_at=expiry,
        )

    @staticmethod
    def _expiry(value: Any, now: datetime, problems: dict[str, str]) -> datetime | None:
        """``expiresAt`` as a UTC-aware datetime after ``now``; a problem noted otherwise."""
        if value is None:
            return None
        try:
            parsed = parse_timestamp(value, "expiresAt")
        except ValidationError as exc:
            problems.update(exc.details)
            return None
        if parsed <= now:
            problems["expiresAt"] = "must be in the future"
            return None
        return parsed

    async def remove_suppression(self, principal: Principal, email: Any) -> Suppression:
        """Take an address off the list, with an ``email_suppressed`` event (``suppressed: false``).

        Returns:
            The entry removed.

        Raises:
            InsufficientScopeError: the key lacks ``opt_outs:manage`` (taking
                an address off is the one change that lets mail reach someone
                who bounced, complained or unsubscribed, so a send key cannot).
            ValidationError: not a valid address.
            NotFoundError: the address is not (or no longer) on the list.
        """
        require(principal, Scope.OPT_OUTS_MANAGE)
        address = _address(email)
        now = self._clock.now()
        event = org_event(
            principal.org_id,
            EMAIL_SUPPRESSED,
            at=now,
            details={
                "email": address,
                "suppressed": False,
                "origin": str(self._origin(principal)),
            },
        )
        removed = await self._store.remove_suppression(
            principal.org_id, address, now=now, event=event
        )
        if removed is None:
            raise NotFoundError(
                "This address is not on the suppression list", details={"email": address}
            )
        return removed

    # ------------------------------------------------------------------ sending

    async def check(self, org_id: str, address: str) -> None:
        """Refuse a send to an address with an active entry (``EmailService``'s recipient check).

        Args:
            org_id: the sending organization.
            address: the recipient's addr-spec (it is lower-cased here).

        Raises:
            EmailRecipientSuppressedError: 403, ``details``: ``to`` (normalized)
                and ``reason``.
        """
        key = address.lower()
        reason = await self._store.suppression_reason(org_id, key, now=self._clock.now())
        if reason is not None:
            raise EmailRecipientSuppressedError(
                f"'{key}' is on this organization's suppression list ({reason})",
                details={"to": key, "reason": reason},
            )

    async def held(self, message: Message) -> ProviderResult | None:
        """The result to record instead of sending, when the recipient was suppressed since.

        A scheduled, queued or retrying email whose recipient joined the list
        after the send was accepted is not delivered: each attempt asks here
        first (the dispatcher's ``check_email`` hook).

        Returns:
            A permanent ``RECIPIENT_OPTED_OUT`` result naming the reason (the
            message becomes FAILED and no other provider is tried), or None.
        """
        if message.email is None:
            return None
        key = normalize_address(message.email.to)
        reason = await self._store.suppression_reason(message.org_id, key, now=self._clock.now())
        if reason is None:
            return None
        return ProviderResult.permanent(
            ErrorCategory.RECIPIENT_OPTED_OUT,
            f"the recipient was added to the suppression list ({reason}) "
            "after this email was accepted",
        )

    async def after_attempt(self, message: Message, result: ProviderResult) -> None:
        """List the recipient of an email the provider refused for good as ``HARD_BOUNCE``.

        A permanent result with category ``INVALID_RECIPIENT`` (for SMTP a 550,
        551 or 553 reply to ``RCPT TO``, e.g. ``550 5.1.1 user unknown``; RFC
        3463 class 5 is permanent) is the hard bounce; the entry keeps the
        provider's words in ``detail`` (origin ``provider``). Anything else
        does nothing.
        """
        if (
            message.email is None
            or result.outcome != Outcome.PERMANENT
            or result.error_category != ErrorCategory.INVALID_RECIPIENT
        ):
            return
        await self.suppress(
            message.org_id,
            normalize_address(message.email.to),
            SuppressionReason.HARD_BOUNCE,
            Origin.PROVIDER,
            message_id=message.id,
            detail=result.error_message,
        )

    # ------------------------------------------------------------------ unsubscribe

    async def signer(self) -> UnsubscribeSigner:
        """The token signer, its key derived on first use (one per service)."""
        if self._signer is None:
            secret = self._secret_key
            if secret is None:
                # Concurrent first uses may each offer a candidate: the first stored wins.
                secret = await self._storage.instance_secret(
                    INSTANCE_SECRET_NAME, secrets.token_urlsafe(32), self._clock.now()
                )
            self._signer = UnsubscribeSigner(derive_key(secret))
        return self._signer

    async def unsubscribe_url(self, message: Message) -> str:
        """``{base}/v1/unsubscribe/<token>`` for the message's recipient.

        Raises:
            ValueError: the message is not an email, or its ``to`` is not one address.
        """
        if message.email is None:
            raise ValueError(f"message {message.id} has no email content")
        token = UnsubscribeToken(
            org_id=message.org_id,
            address=normalize_address(message.email.to),
            message_id=message.id,
        )
        return f"{self._base_url}{UNSUBSCRIBE_PATH}/{(await self.signer()).sign(token)}"

    async def prepare_email(self, message: Message, content: EmailContent) -> EmailContent:
        """The content handed to the provider: with its unsubscribe link when asked for.

        Part of the dispatcher's ``prepare_email`` hook (after tracking): for a
        message sent with ``unsubscribe: true`` the copy gets
        :attr:`EmailContent.unsubscribe_url`, which
        :func:`commtunnel.providers.mime.build_mime` writes as the
        ``List-Unsubscribe`` and ``List-Unsubscribe-Post`` headers. The token
        is deterministic, so every attempt carries the same link.
        """
        if not content.unsubscribe:
            return content
        return attrs.evolve(content, unsubscribe_url=await self.unsubscribe_url(message))

    async def read_unsubscribe(self, token: str) -> UnsubscribeToken:
        """Verify an unsubscribe token without acting on it (the page a GET shows).

        Raises:
            InvalidUnsubscribeTokenError: tampered, truncated, foreign or of another kind.
        """
        return (await self.signer()).read(token)

    async def unsubscribe(self, token: str) -> tuple[UnsubscribeToken, bool]:
        """Act on an unsubscribe link: list its address as ``UNSUBSCRIBE`` (origin ``unsubscribe``).

        Using a link twice changes nothing the second time.

        Returns:
            (the verified token, True when the address was listed now).

        Raises:
            InvalidUnsubscribeTokenError: tampered, truncated, foreign or of another kind.
        """
        verified = await self.read_unsubscribe(token)
        _entry, created = await self.suppress(
            verified.org_id,
            verified.address,
            SuppressionReason.UNSUBSCRIBE,
            Origin.UNSUBSCRIBE,
            message_id=verified.message_id,
        )
        return verified, created

    # ------------------------------------------------------------------ provider events

    async def events_token(self, org_id: str, *, rotate: bool = False) -> str:
        """The organization's email events webhook token, created on first use.

        ``rotate`` replaces it at once (the old one stops working). Stored as
        text so that ``commtunnel suppressions webhook-token`` can show it again.

        Returns:
            ``emt_`` and 43 URL-safe characters.
        """
        current = await self._store.get_email_events_token(org_id)
        if current is not None and not rotate:
            return current
        token = new_webhook_token(TOKEN_PREFIX)
        await self._store.set_email_events_token(org_id, token, self._clock.now())
        return token

    async def org_for_events_token(self, token: Any) -> str:
        """The organization an email events webhook token belongs to.

        Raises:
            WebhookAuthError: 401, no token, one over 200 characters, or one no
                organization holds (:func:`~commtunnel.services.auth.org_for_webhook_token`).
        """
        return await org_for_webhook_token(token, self._store.org_for_email_events_token)

    async def receive_provider_events(
        self, org_id: str, payload: dict[str, Any]
    ) -> ProviderEventsResult:
        """Apply an ESP's bounce and complaint reports (the email events webhook).

        Args:
            org_id: the organization whose token authenticated the call
                (:meth:`org_for_events_token`).
            payload: ``{"events": [...]}`` (see
                :func:`~commtunnel.domain.suppressions.parse_provider_events`).

        A hard bounce lists the address as ``HARD_BOUNCE`` and moves the
        message, when it is the organization's email and SENT or DELIVERED,
        to BOUNCED with an ``email_bounced`` event. A complaint lists it as
        ``COMPLAINT`` and writes an ``email_complained`` event on the message.
        Both have origin ``webhook``; the address is the event's ``email``,
        else the message's recipient. A soft bounce changes nothing.

        Raises:
            ValidationError: a body that is not that shape (nothing applied).
        """
        events = parse_provider_events(payload)
        counts = {"suppressed": 0, "bounced": 0, "complained": 0, "ignored": 0}
        for event in events:
            for outcome in await self._apply(org_id, event):
                counts[outcome] += 1
        return ProviderEventsResult(received=len(events), **counts)

    async def _apply(self, org_id: str, event: ProviderEvent) -> list[str]:
        """Apply one provider event; the counters it adds to."""
        message = None
        if event.message_id is not None:
            found = await self._storage.get_message(org_id, message_id_of(event.message_id))
            if found is not None and found.channel == Channel.EMAIL and found.email is not None:
                message = found
        address = event.address
        if address is None and message is not None and message.email is not None:
            address = normalize_address(message.email.to)
        bounce = event.type == ProviderEventType.BOUNCE
        if address is None or (bounce and not event.hard):
            return ["ignored"]
        outcomes: list[str] = []
        reason = SuppressionReason.HARD_BOUNCE if bounce else SuppressionReason.COMPLAINT
        _entry, created = await self.suppress(
            org_id,
            address,
            reason,
            Origin.WEBHOOK,
            message_id=None if message is None else message.id,
            detail=event.diagnostic,
        )
        if created:
            outcomes.append("suppressed")
        if message is None:
            return outcomes or ["ignored"]
        now = self._clock.now()
        details: dict[str, Any] = {"source": "webhook"}
        if event.diagnostic is not None:
            details["diagnostic"] = event.diagnostic
        if bounce:
            moved = await apply_receipt(
                self._receipts, message, Status.BOUNCED, at=now, details=details
            )
            if moved.applied:
                outcomes.append("bounced")
        else:
            await self._storage.append_event(
                message_event(message, EMAIL_COMPLAINED, at=now, details=details)
            )
            outcomes.append("complained")
        return outcomes or ["ignored"]
