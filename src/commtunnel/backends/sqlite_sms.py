"""SQLite records of the SMS channel: sender IDs, opt-outs, tokens, inbound MO, receipts.

:class:`SqliteSmsStore` shares the :class:`~commtunnel.backends.sqlite.SqliteBackend`'s
connection and its group commit: writes on hot paths (a receipt, a
re-queue) join the current batch; administrative writes run in their own
transaction. Every rule that must hold under concurrency is a constraint
(one live request per sender ID and flow, one opt-out per number) or a
conditional ``UPDATE`` checked inside the transaction (a receipt never
moves a message backwards).
"""

from __future__ import annotations

import sqlite3
from datetime import datetime
from typing import Any, Literal

from commtunnel.backends.sqlite import (
    MESSAGE_COLUMNS,
    SqliteBackend,
    insert_event,
    message_from_row,
    parse_ts,
    ts,
)
from commtunnel.domain.errors import ConflictError
from commtunnel.domain.events import TimelineEvent
from commtunnel.domain.messages import Channel, Message, Status
from commtunnel.ports import InboundMessage, OptOut, ReceiptOutcome, SenderIdRequest, SmsPage

_REQUEST_COLUMNS = (
    "id, org_id, sender_id, flow, status, reason, review_reason, reviewed_by, reviewed_at, "
    "created_at"
)


def _request_from_row(r: tuple[Any, ...]) -> SenderIdRequest:
    return SenderIdRequest(
        id=r[0],
        org_id=r[1],
        sender_id=r[2],
        flow=r[3],
        status=r[4],
        reason=r[5],
        review_reason=r[6],
        reviewed_by=r[7],
        reviewed_at=None if r[8] is None else parse_ts(r[8]),
        created_at=parse_ts(r[9]),
    )


#: the tables of the channels' opt-out lists (one row per organization and number).
OptOutTable = Literal["sms_opt_outs", "whatsapp_opt_outs"]


async def insert_opt_out(
    backend: SqliteBackend, table: OptOutTable, opt_out: OptOut, event: TimelineEvent
) -> bool:
    """Put a number on a channel's opt-out list with its event, in one transaction.

    Args:
        backend: the backend whose group commit runs the write.
        table: the channel's list.
        opt_out: the organization, number, source and time.
        event: the organization-level event recording it.

    Returns:
        False (nothing written, no event) when the number was already listed.
    """

    def op(conn: sqlite3.Connection) -> bool:
        cursor = conn.execute(
            f"INSERT OR IGNORE INTO {table} (org_id, phone, source, created_at) "  # noqa: S608 - fixed names
            "VALUES (?, ?, ?, ?)",
            (opt_out.org_id, opt_out.phone, opt_out.source, ts(opt_out.created_at)),
        )
        if not cursor.rowcount:
            return False
        insert_event(conn, event)
        return True

    return await backend.submit(op)


def _like_pattern(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


class SqliteSmsStore:
    """The :class:`~commtunnel.ports.SmsStorage` port on a SQLite backend.

    Args:
        backend: an opened (or soon opened) backend whose connection and
            group commit this store uses.
    """

    def __init__(self, backend: SqliteBackend) -> None:
        self._backend = backend

    @property
    def _conn(self) -> sqlite3.Connection:
        return self._backend.conn

    # ------------------------------------------------------------------ sender IDs

    async def create_sender_id_request(self, request: SenderIdRequest) -> None:
        """Store a PENDING request; ConflictError when a live one has the same value and flow."""
        try:
            self._backend.transaction(
                lambda c: c.execute(
                    f"INSERT INTO sms_sender_ids ({_REQUEST_COLUMNS}) "  # noqa: S608 - fixed names
                    "VALUES (?, ?, ?, ?, ?, ?, NULL, NULL, NULL, ?)",
                    (
                        request.id,
                        request.org_id,
                        request.sender_id,
                        request.flow,
                        request.status,
                        request.reason,
                        ts(request.created_at),
                    ),
                )
            )
        except sqlite3.IntegrityError:
            raise ConflictError(
                f"'{request.sender_id}' is already requested or approved for the "
                f"{request.flow} flow",
                details={"senderId": request.sender_id, "flow": request.flow},
            ) from None

    async def get_sender_id_request(self, request_id: str) -> SenderIdRequest | None:
        """One request by id, any organization."""
        row = self._conn.execute(
            f"SELECT {_REQUEST_COLUMNS} FROM sms_sender_ids WHERE id = ?",  # noqa: S608
            (request_id,),
        ).fetchone()
        return None if row is None else _request_from_row(row)

    async def list_sender_id_requests(
        self, *, org_id: str | None, status: str | None, flow: str | None
    ) -> list[SenderIdRequest]:
        """Requests filtered by organization, status and flow (None: any), oldest first."""
        clauses, params = [], []
        for column, value in (("org_id", org_id), ("status", status), ("flow", flow)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._conn.execute(
            f"SELECT {_REQUEST_COLUMNS} FROM sms_sender_ids {where} "  # noqa: S608
            "ORDER BY created_at, id",
            params,
        )
        return [_request_from_row(r) for r in rows]

    async def review_sender_id_request(
        self,
        request_id: str,
        *,
        status: str,
        review_reason: str | None,
        reviewed_by: str,
        at: datetime,
    ) -> SenderIdRequest | None:
        """PENDING -> ``status``; None when the request is absent or already reviewed."""
        cursor = self._backend.transaction(
            lambda c: c.execute(
                "UPDATE sms_sender_ids SET status = ?, review_reason = ?, reviewed_by = ?, "
                "reviewed_at = ? WHERE id = ? AND status = 'PENDING'",
                (status, review_reason, reviewed_by, ts(at), request_id),
            )
        )
        if not cursor.rowcount:
            return None
        return await self.get_sender_id_request(request_id)

    async def is_sender_id_approved(self, org_id: str, sender_id: str, flow: str) -> bool:
        """Whether the value is APPROVED for the flow (case-insensitive)."""
        row = self._conn.execute(
            "SELECT 1 FROM sms_sender_ids WHERE org_id = ? AND flow = ? AND status = 'APPROVED' "
            "AND sender_id = ? COLLATE NOCASE LIMIT 1",
            (org_id, flow, sender_id),
        ).fetchone()
        return row is not None

    # ------------------------------------------------------------------ opt-outs

    async def add_opt_out(self, opt_out: OptOut, event: TimelineEvent) -> bool:
        """Insert the number with its event; False (nothing written) when already listed."""
        return await insert_opt_out(self._backend, "sms_opt_outs", opt_out, event)

    async def remove_opt_out(self, org_id: str, phone: str, event: TimelineEvent) -> bool:
        """Delete the number with its event; False (nothing written) when not listed."""

        def op(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "DELETE FROM sms_opt_outs WHERE org_id = ? AND phone = ?", (org_id, phone)
            )
            if not cursor.rowcount:
                return False
            insert_event(conn, event)
            return True

        return await self._backend.submit(op)

    async def is_opted_out(self, org_id: str, phone: str) -> bool:
        """Whether the number is on the list."""
        row = self._conn.execute(
            "SELECT 1 FROM sms_opt_outs WHERE org_id = ? AND phone = ?", (org_id, phone)
        ).fetchone()
        return row is not None

    async def list_opt_outs(
        self, org_id: str, *, offset: int, limit: int
    ) -> tuple[list[OptOut], int]:
        """A page of the list, newest first, and the total."""
        rows = self._conn.execute(
            "SELECT org_id, phone, source, created_at FROM sms_opt_outs WHERE org_id = ? "
            "ORDER BY created_at DESC, phone LIMIT ? OFFSET ?",
            (org_id, limit, offset),
        ).fetchall()
        total = self._conn.execute(
            "SELECT COUNT(*) FROM sms_opt_outs WHERE org_id = ?", (org_id,)
        ).fetchone()[0]
        items = [
            OptOut(org_id=r[0], phone=r[1], source=r[2], created_at=parse_ts(r[3])) for r in rows
        ]
        return items, int(total)

    async def has_sent_sms_to(self, org_id: str, phone: str) -> bool:
        """Whether any SMS of the organization went (or is going) to the number."""
        row = self._conn.execute(
            "SELECT 1 FROM messages WHERE org_id = ? AND channel = 'sms' AND recipient = ? LIMIT 1",
            (org_id, phone),
        ).fetchone()
        return row is not None

    # ------------------------------------------------------------------ tokens, inbound

    async def set_sms_token(self, org_id: str, token: str, token_hash: str, at: datetime) -> None:
        """Store or replace the organization's webhook token."""
        self._backend.transaction(
            lambda c: c.execute(
                "INSERT INTO sms_tokens (org_id, token, token_hash, created_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (org_id) DO UPDATE SET token = excluded.token, "
                "token_hash = excluded.token_hash, created_at = excluded.created_at",
                (org_id, token, token_hash, ts(at)),
            )
        )

    async def get_sms_token(self, org_id: str) -> str | None:
        """The current token of the organization."""
        row = self._conn.execute(
            "SELECT token FROM sms_tokens WHERE org_id = ?", (org_id,)
        ).fetchone()
        return None if row is None else str(row[0])

    async def org_for_sms_token(self, token_hash: str) -> str | None:
        """The organization owning the token with this digest."""
        row = self._conn.execute(
            "SELECT org_id FROM sms_tokens WHERE token_hash = ?", (token_hash,)
        ).fetchone()
        return None if row is None else str(row[0])

    async def add_inbound(self, message: InboundMessage) -> bool:
        """Store one MO message; False (nothing written) when its id is already stored.

        Ids derived from the provider's own message id make a redelivered
        webhook a no-op.
        """
        cursor = await self._backend.submit(
            lambda c: c.execute(
                "INSERT OR IGNORE INTO inbound_messages (id, org_id, channel, sender, recipient, "
                "body, keyword, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    message.id,
                    message.org_id,
                    str(message.channel),
                    message.sender,
                    message.recipient,
                    message.body,
                    message.keyword,
                    ts(message.created_at),
                ),
            )
        )
        return bool(cursor.rowcount)

    async def list_inbound(
        self, org_id: str, channel: Channel, *, offset: int, limit: int
    ) -> tuple[list[InboundMessage], int]:
        """A page of MO messages, newest first, and the total."""
        rows = self._conn.execute(
            "SELECT id, org_id, channel, sender, recipient, body, keyword, created_at "
            "FROM inbound_messages WHERE org_id = ? AND channel = ? "
            "ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?",
            (org_id, str(channel), limit, offset),
        ).fetchall()
        total = self._conn.execute(
            "SELECT COUNT(*) FROM inbound_messages WHERE org_id = ? AND channel = ?",
            (org_id, str(channel)),
        ).fetchone()[0]
        items = [
            InboundMessage(
                id=r[0],
                org_id=r[1],
                channel=Channel(r[2]),
                sender=r[3],
                recipient=r[4],
                body=r[5],
                keyword=r[6],
                created_at=parse_ts(r[7]),
            )
            for r in rows
        ]
        return items, int(total)

    # ------------------------------------------------------------------ messages

    async def list_sms(
        self,
        org_id: str,
        *,
        flow: str | None,
        status: str | None,
        query: str | None,
        offset: int,
        limit: int,
    ) -> SmsPage:
        """SMS of the organization, newest first, with optional filters."""
        clauses = ["org_id = ?", "channel = 'sms'"]
        params: list[Any] = [org_id]
        if flow is not None:
            clauses.append("json_extract(content, '$.flow') = ?")
            params.append(flow)
        if status is not None:
            clauses.append("status = ?")
            params.append(status)
        if query:
            pattern = _like_pattern(query)
            clauses.append(
                "(recipient LIKE ? ESCAPE '\\' OR json_extract(content, '$.body') LIKE ? "
                "ESCAPE '\\' OR id LIKE ? ESCAPE '\\' OR provider_message_id LIKE ? ESCAPE '\\')"
            )
            params.extend([pattern] * 4)
        where = " AND ".join(clauses)
        total = self._conn.execute(
            f"SELECT COUNT(*) FROM messages WHERE {where}",  # noqa: S608 - fixed clauses
            params,
        ).fetchone()[0]
        rows = self._conn.execute(
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE {where} "  # noqa: S608
            "ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?",
            [*params, limit, offset],
        ).fetchall()
        return SmsPage(messages=[message_from_row(r) for r in rows], total=int(total))

    async def find_by_provider_message_id(
        self, channel: Channel, provider_message_id: str
    ) -> Message | None:
        """The message a provider knows by this id, in any organization."""
        row = self._conn.execute(
            f"SELECT {MESSAGE_COLUMNS} FROM messages "  # noqa: S608
            "WHERE provider_message_id = ? AND channel = ? LIMIT 1",
            (provider_message_id, str(channel)),
        ).fetchone()
        return None if row is None else message_from_row(row)

    async def apply_receipt(
        self,
        message_id: str,
        *,
        new_status: Status,
        allowed_from: frozenset[Status],
        event: TimelineEvent,
    ) -> ReceiptOutcome | None:
        """Move the message only from an allowed status; the check and the write are atomic."""

        def op(conn: sqlite3.Connection) -> ReceiptOutcome | None:
            row = conn.execute(
                f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ?",  # noqa: S608
                (message_id,),
            ).fetchone()
            if row is None:
                return None
            message = message_from_row(row)
            if message.status not in allowed_from:
                return ReceiptOutcome(message=message, applied=False)
            last_error = event.details.get("error") if new_status == Status.FAILED else None
            conn.execute(
                "UPDATE messages SET status = ?, updated_at = ?, "
                "last_error = COALESCE(?, last_error) WHERE id = ?",
                (str(new_status), ts(event.created_at), last_error, message_id),
            )
            insert_event(conn, event)
            moved = message_from_row(
                conn.execute(
                    f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ?",  # noqa: S608
                    (message_id,),
                ).fetchone()
            )
            return ReceiptOutcome(message=moved, applied=True)

        return await self._backend.submit(op)

    async def requeue(
        self, org_id: str, message_id: str, *, event: TimelineEvent, run_at: datetime
    ) -> tuple[Message, bool] | None:
        """FAILED -> QUEUED with its event and a fresh job, or nothing."""

        def op(conn: sqlite3.Connection) -> tuple[Message, bool] | None:
            row = conn.execute(
                f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ? AND org_id = ?",  # noqa: S608
                (message_id, org_id),
            ).fetchone()
            if row is None:
                return None
            message = message_from_row(row)
            if message.status != Status.FAILED:
                return message, False
            conn.execute(
                "UPDATE messages SET status = ?, updated_at = ? WHERE id = ?",
                (str(Status.QUEUED), ts(event.created_at), message_id),
            )
            insert_event(conn, event)
            conn.execute(
                "INSERT INTO jobs (id, message_id, run_at, created_at, attempts_before) "
                "VALUES (?, ?, ?, ?, ?)",
                (message_id, message_id, ts(run_at), ts(event.created_at), message.attempt_count),
            )
            moved = message_from_row(
                conn.execute(
                    f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ?",  # noqa: S608
                    (message_id,),
                ).fetchone()
            )
            return moved, True

        result = await self._backend.submit(op)
        if result is not None and result[1]:
            self._backend.notify_work()
        return result

    async def set_otp_ignores_opt_out(self, org_id: str, value: bool) -> bool:
        """Set the organization's OTP opt-out policy."""
        cursor = self._backend.transaction(
            lambda c: c.execute(
                "UPDATE orgs SET otp_ignores_opt_out = ? WHERE id = ?", (int(value), org_id)
            )
        )
        return bool(cursor.rowcount)
