"""The SQLite backend: schema migrations, group commit, tenancy, queue leases."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest

from commtunnel.backends import sqlite_schema
from commtunnel.backends.sqlite import SqliteBackend, parse_ts, ts
from commtunnel.domain.errors import ConflictError
from commtunnel.domain.events import TimelineEvent
from commtunnel.domain.keys import Organization
from commtunnel.domain.messages import Channel, EmailContent, Message, Status
from commtunnel.ids import new_id
from commtunnel.ports import IdempotencyRecord
from commtunnel.testing import ManualClock

pytestmark = pytest.mark.anyio


def _message(clock: ManualClock, org_id: str = "org-1") -> tuple[Message, TimelineEvent]:
    mid = new_id()
    now = clock.now()
    message = Message(
        id=mid,
        org_id=org_id,
        channel=Channel.EMAIL,
        status=Status.QUEUED,
        sandbox=False,
        email=EmailContent(
            from_addr="a@example.com",
            to="b@example.org",
            subject="s",
            html=None,
            text="t",
            message_id_header=f"<{mid}@example.com>",
        ),
        created_at=now,
        updated_at=now,
    )
    event = TimelineEvent(
        id=new_id(),
        message_id=mid,
        org_id=org_id,
        type="email_queued",
        status=Status.QUEUED,
        created_at=now,
    )
    return message, event


@pytest.fixture
async def backend(tmp_path: Path, clock: ManualClock) -> SqliteBackend:
    b = SqliteBackend(tmp_path / "s.db", clock=clock)
    await b.open()
    yield b  # type: ignore[misc]
    await b.aclose()


def test_timestamps_round_trip_and_sort() -> None:
    """Storage text is fixed-width UTC, so text order is time order."""
    clock = ManualClock()
    a = clock.now()
    b = clock.advance(0.001)
    assert parse_ts(ts(a)) == a
    assert ts(a) < ts(b)


async def test_fresh_file_is_at_latest_version_and_in_wal(backend: SqliteBackend) -> None:
    """A new file is migrated to the latest schema version, in WAL mode."""
    assert backend.schema_version() == sqlite_schema.LATEST_VERSION
    assert backend.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_reopening_does_not_reapply_migrations(tmp_path: Path, clock: ManualClock) -> None:
    """Opening an up-to-date file twice keeps one row per migration and the data."""
    path = tmp_path / "re.db"
    first = SqliteBackend(path, clock=clock)
    await first.open()
    await first.create_org(Organization(id="o1", name="acme", created_at=clock.now()))
    await first.aclose()
    second = SqliteBackend(path, clock=clock)
    await second.open()
    rows = second.conn.execute("SELECT COUNT(*) FROM schema_version").fetchone()[0]
    assert rows == len(sqlite_schema.MIGRATIONS)
    assert (await second.get_org(name="acme")) is not None
    await second.aclose()


async def test_older_file_is_upgraded(
    tmp_path: Path, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file written by an older library gains the newer migrations and keeps its rows."""
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    sqlite_schema.migrate(conn, ts(clock.now()), target=1)
    now = ts(clock.now())
    conn.execute("INSERT INTO orgs (id, name, created_at) VALUES ('o1', 'old', ?)", (now,))
    conn.execute(
        "INSERT INTO events (id, org_id, message_id, type, status, created_at, details) "
        "VALUES ('e1', 'o1', 'm1', 'email_queued', 'QUEUED', ?, '{}')",
        (now,),
    )
    conn.execute(
        "INSERT INTO jobs (id, message_id, run_at, created_at) VALUES ('m1', 'm1', ?, ?)",
        (now, now),
    )
    conn.close()
    future = sqlite_schema.LATEST_VERSION + 1
    newer = [
        *sqlite_schema.MIGRATIONS,
        (future, "CREATE TABLE future_feature (id TEXT PRIMARY KEY)"),
    ]
    monkeypatch.setattr(sqlite_schema, "MIGRATIONS", newer)
    monkeypatch.setattr(sqlite_schema, "LATEST_VERSION", future)
    b = SqliteBackend(path, clock=clock)
    await b.open()
    assert b.schema_version() == future
    assert b.conn.execute("SELECT name, otp_ignores_opt_out FROM orgs").fetchone() == ("old", 0)
    # v2 rebuilt the events table (message_id may be NULL now) and kept its rows
    assert b.conn.execute("SELECT id, message_id, type FROM events").fetchall() == [
        ("e1", "m1", "email_queued")
    ]
    notnull = {row[1]: row[3] for row in b.conn.execute("PRAGMA table_info(events)")}
    assert notnull["message_id"] == 0
    assert b.conn.execute("SELECT attempts_before FROM jobs").fetchone()[0] == 0
    assert b.conn.execute("SELECT COUNT(*) FROM sms_opt_outs").fetchone()[0] == 0
    assert b.conn.execute("SELECT COUNT(*) FROM future_feature").fetchone()[0] == 0
    await b.aclose()


async def test_newer_file_is_refused(tmp_path: Path, clock: ManualClock) -> None:
    """A file from a newer library is refused instead of being guessed at."""
    path = tmp_path / "new.db"
    conn = sqlite3.connect(path, isolation_level=None)
    sqlite_schema.migrate(conn, ts(clock.now()))
    conn.execute("INSERT INTO schema_version VALUES (99, 'x')")
    conn.close()
    b = SqliteBackend(path, clock=clock)
    with pytest.raises(sqlite_schema.SchemaTooNewError, match="99"):
        await b.open()


async def test_duplicate_org_name_conflicts(backend: SqliteBackend, clock: ManualClock) -> None:
    """Organization names are unique."""
    await backend.create_org(Organization(id="a", name="acme", created_at=clock.now()))
    with pytest.raises(ConflictError):
        await backend.create_org(Organization(id="b", name="acme", created_at=clock.now()))


async def test_accept_writes_message_event_and_job_together(
    backend: SqliteBackend, clock: ManualClock
) -> None:
    """One accept leaves the message, its first event and a due job."""
    message, event = _message(clock)
    result = await backend.accept(message, event, run_at=clock.now(), idempotency=None)
    assert result.message == message and not result.duplicate
    assert await backend.get_message("org-1", message.id) == message
    assert [e.type for e in await backend.list_events("org-1", message.id, 10)] == ["email_queued"]
    assert await backend.pending_job_count() == 1


async def test_reads_are_scoped_to_the_organization(
    backend: SqliteBackend, clock: ManualClock
) -> None:
    """Another organization's message reads as missing, events and attempts too."""
    message, event = _message(clock)
    await backend.accept(message, event, run_at=clock.now(), idempotency=None)
    assert await backend.get_message("org-2", message.id) is None
    assert await backend.list_events("org-2", message.id, 10) == []
    assert await backend.list_attempts("org-2", message.id) == []


async def test_group_commit_isolates_a_failing_write(
    backend: SqliteBackend, clock: ManualClock
) -> None:
    """In one batch, a write that violates a constraint fails alone; the others commit."""
    m1, e1 = _message(clock)
    m2, _e2 = _message(clock)
    bad_event = TimelineEvent(
        id=e1.id,  # duplicate primary key -> IntegrityError inside the batch
        message_id=m2.id,
        org_id="org-1",
        type="email_queued",
        status=Status.QUEUED,
        created_at=clock.now(),
    )
    m3, e3 = _message(clock)
    results = await asyncio.gather(
        backend.accept(m1, e1, run_at=clock.now(), idempotency=None),
        backend.accept(m2, bad_event, run_at=clock.now(), idempotency=None),
        backend.accept(m3, e3, run_at=clock.now(), idempotency=None),
        return_exceptions=True,
    )
    assert isinstance(results[1], sqlite3.IntegrityError)
    assert await backend.get_message("org-1", m1.id) is not None
    assert await backend.get_message("org-1", m2.id) is None  # rolled back to its savepoint
    assert await backend.get_message("org-1", m3.id) is not None
    assert await backend.pending_job_count() == 2


async def test_idempotency_key_unique_within_one_batch(
    backend: SqliteBackend, clock: ManualClock
) -> None:
    """Two accepts with the same key in one batch produce one message; the second is a duplicate."""
    now = clock.now()

    def record(mid: str) -> IdempotencyRecord:
        return IdempotencyRecord(
            org_id="org-1",
            key="k",
            endpoint="emails.send",
            fingerprint="f",
            message_id=mid,
            created_at=now,
            expires_at=now + timedelta(hours=24),
        )

    m1, e1 = _message(clock)
    m2, e2 = _message(clock)
    r1, r2 = await asyncio.gather(
        backend.accept(m1, e1, run_at=now, idempotency=record(m1.id)),
        backend.accept(m2, e2, run_at=now, idempotency=record(m2.id)),
    )
    assert not r1.duplicate and r2.duplicate
    assert r2.message is not None and r2.message.id == m1.id
    assert await backend.pending_job_count() == 1


async def test_claim_leases_and_expired_lease_is_reclaimed(
    backend: SqliteBackend, clock: ManualClock
) -> None:
    """A leased job is invisible to other claims until its lease expires."""
    message, event = _message(clock)
    await backend.accept(message, event, run_at=clock.now(), idempotency=None)

    def processing(m: Message, n: int) -> TimelineEvent:
        return TimelineEvent(
            id=new_id(),
            message_id=m.id,
            org_id=m.org_id,
            type="email_processing",
            status=Status.PROCESSING,
            created_at=clock.now(),
            details={"attempt": n},
        )

    first = await backend.claim(
        worker_id="w1", now=clock.now(), lease_seconds=30, limit=10, processing_event=processing
    )
    assert [j.message.id for j in first] == [message.id]
    again = await backend.claim(
        worker_id="w2", now=clock.now(), lease_seconds=30, limit=10, processing_event=processing
    )
    assert again == []
    clock.advance(30)
    reclaimed = await backend.claim(
        worker_id="w2", now=clock.now(), lease_seconds=30, limit=10, processing_event=processing
    )
    assert [j.message.id for j in reclaimed] == [message.id]
    assert reclaimed[0].lease_token != first[0].lease_token
    assert await backend.leased_job_count() == 1
    assert (await backend.get_message("org-1", message.id)).status == Status.PROCESSING  # type: ignore[union-attr]


async def test_jobs_not_due_are_not_claimed(backend: SqliteBackend, clock: ManualClock) -> None:
    """A job whose run_at is in the future waits."""
    message, event = _message(clock)
    await backend.accept(
        message, event, run_at=clock.now() + timedelta(seconds=60), idempotency=None
    )
    claim = await backend.claim(
        worker_id="w",
        now=clock.now(),
        lease_seconds=30,
        limit=5,
        processing_event=lambda m, n: pytest.fail("nothing is due"),  # type: ignore[arg-type,return-value]
    )
    assert claim == []
    assert await backend.next_run_at() == clock.now() + timedelta(seconds=60)
