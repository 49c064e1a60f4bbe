"""What only the PostgreSQL backend has: SQL translation, its migrations, claims across
processes (SKIP LOCKED), LISTEN/NOTIFY wake-ups, and surviving lost connections.

These run against the test server whatever ``--backend`` is, so they are
collected in the PostgreSQL pass only (marker ``postgresql_only``).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

import pg
from commtunnel import Commtunnel, Settings
from commtunnel.backends import make_backend, schema, stored_schema_version
from commtunnel.backends.postgres import APPLICATION_NAME, PostgresBackend, translate
from commtunnel.backends.schema import LATEST_VERSION, SchemaTooNewError, migrate_postgres
from commtunnel.domain.errors import StorageUnavailableError
from commtunnel.domain.events import TimelineEvent
from commtunnel.ids import new_id
from commtunnel.testing import ManualClock, MockProvider

pytestmark = [pytest.mark.anyio, pytest.mark.postgresql_only]

SEND = {"from_": "app@example.com", "to": "ada@example.org", "subject": "Hi", "text": "Hello"}


@pytest.fixture
def schema_url() -> Iterator[str]:
    with pg.pg_schema("pgonly") as url:
        yield url


def open_ct(url: str, clock: ManualClock, **settings: Any) -> Commtunnel:
    return Commtunnel.open(
        db=url,
        email_provider=MockProvider(),
        clock=clock,
        settings=Settings(embedded_worker=False, **settings),
    )


@pytest.fixture
async def two(schema_url: str, clock: ManualClock) -> AsyncIterator[tuple[Commtunnel, Commtunnel]]:
    """Two facades on one schema, as two processes would be."""
    async with open_ct(schema_url, clock) as a, open_ct(schema_url, clock) as b:
        await a.admin.add_sender(a.org.id, "example.com")
        yield a, b


# ---------------------------------------------------------------------------- translation


def test_translate_placeholders_percent_and_named() -> None:
    assert translate("SELECT 1 FROM t WHERE a = ? AND b LIKE '%x'") == (
        "SELECT 1 FROM t WHERE a = %s AND b LIKE '%%x'"
    )
    assert translate("DELETE FROM t WHERE at < :cutoff", named=True) == (
        "DELETE FROM t WHERE at < %(cutoff)s"
    )


def test_translate_sqlite_spellings() -> None:
    assert translate("SELECT json_extract(content, '$.body') FROM m") == (
        "SELECT (content::jsonb ->> 'body') FROM m"
    )
    assert "strpos(events, %s)" in translate("WHERE instr(events, ?) > 0")
    assert "right(lower(recipient), %s)" in translate("substr(lower(recipient), -?) = ?")
    assert "IS DISTINCT FROM excluded.state" in translate("WHERE state IS NOT excluded.state")
    human = "COALESCE((details::jsonb ->> 'isBot')::boolean, false) = false"
    assert translate("AND json_extract(details, '$.isBot') IS NOT 1") == f"AND {human}"


# ---------------------------------------------------------------------------- migrations


def test_an_empty_schema_is_created_at_the_latest_version(schema_url: str) -> None:
    assert stored_schema_version(schema_url) == 0
    with psycopg.connect(schema_url) as conn:
        assert migrate_postgres(conn, "2026-01-01T00:00:00.000000Z") == LATEST_VERSION
        assert migrate_postgres(conn, "2026-01-02T00:00:00.000000Z") == LATEST_VERSION
        rows = conn.execute("SELECT version, applied_at FROM schema_version").fetchall()
    assert rows[-1] == (LATEST_VERSION, "2026-01-01T00:00:00.000000Z")  # applied once
    assert stored_schema_version(schema_url) == LATEST_VERSION


def test_an_older_schema_is_upgraded_keeping_its_rows(schema_url: str) -> None:
    """Version 6 (PostgreSQL's first) gains the jobs trigger; nothing is recreated."""
    with psycopg.connect(schema_url) as conn:
        assert migrate_postgres(conn, "t0", target=6) == 6
        conn.execute("INSERT INTO orgs (id, name, created_at) VALUES ('o1', 'acme', 't0')")
        conn.commit()
        assert stored_schema_version(schema_url) == 6
        assert migrate_postgres(conn, "t1") == LATEST_VERSION
        assert conn.execute("SELECT name FROM orgs").fetchall() == [("acme",)]
        triggers = conn.execute(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = 'jobs'::regclass AND NOT tgisinternal"
        ).fetchall()
    assert triggers == [("jobs_notify",)]


async def test_a_newer_schema_is_refused(schema_url: str, clock: ManualClock) -> None:
    with psycopg.connect(schema_url) as conn:
        migrate_postgres(conn, "t0")
        conn.execute("INSERT INTO schema_version VALUES (%s, 't1')", (LATEST_VERSION + 1,))
        conn.commit()
    backend = make_backend(schema_url, clock=clock)
    with pytest.raises(SchemaTooNewError, match="newer than this Commtunnel"):
        await backend.open()


def test_processes_starting_together_migrate_once(schema_url: str) -> None:
    """Four connections migrate an empty schema at once: one applies, the others wait."""
    results: list[int] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def start() -> None:
        try:
            with psycopg.connect(schema_url) as conn:
                barrier.wait()
                results.append(migrate_postgres(conn, "t"))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert results == [LATEST_VERSION] * 4
    with psycopg.connect(schema_url) as conn:
        count = conn.execute("SELECT COUNT(*) FROM schema_version").fetchone()
    assert count == (2,)  # versions 6 and 7, once each


async def test_an_unreachable_server_is_storage_unavailable(clock: ManualClock) -> None:
    backend = PostgresBackend(
        "postgresql://127.0.0.1:1/test?connect_timeout=1", clock=clock, open_timeout=1
    )
    with pytest.raises(StorageUnavailableError) as caught:
        await backend.open()
    assert (caught.value.code, caught.value.http_status) == ("STORAGE_UNAVAILABLE", 503)


# ---------------------------------------------------------------------------- many processes


async def test_two_claimers_never_take_the_same_job(two: tuple[Commtunnel, Commtunnel]) -> None:
    """Claims from two backends at once: disjoint leases that together cover every job."""
    a, b = two
    sent = [await a.email.send(**SEND) for _ in range(30)]
    claims = await asyncio.gather(*(ct.dispatcher.claim(4) for ct in (a, b) for _ in range(5)))
    ids = [job.message.id for jobs in claims for job in jobs]
    assert len(ids) == len(set(ids)) == 30
    assert set(ids) == {s.message.id for s in sent}
    assert await a.backend.leased_job_count() == 30


async def test_one_idempotency_key_from_two_servers_makes_one_message(
    two: tuple[Commtunnel, Commtunnel],
) -> None:
    a, b = two
    results = await asyncio.gather(
        *(ct.email.send(**SEND, idempotency_key=f"k{i}") for i in range(20) for ct in (a, b))
    )
    by_key: dict[str, set[str]] = {}
    for i, result in enumerate(results):
        by_key.setdefault(f"k{i // 2}", set()).add(result.message.id)
    assert all(len(ids) == 1 for ids in by_key.values())
    assert sum(r.duplicate for r in results) == 20
    row = a.backend.conn.execute("SELECT COUNT(*) FROM messages").fetchone()
    assert row == (20,)


async def test_an_idle_worker_wakes_on_a_job_written_elsewhere(
    two: tuple[Commtunnel, Commtunnel],
) -> None:
    """LISTEN/NOTIFY: a wait of a minute ends as soon as the other backend commits a job."""
    a, b = two
    # The first wait starts the listener, which wakes it once when LISTEN is in
    # place (to look for work written meanwhile): only then is a wake a NOTIFY.
    await asyncio.wait_for(b.backend.wait_for_work(60), 10)
    waiting = asyncio.ensure_future(b.backend.wait_for_work(60))
    await asyncio.sleep(0.2)
    assert not waiting.done()  # nothing wakes an idle worker but new work
    await a.email.send(**SEND)
    await asyncio.wait_for(waiting, 10)  # long before the minute


async def test_a_terminated_connection_loses_no_write(two: tuple[Commtunnel, Commtunnel]) -> None:
    """Every pooled connection killed by the server: the next writes go through, once each."""
    a, _b = two
    await a.email.send(**SEND)
    with psycopg.connect(pg.PG_URL, autocommit=True) as admin:
        killed = admin.execute(
            "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = %s AND pid <> pg_backend_pid()",
            (APPLICATION_NAME,),
        ).fetchone()
    assert killed is not None and killed[0] >= 1
    results = await asyncio.gather(*(a.email.send(**SEND) for _ in range(5)))
    assert len({r.message.id for r in results}) == 5
    count = await a.backend.pending_job_count()
    assert count == 6


async def test_a_commit_whose_answer_is_lost_is_not_written_twice(
    two: tuple[Commtunnel, Commtunnel], monkeypatch: pytest.MonkeyPatch
) -> None:
    """COMMIT lands but its connection dies before the answer: found by transaction id."""
    a, _b = two
    real_commit = psycopg.Connection.commit
    calls: list[int] = []

    def commit_then_fail(self: psycopg.Connection[Any]) -> None:
        real_commit(self)
        calls.append(1)
        if len(calls) == 1:
            raise psycopg.OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(psycopg.Connection, "commit", commit_then_fail)
    result = await a.email.send(**SEND, idempotency_key="once")
    monkeypatch.setattr(psycopg.Connection, "commit", real_commit)
    assert not result.duplicate
    assert await a.backend.pending_job_count() == 1
    assert a.backend.conn.execute("SELECT COUNT(*) FROM messages").fetchone() == (1,)


async def test_a_commit_that_failed_is_run_again(
    two: tuple[Commtunnel, Commtunnel],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """COMMIT never reached the server: the batch runs again on a new connection."""
    a, _b = two
    real_commit = psycopg.Connection.commit
    calls: list[int] = []

    def fail_then_commit(self: psycopg.Connection[Any]) -> None:
        calls.append(1)
        if len(calls) == 1:
            self.rollback()
            raise psycopg.OperationalError("connection lost before COMMIT")
        real_commit(self)

    monkeypatch.setattr(psycopg.Connection, "commit", fail_then_commit)
    result = await a.email.send(**SEND)
    monkeypatch.setattr(psycopg.Connection, "commit", real_commit)
    retried = [r for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retried) == 1
    stored = await a.email.get(result.message.id)
    assert stored.message.id == result.message.id
    assert await a.backend.pending_job_count() == 1


async def test_a_server_gone_for_good_is_a_503_and_nothing_is_half_written(
    schema_url: str, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_ct(schema_url, clock) as ct:
        await ct.admin.add_sender(ct.org.id, "example.com")
        backend = ct.backend
        assert isinstance(backend, PostgresBackend)
        backend._retries = 1

        def always_lost(self: psycopg.Connection[Any]) -> None:
            self.rollback()
            raise psycopg.OperationalError("no route to host")

        monkeypatch.setattr(psycopg.Connection, "commit", always_lost)
        with pytest.raises(StorageUnavailableError, match="unavailable"):
            await ct.email.send(**SEND)
        monkeypatch.undo()
        assert await backend.pending_job_count() == 0


def test_the_backend_is_chosen_by_the_url(tmp_path: Path, clock: ManualClock) -> None:
    assert isinstance(make_backend("postgresql://h/db", clock=clock), PostgresBackend)
    assert isinstance(make_backend("postgres://h/db", clock=clock), PostgresBackend)
    sqlite = make_backend(f"sqlite:///{tmp_path}/x.db", clock=clock)
    assert not isinstance(sqlite, PostgresBackend)
    assert sqlite.path == f"{tmp_path}/x.db"


async def test_servers_starting_together_share_the_default_organization(
    schema_url: str, clock: ManualClock
) -> None:
    """Each start ensures the in-process organization: a lost race reads the winner's."""
    facades = [open_ct(schema_url, clock) for _ in range(4)]
    try:
        await asyncio.gather(*(ct.start() for ct in facades))
        assert len({ct.org.id for ct in facades}) == 1
    finally:
        for ct in facades:
            await ct.aclose()


def test_postgresql_without_redis_warns_that_limits_are_per_process() -> None:
    alone = Settings(db="postgresql://127.0.0.1:5432/test")
    assert alone.unshared_state_warning is not None
    assert "COMMTUNNEL_REDIS_URL is not set" in alone.unshared_state_warning
    shared = Settings(db="postgresql://127.0.0.1:5432/test", redis_url="redis://127.0.0.1:6379/0")
    assert shared.unshared_state_warning is None
    assert Settings(db="app.db").unshared_state_warning is None  # one process: nothing to share


def test_both_dialects_define_the_same_tables_columns_and_indexes(schema_url: str) -> None:
    """One version, one schema: the tables, columns and index names match across dialects."""
    lite = sqlite3.connect(":memory:", isolation_level=None)
    schema.migrate(lite, "t")
    lite_tables = {
        name
        for (name,) in lite.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
    }
    lite_columns = {
        (table, row[1])
        for table in lite_tables
        for row in lite.execute(f"PRAGMA table_info({table})")
    }
    lite_indexes = {
        name
        for (name,) in lite.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
        )
    }
    with psycopg.connect(schema_url) as conn:
        migrate_postgres(conn, "t")
        current = conn.execute("SELECT current_schema()").fetchone()
        assert current is not None
        pg_columns = set(
            conn.execute(
                "SELECT table_name, column_name FROM information_schema.columns "
                "WHERE table_schema = %s",
                current,
            ).fetchall()
        )
        pg_indexes = {
            name
            for (name,) in conn.execute(
                "SELECT indexname FROM pg_indexes WHERE schemaname = %s "
                "AND indexname NOT LIKE '%%_pkey' AND indexname NOT LIKE '%%_key'",
                current,
            )
        }
    assert pg_columns == lite_columns
    assert pg_indexes == lite_indexes


async def test_two_servers_recording_the_same_first_open_mark_one_first(
    two: tuple[Commtunnel, Commtunnel], clock: ManualClock
) -> None:
    """'first' is decided inside the write under an advisory lock: never twice per message."""
    a, b = two
    sent = [await a.email.send(**SEND) for _ in range(10)]

    def opened(message_id: str) -> TimelineEvent:
        return TimelineEvent(
            id=new_id(),
            message_id=message_id,
            org_id=a.org.id,
            type="email_opened",
            status=None,
            created_at=clock.now(),
            details={},
        )

    written = await asyncio.gather(
        *(ct.backend.append_event(opened(s.message.id)) for s in sent for ct in (a, b, a, b))
    )
    firsts: dict[str, int] = {}
    for event in written:
        assert event.message_id is not None
        firsts[event.message_id] = firsts.get(event.message_id, 0) + bool(event.details["first"])
    assert firsts == {s.message.id: 1 for s in sent}
