"""SQLite records of customer webhooks: endpoints, deliveries, attempts.

:class:`SqliteWebhookStore` shares the :class:`~commtunnel.backends.sqlite.SqliteBackend`'s
connection and group commit, like :mod:`commtunnel.backends.sqlite_sms`.
Deliveries are created by :func:`~commtunnel.backends.sqlite.insert_event`,
in the transaction of the event they carry; this store holds the rest. The
webhook worker leases due deliveries (:meth:`SqliteWebhookStore.claim_deliveries`)
and records each attempt under its lease token, so that a worker whose lease
ran out writes nothing.
"""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from commtunnel.backends.sqlite import (
    EVENTS,
    BackendStore,
    Rows,
    fetch_one,
    insert_event,
    parse_ts,
    record_rows,
    skip_locked,
    ts,
)
from commtunnel.domain.webhooks import (
    DeliveryStatus,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)
from commtunnel.ports import ClaimedDelivery, DeliveryCompletion, DeliveryPage


def _opt_ts(value: datetime | None) -> str | None:
    return None if value is None else ts(value)


def _events_text(events: tuple[str, ...] | None) -> str | None:
    """The ``events`` column for a filter: ``",a,b,"`` (None: every event)."""
    return None if events is None else f",{','.join(events)},"


def _events_filter(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(t for t in text.split(",") if t)


_ENDPOINTS = record_rows(
    "webhook_endpoints",
    WebhookEndpoint,
    "id, org_id, url, description, events, enabled, secret, previous_secret, "
    "previous_secret_expires_at, failing_since, disabled_at, disabled_reason, "
    "created_at, updated_at",
    events=_events_filter,
    enabled=bool,
    failing_since=lambda text: None if text is None else parse_ts(text),  # not named *_at
)
_DELIVERIES = record_rows(
    "webhook_deliveries",
    WebhookDelivery,
    "id, endpoint_id, org_id, event_id, event_type, message_id, payload, status, "
    "attempt_count, next_attempt_at, replay_of, last_status_code, last_error, "
    "created_at, updated_at",
    status=DeliveryStatus,
)
_ATTEMPTS = record_rows(
    "webhook_attempts",
    WebhookAttempt,
    "delivery_id, number, started_at, duration_ms, status_code, succeeded, error, response_body",
    succeeded=bool,
)


def _aliased(rows: Rows[Any], alias: str) -> tuple[str, int]:
    """(``rows``' columns prefixed with ``alias.``, how many there are) for a join."""
    names = [name.strip() for name in rows.columns.split(",")]
    return ", ".join(f"{alias}.{name}" for name in names), len(names)


_D_COLUMNS, _D_WIDTH = _aliased(_DELIVERIES, "d")
_W_COLUMNS, _W_WIDTH = _aliased(_ENDPOINTS, "w")
_E_COLUMNS, _E_WIDTH = _aliased(EVENTS, "e")

# A delivery due at ``now`` with its endpoint, its event (none when it carries
# its own payload, or the event is gone) and its message's recipient. The
# literal status lets SQLite use the partial index webhook_deliveries_due.
_CLAIM = (
    f"SELECT {_D_COLUMNS}, {_W_COLUMNS}, {_E_COLUMNS}, m.recipient "  # noqa: S608 - fixed names
    "FROM webhook_deliveries d "
    "JOIN webhook_endpoints w ON w.id = d.endpoint_id "
    "LEFT JOIN events e ON e.id = d.event_id AND d.payload IS NULL "
    "LEFT JOIN messages m ON m.id = d.message_id "
    "WHERE d.status = 'PENDING' AND d.next_attempt_at <= ? "
    "AND (d.lease_until IS NULL OR d.lease_until <= ?) "
    "ORDER BY d.next_attempt_at, d.id LIMIT ?"
)


def _claimed(row: Sequence[Any], lease_token: str) -> ClaimedDelivery:
    """The :class:`ClaimedDelivery` for one row of :data:`_CLAIM`."""
    w_end = _D_WIDTH + _W_WIDTH
    e_end = w_end + _E_WIDTH
    event_row = tuple(row[w_end:e_end])
    return ClaimedDelivery(
        delivery=_DELIVERIES.from_row(tuple(row[:_D_WIDTH])),
        endpoint=_ENDPOINTS.from_row(tuple(row[_D_WIDTH:w_end])),
        event=None if event_row[0] is None else EVENTS.from_row(event_row),
        recipient=row[e_end],
        lease_token=lease_token,
    )


class SqliteWebhookStore(BackendStore):
    """The :class:`~commtunnel.ports.WebhookStorage` port on a SQLite backend.

    Args:
        backend: an opened (or soon opened) backend whose connection and
            group commit this store uses.
    """

    # ------------------------------------------------------------------ endpoints

    async def create_endpoint(self, endpoint: WebhookEndpoint) -> None:
        """Store a new endpoint.

        Raises:
            sqlite3.IntegrityError: the id is taken, or the organization does not exist.
        """
        await self._backend.transaction(
            lambda c: c.execute(
                f"INSERT INTO webhook_endpoints ({_ENDPOINTS.columns}) "  # noqa: S608 - fixed names
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    endpoint.id,
                    endpoint.org_id,
                    *_endpoint_values(endpoint),
                    ts(endpoint.created_at),
                    ts(endpoint.updated_at),
                ),
            )
        )

    async def get_endpoint(self, org_id: str, endpoint_id: str) -> WebhookEndpoint | None:
        """One endpoint of the organization."""
        return await self._backend.read(
            _ENDPOINTS.one, "WHERE id = ? AND org_id = ?", (endpoint_id, org_id)
        )

    async def list_endpoints(self, org_id: str) -> list[WebhookEndpoint]:
        """Every endpoint of the organization, oldest first."""
        return await self._backend.read(
            _ENDPOINTS.all, "WHERE org_id = ? ORDER BY created_at, id", (org_id,)
        )

    async def update_endpoint(
        self, org_id: str, endpoint_id: str, changes: Mapping[str, Any], at: datetime
    ) -> WebhookEndpoint | None:
        """Set only the fields in ``changes`` (and ``updated_at``), in one statement.

        Columns not named keep whatever is stored, so a change made meanwhile
        by another request or the worker (a rotation, a disable) is never
        overwritten with an older copy.

        Args:
            changes: attribute name -> value, names from :data:`UPDATABLE`.
            at: the new ``updated_at``.

        Returns:
            The endpoint as stored afterwards, None if it does not exist.

        Raises:
            ValueError: a name outside :data:`UPDATABLE`.
        """
        unknown = set(changes) - set(UPDATABLE)
        if unknown:
            raise ValueError(f"not updatable: {sorted(unknown)}")
        sets = [f"{name} = ?" for name in changes] + ["updated_at = ?"]
        values = [UPDATABLE[name](value) for name, value in changes.items()] + [ts(at)]

        def op(conn: sqlite3.Connection) -> WebhookEndpoint | None:
            conn.execute(
                f"UPDATE webhook_endpoints SET {', '.join(sets)} WHERE id = ? AND org_id = ?",  # noqa: S608 - names from UPDATABLE
                (*values, endpoint_id, org_id),
            )
            return _ENDPOINTS.one(conn, "WHERE id = ? AND org_id = ?", (endpoint_id, org_id))

        return await self._backend.transaction(op)

    async def rotate_secret(
        self, org_id: str, endpoint_id: str, *, secret: str, previous_until: datetime, at: datetime
    ) -> WebhookEndpoint | None:
        """Make ``secret`` current and the stored one previous until ``previous_until``, at once.

        Returns:
            The endpoint as stored afterwards, None if it does not exist.
        """

        def op(conn: sqlite3.Connection) -> WebhookEndpoint | None:
            conn.execute(
                "UPDATE webhook_endpoints SET previous_secret = secret, secret = ?, "
                "previous_secret_expires_at = ?, updated_at = ? WHERE id = ? AND org_id = ?",
                (secret, ts(previous_until), ts(at), endpoint_id, org_id),
            )
            return _ENDPOINTS.one(conn, "WHERE id = ? AND org_id = ?", (endpoint_id, org_id))

        return await self._backend.transaction(op)

    async def delete_endpoint(self, org_id: str, endpoint_id: str) -> bool:
        """Delete an endpoint with its deliveries and attempts; False if absent.

        A worker holding a lease on one of its deliveries then loses it:
        :meth:`complete_delivery` finds no row and writes nothing.
        """

        def op(conn: sqlite3.Connection) -> bool:
            deleted = conn.execute(
                "DELETE FROM webhook_endpoints WHERE id = ? AND org_id = ?",
                (endpoint_id, org_id),
            ).rowcount
            if not deleted:
                return False
            conn.execute(
                "DELETE FROM webhook_attempts WHERE delivery_id IN "
                "(SELECT id FROM webhook_deliveries WHERE endpoint_id = ?)",
                (endpoint_id,),
            )
            conn.execute("DELETE FROM webhook_deliveries WHERE endpoint_id = ?", (endpoint_id,))
            return True

        return await self._backend.transaction(op)

    # ------------------------------------------------------------------ deliveries

    async def add_delivery(self, delivery: WebhookDelivery) -> None:
        """Store a delivery made outside the fan-out (a test event, a replay).

        Raises:
            sqlite3.IntegrityError: the id is taken, or a first delivery
                (``replay_of`` None) of the same event to the same endpoint exists.
        """
        d = delivery
        await self._backend.transaction(
            lambda c: c.execute(
                f"INSERT INTO webhook_deliveries ({_DELIVERIES.columns}) "  # noqa: S608 - fixed names
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    d.id,
                    d.endpoint_id,
                    d.org_id,
                    d.event_id,
                    d.event_type,
                    d.message_id,
                    d.payload,
                    str(d.status),
                    d.attempt_count,
                    _opt_ts(d.next_attempt_at),
                    d.replay_of,
                    d.last_status_code,
                    d.last_error,
                    ts(d.created_at),
                    ts(d.updated_at),
                ),
            )
        )

    async def get_delivery(self, org_id: str, delivery_id: str) -> WebhookDelivery | None:
        """One delivery of the organization."""
        return await self._backend.read(
            _DELIVERIES.one, "WHERE id = ? AND org_id = ?", (delivery_id, org_id)
        )

    async def list_deliveries(
        self,
        org_id: str,
        *,
        endpoint_id: str | None = None,
        message_id: str | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> DeliveryPage:
        """Deliveries newest first (by UUIDv7 id), filtered, each with its attempts.

        Args:
            org_id: the organization whose deliveries are listed.
            endpoint_id: only this endpoint's (None: every endpoint).
            message_id: only this message's (None: any, organization-level too).
            limit: the most deliveries on the page (≥ 1).
            before: a delivery id from the previous page's ``next_cursor``;
                only older deliveries are listed.

        Returns:
            The page; its ``next_cursor`` is None when no older delivery matches.
        """
        clauses, params = ["org_id = ?"], [org_id]
        for clause, value in (
            ("endpoint_id = ?", endpoint_id),
            ("message_id = ?", message_id),
            ("id < ?", before),
        ):
            if value is not None:
                clauses.append(clause)
                params.append(value)
        # One row more than the page tells whether another page follows.
        deliveries = await self._backend.read(
            _DELIVERIES.all,
            f"WHERE {' AND '.join(clauses)} ORDER BY id DESC LIMIT ?",
            [*params, limit + 1],
        )
        more = len(deliveries) > limit
        deliveries = deliveries[:limit]
        attempts = await self._backend.read(
            _ATTEMPTS.grouped,
            "delivery_id",
            [d.id for d in deliveries],
            order_by="delivery_id, number",
        )
        return DeliveryPage(
            items=[(d, attempts[d.id]) for d in deliveries],
            next_cursor=deliveries[-1].id if more else None,
        )

    # ------------------------------------------------------------------ the worker's side

    async def claim_deliveries(
        self, *, now: datetime, limit: int, lease_seconds: float
    ) -> list[ClaimedDelivery]:
        """Lease up to ``limit`` PENDING deliveries due at ``now``, oldest due first.

        Args:
            now: deliveries with ``next_attempt_at`` at or before it, and no
                lease alive at it, are due (an expired lease is due again).
            limit: the most deliveries leased.
            lease_seconds: how long the lease lasts, in seconds; after it
                another claim may take the delivery.

        Returns:
            The leased deliveries, each with a fresh lease token.
        """
        now_text = ts(now)
        lease_until = ts(now + timedelta(seconds=lease_seconds))

        def op(conn: sqlite3.Connection) -> list[ClaimedDelivery]:
            rows = conn.execute(
                _CLAIM + skip_locked(conn, "d"), (now_text, now_text, limit)
            ).fetchall()
            claimed = [_claimed(row, secrets.token_hex(8)) for row in rows]
            conn.executemany(
                "UPDATE webhook_deliveries SET lease_token = ?, lease_until = ? WHERE id = ?",
                [(c.lease_token, lease_until, c.delivery.id) for c in claimed],
            )
            return claimed

        return await self._backend.submit(op)

    async def complete_delivery(self, completion: DeliveryCompletion) -> bool:
        """Record an attempt and its consequences in one transaction (group commit).

        The delivery moves to ``completion.status`` with one more attempt and
        its lease cleared; the endpoint takes the new ``failing_since``; with
        ``disable_endpoint`` the endpoint is disabled (at the attempt's start)
        before ``disabled_event`` is written, so that event fans out to the
        organization's other endpoints only. An endpoint found disabled
        already keeps its reason, and no second event is written.

        Returns:
            False, with nothing written, when the delivery's lease token is no
            longer the claim's (the lease expired and another claim took it,
            or the endpoint was deleted).
        """
        claimed, attempt = completion.claimed, completion.attempt
        at = ts(attempt.started_at)

        def op(conn: sqlite3.Connection) -> bool:
            fenced = conn.execute(
                "UPDATE webhook_deliveries SET status = ?, attempt_count = attempt_count + 1, "
                "next_attempt_at = ?, last_status_code = ?, last_error = ?, "
                "lease_token = NULL, lease_until = NULL, updated_at = ? "
                "WHERE id = ? AND lease_token = ?",
                (
                    str(completion.status),
                    _opt_ts(completion.next_attempt_at),
                    attempt.status_code,
                    completion.last_error,
                    at,
                    claimed.delivery.id,
                    claimed.lease_token,
                ),
            )
            if not fenced.rowcount:
                return False
            conn.execute(
                f"INSERT INTO webhook_attempts ({_ATTEMPTS.columns}) "  # noqa: S608
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (delivery_id, number) DO UPDATE SET "
                "started_at = excluded.started_at, duration_ms = excluded.duration_ms, "
                "status_code = excluded.status_code, succeeded = excluded.succeeded, "
                "error = excluded.error, response_body = excluded.response_body",
                (
                    attempt.delivery_id,
                    attempt.number,
                    at,
                    attempt.duration_ms,
                    attempt.status_code,
                    int(attempt.succeeded),
                    attempt.error,
                    attempt.response_body,
                ),
            )
            conn.execute(
                "UPDATE webhook_endpoints SET failing_since = ? WHERE id = ?",
                (_opt_ts(completion.endpoint_failing_since), claimed.endpoint.id),
            )
            if completion.disable_endpoint is not None:
                disabled = conn.execute(
                    "UPDATE webhook_endpoints SET enabled = 0, disabled_at = ?, "
                    "disabled_reason = ?, updated_at = ? WHERE id = ? AND enabled = 1",
                    (at, completion.disable_endpoint, at, claimed.endpoint.id),
                ).rowcount
                if disabled and completion.disabled_event is not None:
                    insert_event(conn, completion.disabled_event)
            return True

        return await self._backend.submit(op)

    async def next_delivery_at(self) -> datetime | None:
        """When the earliest PENDING delivery is due (None: there is none).

        A leased delivery counts as due when its lease runs out (it is due
        again only if its worker never records the attempt).
        """
        # An unleased delivery is due at its own time; a leased one at the later of
        # its time and its lease's end. Leased rows are few (those in flight).
        row = await self._backend.read(
            fetch_one,
            "SELECT MIN(next_attempt_at) FROM webhook_deliveries WHERE status = 'PENDING' "
            "AND next_attempt_at IS NOT NULL AND lease_until IS NULL",
        )
        leased = await self._backend.read(
            fetch_one,
            "SELECT MIN(CASE WHEN lease_until > next_attempt_at THEN lease_until "
            "ELSE next_attempt_at END) FROM webhook_deliveries WHERE status = 'PENDING' "
            "AND next_attempt_at IS NOT NULL AND lease_until IS NOT NULL",
        )
        times = [t for t in (row[0], leased[0]) if t is not None]
        earliest = min(times) if times else None
        return None if earliest is None else parse_ts(earliest)


#: Fields :meth:`SqliteWebhookStore.update_endpoint` may set, with their column encoders.
UPDATABLE: dict[str, Callable[[Any], Any]] = {
    "url": str,
    "description": str,
    "events": _events_text,
    "enabled": int,
    "failing_since": _opt_ts,
    "disabled_at": _opt_ts,
    "disabled_reason": lambda value: value,
}


def _endpoint_values(e: WebhookEndpoint) -> tuple[Any, ...]:
    """The endpoint's columns from ``url`` to ``disabled_reason``, as stored."""
    return (
        e.url,
        e.description,
        _events_text(e.events),
        int(e.enabled),
        e.secret,
        e.previous_secret,
        _opt_ts(e.previous_secret_expires_at),
        _opt_ts(e.failing_since),
        _opt_ts(e.disabled_at),
        e.disabled_reason,
    )
