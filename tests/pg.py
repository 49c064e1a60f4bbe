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
from urllib.parse import quote

import psycopg

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
