"""SQLite records of the SMS channel: sender IDs, opt-outs, tokens, inbound MO, receipts.

:class:`SqliteSmsStore` shares the :class:`~commtunnel.backends.sqlite.SqliteBackend`'s
connection and its group commit: writes on hot paths (a receipt, a
re-queue) join the current batch; administrative writes run in their own
transaction. Every rule that must hold under concurrency is a constraint
(one live request per sender ID and flow, one opt-out per number) or a
check made inside the write's transaction (a receipt never moves a message
backwards).
"""

from __future__ import annotations

import sqlite3
from datetime import datetime
from typing import Any, Literal

import attrs

from commtunnel.backends.sqlite import (
    INTEGRITY_ERRORS,
    MESSAGES,
    BackendStore,
    SqliteBackend,
    fetch_one,
    get_message,
    insert_event,
    insert_job,
    record_rows,
    ts,
)
from commtunnel.domain.errors import ConflictError
from commtunnel.domain.events import TimelineEvent
from commtunnel.domain.messages import Channel, Message, Status
from commtunnel.ports import InboundMessage, OptOut, ReceiptOutcome, SenderIdRequest, SmsPage

_REQUESTS = record_rows(
    "sms_sender_ids",
    SenderIdRequest,
    "id, org_id, sender_id, flow, status, reason, review_reason, reviewed_by, reviewed_at, "
    "created_at",
)
_SMS_OPT_OUTS = record_rows("sms_opt_outs", OptOut, "org_id, phone, source, created_at")
_INBOUND = record_rows(
    "inbound_messages",
    InboundMessage,
    "id, org_id, channel, sender, recipient, body, keyword, created_at",
    channel=Channel,
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
            f"INSERT INTO {table} (org_id, phone, source, created_at) "  # noqa: S608 - fixed names
            "VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (opt_out.org_id, opt_out.phone, opt_out.source, ts(opt_out.created_at)),
        )
        if not cursor.rowcount:
            return False
        insert_event(conn, event)
        return True

    return await backend.submit(op)


def is_listed(conn: sqlite3.Connection, table: OptOutTable, org_id: str, phone: str) -> bool:
    """Whether the number is on the organization's opt-out list ``table``."""
    row = conn.execute(
        f"SELECT 1 FROM {table} WHERE org_id = ? AND phone = ?",  # noqa: S608 - fixed names
        (org_id, phone),
    ).fetchone()
    return row is not None


def _like_pattern(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _move(
    conn: sqlite3.Connection,
    message: Message,
    event: TimelineEvent,
    *,
    status: Status,
    last_error: str | None = None,
) -> Message:
    """Write ``message``'s move to ``status`` with its event; the moved message.

    Args:
        conn: inside the transaction that read ``message``.
        message: the message as stored.
        event: the transition's event; its time becomes ``updated_at``.
        status: the new status.
        last_error: the new last error; None keeps the stored one.
    """
    moved = attrs.evolve(
        message,
        status=status,
        updated_at=event.created_at,
        last_error=message.last_error if last_error is None else last_error,
    )
    conn.execute(
        "UPDATE messages SET status = ?, updated_at = ?, last_error = ? WHERE id = ?",
        (str(moved.status), ts(moved.updated_at), moved.last_error, moved.id),
    )
    insert_event(conn, event)
    return moved


class SqliteSmsStore(BackendStore):
    """The :class:`~commtunnel.ports.SmsStorage` port on a SQLite backend.

    Args:
        backend: an opened (or soon opened) backend whose connection and
            group commit this store uses.
    """

    # ------------------------------------------------------------------ sender IDs

    async def create_sender_id_request(self, request: SenderIdRequest) -> None:
        """Store a PENDING request.

        Raises:
            ConflictError: the organization has a live (PENDING or APPROVED)
                request with the same value (case-insensitive) and flow.
        """
        try:
            await self._backend.transaction(
                lambda c: c.execute(
                    f"INSERT INTO sms_sender_ids ({_REQUESTS.columns}) "  # noqa: S608 - fixed names
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
        except INTEGRITY_ERRORS:
            raise ConflictError(
                f"'{request.sender_id}' is already requested or approved for the "
                f"{request.flow} flow",
                details={"senderId": request.sender_id, "flow": request.flow},
            ) from None

    async def get_sender_id_request(self, request_id: str) -> SenderIdRequest | None:
        """One request by id, any organization."""
        return await self._backend.read(_REQUESTS.one, "WHERE id = ?", (request_id,))

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
        return await self._backend.read(_REQUESTS.all, f"{where} ORDER BY created_at, id", params)

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
        cursor = await self._backend.transaction(
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
        row = await self._backend.read(
            fetch_one,
            "SELECT 1 FROM sms_sender_ids WHERE org_id = ? AND flow = ? AND status = 'APPROVED' "
            "AND lower(sender_id) = lower(?) LIMIT 1",
            (org_id, flow, sender_id),
        )
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
        return await self._backend.read(is_listed, "sms_opt_outs", org_id, phone)

    async def list_opt_outs(
        self, org_id: str, *, offset: int, limit: int
    ) -> tuple[list[OptOut], int]:
        """(``limit`` opt-outs from the ``offset``-th, newest first; the total count)."""
        return await self._backend.read(
            _SMS_OPT_OUTS.page,
            "WHERE org_id = ?",
            (org_id,),
            order_by="created_at DESC, phone",
            offset=offset,
            limit=limit,
        )

    async def has_sent_sms_to(self, org_id: str, phone: str) -> bool:
        """Whether any SMS of the organization went (or is going) to the number."""
        row = await self._backend.read(
            fetch_one,
            "SELECT 1 FROM messages WHERE org_id = ? AND channel = 'sms' AND recipient = ? LIMIT 1",
            (org_id, phone),
        )
        return row is not None

    # ------------------------------------------------------------------ tokens, inbound

    async def set_sms_token(self, org_id: str, token: str, at: datetime) -> None:
        """Store or replace the organization's webhook token."""
        await self._backend.transaction(
            lambda c: c.execute(
                "INSERT INTO sms_tokens (org_id, token, created_at) VALUES (?, ?, ?) "
                "ON CONFLICT (org_id) DO UPDATE SET token = excluded.token, "
                "created_at = excluded.created_at",
                (org_id, token, ts(at)),
            )
        )

    async def get_sms_token(self, org_id: str) -> str | None:
        """The current token of the organization."""
        row = await self._backend.read(
            fetch_one, "SELECT token FROM sms_tokens WHERE org_id = ?", (org_id,)
        )
        return None if row is None else str(row[0])

    async def org_for_sms_token(self, token: str) -> str | None:
        """The organization holding this token (a unique index lookup)."""
        row = await self._backend.read(
            fetch_one, "SELECT org_id FROM sms_tokens WHERE token = ?", (token,)
        )
        return None if row is None else str(row[0])

    async def add_inbound(self, message: InboundMessage) -> bool:
        """Store one MO message; False (nothing written) when its id is already stored.

        Ids derived from the provider's own message id make a redelivered
        webhook a no-op.
        """
        cursor = await self._backend.submit(
            lambda c: c.execute(
                "INSERT INTO inbound_messages (id, org_id, channel, sender, recipient, "
                "body, keyword, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT DO NOTHING",
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
        """(``limit`` MO messages from the ``offset``-th, newest first; the total count)."""
        return await self._backend.read(
            _INBOUND.page,
            "WHERE org_id = ? AND channel = ?",
            (org_id, str(channel)),
            order_by="created_at DESC, id DESC",
            offset=offset,
            limit=limit,
        )

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
        """SMS of the organization, newest first, with optional filters.

        ``query`` matches a substring of the recipient, body, id or provider
        message id (case-insensitive for ASCII, as SQLite's ``LIKE``).
        """
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
        messages, total = await self._backend.read(
            MESSAGES.page,
            f"WHERE {' AND '.join(clauses)}",
            params,
            order_by="created_at DESC, id DESC",
            offset=offset,
            limit=limit,
        )
        return SmsPage(messages=messages, total=total)

    async def find_by_provider_message_id(
        self, channel: Channel, provider_message_id: str
    ) -> Message | None:
        """The message a provider knows by this id, in any organization."""
        return await self._backend.read(
            MESSAGES.one,
            "WHERE provider_message_id = ? AND channel = ? LIMIT 1",
            (provider_message_id, str(channel)),
        )

    async def apply_receipt(
        self,
        message_id: str,
        *,
        new_status: Status,
        allowed_from: frozenset[Status],
        event: TimelineEvent,
    ) -> ReceiptOutcome | None:
        """Move the message only from an allowed status; the check and the write are atomic.

        A move to FAILED records the event's ``error`` detail as the last error.
        """

        def op(conn: sqlite3.Connection) -> ReceiptOutcome | None:
            message = get_message(conn, message_id, lock=True)
            if message is None:
                return None
            if message.status not in allowed_from:
                return ReceiptOutcome(message=message, applied=False)
            last_error = event.details.get("error") if new_status == Status.FAILED else None
            moved = _move(conn, message, event, status=new_status, last_error=last_error)
            return ReceiptOutcome(message=moved, applied=True)

        return await self._backend.submit(op)

    async def requeue(
        self, org_id: str, message_id: str, *, event: TimelineEvent, run_at: datetime
    ) -> tuple[Message, bool] | None:
        """FAILED -> QUEUED with its event and a fresh job due at ``run_at``, or nothing.

        Returns:
            (the re-queued message, True); (the unchanged message, False) when
            it was not FAILED; None when the organization has no such message.
        """

        def op(conn: sqlite3.Connection) -> tuple[Message, bool] | None:
            message = get_message(conn, message_id, org_id, lock=True)
            if message is None:
                return None
            if message.status != Status.FAILED:
                return message, False
            moved = _move(conn, message, event, status=Status.QUEUED)
            insert_job(
                conn,
                message_id,
                run_at=run_at,
                created_at=event.created_at,
                attempts_before=message.attempt_count,
            )
            return moved, True

        result = await self._backend.submit(op)
        if result is not None and result[1]:
            self._backend.notify_work()
        return result

    async def set_otp_ignores_opt_out(self, org_id: str, value: bool) -> bool:
        """Set the organization's OTP opt-out policy; False for an unknown organization."""
        cursor = await self._backend.transaction(
            lambda c: c.execute(
                "UPDATE orgs SET otp_ignores_opt_out = ? WHERE id = ?", (int(value), org_id)
            )
        )
        return bool(cursor.rowcount)
