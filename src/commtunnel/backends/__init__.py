"""Storage + queue backends: SQLite (embedded default) and PostgreSQL (scale-out)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from commtunnel.backends import schema
from commtunnel.backends.sqlite import SqliteBackend
from commtunnel.config import is_postgres_url, sqlite_path
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
    return SqliteBackend(sqlite_path(text), clock=clock)


def pending_migrations(db: str | Path, version: int) -> list[int]:
    """The migrations (their versions) that would bring ``db`` from ``version`` to the latest.

    PostgreSQL's list starts at version 6 (the whole schema at once), so a new
    PostgreSQL database has two to apply where a new SQLite file has seven.
    """
    migrations = schema.POSTGRES_MIGRATIONS if is_postgres_url(str(db)) else schema.MIGRATIONS
    return [number for number, _script in migrations if number > version]


def stored_schema_version(db: str | Path) -> int:
    """The schema version ``db`` is at, read without migrating it (0: no Commtunnel tables yet).

    Args:
        db: as for :func:`make_backend`.

    Raises:
        sqlite3.Error / psycopg.Error: the database cannot be read.
    """
    text = str(db)
    if is_postgres_url(text):
        import psycopg

        with psycopg.connect(text, autocommit=True) as server:
            return schema.postgres_version(server)
    path = Path(sqlite_path(text))
    if not path.exists():
        return 0
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return schema.current_version(conn)
    finally:
        conn.close()
