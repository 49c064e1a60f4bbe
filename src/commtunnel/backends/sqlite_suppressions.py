"""SQLite records of the email suppression list and the email events webhook's tokens.

:class:`SqliteSuppressionStore` shares the
:class:`~commtunnel.backends.sqlite.SqliteBackend`'s connection and group
commit. One row per (organization, address) is the table's primary key; the
decision to keep or replace an existing row
(:func:`~commtunnel.domain.suppressions.supersedes`) is made inside the
write's transaction, so two concurrent bounces for one address store one
entry and one event.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime

from commtunnel.backends.sqlite import (
    BackendStore,
    fetch_one,
    insert_event,
    record_rows,
    serialize,
    ts,
)
from commtunnel.domain.events import TimelineEvent
from commtunnel.domain.suppressions import Suppression, SuppressionReason, supersedes

_SUPPRESSIONS = record_rows(
    "email_suppressions",
    Suppression,
    "org_id, address, reason, origin, created_at, expires_at, message_id, detail",
    reason=SuppressionReason,
)
# An entry blocks while it has no expiry or one after "now" (timestamps are fixed-width text).
_ACTIVE = "(expires_at IS NULL OR expires_at > ?)"


class SqliteSuppressionStore(BackendStore):
    """The :class:`~commtunnel.ports.SuppressionStorage` port on a SQLite backend.

    Args:
        backend: an opened (or soon opened) backend whose connection and
            group commit this store uses.
    """

    async def add_suppression(
        self, suppression: Suppression, event: TimelineEvent
    ) -> tuple[Suppression, bool]:
        """Write the entry with its event unless the stored one blocks as long (one transaction)."""
        s = suppression

        def op(conn: sqlite3.Connection) -> tuple[Suppression, bool]:
            serialize(conn, "email_suppressions", s.org_id, s.address)
            old = _SUPPRESSIONS.one(conn, "WHERE org_id = ? AND address = ?", (s.org_id, s.address))
            if old is not None and not supersedes(s, old, s.created_at):
                return old, False
            conn.execute(
                "INSERT INTO email_suppressions (org_id, address, reason, origin, message_id, "
                "detail, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (org_id, address) DO UPDATE SET reason = excluded.reason, "
                "origin = excluded.origin, message_id = excluded.message_id, "
                "detail = excluded.detail, created_at = excluded.created_at, "
                "expires_at = excluded.expires_at",
                (
                    s.org_id,
                    s.address,
                    str(s.reason),
                    s.origin,
                    s.message_id,
                    s.detail,
                    ts(s.created_at),
                    None if s.expires_at is None else ts(s.expires_at),
                ),
            )
            insert_event(conn, event)
            return s, True

        return await self._backend.submit(op)

    async def remove_suppression(
        self, org_id: str, address: str, *, now: datetime, event: TimelineEvent
    ) -> Suppression | None:
        """Delete the active entry with its event; None (nothing written) when there is none."""

        def op(conn: sqlite3.Connection) -> Suppression | None:
            where = f"WHERE org_id = ? AND address = ? AND {_ACTIVE}"
            params = (org_id, address, ts(now))
            found = _SUPPRESSIONS.one(conn, where, params)
            if found is None:
                return None
            conn.execute(f"DELETE FROM email_suppressions {where}", params)  # noqa: S608
            insert_event(conn, event)
            return found

        return await self._backend.submit(op)

    async def get_suppression(
        self, org_id: str, address: str, *, now: datetime
    ) -> Suppression | None:
        """The active entry for the address (a primary-key lookup), or None."""
        return await self._backend.read(
            _SUPPRESSIONS.one,
            f"WHERE org_id = ? AND address = ? AND {_ACTIVE}",
            (org_id, address, ts(now)),
        )

    async def suppression_reason(self, org_id: str, address: str, *, now: datetime) -> str | None:
        """The active entry's reason, or None: one primary-key lookup, no record built.

        It runs for every email accepted and every email attempt, so it reads one column.
        """
        row = await self._backend.read(
            fetch_one,
            f"SELECT reason FROM email_suppressions WHERE org_id = ? AND address = ? AND {_ACTIVE}",  # noqa: S608
            (org_id, address, ts(now)),
        )
        return None if row is None else str(row[0])

    async def list_suppressions(
        self, org_id: str, *, now: datetime, reason: str | None, offset: int, limit: int
    ) -> tuple[list[Suppression], int]:
        """(``limit`` active entries from the ``offset``-th, newest first; the total count)."""
        where = f"WHERE org_id = ? AND {_ACTIVE}"
        params: list[str] = [org_id, ts(now)]
        if reason is not None:
            where += " AND reason = ?"
            params.append(reason)
        return await self._backend.read(
            _SUPPRESSIONS.page,
            where,
            params,
            order_by="created_at DESC, address",
            offset=offset,
            limit=limit,
        )

    # ------------------------------------------------------------------ webhook tokens

    async def set_email_events_token(self, org_id: str, token: str, at: datetime) -> None:
        """Store or replace the organization's token (the old one stops working at once)."""
        await self._backend.transaction(
            lambda c: c.execute(
                "INSERT INTO email_events_tokens (org_id, token, created_at) VALUES (?, ?, ?) "
                "ON CONFLICT (org_id) DO UPDATE SET token = excluded.token, "
                "created_at = excluded.created_at",
                (org_id, token, ts(at)),
            )
        )

    async def get_email_events_token(self, org_id: str) -> str | None:
        """The organization's current token, or None before the first one."""
        row = await self._backend.read(
            fetch_one, "SELECT token FROM email_events_tokens WHERE org_id = ?", (org_id,)
        )
        return None if row is None else str(row[0])

    async def org_for_email_events_token(self, token: str) -> str | None:
        """The organization holding this token (a unique index lookup), or None."""
        row = await self._backend.read(
            fetch_one, "SELECT org_id FROM email_events_tokens WHERE token = ?", (token,)
        )
        return None if row is None else str(row[0])
