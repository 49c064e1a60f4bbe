"""Timeline events: one vocabulary for timelines, webhooks and stats.

Event types are ``<channel>_<what happened>`` (``../shared/DESIGN.md``, "One
event vocabulary"): ``email_queued``, ``email_processing``, ``email_sent`` ...
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import attrs

from commtunnel.domain.errors import ValidationError
from commtunnel.domain.messages import Channel, Status, _aware


def parse_timestamp(value: Any, field: str) -> datetime:
    """A time given by a caller: ISO 8601 text with a timezone (or, in process, an aware datetime).

    Args:
        value: ``2026-06-03T12:00:00Z``, ``2026-06-03T14:00:00+02:00`` (Python's
            :meth:`datetime.fromisoformat` grammar) or a timezone-aware datetime.
        field: the wire name a refusal names.

    Returns:
        The time in UTC.

    Raises:
        ValidationError: on ``field``: not a string, not ISO 8601, or without a
            timezone (a naive time is ambiguous).
    """
    if isinstance(value, datetime):
        when = value
    elif isinstance(value, str):
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            raise ValidationError.from_fields(
                {field: "must be an ISO 8601 date-time with a timezone, e.g. 2026-06-03T12:00:00Z"}
            ) from None
    else:
        raise ValidationError.from_fields(
            {field: "must be a string (an ISO 8601 date-time with a timezone)"}
        )
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValidationError.from_fields({field: "must include a timezone (e.g. Z or +02:00)"})
    return when.astimezone(UTC)


def format_timestamp(value: datetime) -> str:
    """The wire form of a time: ``2026-06-03T12:00:00.000Z`` (UTC, milliseconds, ``Z``).

    ``../shared/DESIGN.md`` ("Time"): timestamps are UTC, ISO 8601 with
    milliseconds and ``Z`` on the wire, in the API, the CLI and the outbox files.

    Raises:
        ValueError: ``value`` is naive (every datetime inside Commtunnel is aware).
    """
    if value.tzinfo is None:
        raise ValueError(f"naive datetime on the wire: {value!r}")
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@attrs.frozen(kw_only=True)
class TimelineEvent:
    """One entry of a message's timeline.

    Attributes:
        id: UUIDv7 string, stable (used later as the webhook id).
        message_id: the message it belongs to; None for organization-level
            events such as ``sms_opt_out``.
        org_id: owning organization.
        type: event type, e.g. ``email_sent``.
        status: the message status as of this event: the status it moved to,
            or for an event that moves none (``email_opened``) the status the
            message had then; None for organization-level events.
        created_at: UTC time the event happened.
        details: event-specific data (attempt number, error category, ...).
    """

    id: str
    message_id: str | None
    org_id: str
    type: str
    status: Status | None
    created_at: datetime = attrs.field(validator=_aware)
    details: dict[str, Any] = attrs.field(factory=dict)

    @property
    def channel(self) -> Channel | None:
        """The channel named by the event type prefix; None for ``endpoint_disabled``."""
        try:
            return Channel(self.type.split("_", 1)[0])
        except ValueError:
            return None
