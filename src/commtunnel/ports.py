"""Ports: the only ways the services reach the outside world.

Each port is a small ``typing.Protocol``. Implementations live in
``backends/`` (Storage, Queue), ``providers/`` (EmailProvider) and
``clock.py`` / ``testing.py`` (Clock). A contract test suite runs against
every implementation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

import attrs

from commtunnel.domain.circuit import ProviderHealth
from commtunnel.domain.delivery import ProviderResult
from commtunnel.domain.events import TimelineEvent
from commtunnel.domain.keys import ApiKey, Organization
from commtunnel.domain.messages import (
    Attempt,
    Channel,
    EmailContent,
    Message,
    SmsContent,
    Status,
    WhatsAppContent,
    _aware,
)
from commtunnel.domain.paging import Position
from commtunnel.domain.suppressions import Suppression
from commtunnel.domain.tracking import EngagementCounts
from commtunnel.domain.webhooks import (
    DeliveryStatus,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)


class Clock(Protocol):
    """Where every "now" comes from."""

    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...

    def monotonic(self) -> float:
        """Seconds on a monotonic scale, for measuring durations only."""
        ...


# --------------------------------------------------------------------------- records


@attrs.frozen(kw_only=True)
class Template:
    """A stored email template (python-liquid source).

    Attributes:
        id: UUIDv7 string (the ``templateId`` of the API).
        org_id: owning organization.
        name: unique within the organization.
        subject / html / text: liquid sources; html or text may be None.
    """

    id: str
    org_id: str
    name: str
    subject: str
    html: str | None
    text: str | None
    created_at: datetime = attrs.field(validator=_aware)
    updated_at: datetime = attrs.field(validator=_aware)


@attrs.frozen(kw_only=True)
class Sender:
    """A verified sender: a whole address (``a@b.com``) or a domain (``b.com``)."""

    id: str
    org_id: str
    value: str
    created_at: datetime = attrs.field(validator=_aware)


@attrs.frozen(kw_only=True)
class IdempotencyRecord:
    """An idempotency key's claim, unique per (organization, key).

    Attributes:
        org_id / key: the unique pair.
        endpoint: the operation the key was first used for (e.g. ``emails.send``).
        fingerprint: SHA-256 of the canonical request payload.
        message_id: the message the key produced.
        created_at / expires_at: UTC; after ``expires_at`` the key may be used afresh.
    """

    org_id: str
    key: str
    endpoint: str
    fingerprint: str
    message_id: str
    created_at: datetime = attrs.field(validator=_aware)
    expires_at: datetime = attrs.field(validator=_aware)


@attrs.frozen(kw_only=True)
class AcceptResult:
    """What :meth:`Storage.accept` did.

    Exactly one of: a new ``message`` (duplicate False); the ``message`` an
    earlier request with the same key created (duplicate True); a
    ``conflict`` with an existing key used for another payload or endpoint;
    or ``cooldown_until``, the end of a running cooldown that refused it.
    """

    message: Message | None
    duplicate: bool = False
    conflict: IdempotencyRecord | None = None
    cooldown_until: datetime | None = None


@attrs.frozen(kw_only=True)
class ClaimedJob:
    """A dispatch job leased to one worker.

    Attributes:
        job_id: the job row id.
        lease_token: proves ownership when the result is recorded (fencing).
        lease_until: UTC time the lease expires and another worker may claim it.
        message: the message, already moved to PROCESSING.
        attempt_number: the number this attempt will carry (1 for the first).
        attempts_before: attempts made before the last explicit retry; the
            retry policy counts only the attempts after it.
    """

    job_id: str
    lease_token: str
    lease_until: datetime = attrs.field(validator=_aware)
    message: Message
    attempt_number: int
    attempts_before: int = 0


@attrs.frozen(kw_only=True)
class Completion:
    """The result of one attempt, to be recorded atomically.

    Attributes:
        job: the claimed job.
        attempt: the attempt row.
        new_status: the status the message moves to.
        event: the timeline event for that move.
        provider_message_id: set when the provider accepted.
        retry_at: UTC time of the next attempt (RETRYING), else None (job done).
    """

    job: ClaimedJob
    attempt: Attempt
    new_status: Status
    event: TimelineEvent
    provider_message_id: str | None = None
    retry_at: datetime | None = attrs.field(default=None, validator=_aware)


@attrs.frozen(kw_only=True)
class OutgoingEmail:
    """What an email provider is asked to deliver.

    Attributes:
        message_id: Commtunnel's id for the message (UUIDv7 string).
        org_id: owning organization.
        content: rendered content, with the stable ``Message-ID`` header.
        created_at: acceptance time (used for the ``Date`` header).
        attempt_number: 1 for the first attempt.
    """

    message_id: str
    org_id: str
    content: EmailContent
    created_at: datetime = attrs.field(validator=_aware)
    attempt_number: int = 1


@attrs.frozen(kw_only=True)
class OutgoingSms:
    """What an SMS provider is asked to deliver (one MT message).

    Attributes:
        message_id: Commtunnel's id for the message (UUIDv7 string); providers
            that accept a client reference should pass it on.
        org_id: owning organization.
        content: sender ID, E.164 recipient, body, encoding and segments.
        created_at: acceptance time.
        attempt_number: 1 for the first attempt.
        status_callback_url: where the provider should POST delivery receipts
            (``<public base URL>/v1/webhooks/sms/provider``), or None when no
            public URL is configured.
    """

    message_id: str
    org_id: str
    content: SmsContent
    created_at: datetime = attrs.field(validator=_aware)
    attempt_number: int = 1
    status_callback_url: str | None = None


@attrs.frozen(kw_only=True)
class WhatsAppLine:
    """A WhatsApp Cloud business line: the Meta phone number id and its access token.

    Attributes:
        phone_number_id: Meta's id of the business phone number.
        access_token: the Graph API bearer token (never logged or returned).
        org_id: the organization whose own line this is; None for the
            platform default line.
    """

    phone_number_id: str
    access_token: str = attrs.field(repr=False)
    org_id: str | None = None


@attrs.frozen(kw_only=True)
class OutgoingWhatsApp:
    """What a WhatsApp provider is asked to deliver.

    Attributes:
        message_id: Commtunnel's id (UUIDv7 string).
        org_id: owning organization.
        content: recipient and text or template.
        line: the line to send from, with its token.
        created_at: acceptance time.
        attempt_number: 1 for the first attempt.
    """

    message_id: str
    org_id: str
    content: WhatsAppContent
    line: WhatsAppLine
    created_at: datetime = attrs.field(validator=_aware)
    attempt_number: int = 1


@attrs.frozen(kw_only=True)
class DeliveryReceipt:
    """A delivery receipt (DLR) parsed from a provider's status callback.

    Attributes:
        provider_message_id: the provider's id for the message (as returned at send).
        status: what the receipt says: SENT, DELIVERED or FAILED.
        provider_status: the provider's own word (``delivered``, ``undelivered`` ...).
        error_code: the provider's error code for a failure, as text.
        error_message: the provider's explanation, if any.
    """

    provider_message_id: str
    status: Status
    provider_status: str
    error_code: str | None = None
    error_message: str | None = None


@attrs.frozen(kw_only=True)
class SenderIdRequest:
    """An organization's request to use an SMS sender ID (or an OTP brand name).

    Attributes:
        id: request id (UUIDv7).
        org_id: the requesting organization.
        sender_id: the requested sender ID, or brand name when ``flow`` is OTP.
        flow: ``STANDARD`` (sender IDs for ``/sms/send``) or ``OTP`` (brands).
        status: ``PENDING``, ``APPROVED`` or ``REJECTED``.
        reason: why the organization asks (free text).
        review_reason: the reviewer's note.
        reviewed_by: the reviewing API key id (or ``cli``).
        reviewed_at / created_at: UTC.
    """

    id: str
    org_id: str
    sender_id: str
    flow: str
    status: str
    reason: str | None
    created_at: datetime = attrs.field(validator=_aware)
    review_reason: str | None = None
    reviewed_by: str | None = None
    reviewed_at: datetime | None = attrs.field(default=None, validator=_aware)


@attrs.frozen(kw_only=True)
class OptOut:
    """A number on an organization's SMS opt-out list.

    Attributes:
        phone: E.164.
        source: how it got there: ``api``, ``cli``, ``inbound_keyword``,
            ``inbound_opt_out`` or ``provider``.
    """

    org_id: str
    phone: str
    source: str
    created_at: datetime = attrs.field(validator=_aware)


@attrs.frozen(kw_only=True)
class InboundMessage:
    """A mobile-originated (MO) message received for an organization.

    Attributes:
        sender: the handset's number, E.164 (``sms_from``).
        recipient: our short or long code (``sms_to``), as received.
        body: the text.
        keyword: ``STOP``, ``START`` or ``HELP`` when the message was one, else None.
    """

    id: str
    org_id: str
    channel: Channel
    sender: str
    recipient: str
    body: str
    keyword: str | None
    created_at: datetime = attrs.field(validator=_aware)


@attrs.frozen(kw_only=True)
class CooldownClaim:
    """A rate rule checked inside :meth:`Storage.accept` (the OTP cooldown).

    Accept refuses the message when an earlier claim with the same key is
    still running at ``now``, and otherwise records this one until ``until``.

    Attributes:
        org_id / recipient / purpose: the key (organization, E.164, OTP purpose).
        now: the acceptance time.
        until: when this claim stops blocking the next one (UTC).
    """

    org_id: str
    recipient: str
    purpose: str
    now: datetime = attrs.field(validator=_aware)
    until: datetime = attrs.field(validator=_aware)


@attrs.frozen(kw_only=True)
class SmsPage:
    """One page of an SMS listing, newest first; ``total`` counts every match."""

    messages: list[Message]
    total: int


@attrs.frozen(kw_only=True)
class ReceiptOutcome:
    """What applying a delivery receipt did.

    Attributes:
        message: the message after the receipt (unchanged when not applied).
        applied: False for a duplicate or out-of-order receipt, which never
            moves a message backwards.
    """

    message: Message
    applied: bool


@attrs.frozen(kw_only=True)
class TenantLine:
    """An organization's own WhatsApp line settings (either part may be unset).

    Attributes:
        phone_number_id: the Meta phone number id the organization sends from.
        access_token_enc: its Graph token, encrypted (:class:`commtunnel.crypto.SecretBox`).
    """

    org_id: str
    phone_number_id: str | None
    access_token_enc: str | None = attrs.field(repr=False)
    updated_at: datetime = attrs.field(validator=_aware)


@attrs.frozen(kw_only=True)
class LineState:
    """Why a line is not simply active.

    Attributes:
        state: ``ACTIVE``, ``PAUSED`` (no sends: e.g. its token expired) or
            ``FLAGGED`` (Meta reported a spam or policy block; sends continue).
        reason: the Graph error that caused it.
        token_fingerprint: :func:`commtunnel.crypto.fingerprint` of the token in
            use when the line was paused; a different token un-pauses it.
    """

    phone_number_id: str
    state: str
    reason: str | None
    token_fingerprint: str | None
    updated_at: datetime = attrs.field(validator=_aware)


#: a value of :meth:`WhatsAppStorage.set_line` that leaves the stored part as it is.
KEEP = object()


# --------------------------------------------------------------------------- ports


class Storage(Protocol):
    """Durable records of organizations, keys, senders, templates, messages, events.

    Every read that takes ``org_id`` is scoped to it: another organization's
    record is answered as None, exactly like one that never existed.
    """

    async def open(self) -> None:
        """Connect and create or migrate the schema."""
        ...

    async def aclose(self) -> None:
        """Release connections; pending writes are committed first."""
        ...

    # organizations
    async def create_org(self, org: Organization) -> None:
        """Store ``org``. Raises ConflictError when the name is taken."""
        ...

    async def get_org(
        self, *, org_id: str | None = None, name: str | None = None
    ) -> Organization | None:
        """Look an organization up by id or by name."""
        ...

    async def list_orgs(self) -> list[Organization]:
        """All organizations, oldest first."""
        ...

    # API keys
    async def create_api_key(self, key: ApiKey) -> None:
        """Store a key record (hash only)."""
        ...

    async def get_api_key_by_hash(self, key_hash: str) -> ApiKey | None:
        """The key record with this hash, revoked or not."""
        ...

    async def list_api_keys(self, org_id: str) -> list[ApiKey]:
        """Keys of one organization, oldest first."""
        ...

    async def revoke_api_key(self, org_id: str, key_id: str, at: datetime) -> bool:
        """Mark a key revoked; False when there is no such key in the organization."""
        ...

    # senders and templates
    async def add_sender(self, sender: Sender) -> Sender:
        """Add a verified sender; adding an existing value returns the existing one."""
        ...

    async def list_senders(self, org_id: str) -> list[Sender]:
        """Verified senders of one organization."""
        ...

    async def is_sender_verified(self, org_id: str, address: str, domain: str) -> bool:
        """Whether the organization verified ``address`` itself or its whole ``domain``."""
        ...

    async def create_template(self, template: Template) -> None:
        """Store a template. Raises ConflictError when the name is taken in the organization."""
        ...

    async def get_template(self, org_id: str, template_id: str) -> Template | None:
        """One template of the organization, by id."""
        ...

    async def list_templates(self, org_id: str) -> list[Template]:
        """Templates of one organization, oldest first."""
        ...

    # messages
    async def accept(
        self,
        message: Message,
        event: TimelineEvent,
        *,
        run_at: datetime,
        idempotency: IdempotencyRecord | None,
        cooldown: CooldownClaim | None = None,
    ) -> AcceptResult:
        """Commit a new message, its first event and its dispatch job in one transaction.

        With ``idempotency``, the key's unique constraint decides: an existing,
        unexpired key with the same endpoint and fingerprint returns the
        original message (``duplicate=True``, nothing written); a different
        endpoint or fingerprint returns ``conflict``; an expired key is replaced.
        With ``cooldown`` (checked after the idempotency key, so a replay is
        still answered as a duplicate), a running claim with the same key
        refuses the message (``cooldown_until`` set, nothing written).
        """
        ...

    async def find_replay(
        self, org_id: str, key: str, *, endpoint: str, fingerprint: str, now: datetime
    ) -> AcceptResult | None:
        """What an unexpired idempotency key already answers (read only).

        Services call it before their own checks, so a replay answers the
        original message even when, say, the recipient opted out since.
        :meth:`accept` still decides races.

        Returns:
            None for an unused or expired key; a duplicate; or a conflict.
        """
        ...

    async def get_message(self, org_id: str, message_id: str) -> Message | None:
        """One message of the organization."""
        ...

    async def list_events(self, org_id: str, message_id: str, limit: int) -> list[TimelineEvent]:
        """The first ``limit`` events of a message, oldest first."""
        ...

    async def list_attempts(self, org_id: str, message_id: str) -> list[Attempt]:
        """Every provider attempt of a message, in order."""
        ...

    async def stats(
        self,
        org_id: str,
        channel: Channel,
        start: datetime,
        end: datetime,
        *,
        include_bots: bool = False,
    ) -> tuple[dict[str, int], dict[str, int], EngagementCounts]:
        """Counts for ``[start, end)``.

        Returns:
            (messages created in the window by status, events in the window by
            type, opens and clicks in the window: totals and distinct messages,
            without events whose ``details.isBot`` is true unless ``include_bots``).
        """
        ...

    async def append_event(self, event: TimelineEvent) -> TimelineEvent:
        """Write an event that changes no status (``email_opened``), with its webhook fan-out.

        Returns:
            The event as written: ``details["first"]`` is True when the event
            is not a bot's (``details["isBot"]``) and the message had no
            earlier non-bot event of the same type, decided atomically with the write.
        """
        ...

    async def instance_secret(self, name: str, candidate: str, at: datetime) -> str:
        """The server-made secret called ``name``, storing ``candidate`` if there is none yet.

        Every process on one database gets the same value (the first stored wins).
        """
        ...


class Queue(Protocol):
    """The dispatch-job queue. Jobs are written by :meth:`Storage.accept`."""

    async def claim(
        self,
        *,
        worker_id: str,
        now: datetime,
        lease_seconds: float,
        limit: int,
        processing_event: Callable[[Message, int], TimelineEvent],
        message_id: str | None = None,
    ) -> list[ClaimedJob]:
        """Lease up to ``limit`` due jobs (run_at <= now, no live lease).

        With ``message_id``, only that message's job is leased, due or not (a
        synchronous hand-off); an empty list when another worker holds it.

        Each claimed message moves to PROCESSING with the event built by
        ``processing_event(message, attempt_number)``, in the same transaction;
        a SCHEDULED message whose time came gets a ``<channel>_queued`` event
        (``details.scheduled``) before it, as the status machine goes
        SCHEDULED -> QUEUED -> PROCESSING.
        """
        ...

    async def complete(self, completion: Completion) -> bool:
        """Record an attempt's result atomically, if the lease is still ours.

        Returns False (and writes nothing) when the lease was lost to another
        worker after expiring.
        """
        ...

    async def wait_for_work(self, max_wait: float) -> None:
        """Return when new work may be due, or after ``max_wait`` seconds."""
        ...

    async def leased_job_count(self) -> int:
        """Jobs currently holding a lease (for health checks and tests)."""
        ...

    async def pending_job_count(self) -> int:
        """Jobs not yet finished (leased or waiting)."""
        ...


@runtime_checkable
class EmailProvider(Protocol):
    """Delivers one email. Plugins implement this (see ``ADDING_PROVIDERS.md``).

    ``send_email`` must not raise for delivery problems: it returns a
    classified :class:`ProviderResult`. The worker still guards against
    exceptions, classifying them as transient ``UNKNOWN``.
    """

    name: str

    async def send_email(self, email: OutgoingEmail) -> ProviderResult:
        """Hand ``email`` to the provider and classify the outcome."""
        ...

    async def aclose(self) -> None:
        """Close connections and pools."""
        ...


@runtime_checkable
class SmsProvider(Protocol):
    """Delivers one SMS (MT). Plugins implement this (see ``ADDING_PROVIDERS.md``).

    ``send_sms`` must not raise for delivery problems: it returns a classified
    :class:`ProviderResult` (the provider's message id when accepted).
    """

    name: str

    async def send_sms(self, sms: OutgoingSms) -> ProviderResult:
        """Hand ``sms`` to the provider and classify the outcome."""
        ...

    def parse_status_callback(
        self, *, url: str, headers: Mapping[str, str], body: bytes
    ) -> list[DeliveryReceipt]:
        """Verify and parse a signed status callback the provider POSTed to us.

        Args:
            url: the full URL the callback was POSTed to, as the provider saw it
                (signatures such as Twilio's cover it).
            headers: request headers (case-insensitive mapping).
            body: the raw request body.

        Returns:
            The receipts it carries (usually one).

        Raises:
            WebhookSignatureError: the signature is missing or wrong.
            ValidationError: the body is not a status callback this provider sends.
            NotFoundError: the provider has no signed status callbacks.
        """
        ...

    async def aclose(self) -> None:
        """Close connections."""
        ...


class SmsStorage(Protocol):
    """Durable records of the SMS channel; every org-scoped read is scoped like :class:`Storage`."""

    # sender IDs and OTP brands
    async def create_sender_id_request(self, request: SenderIdRequest) -> None:
        """Store a PENDING request.

        Raises:
            ConflictError: the organization already has a pending or approved
                request for the same value and flow (compared case-insensitively).
        """
        ...

    async def get_sender_id_request(self, request_id: str) -> SenderIdRequest | None:
        """One request by id, in any organization (platform review)."""
        ...

    async def list_sender_id_requests(
        self, *, org_id: str | None, status: str | None, flow: str | None
    ) -> list[SenderIdRequest]:
        """Requests of one organization (or all, for ``None``), oldest first."""
        ...

    async def review_sender_id_request(
        self,
        request_id: str,
        *,
        status: str,
        review_reason: str | None,
        reviewed_by: str,
        at: datetime,
    ) -> SenderIdRequest | None:
        """Move a PENDING request to ``status``; None when it is not PENDING (or absent)."""
        ...

    async def is_sender_id_approved(self, org_id: str, sender_id: str, flow: str) -> bool:
        """Whether ``sender_id`` is approved for ``flow`` (case-insensitive)."""
        ...

    # opt-outs
    async def add_opt_out(self, opt_out: OptOut, event: TimelineEvent) -> bool:
        """Add a number with its ``sms_opt_out`` event; False (nothing written) if listed."""
        ...

    async def remove_opt_out(self, org_id: str, phone: str, event: TimelineEvent) -> bool:
        """Remove a number and record the event together; False (nothing written) if absent."""
        ...

    async def is_opted_out(self, org_id: str, phone: str) -> bool:
        """Whether the number is on the organization's opt-out list."""
        ...

    async def list_opt_outs(
        self, org_id: str, *, offset: int, limit: int
    ) -> tuple[list[OptOut], int]:
        """(a page of opt-outs, newest first; the total count)."""
        ...

    async def has_sent_sms_to(self, org_id: str, phone: str) -> bool:
        """Whether the organization ever queued an SMS to the number."""
        ...

    # webhook tokens, inbound
    async def set_sms_token(self, org_id: str, token: str, at: datetime) -> None:
        """Store (or replace) the organization's inbound-webhook token."""
        ...

    async def get_sms_token(self, org_id: str) -> str | None:
        """The organization's current token, if any."""
        ...

    async def org_for_sms_token(self, token: str) -> str | None:
        """The organization holding this token."""
        ...

    async def add_inbound(self, message: InboundMessage) -> bool:
        """Store one received MO message; False when a message with its id is stored already."""
        ...

    async def list_inbound(
        self, org_id: str, channel: Channel, *, offset: int, limit: int
    ) -> tuple[list[InboundMessage], int]:
        """(a page of inbound messages, newest first; the total count)."""
        ...

    # messages
    async def list_sms(
        self,
        org_id: str,
        *,
        flow: str | None,
        status: str | None,
        query: str | None,
        offset: int,
        limit: int,
    ) -> SmsPage:
        """SMS of the organization, newest first, filtered; ``query`` matches
        recipient, body or id (substring, case-insensitive)."""
        ...

    async def find_by_provider_message_id(
        self, channel: Channel, provider_message_id: str
    ) -> Message | None:
        """The message a provider knows by this id (any organization)."""
        ...

    async def apply_receipt(
        self,
        message_id: str,
        *,
        new_status: Status,
        allowed_from: frozenset[Status],
        event: TimelineEvent,
    ) -> ReceiptOutcome | None:
        """Move the message to ``new_status`` with ``event`` if its current status
        is in ``allowed_from``; otherwise change nothing. None for an unknown id."""
        ...

    async def requeue(
        self, org_id: str, message_id: str, *, event: TimelineEvent, run_at: datetime
    ) -> tuple[Message, bool] | None:
        """FAILED -> QUEUED with ``event`` and a new job, atomically.

        Returns:
            (the message, True) when re-queued; (the unchanged message, False)
            when it was not FAILED; None when there is no such message.
        """
        ...

    async def set_otp_ignores_opt_out(self, org_id: str, value: bool) -> bool:
        """Set the organization's OTP opt-out policy; False for an unknown organization."""
        ...


@runtime_checkable
class WhatsAppProvider(Protocol):
    """Sends WhatsApp Cloud messages (Graph ``POST /{version}/{phone-number-id}/messages``).

    ``send_whatsapp`` must not raise for delivery problems: it returns a
    classified :class:`ProviderResult` whose ``provider_message_id`` is the
    ``wamid.…`` Meta returned. Categories with consequences for the line or
    the recipient: ``AUTH`` (token expired, Graph error 190: the line is
    paused), ``POLICY_BLOCKED`` (the line is flagged), ``RECIPIENT_OPTED_OUT``
    (an opt-out is recorded), ``TEMPLATE_REQUIRED`` (the 24-hour window closed).
    """

    name: str

    async def send_whatsapp(self, message: OutgoingWhatsApp) -> ProviderResult:
        """Hand ``message`` to Graph and classify the outcome."""
        ...

    async def aclose(self) -> None:
        """Close connections."""
        ...


class WhatsAppStorage(Protocol):
    """Durable records of the WhatsApp channel: tenant lines, line states, opt-outs.

    Receipts, re-queues and inbound messages use the channel-neutral methods of
    :class:`SmsStorage` (``apply_receipt``, ``requeue``, ``add_inbound`` ...).
    """

    async def get_line(self, org_id: str) -> TenantLine | None:
        """The organization's own line settings, if it has any."""
        ...

    async def set_line(
        self,
        org_id: str,
        *,
        phone_number_id: str | object | None = KEEP,
        access_token_enc: str | object | None = KEEP,
        at: datetime,
    ) -> TenantLine:
        """Change one or both parts (None clears, :data:`KEEP` leaves it).

        Raises:
            WhatsAppLineInUseError: another organization holds ``phone_number_id``.
        """
        ...

    async def org_for_phone_number_id(self, phone_number_id: str) -> str | None:
        """The organization whose own line has this phone number id."""
        ...

    async def get_line_state(self, phone_number_id: str) -> LineState | None:
        """The recorded state of a line (None: never paused or flagged)."""
        ...

    async def set_line_state(
        self,
        phone_number_id: str,
        *,
        state: str,
        reason: str | None,
        token_fingerprint: str | None,
        event: TimelineEvent,
    ) -> bool:
        """Record a line's state with its organization-level event; False if unchanged."""
        ...

    async def add_opt_out(self, opt_out: OptOut, event: TimelineEvent) -> bool:
        """Record a number Meta says stopped marketing messages; False if already listed."""
        ...

    async def is_opted_out(self, org_id: str, phone: str) -> bool:
        """Whether the number is on the organization's WhatsApp opt-out list."""
        ...


# --------------------------------------------------------------------------- webhooks


@attrs.frozen(kw_only=True)
class ClaimedDelivery:
    """A webhook delivery leased to one worker, with what its attempt needs.

    Attributes:
        delivery: the delivery as claimed (``attempt_count`` not yet increased).
        endpoint: its endpoint (may be disabled since the fan-out).
        event: the timeline event, None for a delivery that carries its own
            ``payload`` (``webhook.test``) or whose event was purged.
        recipient: the ``to`` of the event's message, None without a message.
        lease_token: proves the lease when the attempt is recorded.
    """

    delivery: WebhookDelivery
    endpoint: WebhookEndpoint
    event: TimelineEvent | None
    recipient: str | None
    lease_token: str


@attrs.frozen(kw_only=True)
class DeliveryCompletion:
    """The result of one attempt, recorded in one transaction.

    Attributes:
        claimed: the claim the attempt was made under.
        attempt: the attempt's log entry.
        status: the delivery's new status (PENDING again for a retry).
        next_attempt_at: UTC time of the retry, None unless PENDING.
        last_error: short text of the failure, None on success.
        endpoint_failing_since: the endpoint's new ``failing_since``
            (None: healthy again).
        disable_endpoint: a reason (``gone``, ``failing``) to disable the
            endpoint now, with ``disabled_event`` written beside it; None to
            leave it as it is.
        disabled_event: the ``endpoint_disabled`` organization-level event
            (fanned out to the organization's other endpoints).
    """

    claimed: ClaimedDelivery
    attempt: WebhookAttempt
    status: DeliveryStatus
    next_attempt_at: datetime | None = attrs.field(default=None, validator=_aware)
    last_error: str | None = None
    endpoint_failing_since: datetime | None = attrs.field(default=None, validator=_aware)
    disable_endpoint: str | None = None
    disabled_event: TimelineEvent | None = None


@attrs.frozen(kw_only=True)
class DeliveryPage:
    """One page of deliveries, newest first, each with its attempts (oldest first).

    Attributes:
        items: (delivery, attempts) pairs.
        next_cursor: the id to pass as ``before`` for the next page, None on the last.
    """

    items: list[tuple[WebhookDelivery, list[WebhookAttempt]]]
    next_cursor: str | None


class WebhookStorage(Protocol):
    """Customer webhook endpoints, their deliveries and attempts.

    Every timeline event written through any storage method fans out, in the
    same transaction, to one PENDING delivery (due at the event's time) per
    enabled endpoint of its organization whose filter matches; this port
    holds the rest. Secrets are stored as given (the service encrypts them
    when the server has ``COMMTUNNEL_SECRET_KEY``).
    """

    async def create_endpoint(self, endpoint: WebhookEndpoint) -> None:
        """Store a new endpoint."""
        ...

    async def get_endpoint(self, org_id: str, endpoint_id: str) -> WebhookEndpoint | None:
        """One endpoint of the organization."""
        ...

    async def list_endpoints(self, org_id: str) -> list[WebhookEndpoint]:
        """Every endpoint of the organization, oldest first."""
        ...

    async def update_endpoint(
        self, org_id: str, endpoint_id: str, changes: Mapping[str, Any], at: datetime
    ) -> WebhookEndpoint | None:
        """Set only the named fields and ``updated_at``; other fields keep what is stored.

        Args:
            changes: attribute name -> value among ``url``, ``description``,
                ``events``, ``enabled``, ``failing_since``, ``disabled_at``,
                ``disabled_reason``.

        Returns:
            The endpoint afterwards, None if it does not exist.
        """
        ...

    async def rotate_secret(
        self, org_id: str, endpoint_id: str, *, secret: str, previous_until: datetime, at: datetime
    ) -> WebhookEndpoint | None:
        """Make ``secret`` current and the stored one previous until ``previous_until``, atomically.

        Returns:
            The endpoint afterwards, None if it does not exist.
        """
        ...

    async def delete_endpoint(self, org_id: str, endpoint_id: str) -> bool:
        """Delete an endpoint with its deliveries and attempts; False if absent."""
        ...

    async def add_delivery(self, delivery: WebhookDelivery) -> None:
        """Store a delivery made outside the fan-out (a test event, a replay)."""
        ...

    async def get_delivery(self, org_id: str, delivery_id: str) -> WebhookDelivery | None:
        """One delivery of the organization."""
        ...

    async def list_deliveries(
        self,
        org_id: str,
        *,
        endpoint_id: str | None = None,
        message_id: str | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> DeliveryPage:
        """Deliveries newest first, filtered by endpoint and/or message, with their attempts.

        Args:
            before: a delivery id from the previous page's ``next_cursor``.
        """
        ...

    async def claim_deliveries(
        self, *, now: datetime, limit: int, lease_seconds: float
    ) -> list[ClaimedDelivery]:
        """Lease up to ``limit`` PENDING deliveries due at ``now``, oldest due first.

        A delivery whose lease expired (its worker died mid-attempt) is due again.
        """
        ...

    async def complete_delivery(self, completion: DeliveryCompletion) -> bool:
        """Record an attempt and its consequences; False if the lease was lost."""
        ...

    async def next_delivery_at(self) -> datetime | None:
        """When the earliest PENDING delivery is due (None: there is none)."""
        ...


@attrs.frozen(kw_only=True)
class WebhookAnswer:
    """What an endpoint answered to one webhook POST.

    Attributes:
        status_code: the HTTP status, None when no answer came (timeout,
            connection error, refused address).
        body: the first :data:`~commtunnel.domain.webhooks.RESPONSE_BODY_LIMIT`
            bytes of the (decoded) answer, as UTF-8 text with replacement.
        error: why the attempt failed (``HTTP 500``, ``timeout after 15 s``,
            ``refused: ...``), None for a 2xx.
        retry_after: the ``Retry-After`` header as sent, if any.
    """

    status_code: int | None
    body: str = ""
    error: str | None = None
    retry_after: str | None = None


class WebhookSender(Protocol):
    """Sends webhook requests, and decides which URLs may be sent to (the SSRF guard).

    An implementation resolves the host once per request, refuses it when
    any address is not allowed, and connects to an address it checked, so
    a DNS answer that changes between the check and the connection
    (rebinding) cannot reach a private address.
    """

    async def check_url(self, url: str) -> str | None:
        """Why ``url`` may not be sent to now (e.g. ``loopback address 127.0.0.1``), or None."""
        ...

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> WebhookAnswer:
        """POST ``body`` once, within the sender's timeout; never raises for network failures."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


class RoutingStorage(Protocol):
    """What provider routing reads and writes (``services/routing.py``)."""

    async def last_attempt(self, message_id: str) -> Attempt | None:
        """The message's latest attempt (highest number), None before the first."""
        ...

    async def report_provider_health(self, reports: Sequence[ProviderHealth]) -> None:
        """Store each provider's latest health report (one row per channel and provider)."""
        ...

    async def list_provider_health(self) -> list[ProviderHealth]:
        """Every provider's latest report, by channel then provider name."""
        ...


# --------------------------------------------------------------------------- listing, retention


@attrs.frozen(kw_only=True)
class MessageQuery:
    """One page of a message listing: the organization, the filters (AND), where to start.

    Attributes:
        org_id: only this organization's messages.
        channels: only these channels (never empty).
        status: only messages in this status now; None: any.
        created_after / created_before: inclusive bounds on ``created_at`` (UTC); None: open.
        to_address: only email messages to this addr-spec, compared with the
            recipient's addr-spec case-insensitively (ASCII letters); None: any.
        to_phone: only SMS / WhatsApp messages to this E.164 number; None: any.
        after: list only messages strictly after this position in the order
            ``(created_at DESC, id DESC)`` (the previous page's last item); None: from the newest.
        limit: the most messages returned (>= 1).
    """

    org_id: str
    channels: frozenset[Channel]
    status: Status | None = None
    created_after: datetime | None = attrs.field(default=None, validator=_aware)
    created_before: datetime | None = attrs.field(default=None, validator=_aware)
    to_address: str | None = None
    to_phone: str | None = None
    after: Position | None = None
    limit: int = 20


class ListingStorage(Protocol):
    """Message listings across channels, newest first (keyset pagination)."""

    async def list_messages(self, query: MessageQuery) -> list[tuple[Message, list[Attempt]]]:
        """Up to ``query.limit`` messages matching every filter, newest first.

        Returns:
            (message, its attempts in order) pairs, ordered by ``(created_at,
            id)`` descending; the attempts of the whole page are read at once.
        """
        ...


@attrs.frozen(kw_only=True)
class PurgeCounts:
    """Rows one purge deleted (or, for a dry run, would delete), per table.

    Attributes:
        messages / events / attempts: messages, their timeline events
            (organization-level ones too) and provider attempts.
        webhook_deliveries / webhook_attempts: customer-webhook deliveries of
            the purged messages and old organization-level ones, with their attempts.
        inbound_messages: received SMS / WhatsApp (MO) messages.
        idempotency_keys: keys whose window has passed.
        email_batches: batch answers kept for idempotent replays.
    """

    messages: int = 0
    events: int = 0
    attempts: int = 0
    webhook_deliveries: int = 0
    webhook_attempts: int = 0
    inbound_messages: int = 0
    idempotency_keys: int = 0
    email_batches: int = 0

    def __add__(self, other: PurgeCounts) -> PurgeCounts:
        return PurgeCounts(
            **{
                name: getattr(self, name) + getattr(other, name)
                for name in attrs.fields_dict(PurgeCounts)
            }
        )

    @property
    def total(self) -> int:
        """Rows of every table together."""
        return sum(attrs.astuple(self))


@attrs.frozen(kw_only=True)
class PurgeCutoffs:
    """What one purge removes: everything created (or expiring) before these instants.

    Attributes:
        records: messages (without a job left), their events, attempts and
            webhook deliveries, organization-level events and deliveries, and
            inbound messages created before it (now - ``retention``).
        now: idempotency keys whose ``expires_at`` is at or before it go.
        batches: email batch answers created before it (now - idempotency retention) go.
    """

    records: datetime = attrs.field(validator=_aware)
    now: datetime = attrs.field(validator=_aware)
    batches: datetime = attrs.field(validator=_aware)


class RetentionStorage(Protocol):
    """Deletes what is past its retention, one short transaction per batch.

    Each method deletes at most ``limit`` rows of its main table (plus, for
    messages, their dependent rows) and answers how many; a caller repeats a
    call until it answers fewer than ``limit``.
    """

    async def purge_messages(self, before: datetime, limit: int) -> PurgeCounts:
        """Delete up to ``limit`` messages created before ``before`` that have no job.

        A message with a job (scheduled, queued, retrying) is kept whatever its
        age; with each deleted message go its events, attempts and webhook
        deliveries (with their attempts).
        """
        ...

    async def purge_others(self, cutoffs: PurgeCutoffs, limit: int) -> PurgeCounts:
        """Delete up to ``limit`` rows of each other table past its cutoff.

        Organization-level events and webhook deliveries (no message) and
        inbound messages created before ``cutoffs.records``, idempotency keys
        expired at ``cutoffs.now``, email batches created before ``cutoffs.batches``.
        """
        ...

    async def count_purgeable(self, cutoffs: PurgeCutoffs) -> PurgeCounts:
        """What :meth:`purge_messages` and :meth:`purge_others` would delete now (a dry run)."""
        ...


# --------------------------------------------------------------------------- scheduling, batches


@attrs.frozen(kw_only=True)
class NewMessage:
    """One message to accept: the message, its first event, when its job comes due.

    Attributes:
        message: the message (QUEUED, or SCHEDULED with ``scheduled_at``).
        event: its first timeline event (``<channel>_queued`` / ``_scheduled``).
        run_at: when its dispatch job comes due (UTC): now, or ``scheduled_at``.
    """

    message: Message
    event: TimelineEvent
    run_at: datetime = attrs.field(validator=_aware)


@attrs.frozen(kw_only=True)
class EmailBatch:
    """A batch send's answer as stored, for idempotent replays.

    Attributes:
        id: the batch id (UUIDv7).
        org_id: the sending organization.
        items: one JSON-ready object per item, in request order:
            ``{"index": i, "id": message id}`` for an accepted item,
            ``{"index": i, "error": {"error", "code", "details"}}`` for a refused one.
        created_at: when it was accepted (UTC).
    """

    id: str
    org_id: str
    items: list[dict[str, Any]]
    created_at: datetime = attrs.field(validator=_aware)


@attrs.frozen(kw_only=True)
class BatchAcceptResult:
    """What :meth:`SchedulingStorage.accept_batch` did.

    Exactly one of: the new ``batch`` (duplicate False); the ``batch`` an
    earlier request with the same key stored (duplicate True); or a
    ``conflict`` with a key used for another payload or endpoint.
    """

    batch: EmailBatch | None
    duplicate: bool = False
    conflict: IdempotencyRecord | None = None


class SchedulingStorage(Protocol):
    """Cancelling scheduled or queued messages, and accepting email batches atomically."""

    async def cancel(
        self,
        org_id: str,
        message_id: str,
        *,
        event: TimelineEvent,
        cancelable: frozenset[Status],
    ) -> tuple[Message, bool] | None:
        """Move the message to CANCELED with ``event`` and delete its job, atomically.

        Only while its status is in ``cancelable`` (decided inside the write's
        transaction); a message a worker has claimed is PROCESSING, so it is
        never cancelled mid-send. The event's details gain ``previousStatus``.

        Returns:
            (the cancelled message, True); (the unchanged message, False) when
            its status is not cancelable; None when the organization has no
            such message.
        """
        ...

    async def accept_batch(
        self,
        batch: EmailBatch,
        messages: Sequence[NewMessage],
        *,
        idempotency: IdempotencyRecord | None,
    ) -> BatchAcceptResult:
        """Commit the batch answer and every message with its first event and job, in one
        transaction: all of them or, when any write fails, none.

        ``idempotency.message_id`` is the batch id. An existing, unexpired key
        with the same endpoint and fingerprint returns the stored batch
        (``duplicate=True``, nothing written); another endpoint or fingerprint
        returns ``conflict``; an expired key is replaced.
        """
        ...

    async def find_batch_replay(
        self, org_id: str, key: str, *, endpoint: str, fingerprint: str, now: datetime
    ) -> BatchAcceptResult | None:
        """What an unexpired idempotency key already answers for a batch (read only).

        Returns:
            None for an unused or expired key (or a batch no longer stored); the
            stored batch as a duplicate; or a conflict (another payload, or a
            key used by a single send).
        """
        ...


# --------------------------------------------------------------------------- access (IP, rate)


@attrs.frozen(kw_only=True)
class OrgAccess:
    """An organization's access settings.

    Attributes:
        ip_allowlist: CIDR networks its API keys may call from (normalized,
            e.g. ``203.0.113.0/24``); None: any address.
        rate_limit: its keys' request limit in ``limits`` notation
            (``500/minute``); None: the server default (``COMMTUNNEL_RATE_LIMIT``).
    """

    org_id: str
    ip_allowlist: tuple[str, ...] | None = None
    rate_limit: str | None = None


@attrs.frozen(kw_only=True)
class AccessPolicy:
    """What one API key's request is checked against (its organization's settings and its own).

    Attributes:
        ip_allowlist: the organization's networks, None for any address.
        org_rate_limit: the organization's limit, None for the server default.
        key_rate_limit: the key's own limit, None for the organization's.
    """

    ip_allowlist: tuple[str, ...] | None
    org_rate_limit: str | None
    key_rate_limit: str | None


class AccessStorage(Protocol):
    """IP allowlists and request limits of organizations and keys."""

    async def access_policy(self, key_id: str) -> AccessPolicy | None:
        """The settings a request with key ``key_id`` is checked against (None: no such key)."""
        ...

    async def get_org_access(self, org_id: str) -> OrgAccess | None:
        """One organization's settings (None: no such organization)."""
        ...

    async def list_org_access(self) -> dict[str, OrgAccess]:
        """Every organization's settings, by organization id."""
        ...

    async def set_org_access(
        self,
        org_id: str,
        *,
        ip_allowlist: tuple[str, ...] | object | None = KEEP,
        rate_limit: str | object | None = KEEP,
    ) -> bool:
        """Change one or both settings (None clears, :data:`KEEP` leaves it).

        Returns:
            False when there is no such organization.
        """
        ...

    async def set_key_rate_limit(self, org_id: str, key_id: str, rate_limit: str | None) -> bool:
        """Set (None: clear) a key's own limit; False when the organization has no such key."""
        ...

    async def key_rate_limits(self, org_id: str) -> dict[str, str]:
        """The keys of the organization that have their own limit: key id -> limit."""
        ...


class SuppressionStorage(Protocol):
    """The email suppression list and the email events webhook's tokens.

    Every method is scoped to one organization. ``now`` decides which entries
    are active: an entry whose ``expires_at`` is at or before ``now`` is
    treated as absent by every read and by :meth:`remove_suppression`, and
    is replaced by :meth:`add_suppression`.
    """

    async def add_suppression(
        self, suppression: Suppression, event: TimelineEvent
    ) -> tuple[Suppression, bool]:
        """List an address, with its event, unless an entry that blocks as long is there.

        The check and the write are one transaction; the rule is
        :func:`~commtunnel.domain.suppressions.supersedes` at ``suppression.created_at``.

        Returns:
            (the entry now stored, True when ``suppression`` was written with
            its event; False when the existing entry was kept and nothing written).
        """
        ...

    async def remove_suppression(
        self, org_id: str, address: str, *, now: datetime, event: TimelineEvent
    ) -> Suppression | None:
        """Delete an active entry with its event; the deleted entry, or None (nothing written)."""
        ...

    async def get_suppression(
        self, org_id: str, address: str, *, now: datetime
    ) -> Suppression | None:
        """The active entry for a normalized address, or None."""
        ...

    async def suppression_reason(self, org_id: str, address: str, *, now: datetime) -> str | None:
        """The active entry's reason for a normalized address, or None (the send path's check)."""
        ...

    async def list_suppressions(
        self, org_id: str, *, now: datetime, reason: str | None, offset: int, limit: int
    ) -> tuple[list[Suppression], int]:
        """(``limit`` active entries from the ``offset``-th, newest first; their total count)."""
        ...

    async def set_email_events_token(self, org_id: str, token: str, at: datetime) -> None:
        """Store or replace the organization's email events webhook token."""
        ...

    async def get_email_events_token(self, org_id: str) -> str | None:
        """The organization's current email events webhook token."""
        ...

    async def org_for_email_events_token(self, token: str) -> str | None:
        """The organization holding this token."""
        ...
