"""Ports: the only ways the services reach the outside world.

Each port is a small ``typing.Protocol``. Implementations live in
``backends/`` (Storage, Queue), ``providers/`` (EmailProvider) and
``clock.py`` / ``testing.py`` (Clock). A contract test suite runs against
every implementation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Protocol, runtime_checkable

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
    _aware,
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
    earlier request with the same key created (duplicate True); or a
    ``conflict`` with an existing key used for another payload or endpoint.
    """

    message: Message | None
    duplicate: bool = False
    conflict: IdempotencyRecord | None = None


@attrs.frozen(kw_only=True)
class ClaimedJob:
    """A dispatch job leased to one worker.

    Attributes:
        job_id: the job row id.
        lease_token: proves ownership when the result is recorded (fencing).
        lease_until: UTC time the lease expires and another worker may claim it.
        message: the message, already moved to PROCESSING.
        attempt_number: the number this attempt will carry (1 for the first).
    """

    job_id: str
    lease_token: str
    lease_until: datetime = attrs.field(validator=_aware)
    message: Message
    attempt_number: int


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
    ) -> AcceptResult:
        """Commit a new message, its first event and its dispatch job in one transaction.

        With ``idempotency``, the key's unique constraint decides: an existing,
        unexpired key with the same endpoint and fingerprint returns the
        original message (``duplicate=True``, nothing written); a different
        endpoint or fingerprint returns ``conflict``; an expired key is replaced.
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
        self, org_id: str, channel: Channel, start: datetime, end: datetime
    ) -> tuple[dict[str, int], dict[str, int]]:
        """Counts for messages created in ``[start, end)``: (by status, events by type)."""
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
    ) -> list[ClaimedJob]:
        """Lease up to ``limit`` due jobs (run_at <= now, no live lease).

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
