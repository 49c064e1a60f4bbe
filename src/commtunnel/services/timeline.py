"""Timeline events: the one place a status change and its event are put together.

DESIGN.md: every transition appends a timeline event and the status is never
set without one. :func:`status_event` builds the event for a message entering
a status (type ``<channel>_<status>`` from :func:`event_for`);
:func:`message_event` one that moves no status (an open, a click);
:func:`org_event` builds an organization-level event (an opt-out, a paused
line); :func:`apply_receipt` moves a message on a provider's delivery receipt
as far as the status machine allows.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from commtunnel.domain.events import TimelineEvent
from commtunnel.domain.messages import Message, Status, event_for, receipt_allowed_from
from commtunnel.ids import new_id
from commtunnel.ports import ReceiptOutcome, SmsStorage


def status_event(
    message: Message, status: Status, *, at: datetime, details: dict[str, Any] | None = None
) -> TimelineEvent:
    """The event recorded when ``message`` enters ``status``.

    Args:
        message: the message (its id, organization and channel are used).
        status: the status it moves to.
        at: when (UTC).
        details: event-specific data (attempt number, error, source ...).

    Returns:
        A new event of type ``<channel>_<status>``, e.g. ``sms_delivered``.
    """
    return TimelineEvent(
        id=new_id(),
        message_id=message.id,
        org_id=message.org_id,
        type=event_for(message.channel, status),
        status=status,
        created_at=at,
        details=details or {},
    )


def message_event(
    message: Message, type_: str, *, at: datetime, details: dict[str, Any]
) -> TimelineEvent:
    """An event of a message that moves no status (``email_opened``, ``email_clicked``).

    Args:
        message: the message; its status as of now is the event's ``status``.
        type_: the event type, ``<channel>_<what happened>``.
        at: when (UTC).
        details: what happened (user agent, link ...).
    """
    return TimelineEvent(
        id=new_id(),
        message_id=message.id,
        org_id=message.org_id,
        type=type_,
        status=message.status,
        created_at=at,
        details=details,
    )


def org_event(org_id: str, type_: str, *, at: datetime, details: dict[str, Any]) -> TimelineEvent:
    """An organization-level event, without message or status (``sms_opt_out``, a paused line).

    Args:
        org_id: the organization.
        type_: the event type, ``<channel>_<what happened>``.
        at: when (UTC).
        details: what happened (phone number, line, reason ...).
    """
    return TimelineEvent(
        id=new_id(),
        message_id=None,
        org_id=org_id,
        type=type_,
        status=None,
        created_at=at,
        details=details,
    )


async def apply_receipt(
    store: SmsStorage, message: Message, status: Status, *, at: datetime, details: dict[str, Any]
) -> ReceiptOutcome:
    """Move a message on a delivery receipt, forward only (:func:`receipt_allowed_from`).

    Args:
        store: where receipts are applied (``SmsStorage.apply_receipt``, any channel).
        message: the message the receipt is about.
        status: what the receipt says (SENT, DELIVERED, READ or FAILED).
        at: when the receipt arrived (the event's time, UTC).
        details: the event's details (source, provider's word, error ...).

    Returns:
        The message after the receipt, and whether it moved: not for a
        duplicate, an out-of-order receipt, or a ``sent`` receipt (the worker
        recorded SENT itself); nothing is written then.
    """
    allowed = receipt_allowed_from(status)
    if not allowed:
        return ReceiptOutcome(message=message, applied=False)
    event = status_event(message, status, at=at, details=details)
    outcome = await store.apply_receipt(
        message.id, new_status=status, allowed_from=allowed, event=event
    )
    if outcome is None:  # pragma: no cover - the message was read just before
        return ReceiptOutcome(message=message, applied=False)
    return outcome
