"""SQLite records of the WhatsApp Cloud channel: tenant lines, line states, opt-outs.

:class:`SqliteWhatsAppStore` shares the :class:`~commtunnel.backends.sqlite.SqliteBackend`'s
connection and group commit, like :mod:`commtunnel.backends.sqlite_sms`.
Receipts, re-queues and inbound messages use the channel-neutral methods of
:class:`~commtunnel.backends.sqlite_sms.SqliteSmsStore`.
"""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Callable
from datetime import datetime, timedelta

import attrs

from commtunnel.backends.sqlite import (
    MESSAGE_COLUMNS,
    SqliteBackend,
    insert_event,
    message_from_row,
    parse_ts,
    ts,
)
from commtunnel.backends.sqlite_sms import insert_opt_out
from commtunnel.domain.errors import WhatsAppLineInUseError
from commtunnel.domain.events import TimelineEvent
from commtunnel.domain.messages import Message, Status
from commtunnel.ports import ClaimedJob, OptOut


@attrs.frozen(kw_only=True)
class TenantLine:
    """An organization's own WhatsApp line settings (either part may be unset).

    Attributes:
        phone_number_id: the Meta phone number id the organization sends from.
        access_token_enc: its Graph token, encrypted (:class:`commtunnel.crypto.SecretBox`).
    """

    org_id: str
    phone_number_id: str | None
    access_token_enc: str | None
    updated_at: datetime


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
    updated_at: datetime


#: a value of ``set_line`` that leaves the column as it is.
KEEP = object()


class SqliteWhatsAppStore:
    """WhatsApp records on a SQLite backend.

    Args:
        backend: the backend whose connection and group commit this store uses.
    """

    def __init__(self, backend: SqliteBackend) -> None:
        self._backend = backend

    @property
    def _conn(self) -> sqlite3.Connection:
        return self._backend.conn

    # ------------------------------------------------------------------ tenant lines

    async def get_line(self, org_id: str) -> TenantLine | None:
        """The organization's own line settings, if it has any."""
        row = self._conn.execute(
            "SELECT org_id, phone_number_id, access_token_enc, updated_at FROM whatsapp_lines "
            "WHERE org_id = ?",
            (org_id,),
        ).fetchone()
        if row is None:
            return None
        return TenantLine(
            org_id=row[0],
            phone_number_id=row[1],
            access_token_enc=row[2],
            updated_at=parse_ts(row[3]),
        )

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
        current = await self.get_line(org_id)
        pnid = current.phone_number_id if current else None
        token = current.access_token_enc if current else None
        if phone_number_id is not KEEP:
            pnid = phone_number_id  # type: ignore[assignment]
        if access_token_enc is not KEEP:
            token = access_token_enc  # type: ignore[assignment]
        try:
            self._backend.transaction(
                lambda c: c.execute(
                    "INSERT INTO whatsapp_lines (org_id, phone_number_id, access_token_enc, "
                    "updated_at) VALUES (?, ?, ?, ?) ON CONFLICT (org_id) DO UPDATE SET "
                    "phone_number_id = excluded.phone_number_id, "
                    "access_token_enc = excluded.access_token_enc, "
                    "updated_at = excluded.updated_at",
                    (org_id, pnid, token, ts(at)),
                )
            )
        except sqlite3.IntegrityError:
            raise WhatsAppLineInUseError(
                "Another organization already uses this WhatsApp phone number id",
                details={"whatsappPhoneNumberId": pnid},
            ) from None
        return TenantLine(
            org_id=org_id, phone_number_id=pnid, access_token_enc=token, updated_at=at
        )

    async def org_for_phone_number_id(self, phone_number_id: str) -> str | None:
        """The organization whose own line has this phone number id."""
        row = self._conn.execute(
            "SELECT org_id FROM whatsapp_lines WHERE phone_number_id = ?", (phone_number_id,)
        ).fetchone()
        return None if row is None else str(row[0])

    # ------------------------------------------------------------------ line states

    async def get_line_state(self, phone_number_id: str) -> LineState | None:
        """The recorded state of a line (None: never paused or flagged)."""
        row = self._conn.execute(
            "SELECT phone_number_id, state, reason, token_fingerprint, updated_at "
            "FROM whatsapp_line_states WHERE phone_number_id = ?",
            (phone_number_id,),
        ).fetchone()
        if row is None:
            return None
        return LineState(
            phone_number_id=row[0],
            state=row[1],
            reason=row[2],
            token_fingerprint=row[3],
            updated_at=parse_ts(row[4]),
        )

    async def set_line_state(
        self,
        phone_number_id: str,
        *,
        state: str,
        reason: str | None,
        token_fingerprint: str | None,
        event: TimelineEvent | None,
    ) -> bool:
        """Record a line's state with its (organization-level) event.

        Returns:
            False (nothing written) when the line already had this state and
            fingerprint, so a burst of failures records one event, not many.
        """

        def op(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "SELECT state, token_fingerprint FROM whatsapp_line_states "
                "WHERE phone_number_id = ?",
                (phone_number_id,),
            ).fetchone()
            if row is not None and (row[0], row[1]) == (state, token_fingerprint):
                return False
            conn.execute(
                "INSERT INTO whatsapp_line_states (phone_number_id, state, reason, "
                "token_fingerprint, updated_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (phone_number_id) DO UPDATE SET state = excluded.state, "
                "reason = excluded.reason, token_fingerprint = excluded.token_fingerprint, "
                "updated_at = excluded.updated_at",
                (
                    phone_number_id,
                    state,
                    reason,
                    token_fingerprint,
                    ts(event.created_at if event else datetime.fromisoformat(_EPOCH)),
                ),
            )
            if event is not None:
                insert_event(conn, event)
            return True

        return await self._backend.submit(op)

    # ------------------------------------------------------------------ opt-outs

    async def add_opt_out(self, opt_out: OptOut, event: TimelineEvent) -> bool:
        """Record that Meta says the number stopped marketing messages; False if already listed."""
        return await insert_opt_out(self._backend, "whatsapp_opt_outs", opt_out, event)

    async def is_opted_out(self, org_id: str, phone: str) -> bool:
        """Whether the number is on the organization's WhatsApp opt-out list."""
        row = self._conn.execute(
            "SELECT 1 FROM whatsapp_opt_outs WHERE org_id = ? AND phone = ?", (org_id, phone)
        ).fetchone()
        return row is not None

    # ------------------------------------------------------------------ inline claim

    async def claim_message(
        self,
        message_id: str,
        *,
        worker_id: str,
        now: datetime,
        lease_seconds: float,
        processing_event: Callable[[Message, int], TimelineEvent],
    ) -> ClaimedJob | None:
        """Lease one message's job now, whatever its ``run_at`` (a synchronous hand-off).

        Returns None when the job is gone or another worker holds a live lease.
        """
        now_text = ts(now)
        lease_until = now + timedelta(seconds=lease_seconds)

        def op(conn: sqlite3.Connection) -> ClaimedJob | None:
            job = conn.execute(
                "SELECT id, attempts_before FROM jobs WHERE message_id = ? "
                "AND (lease_until IS NULL OR lease_until <= ?)",
                (message_id, now_text),
            ).fetchone()
            if job is None:
                return None
            token = secrets.token_hex(8)
            conn.execute(
                "UPDATE jobs SET lease_owner = ?, lease_token = ?, lease_until = ? WHERE id = ?",
                (worker_id, token, ts(lease_until), job[0]),
            )
            message = message_from_row(
                conn.execute(
                    f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ?",  # noqa: S608
                    (message_id,),
                ).fetchone()
            )
            number = message.attempt_count + 1
            conn.execute(
                "UPDATE messages SET status = ?, updated_at = ? WHERE id = ?",
                (str(Status.PROCESSING), now_text, message_id),
            )
            insert_event(conn, processing_event(message, number))
            return ClaimedJob(
                job_id=job[0],
                lease_token=token,
                lease_until=lease_until,
                message=message,
                attempt_number=number,
                attempts_before=job[1],
            )

        return await self._backend.submit(op)


_EPOCH = "1970-01-01T00:00:00+00:00"
