"""SQLite records of the WhatsApp Cloud channel: tenant lines, line states, opt-outs.

:class:`SqliteWhatsAppStore` shares the :class:`~commtunnel.backends.sqlite.SqliteBackend`'s
connection and group commit, like :mod:`commtunnel.backends.sqlite_sms`.
Receipts, re-queues and inbound messages use the channel-neutral methods of
:class:`~commtunnel.backends.sqlite_sms.SqliteSmsStore`.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime

from commtunnel.backends.sqlite import (
    INTEGRITY_ERRORS,
    BackendStore,
    fetch_one,
    insert_event,
    record_rows,
    ts,
)
from commtunnel.backends.sqlite_sms import insert_opt_out, is_listed
from commtunnel.domain.errors import WhatsAppLineInUseError
from commtunnel.domain.events import TimelineEvent
from commtunnel.ports import KEEP, LineState, OptOut, TenantLine

_LINES = record_rows(
    "whatsapp_lines", TenantLine, "org_id, phone_number_id, access_token_enc, updated_at"
)
_LINE_STATES = record_rows(
    "whatsapp_line_states",
    LineState,
    "phone_number_id, state, reason, token_fingerprint, updated_at",
)


class SqliteWhatsAppStore(BackendStore):
    """WhatsApp records on a SQLite backend.

    Args:
        backend: the backend whose connection and group commit this store uses.
    """

    # ------------------------------------------------------------------ tenant lines

    async def get_line(self, org_id: str) -> TenantLine | None:
        """The organization's own line settings, if it has any."""
        return await self._backend.read(_LINES.one, "WHERE org_id = ?", (org_id,))

    async def set_line(
        self,
        org_id: str,
        *,
        phone_number_id: str | object | None = KEEP,
        access_token_enc: str | object | None = KEEP,
        at: datetime,
    ) -> TenantLine:
        """Change one or both parts (None clears, :data:`~commtunnel.ports.KEEP` leaves it).

        Raises:
            WhatsAppLineInUseError: another organization holds ``phone_number_id``.
        """
        # One upsert; a KEEP part keeps the stored value (or NULL for a new row).
        keep_pnid, keep_token = phone_number_id is KEEP, access_token_enc is KEEP
        new_pnid = None if keep_pnid else phone_number_id
        new_token = None if keep_token else access_token_enc
        try:
            await self._backend.transaction(
                lambda c: c.execute(
                    "INSERT INTO whatsapp_lines (org_id, phone_number_id, access_token_enc, "
                    "updated_at) VALUES (?, ?, ?, ?) ON CONFLICT (org_id) DO UPDATE SET "
                    "phone_number_id = CASE WHEN ? THEN whatsapp_lines.phone_number_id "
                    "ELSE excluded.phone_number_id END, "
                    "access_token_enc = CASE WHEN ? THEN whatsapp_lines.access_token_enc "
                    "ELSE excluded.access_token_enc END, "
                    "updated_at = excluded.updated_at",
                    (org_id, new_pnid, new_token, ts(at), keep_pnid, keep_token),
                )
            )
        except INTEGRITY_ERRORS:
            raise WhatsAppLineInUseError(
                "Another organization already uses this WhatsApp phone number id",
                details={"whatsappPhoneNumberId": new_pnid},
            ) from None
        line = await self.get_line(org_id)
        assert line is not None  # just written
        return line

    async def org_for_phone_number_id(self, phone_number_id: str) -> str | None:
        """The organization whose own line has this phone number id."""
        row = await self._backend.read(
            fetch_one,
            "SELECT org_id FROM whatsapp_lines WHERE phone_number_id = ?",
            (phone_number_id,),
        )
        return None if row is None else str(row[0])

    # ------------------------------------------------------------------ line states

    async def get_line_state(self, phone_number_id: str) -> LineState | None:
        """The recorded state of a line (None: never paused or flagged)."""
        return await self._backend.read(
            _LINE_STATES.one, "WHERE phone_number_id = ?", (phone_number_id,)
        )

    async def set_line_state(
        self,
        phone_number_id: str,
        *,
        state: str,
        reason: str | None,
        token_fingerprint: str | None,
        event: TimelineEvent,
    ) -> bool:
        """Record a line's state with its (organization-level) event.

        Returns:
            False (nothing written) when the line already had this state and
            fingerprint, so a burst of failures records one event, not many.
        """

        def op(conn: sqlite3.Connection) -> bool:
            # The upsert's WHERE skips an unchanged state: no row counts as written.
            written = conn.execute(
                "INSERT INTO whatsapp_line_states (phone_number_id, state, reason, "
                "token_fingerprint, updated_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (phone_number_id) DO UPDATE SET state = excluded.state, "
                "reason = excluded.reason, token_fingerprint = excluded.token_fingerprint, "
                "updated_at = excluded.updated_at "
                "WHERE whatsapp_line_states.state IS NOT excluded.state "
                "OR whatsapp_line_states.token_fingerprint IS NOT excluded.token_fingerprint",
                (phone_number_id, state, reason, token_fingerprint, ts(event.created_at)),
            ).rowcount
            if not written:
                return False
            insert_event(conn, event)
            return True

        return await self._backend.submit(op)

    # ------------------------------------------------------------------ opt-outs

    async def add_opt_out(self, opt_out: OptOut, event: TimelineEvent) -> bool:
        """Record that Meta says the number stopped marketing messages; False if already listed."""
        return await insert_opt_out(self._backend, "whatsapp_opt_outs", opt_out, event)

    async def is_opted_out(self, org_id: str, phone: str) -> bool:
        """Whether the number is on the organization's WhatsApp opt-out list."""
        return await self._backend.read(is_listed, "whatsapp_opt_outs", org_id, phone)
