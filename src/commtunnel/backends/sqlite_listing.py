"""SQLite message listings: keyset pages across channels, newest first.

The order is ``(created_at DESC, id DESC)``; the next page starts strictly
after the previous page's last row, compared as a row value, so the walk is
an index range scan on ``messages_org_listing (org_id, created_at, id)``
(schema v6) and never an ``OFFSET``. The attempts of a whole page are read
with one ``IN (...)`` query on their primary key, not one query per message.

An email ``to`` filter compares addr-specs: the ``recipient`` column holds
the email's ``To`` as sent (``addr`` or ``Name <addr>``), so a row matches
when it is the address, or ends in ``<address>``, after SQLite's ``lower()``
(ASCII letters) on both sides. That comparison cannot use an index; it
filters rows along the organization's listing range, so a rare address may
read many rows before a page fills.
"""

from __future__ import annotations

from typing import Any

from commtunnel.backends.sqlite import ATTEMPTS, MESSAGES, BackendStore, ts
from commtunnel.domain.messages import Attempt, Channel, Message
from commtunnel.ports import MessageQuery

#: Channels whose ``recipient`` is an E.164 number.
_PHONE_CHANNELS = frozenset({Channel.SMS, Channel.WHATSAPP})


def listing_where(query: MessageQuery) -> tuple[str, list[Any]]:
    """The ``WHERE`` clause (with ``?`` marks) and its parameters for ``query``'s filters.

    Channels that cannot match a ``to`` filter (email for a number, SMS and
    WhatsApp for an address) are left out of the channel list; when none is
    left the clause matches nothing.
    """
    channels = set(query.channels)
    if query.to_address is not None:
        channels &= {Channel.EMAIL}
    if query.to_phone is not None:
        channels &= _PHONE_CHANNELS
    clauses = ["org_id = ?"]
    params: list[Any] = [query.org_id]
    if not channels:
        clauses.append("0")
    elif channels != set(Channel):
        clauses.append(f"channel IN ({', '.join('?' * len(channels))})")
        params.extend(sorted(str(c) for c in channels))
    if query.status is not None:
        clauses.append("status = ?")
        params.append(str(query.status))
    if query.created_after is not None:
        clauses.append("created_at >= ?")
        params.append(ts(query.created_after))
    if query.created_before is not None:
        clauses.append("created_at <= ?")
        params.append(ts(query.created_before))
    if query.to_address is not None:
        bracketed = f"<{query.to_address}>"
        clauses.append("(lower(recipient) = lower(?) OR substr(lower(recipient), -?) = lower(?))")
        params.extend([query.to_address, len(bracketed), bracketed])
    if query.to_phone is not None:
        clauses.append("recipient = ?")
        params.append(query.to_phone)
    if query.after is not None:
        clauses.append("(created_at, id) < (?, ?)")
        params.extend([ts(query.after.created_at), query.after.id])
    return " AND ".join(clauses), params


class SqliteListingStore(BackendStore):
    """:class:`~commtunnel.ports.ListingStorage` on the shared SQLite backend."""

    async def list_messages(self, query: MessageQuery) -> list[tuple[Message, list[Attempt]]]:
        """Up to ``query.limit`` matching messages, newest first, each with its attempts.

        Returns:
            (message, attempts by number) pairs in ``(created_at, id)`` descending order.
        """
        where, params = listing_where(query)
        messages = await self._backend.read(
            MESSAGES.all,
            f"WHERE {where} ORDER BY created_at DESC, id DESC LIMIT ?",
            [*params, query.limit],
        )
        attempts = await self._backend.read(
            ATTEMPTS.grouped, "message_id", [m.id for m in messages], order_by="message_id, number"
        )
        return [(m, attempts[m.id]) for m in messages]
