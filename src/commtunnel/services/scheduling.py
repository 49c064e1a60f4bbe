"""Scheduled sends: the ``scheduledAt`` rule and a new message's first status and event.

A send with ``scheduledAt`` (email and standard SMS; an OTP is for now) is
stored SCHEDULED with its dispatch job due at that time; the claim that finds
the job due moves it SCHEDULED -> QUEUED -> PROCESSING in one transaction
(``../shared/DESIGN.md``, "Status machine"). Until then it may be cancelled
(:data:`CANCELABLE`), as may a QUEUED message no worker has claimed yet.

The reference API (``../shared/seeds/004_5b7054fd91e163a8.txt``, "scheduledAt:
string (ISO 8601). Hold the message until this timestamp, then dispatch")
does not bound the wait; here it must be in the future and at most the
configured horizon ahead (``COMMTUNNEL_SCHEDULE_HORIZON``, 30 days by default),
so that a typo in the year cannot park a message for ever.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from commtunnel.domain.errors import ValidationError
from commtunnel.domain.events import TimelineEvent, format_timestamp, parse_timestamp
from commtunnel.domain.messages import Message, Status
from commtunnel.services.timeline import status_event

#: the wire field of a send request.
FIELD = "scheduledAt"
#: the default horizon, seconds (``Settings.schedule_horizon``).
DEFAULT_HORIZON = 30 * 86_400.0
#: the statuses a cancel moves to CANCELED (the status machine's edges into it).
CANCELABLE = frozenset({Status.SCHEDULED, Status.QUEUED})


def _span(seconds: float) -> str:
    """``30 days``, ``1 day``, ``3600 seconds``: a horizon as the refusal names it."""
    if seconds >= 86_400 and seconds % 86_400 == 0:
        days = int(seconds // 86_400)
        return f"{days} day" + ("" if days == 1 else "s")
    return f"{seconds:g} seconds"


def read_scheduled_at(value: Any, *, field: str = FIELD) -> datetime | None:
    """A ``scheduledAt`` value's time, in UTC, whatever it is relative to now.

    Args:
        value: None (send now), an ISO 8601 date-time string with a timezone
            (``2026-06-03T12:00:00Z``, ``2026-06-03T14:00:00+02:00``; Python's
            :meth:`datetime.fromisoformat` grammar), or in process a
            timezone-aware :class:`datetime`.
        field: the wire name a refusal names.

    Returns:
        None for None, else the time in UTC.

    Raises:
        ValidationError: on ``field``: not a string, not ISO 8601, or without a
            timezone (a naive time is ambiguous).
    """
    return None if value is None else parse_timestamp(value, field)


def check_scheduled_at(
    when: datetime | None, *, now: datetime, horizon: float, field: str = FIELD
) -> None:
    """Refuse a time that is not strictly after ``now``, or more than ``horizon`` seconds ahead.

    Checked after an idempotent replay is looked up: a retry of a scheduled
    send after its time still answers the original message.

    Raises:
        ValidationError: on ``field``, "must be in the future" or "must be at
            most 30 days ahead" (the horizon as configured).
    """
    if when is None:
        return
    if when <= now:
        raise ValidationError.from_fields({field: "must be in the future"})
    if when > now + timedelta(seconds=horizon):
        raise ValidationError.from_fields({field: f"must be at most {_span(horizon)} ahead"})


def first_status(scheduled_at: datetime | None) -> Status:
    """SCHEDULED for a send with a time, QUEUED for one sent now."""
    return Status.QUEUED if scheduled_at is None else Status.SCHEDULED


def first_event(message: Message, *, at: datetime, details: dict[str, Any]) -> TimelineEvent:
    """A new message's first event: ``<channel>_queued``, or ``<channel>_scheduled``.

    Args:
        message: the new message (its status is :func:`first_status`).
        at: when it was accepted (UTC).
        details: the event's details; a scheduled message's gain
            ``scheduledAt`` (wire format).
    """
    if message.scheduled_at is not None:
        details = {**details, FIELD: format_timestamp(message.scheduled_at)}
    return status_event(message, message.status, at=at, details=details)


def run_at(message: Message) -> datetime:
    """When a new message's dispatch job comes due: its scheduled time, or its creation."""
    return message.scheduled_at or message.created_at


def fingerprint_payload(payload: dict[str, Any]) -> dict[str, Any]:
    """A send's wire payload for its idempotency fingerprint, ``scheduledAt`` left out when unset.

    Fingerprints of sends without a time stay what they were before the field
    existed, so a key stored by an older version still replays.
    """
    if payload.get(FIELD) is None:
        return {k: v for k, v in payload.items() if k != FIELD}
    return payload
