"""Listing messages across channels: filters, scopes and cursor pagination.

Contract: ``../shared/seeds/004_5b7054fd91e163a8.txt``, "05 · list messages":
newest first, filters combine with AND, ``limit`` 1..100 (20 by default), an
opaque ``cursor`` to walk on, absent on the last page. Differences, on
purpose: the listing is scoped to the caller's **organization**, not to the
API key that sent the message (``../shared/DESIGN.md``, "Tenancy": every read
is scoped by the caller's organization), and the filter names are
``channel``, ``status``, ``createdAfter``, ``createdBefore`` and ``to`` (the
seed's ``after`` / ``before`` are taken as aliases).

Scopes: ``GET /v1/public/emails`` needs ``read:email``. ``GET
/v1/public/messages`` lists the channels the key can read (``read:email``,
``read:sms``, ``read:whatsapp``); a ``channel`` filter the key cannot read is
refused, and so is a key that reads no channel.

Pagination is keyset (:mod:`commtunnel.domain.paging`): one row more than the
page is read to know whether a next page exists, so the last page has no
cursor, and a cursor never leads to an empty page unless rows were purged
meanwhile.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import attrs

from commtunnel.domain import email as email_rules
from commtunnel.domain import sms as sms_rules
from commtunnel.domain.errors import InsufficientScopeError, ValidationError
from commtunnel.domain.events import parse_timestamp
from commtunnel.domain.keys import Principal, Scope
from commtunnel.domain.messages import Channel, Status
from commtunnel.domain.paging import (
    CursorError,
    Position,
    decode_cursor,
    encode_cursor,
    filters_fingerprint,
)
from commtunnel.ports import ListingStorage, MessageQuery
from commtunnel.services.auth import require
from commtunnel.services.channel import MessageStatus, is_int_in

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
#: the scope that reads each channel.
READ_SCOPES: dict[Channel, Scope] = {
    Channel.EMAIL: Scope.READ_EMAIL,
    Channel.SMS: Scope.READ_SMS,
    Channel.WHATSAPP: Scope.READ_WHATSAPP,
}
#: the listings (the name is part of a cursor's fingerprint).
MESSAGES = "messages"
EMAILS = "emails"


@attrs.frozen(kw_only=True)
class MessagePage:
    """One page of a listing.

    Attributes:
        items: the messages with their attempts, newest first.
        cursor: pass it as ``cursor`` for the next page; None on the last page.
    """

    items: list[MessageStatus]
    cursor: str | None


@attrs.frozen(kw_only=True)
class _Filters:
    """Checked filters, before the scopes narrow the channels."""

    channel: Channel | None
    status: Status | None
    created_after: datetime | None
    created_before: datetime | None
    to_address: str | None
    to_phone: str | None

    def normalized(self) -> dict[str, str | None]:
        """Filter name -> canonical text, for the cursor's fingerprint."""

        def text(value: datetime | None) -> str | None:
            return None if value is None else value.astimezone(UTC).isoformat()

        return {
            "channel": None if self.channel is None else str(self.channel),
            "status": None if self.status is None else str(self.status),
            "createdAfter": text(self.created_after),
            "createdBefore": text(self.created_before),
            "to": self.to_address.lower() if self.to_address else self.to_phone,
        }


def _parse_time(value: Any, name: str, problems: dict[str, str]) -> datetime | None:
    """A timezone-aware datetime from ISO 8601 text (or a datetime in process); None if absent."""
    if value is None:
        return None
    try:
        return parse_timestamp(value, name)
    except ValidationError as exc:
        problems.update(exc.details)
        return None


def _parse_to(value: Any, channel: Channel | None, problems: dict[str, str]) -> tuple[Any, Any]:
    """(addr-spec, None) for an email address, (None, E.164) for a number; refusals in problems.

    Which one is decided by the ``channel`` filter, else by the value's form
    (an ``@`` makes it an address).
    """
    if value is None:
        return None, None
    if not isinstance(value, str) or not value.strip():
        problems["to"] = "must be an email address or an E.164 phone number"
        return None, None
    as_email = channel == Channel.EMAIL or (channel is None and "@" in value)
    if as_email:
        try:
            return email_rules.parse_mailbox(value)[1], None
        except ValueError as exc:
            problems["to"] = f"must be an email address: {exc}"
            return None, None
    try:
        return None, sms_rules.normalise_e164(value, field="to")
    except ValidationError as exc:
        problems["to"] = f"must be an E.164 phone number: {exc.details.get('to', exc.message)}"
        return None, None


def _check_filters(
    *,
    channel: Any,
    status: Any,
    created_after: Any,
    created_before: Any,
    to: Any,
    limit: Any,
) -> tuple[_Filters, int]:
    """Every filter and the limit checked, every problem reported at once.

    Raises:
        ValidationError: ``details`` per bad parameter (wire names).
    """
    problems: dict[str, str] = {}
    parsed_channel: Channel | None = None
    if channel is not None:
        try:
            parsed_channel = Channel(str(channel).lower())
        except ValueError:
            problems["channel"] = f"must be one of {', '.join(c.value for c in Channel)}"
    parsed_status: Status | None = None
    if status is not None:
        try:
            parsed_status = Status(str(status).upper())
        except ValueError:
            problems["status"] = f"must be one of {', '.join(s.value for s in Status)}"
    after = _parse_time(created_after, "createdAfter", problems)
    before = _parse_time(created_before, "createdBefore", problems)
    if after is not None and before is not None and after > before:
        problems["createdBefore"] = "must not be before createdAfter"
    to_address, to_phone = _parse_to(to, parsed_channel, problems)
    if not is_int_in(limit, 1, MAX_LIMIT):
        problems["limit"] = f"must be an integer from 1 to {MAX_LIMIT}"
    if problems:
        raise ValidationError.from_fields(problems)
    filters = _Filters(
        channel=parsed_channel,
        status=parsed_status,
        created_after=after,
        created_before=before,
        to_address=to_address,
        to_phone=to_phone,
    )
    return filters, limit


class MessageListing:
    """Lists the caller's organization's messages, newest first, a page at a time.

    Args:
        storage: the listing query (:class:`~commtunnel.ports.ListingStorage`).
    """

    def __init__(self, storage: ListingStorage) -> None:
        self._storage = storage

    async def list_messages(
        self,
        principal: Principal,
        *,
        channel: Any = None,
        status: Any = None,
        created_after: Any = None,
        created_before: Any = None,
        to: Any = None,
        limit: Any = DEFAULT_LIMIT,
        cursor: Any = None,
    ) -> MessagePage:
        """A page of messages of every channel the caller can read (``GET /v1/public/messages``).

        Args:
            principal: the caller; only its organization's messages are listed.
            channel: ``email``, ``sms`` or ``whatsapp`` (any case); None: every readable one.
            status: a :class:`~commtunnel.domain.messages.Status` value (any case).
            created_after / created_before: inclusive bounds on the creation
                time: ISO 8601 text with a timezone, or aware datetimes.
            to: the recipient: an email address (``addr`` or ``Name <addr>``;
                the addr-spec is compared, ASCII case-insensitively) or an
                E.164 number; with ``channel`` it must be that channel's kind.
            limit: messages per page, 1..100.
            cursor: the previous page's ``cursor``, with the same filters.

        Returns:
            The page; its ``cursor`` is None on the last page.

        Raises:
            InsufficientScopeError: the key reads no channel (``requiredScope``
                ``read:email``), or not the ``channel`` asked for.
            ValidationError: ``details`` per bad parameter: ``channel``,
                ``status``, ``createdAfter``, ``createdBefore`` (also: before
                ``createdAfter``), ``to``, ``limit``, ``cursor`` (not from a
                previous page, or made for other filters).
        """
        readable = frozenset(c for c, scope in READ_SCOPES.items() if principal.has(scope))
        if not readable:
            require(principal, Scope.READ_EMAIL, Scope.READ_SMS, Scope.READ_WHATSAPP)
        filters, size = _check_filters(
            channel=channel,
            status=status,
            created_after=created_after,
            created_before=created_before,
            to=to,
            limit=limit,
        )
        if filters.channel is not None and filters.channel not in readable:
            raise InsufficientScopeError(READ_SCOPES[filters.channel])
        channels = readable if filters.channel is None else frozenset({filters.channel})
        return await self._page(principal, MESSAGES, filters, channels, size, cursor)

    async def list_emails(
        self,
        principal: Principal,
        *,
        status: Any = None,
        created_after: Any = None,
        created_before: Any = None,
        to: Any = None,
        limit: Any = DEFAULT_LIMIT,
        cursor: Any = None,
    ) -> MessagePage:
        """A page of the organization's emails (``GET /v1/public/emails``).

        Arguments as :meth:`list_messages`, without ``channel``; ``to`` is an
        email address.

        Raises:
            InsufficientScopeError: the key lacks ``read:email``.
            ValidationError: as :meth:`list_messages`.
        """
        require(principal, Scope.READ_EMAIL)
        filters, size = _check_filters(
            channel=Channel.EMAIL,
            status=status,
            created_after=created_after,
            created_before=created_before,
            to=to,
            limit=limit,
        )
        return await self._page(
            principal, EMAILS, filters, frozenset({Channel.EMAIL}), size, cursor
        )

    async def _page(
        self,
        principal: Principal,
        listing: str,
        filters: _Filters,
        channels: frozenset[Channel],
        limit: int,
        cursor: Any,
    ) -> MessagePage:
        fingerprint = filters_fingerprint(listing, _fingerprinted(filters, channels))
        position = None
        if cursor is not None:
            if not isinstance(cursor, str):
                raise ValidationError.from_fields(
                    {"cursor": "is not a cursor from a previous page"}
                )
            try:
                position = decode_cursor(cursor, fingerprint)
            except CursorError as exc:
                raise ValidationError.from_fields({"cursor": str(exc)}) from None
        query = MessageQuery(
            org_id=principal.org_id,
            channels=channels,
            status=filters.status,
            created_after=filters.created_after,
            created_before=filters.created_before,
            to_address=filters.to_address,
            to_phone=filters.to_phone,
            after=position,
            limit=limit + 1,  # one more tells whether a next page exists
        )
        rows = await self._storage.list_messages(query)
        items = [MessageStatus(message=m, attempts=a) for m, a in rows[:limit]]
        next_cursor = None
        if len(rows) > limit:
            last = items[-1].message
            next_cursor = encode_cursor(
                Position(created_at=last.created_at, id=last.id), fingerprint
            )
        return MessagePage(items=items, cursor=next_cursor)


def _fingerprinted(filters: _Filters, channels: frozenset[Channel]) -> Mapping[str, str | None]:
    """The filters a cursor is bound to: what was asked, and the channels listed.

    The channels count because they follow from the key's scopes: a cursor
    walked on with a key that reads other channels would list another set.
    """
    return {**filters.normalized(), "channels": ",".join(sorted(str(c) for c in channels))}
