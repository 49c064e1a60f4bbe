"""Ports: the only ways the services reach the outside world.

Each port is a small ``typing.Protocol``. Implementations live in
``backends/`` (Storage, Queue), ``providers/`` (EmailProvider) and
``clock.py`` / ``testing.py`` (Clock). A contract test suite runs against
every implementation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

import attrs

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
        ``processing_event(message, attempt_number)``, in the same transaction.
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
