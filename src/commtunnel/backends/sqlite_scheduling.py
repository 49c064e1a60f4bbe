"""SQLite records of scheduled sends and email batches: cancels, and batches accepted whole.

:class:`SqliteSchedulingStore` shares the
:class:`~commtunnel.backends.sqlite.SqliteBackend`'s connection and group
commit. A scheduled message needs nothing of its own here: it is a message
stored SCHEDULED with a job due at ``scheduled_at``, accepted like any other
(``Storage.accept``) and moved to QUEUED by the claim that finds it due.

Two writes are specific:

* a cancel, which moves a message to CANCELED and deletes its job only while
  its status is still cancelable, decided inside the transaction (a claimed
  message is PROCESSING already, so a worker's send is never cut off);
* a batch, whose messages, events, jobs, answer (table ``email_batches``)
  and idempotency key are committed in one operation of the group commit:
  when any write fails the operation's writes are all undone.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from datetime import datetime

import attrs

from commtunnel.backends.sqlite import (
    BackendStore,
    claim_idempotency_key,
    get_message,
    insert_event,
    insert_job,
    insert_message,
    parse_ts,
    ts,
    unexpired_key,
)
from commtunnel.domain.events import TimelineEvent
from commtunnel.domain.messages import Message, Status
from commtunnel.ports import BatchAcceptResult, EmailBatch, IdempotencyRecord, NewMessage


def _get_batch(conn: sqlite3.Connection, org_id: str, batch_id: str) -> EmailBatch | None:
    row = conn.execute(
        "SELECT id, org_id, items, created_at FROM email_batches WHERE id = ? AND org_id = ?",
        (batch_id, org_id),
    ).fetchone()
    if row is None:
        return None
    return EmailBatch(
        id=row[0], org_id=row[1], items=json.loads(row[2]), created_at=parse_ts(row[3])
    )


def _batch_replay(
    conn: sqlite3.Connection,
    org_id: str,
    key: str,
    *,
    endpoint: str,
    fingerprint: str,
    now: datetime,
) -> BatchAcceptResult | None:
    """What the stored key answers a batch at ``now`` (see ``find_batch_replay``)."""
    record = unexpired_key(conn, org_id, key, now)
    if record is None:
        return None
    if (record.endpoint, record.fingerprint) != (endpoint, fingerprint):
        return BatchAcceptResult(batch=None, conflict=record)
    batch = _get_batch(conn, org_id, record.message_id)
    return None if batch is None else BatchAcceptResult(batch=batch, duplicate=True)


class SqliteSchedulingStore(BackendStore):
    """Cancels and email batches on the backend's connection (see the module docstring)."""

    async def cancel(
        self,
        org_id: str,
        message_id: str,
        *,
        event: TimelineEvent,
        cancelable: frozenset[Status],
    ) -> tuple[Message, bool] | None:
        """Move the message to CANCELED with ``event`` and delete its job, atomically.

        The answers are those of
        :meth:`commtunnel.ports.SchedulingStorage.cancel`; the ``UPDATE``'s
        condition on the status read in the same transaction decides a race
        with a claim (in this process or another one).
        """
        allowed = sorted(str(s) for s in cancelable)

        def op(conn: sqlite3.Connection) -> tuple[Message, bool] | None:
            message = get_message(conn, message_id, org_id, lock=True)
            if message is None:
                return None
            if message.status not in cancelable:
                return message, False
            moved = conn.execute(
                "UPDATE messages SET status = ?, updated_at = ? WHERE id = ? "  # noqa: S608
                f"AND status IN ({', '.join('?' * len(allowed))})",
                (str(Status.CANCELED), ts(event.created_at), message_id, *allowed),
            ).rowcount
            if not moved:  # pragma: no cover - the transaction holds the write lock
                return message, False
            conn.execute("DELETE FROM jobs WHERE message_id = ?", (message_id,))
            details = {**event.details, "previousStatus": str(message.status)}
            insert_event(conn, attrs.evolve(event, details=details))
            canceled = attrs.evolve(message, status=Status.CANCELED, updated_at=event.created_at)
            return canceled, True

        return await self._backend.submit(op)

    async def accept_batch(
        self,
        batch: EmailBatch,
        messages: Sequence[NewMessage],
        *,
        idempotency: IdempotencyRecord | None,
    ) -> BatchAcceptResult:
        """The batch answer, its messages, events and jobs (and key) in one transaction.

        The answers are those of :meth:`commtunnel.ports.SchedulingStorage.accept_batch`.

        Raises:
            sqlite3.Error: a write failed; nothing of the batch is written.
        """

        def op(conn: sqlite3.Connection) -> BatchAcceptResult:
            if idempotency is not None:
                replay = claim_idempotency_key(conn, idempotency, batch.id, _batch_replay)
                if replay is not None:
                    return replay
            conn.execute(
                "INSERT INTO email_batches (id, org_id, items, created_at) VALUES (?, ?, ?, ?)",
                (
                    batch.id,
                    batch.org_id,
                    json.dumps(batch.items, separators=(",", ":")),
                    ts(batch.created_at),
                ),
            )
            for new in messages:
                insert_message(conn, new.message)
                insert_event(conn, new.event)
                insert_job(
                    conn, new.message.id, run_at=new.run_at, created_at=new.message.created_at
                )
            return BatchAcceptResult(batch=batch)

        result = await self._backend.submit(op)
        if messages and not result.duplicate and result.conflict is None:
            self._backend.notify_work()
        return result

    async def find_batch_replay(
        self, org_id: str, key: str, *, endpoint: str, fingerprint: str, now: datetime
    ) -> BatchAcceptResult | None:
        """What an unexpired key already answers for a batch (read only; see the port)."""
        return await self._backend.read(
            _batch_replay, org_id, key, endpoint=endpoint, fingerprint=fingerprint, now=now
        )

    async def get_batch(self, org_id: str, batch_id: str) -> EmailBatch | None:
        """One stored batch answer of the organization (None: unknown, or purged)."""
        return await self._backend.read(_get_batch, org_id, batch_id)
