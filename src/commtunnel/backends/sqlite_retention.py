"""SQLite retention: deletes what is past its retention, one short transaction per batch.

Messages are found organization by organization on ``messages_org_listing
(org_id, created_at, id)``, oldest first, so no batch scans the table; each
batch deletes at most ``limit`` messages with everything hanging off them:

* their timeline events (``events_message``) and provider attempts (primary key);
* their customer-webhook deliveries (``webhook_deliveries_message``) and those
  deliveries' attempts: a delivery log entry whose event is gone cannot be
  replayed, and the retention promise covers what the log shows of a message.

A message that still has a dispatch job (scheduled, queued, being retried)
is kept whatever its age, and so is everything of it. Other tables go by
their own clock: organization-level events and deliveries (no message) and
inbound messages by age, idempotency keys when their window has passed,
email batch answers after the idempotency retention. Email suppressions and
OTP cooldowns are not touched (the suppression list is kept until removed;
a cooldown row is overwritten by the next OTP).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from commtunnel.backends.sqlite import BackendStore, fetch_one, ts
from commtunnel.ports import PurgeCounts, PurgeCutoffs

#: ids per ``IN (...)`` list (far below SQLite's 32766 host parameters).
_CHUNK = 500

_PURGEABLE_MESSAGES = (
    "SELECT id FROM messages m WHERE org_id = ? AND created_at < ? "
    "AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.message_id = m.id) "
    "ORDER BY created_at LIMIT ?"
)


def _chunks(ids: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(ids), _CHUNK):
        yield ids[start : start + _CHUNK]


def _delete_in(conn: sqlite3.Connection, table: str, column: str, ids: Sequence[str]) -> int:
    """``DELETE FROM table WHERE column IN ids`` in chunks; rows deleted."""
    deleted = 0
    for chunk in _chunks(ids):
        marks = ", ".join("?" * len(chunk))
        deleted += conn.execute(
            f"DELETE FROM {table} WHERE {column} IN ({marks})",  # noqa: S608 - fixed names
            list(chunk),
        ).rowcount
    return deleted


def _delete_deliveries(conn: sqlite3.Connection, delivery_ids: Sequence[str]) -> tuple[int, int]:
    """Delete webhook deliveries and their attempts; (deliveries, attempts) deleted."""
    attempts = _delete_in(conn, "webhook_attempts", "delivery_id", delivery_ids)
    return _delete_in(conn, "webhook_deliveries", "id", delivery_ids), attempts


def _org_ids(conn: sqlite3.Connection) -> list[str]:
    return [org_id for (org_id,) in conn.execute("SELECT id FROM orgs ORDER BY id").fetchall()]


class SqliteRetentionStore(BackendStore):
    """:class:`~commtunnel.ports.RetentionStorage` on the shared SQLite backend."""

    async def purge_messages(self, before: datetime, limit: int) -> PurgeCounts:
        """Delete up to ``limit`` messages created before ``before`` with no job, and their rows.

        Returns:
            The rows deleted in each table (one transaction).
        """
        cutoff = ts(before)

        def op(conn: sqlite3.Connection) -> PurgeCounts:
            counts = PurgeCounts()
            for org_id in _org_ids(conn):
                left = limit - counts.messages
                if left <= 0:
                    break
                ids = [i for (i,) in conn.execute(_PURGEABLE_MESSAGES, (org_id, cutoff, left))]
                if ids:
                    counts += self._delete_messages(conn, org_id, ids)
            return counts

        return await self._backend.transaction(op)

    @staticmethod
    def _delete_messages(conn: sqlite3.Connection, org_id: str, ids: list[str]) -> PurgeCounts:
        delivery_ids: list[str] = []
        for chunk in _chunks(ids):
            marks = ", ".join("?" * len(chunk))
            delivery_ids += [
                d
                for (d,) in conn.execute(
                    "SELECT id FROM webhook_deliveries "  # noqa: S608 - only ? marks
                    f"WHERE org_id = ? AND message_id IN ({marks})",
                    [org_id, *chunk],
                )
            ]
        deliveries, webhook_attempts = _delete_deliveries(conn, delivery_ids)
        return PurgeCounts(
            webhook_deliveries=deliveries,
            webhook_attempts=webhook_attempts,
            events=_delete_in(conn, "events", "message_id", ids),
            attempts=_delete_in(conn, "attempts", "message_id", ids),
            messages=_delete_in(conn, "messages", "id", ids),
        )

    async def purge_others(self, cutoffs: PurgeCutoffs, limit: int) -> PurgeCounts:
        """Delete up to ``limit`` rows of each other table past its cutoff (one transaction).

        Returns:
            The rows deleted in each table.
        """
        records = ts(cutoffs.records)

        def op(conn: sqlite3.Connection) -> PurgeCounts:
            events = inbound = 0
            delivery_ids: list[str] = []
            for org_id in _org_ids(conn):
                args = (org_id, records)
                events += conn.execute(
                    "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE org_id = ? "
                    "AND created_at < ? AND message_id IS NULL LIMIT ?)",
                    (*args, limit - events),
                ).rowcount
                inbound += conn.execute(
                    "DELETE FROM inbound_messages WHERE id IN (SELECT id FROM inbound_messages "
                    "WHERE org_id = ? AND created_at < ? LIMIT ?)",
                    (*args, limit - inbound),
                ).rowcount
                delivery_ids += [
                    d
                    for (d,) in conn.execute(
                        "SELECT id FROM webhook_deliveries WHERE org_id = ? "
                        "AND message_id IS NULL AND created_at < ? LIMIT ?",
                        (*args, limit - len(delivery_ids)),
                    )
                ]
                if max(events, inbound, len(delivery_ids)) >= limit:
                    break  # this batch is full; the next one goes on from here
            deliveries, webhook_attempts = _delete_deliveries(conn, delivery_ids)
            keys = conn.execute(
                "DELETE FROM idempotency_keys WHERE (org_id, key) IN (SELECT org_id, key FROM "
                "idempotency_keys WHERE expires_at <= ? LIMIT ?)",
                (ts(cutoffs.now), limit),
            ).rowcount
            batches = conn.execute(
                "DELETE FROM email_batches WHERE id IN (SELECT id FROM email_batches "
                "WHERE created_at < ? LIMIT ?)",
                (ts(cutoffs.batches), limit),
            ).rowcount
            return PurgeCounts(
                events=events,
                inbound_messages=inbound,
                webhook_deliveries=deliveries,
                webhook_attempts=webhook_attempts,
                idempotency_keys=keys,
                email_batches=batches,
            )

        return await self._backend.transaction(op)

    async def count_purgeable(self, cutoffs: PurgeCutoffs) -> PurgeCounts:
        """What the two purge methods would delete at these cutoffs, counted (nothing deleted)."""
        records = ts(cutoffs.records)
        # The messages a purge would take, and the deliveries going with them or by age.
        purgeable = (
            "SELECT id FROM messages m WHERE created_at < :records "
            "AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.message_id = m.id)"
        )
        deliveries = (
            f"SELECT id FROM webhook_deliveries WHERE message_id IN ({purgeable}) "  # noqa: S608
            "OR (message_id IS NULL AND created_at < :records)"
        )
        queries = {
            "messages": f"SELECT COUNT(*) FROM ({purgeable}) AS purgeable",  # noqa: S608
            "events": (
                f"SELECT COUNT(*) FROM events WHERE message_id IN ({purgeable}) "  # noqa: S608
                "OR (message_id IS NULL AND created_at < :records)"
            ),
            "attempts": f"SELECT COUNT(*) FROM attempts WHERE message_id IN ({purgeable})",  # noqa: S608
            "webhook_deliveries": f"SELECT COUNT(*) FROM ({deliveries}) AS deliveries",  # noqa: S608
            "webhook_attempts": (
                f"SELECT COUNT(*) FROM webhook_attempts WHERE delivery_id IN ({deliveries})"  # noqa: S608
            ),
            "inbound_messages": "SELECT COUNT(*) FROM inbound_messages WHERE created_at < :records",
            "idempotency_keys": "SELECT COUNT(*) FROM idempotency_keys WHERE expires_at <= :now",
            "email_batches": "SELECT COUNT(*) FROM email_batches WHERE created_at < :batches",
        }
        params: dict[str, Any] = {
            "records": records,
            "now": ts(cutoffs.now),
            "batches": ts(cutoffs.batches),
        }
        return PurgeCounts(
            **{
                name: int((await self._backend.read(fetch_one, sql, params))[0])
                for name, sql in queries.items()
            }
        )
