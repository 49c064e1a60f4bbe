"""The hot-path machinery: optimistic group commit and its replay, the queue
commit window, batched claims, timestamp text and the WAL checkpoint thread."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Protocol

import pytest
from hypothesis import given
from hypothesis import strategies as st

from commtunnel import Commtunnel, Settings
from commtunnel.backends.sqlite import SqliteBackend, parse_ts, ts
from commtunnel.domain.delivery import ProviderResult
from commtunnel.ports import ClaimedJob, OutgoingEmail
from commtunnel.services.dispatch import Dispatcher
from commtunnel.testing import ManualClock, MockProvider
from test_storage import queued_email, sent_completion

pytestmark = pytest.mark.anyio

BASE = {"from_": "shop@example.com", "to": "ann@example.org", "subject": "Hi", "text": "Hello"}


class OpenBackend(Protocol):
    """The ``open_backend`` fixture: ``await open_backend(name, **SqliteBackend options)``."""

    def __call__(self, name: str, **kwargs: Any) -> Awaitable[SqliteBackend]: ...


@pytest.fixture
async def open_backend(tmp_path: Path, clock: ManualClock) -> AsyncIterator[OpenBackend]:
    """Opens a backend on ``tmp_path / name`` (or ``":memory:"``); each is closed at the end."""
    opened: list[SqliteBackend] = []

    async def open_(name: str, **kwargs: Any) -> SqliteBackend:
        path = name if name == ":memory:" else tmp_path / name
        backend = SqliteBackend(path, clock=clock, **kwargs)
        await backend.open()
        opened.append(backend)
        return backend

    yield open_
    for backend in opened:
        await backend.aclose()  # closing twice is harmless


@pytest.fixture
async def backend(open_backend: OpenBackend) -> SqliteBackend:
    b = await open_backend("p.db")
    b.conn.execute("CREATE TABLE scratch (x TEXT PRIMARY KEY)")
    return b


async def _accept(backend: SqliteBackend, clock: ManualClock) -> None:
    message, event = queued_email(clock)
    await backend.accept(message, event, run_at=clock.now(), idempotency=None)


def _trace(backend: SqliteBackend) -> list[str]:
    """Every statement the backend's connection runs from now on."""
    statements: list[str] = []
    backend.conn.set_trace_callback(statements.append)
    return statements


def _insert(value: str, *, then_raise: Exception | None = None) -> Callable[[Any], str]:
    def op(conn: sqlite3.Connection) -> str:
        conn.execute("INSERT INTO scratch (x) VALUES (?)", (value,))
        if then_raise is not None:
            raise then_raise
        return value

    return op


def _scratch(backend: SqliteBackend) -> list[str]:
    return [r[0] for r in backend.conn.execute("SELECT x FROM scratch ORDER BY x")]


# ----------------------------------------------------------------------------- group commit


async def test_a_batch_without_failures_commits_once_without_savepoints(
    backend: SqliteBackend, clock: ManualClock
) -> None:
    """Concurrent accepts share one BEGIN/COMMIT and run with no SAVEPOINT per write."""
    statements = _trace(backend)
    pairs = [queued_email(clock) for _ in range(5)]
    await asyncio.gather(
        *(backend.accept(m, e, run_at=clock.now(), idempotency=None) for m, e in pairs)
    )
    backend.conn.set_trace_callback(None)
    assert statements.count("BEGIN IMMEDIATE") == 1
    assert statements.count("COMMIT") == 1
    assert not any(s.startswith(("SAVEPOINT", "RELEASE", "ROLLBACK")) for s in statements)
    assert await backend.pending_job_count() == 5


async def test_one_failing_op_is_undone_alone_and_its_caller_gets_the_exception(
    backend: SqliteBackend,
) -> None:
    """The failing op's own write is rolled back; the writes before and after it commit."""
    boom = ValueError("boom")
    results = await asyncio.gather(
        backend.submit(_insert("a")),
        backend.submit(_insert("b", then_raise=boom)),
        backend.submit(_insert("c")),
        return_exceptions=True,
    )
    assert results == ["a", boom, "c"]
    assert _scratch(backend) == ["a", "c"]
    assert not backend.conn.in_transaction


async def test_replay_uses_one_savepoint_per_op(backend: SqliteBackend) -> None:
    """After a failure the batch is rolled back and replayed, each op in its own SAVEPOINT."""
    statements = _trace(backend)
    await asyncio.gather(
        backend.submit(_insert("a")),
        backend.submit(_insert("b", then_raise=ValueError("no"))),
        return_exceptions=True,
    )
    backend.conn.set_trace_callback(None)
    assert statements.count("BEGIN IMMEDIATE") == 2  # the optimistic run, then the replay
    assert statements.count("ROLLBACK") == 1
    assert statements.count("SAVEPOINT op") == 2
    assert statements.count("ROLLBACK TO op") == 1
    assert statements.count("COMMIT") == 1


async def test_every_op_failing_commits_nothing(backend: SqliteBackend) -> None:
    """When every op of a batch fails, each caller gets its own exception and nothing is stored."""
    errors = [ValueError("x"), KeyError("y")]
    results = await asyncio.gather(
        backend.submit(_insert("x", then_raise=errors[0])),
        backend.submit(_insert("y", then_raise=errors[1])),
        return_exceptions=True,
    )
    assert results == errors
    assert _scratch(backend) == []
    assert not backend.conn.in_transaction


async def test_a_cancelled_caller_does_not_undo_its_write(backend: SqliteBackend) -> None:
    """Cancelling the awaiting caller leaves the write committed with the batch."""
    task = asyncio.ensure_future(backend.submit(_insert("kept")))
    other = backend.submit(_insert("other"))
    task.cancel()
    assert await other == "other"
    assert _scratch(backend) == ["kept", "other"]


# ----------------------------------------------------------------------------- timestamps


def test_ts_keeps_the_storage_format() -> None:
    """``ts`` writes ``%Y-%m-%dT%H:%M:%S.%fZ`` in UTC, microseconds always present."""
    plus2 = timezone(timedelta(hours=2))
    assert ts(datetime(2026, 1, 1, 12, 0, tzinfo=UTC)) == "2026-01-01T12:00:00.000000Z"
    assert ts(datetime(2026, 1, 1, 1, 2, 3, 45, tzinfo=plus2)) == "2025-12-31T23:02:03.000045Z"


@given(
    st.datetimes(
        min_value=datetime(1000, 1, 1),
        max_value=datetime(9999, 12, 30),
        timezones=st.sampled_from(
            [UTC, timezone(timedelta(hours=-7)), timezone(timedelta(hours=5, minutes=30))]
        ),
    )
)
def test_ts_equals_strftime_and_round_trips(value: datetime) -> None:
    """Same text as the former ``strftime`` for any aware datetime, and ``parse_ts`` reads it."""
    assert ts(value) == value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert parse_ts(ts(value)) == value


# ----------------------------------------------------------------------------- commit window


async def _claimed(backend: SqliteBackend, clock: ManualClock, count: int) -> list[ClaimedJob]:
    for _ in range(count):
        await _accept(backend, clock)
    dispatcher = Dispatcher(backend, MockProvider(), clock)
    jobs = await dispatcher.claim(count)
    assert len(jobs) == count
    return jobs


async def _turns(count: int = 20) -> None:
    """Let the event loop run ``count`` turns (no time passes for a timer)."""
    for _ in range(count):
        await asyncio.sleep(0)


async def test_a_result_waits_for_the_other_leases_then_all_commit_together(
    open_backend: OpenBackend, clock: ManualClock
) -> None:
    """With leases out, a result waits (up to the window); the last result commits them all."""
    backend = await open_backend("w.db", commit_window=3600)
    first, second = await _claimed(backend, clock, 2)
    statements = _trace(backend)
    waiting = asyncio.ensure_future(backend.complete(sent_completion(first, clock)))
    await _turns()
    assert not waiting.done() and statements == []
    assert await backend.complete(sent_completion(second, clock)) is True
    assert await waiting is True
    assert statements.count("COMMIT") == 1
    assert await backend.pending_job_count() == 0


async def test_an_accept_takes_waiting_queue_writes_with_it(
    open_backend: OpenBackend, clock: ManualClock
) -> None:
    """An accept commits at the next loop turn, and a result waiting in the window goes along."""
    backend = await open_backend("a.db", commit_window=3600)
    first, _second = await _claimed(backend, clock, 2)
    waiting = asyncio.ensure_future(backend.complete(sent_completion(first, clock)))
    await _turns()
    assert not waiting.done()
    statements = _trace(backend)
    await _accept(backend, clock)
    assert waiting.done() and waiting.result() is True
    assert statements.count("COMMIT") == 1


async def test_aclose_commits_a_waiting_result(
    open_backend: OpenBackend, clock: ManualClock
) -> None:
    """Closing the backend flushes queue writes still inside their window."""
    backend = await open_backend("c.db", commit_window=3600)
    first, _second = await _claimed(backend, clock, 2)
    waiting = asyncio.ensure_future(backend.complete(sent_completion(first, clock)))
    await _turns()
    await backend.aclose()
    assert await waiting is True  # answered after the COMMIT that aclose made
    reopened = await open_backend("c.db")
    assert await reopened.pending_job_count() == 1


async def test_run_until_idle_never_waits_for_the_window(
    tmp_path: Path, clock: ManualClock
) -> None:
    """A claim with no lease out and the last result of a batch commit at once (no timer)."""
    settings = Settings(embedded_worker=False, lease_seconds=60, send_timeout=5)
    backend = SqliteBackend(tmp_path / "idle.db", clock=clock, commit_window=3600)
    provider = MockProvider()
    async with Commtunnel(
        backend=backend, email_provider=provider, clock=clock, settings=settings
    ) as ct:
        await ct.admin.add_sender(ct.org.id, "example.com")
        for _ in range(5):
            await ct.email.send(**BASE)
        # A one-hour window would hang here if these writes waited for it.
        async with asyncio.timeout(30):
            assert await ct.run_worker_until_idle() == 5
        assert len(provider.sent) == 5


# ----------------------------------------------------------------------------- batched claims


class _RecordingDispatcher(Dispatcher):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.claims: list[tuple[int, int]] = []  # (limit asked, jobs got)

    async def claim(self, limit: int) -> list[ClaimedJob]:
        jobs = await super().claim(limit)
        self.claims.append((limit, len(jobs)))
        return jobs


async def _until(condition: Callable[[], bool], turns: int = 2000) -> None:
    """Run loop turns until ``condition`` holds (no time passes)."""
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached")


async def test_the_run_loop_claims_once_a_quarter_of_the_slots_are_free(
    open_backend: OpenBackend, clock: ManualClock
) -> None:
    """With 8 slots busy, freeing one slot claims nothing; freeing a second claims two jobs."""
    gates: dict[str, asyncio.Future[None]] = {}

    async def gated(email: OutgoingEmail) -> ProviderResult:
        gate = asyncio.get_running_loop().create_future()
        gates[email.message_id] = gate
        await gate
        return ProviderResult.accepted(email.message_id)

    def release(count: int) -> None:
        for gate in [g for g in gates.values() if not g.done()][:count]:
            gate.set_result(None)

    # commit_window=0: every write commits at the next loop turn, so loop turns
    # alone drive the worker here (no timer, no time passing).
    backend = await open_backend("b.db", commit_window=0)
    for _ in range(12):
        await _accept(backend, clock)
    dispatcher = _RecordingDispatcher(backend, MockProvider(gated), clock, concurrency=8)
    stop = asyncio.Event()
    worker = asyncio.create_task(dispatcher.run(stop, poll_interval=3600))
    await _until(lambda: len(gates) == 8)
    assert dispatcher.claims == [(8, 8)]

    release(1)
    await _turns(200)
    assert len(gates) == 8 and dispatcher.claims == [(8, 8)]  # 1 free slot of 8: wait

    release(1)
    await _until(lambda: len(gates) == 10)
    assert dispatcher.claims == [(8, 8), (2, 2)]

    stop.set()
    release(8)
    await _until(lambda: worker.done() or len(gates) == 12)
    release(8)  # jobs claimed just before the stop was seen
    async with asyncio.timeout(30):
        await worker


# ----------------------------------------------------------------------------- WAL checkpoints


async def test_checkpoint_thread_runs_while_open_and_stops_on_close(
    open_backend: OpenBackend,
) -> None:
    """A file backend starts the checkpoint thread with autocheckpoint off; aclose joins it."""
    backend = await open_backend("k.db")
    checkpointer = backend.checkpointer
    assert checkpointer is not None and checkpointer.running
    assert backend.conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    await backend.aclose()
    assert not checkpointer.running
    assert backend.checkpointer is None
    await backend.aclose()  # closing twice is harmless


def _in_database_file(backend: SqliteBackend, text: str) -> bool:
    """Whether ``text`` is in the database file itself (the WAL file aside)."""
    return text.encode() in Path(backend.path).read_bytes()


async def test_checkpoint_thread_checkpoints_the_wal(
    open_backend: OpenBackend, clock: ManualClock
) -> None:
    """Frames committed on the loop's connection reach the database file from the thread."""
    backend = await open_backend("f.db", checkpoint_interval=0.001)
    checkpointer = backend.checkpointer
    assert checkpointer is not None
    message, event = queued_email(clock)
    await backend.accept(message, event, run_at=clock.now(), idempotency=None)
    done = checkpointer.completed
    assert checkpointer.wait_for(done + 2, timeout=30)  # a full one after the commit
    # The row is in the database file itself, not only in the WAL: the thread copied it.
    assert _in_database_file(backend, message.id)
    # Nothing is left to copy: a checkpoint now reports every WAL frame checkpointed.
    busy, frames, copied = backend.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    assert busy == 0 and frames == copied


async def test_a_commit_stays_in_the_wal_until_a_checkpoint(
    open_backend: OpenBackend, clock: ManualClock
) -> None:
    """Before any checkpoint a committed row is in the WAL only (so the test above can fail)."""
    backend = await open_backend("w.db", checkpoint_interval=3600)
    message, event = queued_email(clock)
    await backend.accept(message, event, run_at=clock.now(), idempotency=None)
    assert not _in_database_file(backend, message.id)
    assert await backend.get_message("org-1", message.id) == message


async def test_memory_database_has_no_checkpoint_thread(open_backend: OpenBackend) -> None:
    """``:memory:`` has no WAL: no thread, and SQLite's own setting is left alone."""
    backend = await open_backend(":memory:")
    assert backend.checkpointer is None
    assert backend.conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] > 0


async def test_checkpoints_can_be_left_to_sqlite(open_backend: OpenBackend) -> None:
    """``checkpoint_interval=None`` starts no thread and keeps SQLite's auto-checkpoint."""
    backend = await open_backend("n.db", checkpoint_interval=None)
    assert backend.checkpointer is None
    assert backend.conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] > 0


async def test_reopening_starts_a_new_checkpoint_thread(open_backend: OpenBackend) -> None:
    """open after aclose starts a fresh thread, and every thread ends with its backend."""
    backend = await open_backend("r.db")
    first = backend.checkpointer
    await backend.aclose()
    await backend.open()
    second = backend.checkpointer
    assert first is not None and second is not None and first is not second
    assert not first.running and second.running
    await backend.aclose()
    assert not second.running


def _wal_frames(path: Path | str) -> int:
    """Frames in the WAL now, read from another connection (it checkpoints nothing new)."""
    other = sqlite3.connect(path, isolation_level=None)
    try:
        # PASSIVE reports (busy, frames in the WAL, frames copied).
        return int(other.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1])
    finally:
        other.close()


def _run_once(backend: SqliteBackend) -> None:
    """One pass of the backend's checkpoint thread, run here on a connection of its own."""
    checkpointer = backend.checkpointer
    assert checkpointer is not None
    conn = sqlite3.connect(backend.path, isolation_level=None)
    try:
        checkpointer.run_once(conn)
    finally:
        conn.close()


async def test_a_large_wal_makes_the_thread_ask_the_loop_to_finish(
    open_backend: OpenBackend, clock: ManualClock
) -> None:
    """Past restart_frames, a pass calls ``finish``, which runs a checkpoint on the loop."""
    # A thread that never wakes in this test: its pass is run by hand below.
    backend = await open_backend("large.db", checkpoint_interval=3600, checkpoint_restart_frames=20)
    for _ in range(10):
        await _accept(backend, clock)
    assert _wal_frames(backend.path) >= 20
    statements = _trace(backend)
    _run_once(backend)
    assert backend.checkpointer is not None and backend.checkpointer.finishes == 1
    await _turns()  # the loop runs the finishing checkpoint between commits
    assert statements == ["PRAGMA wal_checkpoint(PASSIVE)"]


def _wal_salt(path: Path | str) -> bytes:
    """Salt-1 of the WAL header: SQLite changes it each time the WAL starts over."""
    with open(f"{path}-wal", "rb") as wal:
        return wal.read(32)[16:20]


async def test_the_loop_finishing_checkpoint_lets_the_next_commit_restart_the_wal(
    open_backend: OpenBackend, clock: ManualClock
) -> None:
    """Frames written after the thread's pass keep the WAL growing until the loop copies them."""
    backend = await open_backend("restart.db", checkpoint_interval=3600)
    for _ in range(5):
        await _accept(backend, clock)
    _wal_frames(backend.path)  # another connection copies every frame (the thread's pass)
    await _accept(backend, clock)  # nothing was written meanwhile: this commit starts the WAL over
    salt = _wal_salt(backend.path)
    await _accept(backend, clock)
    await _accept(backend, clock)  # frames are left uncopied: the WAL only grows
    assert _wal_salt(backend.path) == salt
    backend._finish_checkpoint()
    await _accept(backend, clock)
    assert _wal_salt(backend.path) != salt  # copied on the loop: this commit started over


async def test_a_small_wal_is_left_to_the_thread(
    open_backend: OpenBackend, clock: ManualClock
) -> None:
    """Below restart_frames, a pass only checkpoints: the loop is not asked for anything."""
    backend = await open_backend("small.db", checkpoint_interval=3600)
    await _accept(backend, clock)
    _run_once(backend)
    assert backend.checkpointer is not None
    assert backend.checkpointer.finishes == 0 and backend.checkpointer.completed == 1


async def test_a_write_submitted_after_close_fails_instead_of_hanging(
    open_backend: OpenBackend,
) -> None:
    """A write that reaches a closed backend raises for its caller (no future left pending)."""
    backend = await open_backend("closed.db")
    await backend.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await backend.submit(_insert("late"))
