"""Messages, their status machine and delivery attempts (pure rules, no I/O).

The status machine follows ``../shared/DESIGN.md`` ("Status machine")::

    SCHEDULED -> QUEUED -> PROCESSING -> SENT -> DELIVERED (-> READ, WhatsApp)
        |          |          |  ^
        v          v          v  |
        CANCELED <-+       RETRYING             FAILED / BOUNCED are terminal

CANCELED (a cancel while the message was still SCHEDULED or QUEUED) is
terminal too; it is not in DESIGN.md's list, which has no cancel.

Every transition is recorded as a timeline event (see ``events.py``); callers
obtain the event type with :func:`event_for` so the status is never set
without one.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

import attrs

from commtunnel.domain.errors import InvalidTransitionError


def _aware(_instance: object, attribute: attrs.Attribute[Any], value: datetime | None) -> None:
    """attrs validator: datetimes must carry a timezone (UTC inside Commtunnel)."""
    if value is not None and value.tzinfo is None:
        raise ValueError(f"{attribute.name} must be timezone-aware, got naive {value!r}")


class Channel(enum.StrEnum):
    """A delivery channel; the value is the wire spelling and the event prefix."""

    EMAIL = "email"
    SMS = "sms"
    WHATSAPP = "whatsapp"


class Status(enum.StrEnum):
    """Delivery status of a message (wire spelling: upper case)."""

    SCHEDULED = "SCHEDULED"
    QUEUED = "QUEUED"
    PROCESSING = "PROCESSING"
    RETRYING = "RETRYING"
    SENT = "SENT"
    DELIVERED = "DELIVERED"
    READ = "READ"
    FAILED = "FAILED"
    BOUNCED = "BOUNCED"
    CANCELED = "CANCELED"

    @property
    def is_final(self) -> bool:
        """True for statuses after which the worker does nothing more."""
        return self in _FINAL


_FINAL = frozenset(
    {Status.SENT, Status.DELIVERED, Status.READ, Status.FAILED, Status.BOUNCED, Status.CANCELED}
)

# from-status -> statuses it may move to. PROCESSING -> PROCESSING is a re-claim
# after a lease expired (the worker that held it died); it is recorded too.
TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.SCHEDULED: frozenset({Status.QUEUED, Status.CANCELED}),
    Status.QUEUED: frozenset({Status.PROCESSING, Status.CANCELED}),
    Status.PROCESSING: frozenset(
        {Status.PROCESSING, Status.SENT, Status.RETRYING, Status.FAILED, Status.BOUNCED}
    ),
    Status.RETRYING: frozenset({Status.PROCESSING, Status.FAILED}),
    Status.SENT: frozenset({Status.DELIVERED, Status.BOUNCED, Status.READ, Status.FAILED}),
    Status.DELIVERED: frozenset({Status.READ, Status.BOUNCED}),
    Status.READ: frozenset(),
    Status.FAILED: frozenset({Status.QUEUED}),  # an explicit retry re-queues a failed message
    Status.BOUNCED: frozenset(),
    Status.CANCELED: frozenset(),
}

# The timeline event suffix recorded when a message enters a status.
_EVENT_SUFFIX: dict[Status, str] = {
    Status.SCHEDULED: "scheduled",
    Status.QUEUED: "queued",
    Status.PROCESSING: "processing",
    Status.RETRYING: "retrying",
    Status.SENT: "sent",
    Status.DELIVERED: "delivered",
    Status.READ: "read",
    Status.FAILED: "failed",
    Status.BOUNCED: "bounced",
    Status.CANCELED: "canceled",
}


def can_transition(current: Status, new: Status) -> bool:
    """Whether the status machine allows ``current -> new``."""
    return new in TRANSITIONS[current]


def check_transition(current: Status, new: Status) -> None:
    """Raise :class:`InvalidTransitionError` unless ``current -> new`` is allowed."""
    if not can_transition(current, new):
        raise InvalidTransitionError(
            f"Status cannot move from {current} to {new}",
            details={"from": str(current), "to": str(new)},
        )


# Where a provider holds the message; a delivery receipt can only speak of these.
_WITH_PROVIDER = frozenset({Status.SENT, Status.DELIVERED, Status.READ})
_RECEIPT_FROM: dict[Status, frozenset[Status]] = {
    new: frozenset(s for s in _WITH_PROVIDER if new in TRANSITIONS[s]) for new in Status
}


def receipt_allowed_from(new: Status) -> frozenset[Status]:
    """The statuses a delivery receipt saying ``new`` may move a message from.

    A receipt (an SMS DLR, a WhatsApp status webhook) moves a message forward
    along :data:`TRANSITIONS`, and only once the provider has it: a duplicate,
    a late ``delivered`` after ``read``, or a receipt that overtakes the
    worker's own record (the message still QUEUED or PROCESSING) changes nothing.

    Args:
        new: the status the receipt reports.

    Returns:
        A subset of SENT, DELIVERED and READ, e.g. ``{SENT, DELIVERED}`` for
        READ; empty when no receipt saying ``new`` moves a message (``SENT``:
        the worker recorded it when the provider accepted).
    """
    return _RECEIPT_FROM[new]


def event_for(channel: Channel, status: Status) -> str:
    """The event type recorded on entering ``status``, e.g. ``email_sent``."""
    return f"{channel}_{_EVENT_SUFFIX[status]}"


@attrs.frozen(kw_only=True)
class EmailContent:
    """The rendered content of one email, as accepted.

    Attributes:
        from_addr: the ``From`` header value (``addr`` or ``Name <addr>``), verified.
        to: the recipient (``addr`` or ``Name <addr>``).
        subject: at most 998 characters (RFC 5322 §2.1.1), no CR/LF.
        html: HTML body or None.
        text: plain-text body or None (at least one of html/text is set).
        message_id_header: the stable RFC 5322 ``Message-ID`` including angle brackets.
        template_id: the template rendered, if any.
        tracking: whether open/click tracking was asked for.
        unsubscribe: whether the email carries ``List-Unsubscribe`` and
            one-click ``List-Unsubscribe-Post`` headers (RFC 2369, RFC 8058).
        unsubscribe_url: the signed unsubscribe link those headers carry; set
            only on the copy handed to the provider at delivery, never stored.
    """

    from_addr: str
    to: str
    subject: str
    html: str | None
    text: str | None
    message_id_header: str
    template_id: str | None = None
    tracking: bool = False
    unsubscribe: bool = False
    unsubscribe_url: str | None = None


@attrs.frozen(kw_only=True)
class SmsContent:
    """The content of one SMS (MT), as accepted.

    Attributes:
        sender_id: the approved sender ID or OTP brand shown on the handset
            (alphanumeric <= 11 characters or numeric <= 16).
        to: the recipient in E.164 (``+`` and up to 15 digits, ITU-T E.164).
        body: the text, at most 1600 characters.
        send_type: 0 normal, 1 flash (class 0), 2 unicode (UCS-2 forced).
        encoding: ``GSM7`` or ``UCS2`` (3GPP TS 23.038).
        segments: parts the body is split into (3GPP TS 23.040 concatenation).
        flow: ``STANDARD`` or ``OTP``.
        purpose: the OTP purpose (``LOGIN``, ``PHONE_VERIFICATION``,
            ``PASSWORD_RESET``); None for standard messages.
    """

    sender_id: str
    to: str
    body: str
    send_type: int = 0
    encoding: str = "GSM7"
    segments: int = 1
    flow: str = "STANDARD"
    purpose: str | None = None


@attrs.frozen(kw_only=True)
class WhatsAppContent:
    """The content of one WhatsApp Cloud message (MT), as accepted.

    Attributes:
        to: the recipient in E.164 (Graph accepts the number with its
            country code, with or without ``+``).
        kind: ``text`` or ``template``.
        body: the text for ``text`` messages (at most 4096 characters, Meta's limit).
        template_name / template_language: an approved message template and
            its language code (e.g. ``en_US``) for ``template`` messages.
        template_variables: body parameters: a list (positional ``{{1}}``...)
            or a dict (named parameters); None for none.
        phone_number_id: the business line (Meta phone number id) it is sent from.
    """

    to: str
    kind: str
    body: str | None = None
    template_name: str | None = None
    template_language: str | None = None
    template_variables: list[str] | dict[str, str] | None = None
    phone_number_id: str | None = None


@attrs.frozen(kw_only=True)
class Message:
    """A message as stored: identity, ownership, state and content.

    Attributes:
        id: UUIDv7 string (time-ordered).
        org_id: owning organization id.
        channel: delivery channel.
        status: current status.
        sandbox: True for sandbox sends and ``ct_test_`` keys (never reaches a provider).
        email: content for the email channel.
        sms: content for the SMS channel.
        whatsapp: content for the WhatsApp channel.
        created_at / updated_at: UTC, timezone-aware.
        provider_message_id: the provider's reference once accepted.
        attempt_count: provider calls made so far.
        scheduled_at: when a scheduled send is due (UTC), None for "now".
    """

    id: str
    org_id: str
    channel: Channel
    status: Status
    sandbox: bool
    email: EmailContent | None
    created_at: datetime = attrs.field(validator=_aware)
    updated_at: datetime = attrs.field(validator=_aware)
    api_key_id: str | None = None
    provider_message_id: str | None = None
    attempt_count: int = 0
    last_error: str | None = None
    sms: SmsContent | None = None
    whatsapp: WhatsAppContent | None = None
    scheduled_at: datetime | None = attrs.field(default=None, validator=_aware)


@attrs.frozen(kw_only=True)
class Attempt:
    """One provider call for a message.

    Attributes:
        message_id: the message the attempt belongs to.
        number: 1 for the first attempt.
        provider: provider name (e.g. ``smtp``, ``outbox``, ``sandbox``).
        outcome: ``accepted``, ``transient`` or ``permanent``.
        error_category: an :class:`ErrorCategory` value, None when accepted.
        error_message: provider's explanation, truncated, no secrets.
        duration_ms: wall time of the call, milliseconds.
        started_at: UTC start time.
        status: the message's status the attempt left it in (``SENT``,
            ``RETRYING``, ``FAILED``, ``BOUNCED``); None for attempts
            recorded before schema v6.
    """

    message_id: str
    number: int
    provider: str
    outcome: str
    error_category: str | None
    error_message: str | None
    duration_ms: float
    started_at: datetime = attrs.field(validator=_aware)
    status: Status | None = None
