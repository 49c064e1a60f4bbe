"""PostgreSQL for tests: one isolated schema per test (or per process group).

The server is the machine's (``COMMTUNNEL_TEST_PG``, default
``postgresql://127.0.0.1:5432/test``, trust auth); ``.ci/run`` starts it
when it is down. A schema is created empty, handed to the code under test as
a ``COMMTUNNEL_DB`` URL whose ``options`` set the ``search_path``, and
dropped with everything in it afterwards.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg

from commtunnel.backends.schema import LATEST_VERSION

#: The test server (a database the tests may create schemas in).
PG_URL = os.environ.get("COMMTUNNEL_TEST_PG", "postgresql://127.0.0.1:5432/test")


def schema_url(schema: str) -> str:
    """A ``COMMTUNNEL_DB`` URL for ``schema`` on the test server."""
    return f"{PG_URL}?options={quote(f'-csearch_path={schema}')}"


@contextmanager
def pg_schema(prefix: str = "t") -> Iterator[str]:
    """Create an empty schema, yield its ``COMMTUNNEL_DB`` URL, then drop it (CASCADE)."""
    schema = f"ct_{prefix}_{secrets.token_hex(6)}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield schema_url(schema)
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


#: The backend the suite runs on: "sqlite" or "postgresql" (``pytest --backend``).
BACKEND = "sqlite"
_created: dict[str, str] = {}  # this test's SQLite paths -> the schemas standing in for them
_spare: list[str] = []  # schemas of finished tests, migrated, to be emptied and reused


def fresh_db(path: Path) -> Path | str:
    """The database a test names ``path``: that SQLite file, or an empty PostgreSQL schema.

    On ``--backend postgresql`` each distinct path of a test gets a schema of
    its own (the same path, the same schema: a test may reopen its database).
    Migrating a new schema takes ~0.4 s, so the schemas of finished tests are
    reused: every row of every table is deleted first (the schema version
    stays), which leaves it as a freshly migrated one.
    """
    if BACKEND == "sqlite":
        return path
    key = str(path)
    if key not in _created:
        conn = _server()
        if _spare:
            schema = _spare.pop()
            _empty(conn, schema)
        else:
            schema = f"ct_t_{secrets.token_hex(6)}"
            conn.execute(f'CREATE SCHEMA "{schema}"')
        _created[key] = schema
    return schema_url(_created[key])


_connection: psycopg.Connection[Any] | None = None


def _server() -> psycopg.Connection[Any]:
    """One autocommit connection to the test server, kept for the whole run."""
    global _connection
    if _connection is None or _connection.closed:
        _connection = psycopg.connect(PG_URL, autocommit=True)
    return _connection


def _empty(conn: psycopg.Connection[Any], schema: str) -> None:
    tables = [
        row[0]
        for row in conn.execute(
            "SELECT tablename FROM pg_tables "
            "WHERE schemaname = %s AND tablename <> 'schema_version'",
            (schema,),
        )
    ]
    # One round trip: several statements, no parameters. orgs is the one referenced.
    deletes = "".join(
        f'DELETE FROM "{schema}"."{table}";'
        for table in sorted(tables, key=lambda name: name == "orgs")
    )
    conn.execute(f"BEGIN;{deletes}COMMIT")


def release_created() -> None:
    """After a test: keep its schemas for reuse when as migrated, else drop them.

    A schema is kept only at the latest version and with no trigger or
    function beyond the schema's own (a test may add one to make writes fail).
    """
    if not _created:
        return
    conn = _server()
    for schema in _created.values():
        if _as_migrated(conn, schema):
            _spare.append(schema)
        else:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    _created.clear()


def _as_migrated(conn: psycopg.Connection[Any], schema: str) -> bool:
    if conn.execute("SELECT to_regclass(%s)", (f'"{schema}".schema_version',)).fetchone() == (
        None,
    ):
        return False
    row = conn.execute(
        f'SELECT (SELECT MAX(version) FROM "{schema}".schema_version), '
        "(SELECT COUNT(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s "
        "AND NOT t.tgisinternal AND t.tgname <> 'jobs_notify') + (SELECT COUNT(*) FROM pg_proc p "
        "JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = %s "
        "AND p.proname <> 'commtunnel_jobs_notify')",
        (schema, schema),
    ).fetchone()
    return row == (LATEST_VERSION, 0)


def drop_spare() -> None:
    """At the end of the run: drop every schema kept for reuse."""
    if _spare:
        conn = _server()
        for schema in _spare:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        _spare.clear()
    if _connection is not None:
        _connection.close()


def refuse_inserts(conn: Any, name: str, message: str, *, subject: str | None = None) -> None:
    """Make inserts into ``messages`` fail with ``message`` (all, or those with ``subject``).

    A trigger, in the dialect of ``conn`` (a backend's ``conn``): the way the
    tests make storage fail in the middle of a write. :func:`allow_inserts` removes it.
    """
    if BACKEND == "sqlite":
        when = (
            "" if subject is None else f"WHEN json_extract(NEW.content, '$.subject') = '{subject}' "
        )
        conn.execute(
            f"CREATE TRIGGER {name} BEFORE INSERT ON messages {when}"
            f"BEGIN SELECT RAISE(ABORT, '{message}'); END"
        )
        return
    check = "TRUE" if subject is None else f"(NEW.content::jsonb ->> 'subject') = '{subject}'"
    conn.execute(
        f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"IF {check} THEN RAISE EXCEPTION '{message}'; END IF; RETURN NEW; END $$"
    )
    conn.execute(
        f"CREATE TRIGGER {name} BEFORE INSERT ON messages FOR EACH ROW EXECUTE FUNCTION {name}()"
    )


def allow_inserts(conn: Any, name: str) -> None:
    """Remove the trigger :func:`refuse_inserts` made."""
    if BACKEND == "sqlite":
        conn.execute(f"DROP TRIGGER {name}")
    else:
        conn.execute(f"DROP TRIGGER {name} ON messages")
        conn.execute(f"DROP FUNCTION {name}()")
