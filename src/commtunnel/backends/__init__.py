"""Storage + queue backends: SQLite (embedded default) and PostgreSQL (scale-out)."""

from __future__ import annotations

from pathlib import Path

from commtunnel.backends.sqlite import SqliteBackend
from commtunnel.config import is_postgres_url
from commtunnel.ports import Clock


def make_backend(db: str | Path, *, clock: Clock, pool_size: int = 10) -> SqliteBackend:
    """The backend ``db`` names, not yet opened.

    Args:
        db: a ``postgresql://`` (or ``postgres://``) URL, else a SQLite file
            path (``sqlite:///`` prefix allowed, ``":memory:"`` for tests).
        clock: the backend's clock (migration timestamps).
        pool_size: the most PostgreSQL connections the process opens.

    Returns:
        A :class:`~commtunnel.backends.postgres.PostgresBackend` or a
        :class:`SqliteBackend` (the PostgreSQL backend runs the same stores).
    """
    text = str(db)
    if is_postgres_url(text):
        from commtunnel.backends.postgres import PostgresBackend

        return PostgresBackend(text, clock=clock, pool_size=pool_size)
    return SqliteBackend(text.removeprefix("sqlite:///"), clock=clock)
