"""SQLite records of provider routing: a message's last attempt, providers' health reports.

:class:`SqliteRoutingStore` shares the :class:`~commtunnel.backends.sqlite.SqliteBackend`'s
connection and group commit, like the other per-area stores.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import datetime

from commtunnel.backends.sqlite import ATTEMPTS, BackendStore, parse_ts, record_rows, ts
from commtunnel.domain.circuit import CircuitState, ProviderHealth
from commtunnel.domain.messages import Attempt

_HEALTH = record_rows(
    "provider_health",
    ProviderHealth,
    "provider, channel, state, consecutive_failures, opened_until, calls, failures, "
    "last_error, last_error_category, last_error_at, reported_by, updated_at",
    state=CircuitState,
    opened_until=lambda text: None if text is None else parse_ts(text),
)


def _opt(value: datetime | None) -> str | None:
    return None if value is None else ts(value)


class SqliteRoutingStore(BackendStore):
    """Provider routing's records on a SQLite backend (the ``RoutingStorage`` port).

    Args:
        backend: the backend whose connection and group commit this store uses.
    """

    async def last_attempt(self, message_id: str) -> Attempt | None:
        """The message's latest attempt (highest number), None before the first."""
        return await self._backend.read(
            ATTEMPTS.one, "WHERE message_id = ? ORDER BY number DESC LIMIT 1", (message_id,)
        )

    async def report_provider_health(self, reports: Sequence[ProviderHealth]) -> None:
        """Upsert one row per (channel, provider) (the latest report wins), group-committed."""
        rows = [
            (
                r.provider,
                r.channel,
                str(r.state),
                r.consecutive_failures,
                _opt(r.opened_until),
                r.calls,
                r.failures,
                r.last_error,
                r.last_error_category,
                _opt(r.last_error_at),
                r.reported_by,
                ts(r.updated_at),
            )
            for r in reports
        ]

        def op(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT INTO provider_health (provider, channel, state, consecutive_failures, "
                "opened_until, calls, failures, last_error, last_error_category, last_error_at, "
                "reported_by, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (channel, provider) DO UPDATE SET "
                "state = excluded.state, consecutive_failures = excluded.consecutive_failures, "
                "opened_until = excluded.opened_until, calls = excluded.calls, "
                "failures = excluded.failures, last_error = excluded.last_error, "
                "last_error_category = excluded.last_error_category, "
                "last_error_at = excluded.last_error_at, reported_by = excluded.reported_by, "
                "updated_at = excluded.updated_at",
                rows,
            )

        await self._backend.submit(op)

    async def list_provider_health(self) -> list[ProviderHealth]:
        """Every provider's latest report, by channel then provider name."""
        return await self._backend.read(_HEALTH.all, "ORDER BY channel, provider")
