"""PostgreSQL storage and queue: the scale-out backend (psycopg 3, a connection pool).

Selected by ``COMMTUNNEL_DB=postgresql://...``. It runs the *same* SQL as the
SQLite backend: every store (:mod:`commtunnel.backends.sqlite` and its
siblings) writes through ``submit``/``transaction`` and reads through
``read``, each given an operation ``op(conn)``. Here ``conn`` is a
:class:`PgConnection`, which rewrites the few SQLite spellings into
PostgreSQL's (:func:`translate`) and runs on a pooled connection in a worker
thread, so the event loop never waits on the network. The schema comes from
:mod:`commtunnel.backends.schema`, migrated at open under an advisory lock.

What differs from SQLite, and why:

* **Group commit across connections.** Writes submitted during one loop turn
  still share one transaction, but several such batches may be in flight at
  once, each on its own pooled connection (SQLite has one writer).
* **Claims skip locked rows.** A claim reads due jobs ``FOR UPDATE SKIP
  LOCKED`` (:func:`commtunnel.backends.sqlite.skip_locked`), so workers in
  many processes never wait for, or take, each other's jobs.
* **Read-then-write decisions** (is this the first open? does the stored
  suppression block as long?) take a transaction-scoped advisory lock on the
  thing decided (:func:`commtunnel.backends.sqlite.serialize`); SQLite's
  single writer gives the same for free.
* **Wake-ups.** A trigger on ``jobs`` sends ``NOTIFY commtunnel_jobs`` when a
  job is written or rescheduled (delivered at COMMIT); an idle worker
  ``LISTEN``\\ s on its own connection and claims at once.
* **Lost connections.** A batch whose connection fails before COMMIT is run
  again on a new connection (nothing of it was committed). When the failure
  comes *during* COMMIT, the outcome is looked up by transaction id
  (``pg_xact_status``), so a write is never lost nor applied twice because a
  server restarted or a backend was terminated. After ``retries`` failures
  the caller gets :class:`~commtunnel.domain.errors.StorageUnavailableError`
  (HTTP 503) and nothing of its write is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import anyio.to_thread
import psycopg
import psycopg_pool

from commtunnel.backends import schema
from commtunnel.backends.sqlite import Op, SqliteBackend, settle, ts
from commtunnel.domain.errors import StorageUnavailableError
from commtunnel.ports import Clock

T = TypeVar("T")

log = logging.getLogger(__name__)

#: The channel the jobs trigger notifies (schema version 7).
JOBS_CHANNEL = "commtunnel_jobs"

#: The most reads one hand-off to a worker thread runs (see PostgresBackend.read).
READ_BATCH = 32

#: ``application_name`` of every connection, so that an operator (or a test)
#: can tell Commtunnel's backends apart in ``pg_stat_activity``.
APPLICATION_NAME = "commtunnel"

# SQLite spellings that PostgreSQL writes differently, as (SQLite, PostgreSQL)
# pairs applied after the placeholders are converted. Each one is used by a
# store; a test runs every store on both databases.
_REWRITES: tuple[tuple[str, str], ...] = (
    # "not a bot": SQLite's json_extract gives 1/0 for JSON true/false.
    (
        "COALESCE(json_extract(details, '$.isBot'), 0) = 0",
        "COALESCE((details::jsonb ->> 'isBot')::boolean, false) = false",
    ),
    (
        "json_extract(details, '$.isBot') IS NOT 1",
        "COALESCE((details::jsonb ->> 'isBot')::boolean, false) = false",
    ),
    ("instr(", "strpos("),
    ("IS NOT excluded.", "IS DISTINCT FROM excluded."),
    # substr(x, -n) is the last n characters in SQLite only.
    ("substr(lower(recipient), -%s)", "right(lower(recipient), %s)"),
)
_JSON_FIELD = re.compile(r"json_extract\((\w+), '\$\.(\w+)'\)")
_NAMED = re.compile(r"(?<![:\w]):(\w+)")


@functools.lru_cache(maxsize=1024)
def translate(sql: str, named: bool = False) -> str:
    """SQLite-flavoured SQL as PostgreSQL (psycopg) takes it.

    ``?`` becomes ``%s`` (``:name`` becomes ``%(name)s`` when ``named``), a
    literal ``%`` is doubled, and the spellings in ``_REWRITES`` and
    ``json_extract(col, '$.key')`` are replaced. The stores' SQL is otherwise
    written in the dialect both databases share (``ON CONFLICT``,
    ``RETURNING``, ``COALESCE``, ``lower``).

    Args:
        sql: one statement as the stores write it (a fixed text: results are cached).
        named: whether parameters are passed by name (a mapping).

    Returns:
        The statement for ``psycopg.Cursor.execute`` with parameters.
    """
    out = sql.replace("%", "%%")
    out = _NAMED.sub(r"%(\1)s", out) if named else out.replace("?", "%s")
    for old, new in _REWRITES:
        out = out.replace(old, new)
    return _JSON_FIELD.sub(r"(\1::jsonb ->> '\2')", out)


class PgConnection:
    """A psycopg connection with the slice of :class:`sqlite3.Connection`'s API the stores use.

    ``execute``/``executemany`` take the stores' SQLite-flavoured SQL (see
    :func:`translate`) and return a psycopg cursor (``fetchone``,
    ``fetchall``, iteration and ``rowcount`` behave as sqlite3's do).

    Args:
        raw: the psycopg connection (not in autocommit mode inside a batch).
    """

    def __init__(self, raw: psycopg.Connection[Any]) -> None:
        self.raw = raw

    def execute(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()
    ) -> psycopg.Cursor[Any]:
        """Run one statement (``?`` or ``:name`` parameters); returns its cursor."""
        cursor = self.raw.cursor()
        named = isinstance(params, Mapping)
        cursor.execute(translate(sql, named), params if named else tuple(params))
        return cursor

    def executemany(
        self, sql: str, rows: Iterator[Sequence[Any]] | Sequence[Sequence[Any]]
    ) -> psycopg.Cursor[Any]:
        """Run one statement once per parameter row (nothing when there are none)."""
        cursor = self.raw.cursor()
        batch = [tuple(row) for row in rows]
        if batch:
            cursor.executemany(translate(sql), batch)
        return cursor

    def commit(self) -> None:
        """Commit the open transaction (nothing to do in autocommit mode)."""
        self.raw.commit()

    @property
    def in_transaction(self) -> bool:
        """Whether a transaction is open on the connection."""
        return self.raw.info.transaction_status != psycopg.pq.TransactionStatus.IDLE


def _xact_id(raw: psycopg.Connection[Any]) -> str:
    """The id of the transaction open on ``raw`` (one is opened, and given an id, if none is)."""
    row = raw.execute("SELECT pg_current_xact_id()::text").fetchone()
    assert row is not None
    return str(row[0])


class PostgresBackend(SqliteBackend):
    """Storage + Queue on PostgreSQL, for many processes on many machines.

    The stores and their SQL are the SQLite backend's (this class inherits
    every storage method); what changes is where an operation runs (see the
    module's docstring).

    Args:
        url: a libpq URL or conninfo, ``postgresql://user@host:5432/db``; its
            ``options=-csearch_path=...`` picks the schema (default ``public``).
        clock: used for migration timestamps.
        pool_size: the most connections this process opens for reads and
            writes (the LISTEN connection of a worker is one more).
        commit_window: as for :class:`SqliteBackend` (queue writes may wait
            this many seconds for company while leases are out).
        retries: how many times an operation whose connection failed is run
            again (on a new connection) before the caller gets
            :class:`StorageUnavailableError`.
        retry_delay: seconds before the first retry; doubled for each next one.
        open_timeout: seconds :meth:`open` waits for a first connection.
        checkout_timeout: seconds one try waits for a pooled connection (all
            busy, or the server unreachable) before it counts as failed; with
            ``retries`` and ``retry_delay`` it bounds how long a request waits
            for a database that is gone (~13 s by default) before its 503.
    """

    def __init__(
        self,
        url: str,
        *,
        clock: Clock,
        pool_size: int = 10,
        commit_window: float = 0.002,
        retries: int = 5,
        retry_delay: float = 0.05,
        open_timeout: float = 10.0,
        checkout_timeout: float = 2.0,
    ) -> None:
        super().__init__(url, clock=clock, commit_window=commit_window, checkpoint_interval=None)
        self.url = url
        self._pool_size = pool_size
        self._retries = retries
        self._retry_delay = retry_delay
        self._open_timeout = open_timeout
        self._checkout_timeout = checkout_timeout
        self._pool: psycopg_pool.ConnectionPool[Any] | None = None
        self._admin: PgConnection | None = None
        self._admin_lock = threading.Lock()
        self._listener: asyncio.Task[None] | None = None
        self._batches: set[asyncio.Task[None]] = set()
        self._reads: list[tuple[Op, asyncio.Future[Any]]] = []
        self._reads_soon = False

    # ------------------------------------------------------------------ lifecycle

    def _connect_kwargs(self) -> dict[str, Any]:
        """Connection parameters added to the URL's: an ``application_name`` unless it has one."""
        if "application_name" in psycopg.conninfo.conninfo_to_dict(self.url):
            return {}
        return {"application_name": APPLICATION_NAME}

    async def open(self) -> None:
        """Open the pool and apply pending migrations (no-op when open).

        Raises:
            SchemaTooNewError: the schema was written by a newer Commtunnel.
            StorageUnavailableError: the server cannot be reached.
        """
        if self._pool is not None:
            return
        pool: psycopg_pool.ConnectionPool[Any] = psycopg_pool.ConnectionPool(
            self.url,
            min_size=1,
            max_size=self._pool_size,
            kwargs=self._connect_kwargs(),
            open=False,
            name="commtunnel",
        )
        applied_at = ts(self._clock.now())

        def start() -> None:
            try:
                pool.open(wait=True, timeout=self._open_timeout)
            except psycopg_pool.PoolTimeout as exc:
                pool.close()
                raise StorageUnavailableError(f"PostgreSQL is unreachable: {exc}") from exc
            try:
                with pool.connection() as conn:
                    schema.migrate_postgres(conn, applied_at)
            except BaseException:
                pool.close()
                raise

        await anyio.to_thread.run_sync(start)
        self._pool = pool

    async def aclose(self) -> None:
        """Commit what is pending, stop listening, then close every connection."""
        if self._pending:
            self._flush()
        if self._reads:
            self._flush_reads()
        while self._batches:
            await asyncio.gather(*list(self._batches), return_exceptions=True)
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        pool, self._pool = self._pool, None
        admin, self._admin = self._admin, None
        if admin is not None:
            admin.raw.close()
        if pool is not None:
            await anyio.to_thread.run_sync(pool.close)

    @property
    def pool(self) -> psycopg_pool.ConnectionPool[Any]:
        """The open pool.

        Raises:
            RuntimeError: :meth:`open` was not awaited, or :meth:`aclose` was.
        """
        if self._pool is None:
            raise RuntimeError("PostgresBackend is not open; await open() first")
        return self._pool

    @property
    def conn(self) -> PgConnection:  # type: ignore[override]
        """A connection of its own in autocommit mode, for administration and tests.

        Each statement on it blocks the caller until PostgreSQL answers: the
        stores never use it (they go through :meth:`read` and the group commit).
        """
        self.pool  # noqa: B018 - raises when closed
        with self._admin_lock:
            if self._admin is None or self._admin.raw.closed:
                raw = psycopg.connect(self.url, autocommit=True, **self._connect_kwargs())
                self._admin = PgConnection(raw)
            return self._admin

    def schema_version(self) -> int:
        """The schema version of the database (blocks: for administration and tests)."""
        return schema.postgres_version(self.conn.raw)

    async def read_schema_version(self) -> int:
        """The schema version stored in the database, read on a pooled connection."""
        return await self.read(lambda conn: schema.postgres_version(conn.raw))

    # ------------------------------------------------------------------ running operations

    def _with_retries(self, attempt: Callable[[], T]) -> T:
        """``attempt()`` in this thread; again after a connection failure, up to ``retries`` times.

        Raises:
            StorageUnavailableError: the last try failed too.
        """
        delay = self._retry_delay
        for number in range(self._retries + 1):
            try:
                return attempt()
            except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
                if number == self._retries:
                    raise StorageUnavailableError(f"PostgreSQL is unavailable: {exc}") from exc
                log.warning("PostgreSQL connection failed (%s); retrying", exc)
                # The other idle connections may be dead too (a server restart, an
                # operator's pg_terminate_backend): test them all now, so that the
                # next try does not pick another dead one.
                with contextlib.suppress(Exception):
                    self.pool.check()
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    def _run_batch_now(self, ops: list[Op]) -> list[tuple[bool, Any]]:
        """Run ``ops`` in one transaction on a pooled connection and commit (a worker thread).

        Returns:
            (ok, value or exception) per op, as :meth:`SqliteBackend._run_batch`.

        Raises:
            StorageUnavailableError: every try lost its connection before the
                COMMIT was known to have landed; nothing was committed.
        """
        cut_off: tuple[str, list[tuple[bool, Any]]] | None = None  # a COMMIT with no answer

        def attempt() -> list[tuple[bool, Any]]:
            nonlocal cut_off
            if cut_off is not None:
                xid, results = cut_off
                cut_off = None
                if self._xact_status(xid) == "committed":
                    return results
            with self.pool.connection(timeout=self._checkout_timeout) as raw:
                xid, results = self._transact(raw, ops)
                try:
                    raw.commit()
                except psycopg.OperationalError:
                    cut_off = (xid, results)
                    raise
                return results

        return self._with_retries(attempt)

    def _xact_status(self, xid: str) -> str | None:
        """``pg_xact_status`` of a transaction, asked on a new connection.

        Args:
            xid: the transaction id (``pg_current_xact_id()`` as text).

        Returns:
            ``"committed"``, ``"aborted"``, or ``"in progress"`` when it still is
            after 5 s (polled every 50 ms); None when the server no longer knows it.

        Raises:
            psycopg.OperationalError: the server cannot be reached (the caller's
                retry loop tries again).
        """
        with psycopg.connect(self.url, autocommit=True, **self._connect_kwargs()) as raw:
            for _ in range(100):
                row = raw.execute("SELECT pg_xact_status(%s::xid8)", (xid,)).fetchone()
                state = None if row is None else row[0]
                if state != "in progress":
                    return state
                time.sleep(0.05)
        return "in progress"

    @staticmethod
    def _transact(
        raw: psycopg.Connection[Any], ops: list[Op]
    ) -> tuple[str, list[tuple[bool, Any]]]:
        """The ops in a new transaction, left open: (its id, (ok, value) per op).

        Optimistic, like SQLite's batch: no SAVEPOINT unless an op raises; then
        the transaction is rolled back and replayed with one SAVEPOINT per op,
        so the failing op is undone alone.
        """
        conn: Any = PgConnection(raw)  # the ops are typed for sqlite3's connection
        xid = _xact_id(raw)
        try:
            return xid, [(True, op(conn)) for op in ops]
        except psycopg.OperationalError:
            raise
        except Exception:  # which op failed is found by the replay below
            raw.rollback()
        xid = _xact_id(raw)
        results: list[tuple[bool, Any]] = []
        for op in ops:
            try:
                with raw.transaction(savepoint_name="op"):
                    value = op(conn)
            except psycopg.OperationalError:
                raise
            except Exception as exc:  # one op's failure must not undo the others
                results.append((False, exc))
            else:
                results.append((True, value))
        return xid, results

    def _commit_batch(self, batch: list[tuple[Op, asyncio.Future[Any]]]) -> None:
        """Commit ``batch`` on a pooled connection off the loop (several may be in flight)."""
        self._hand_off(batch, self._run_batch_now)

    def _hand_off(
        self,
        batch: list[tuple[Op, asyncio.Future[Any]]],
        run: Callable[[list[Op]], list[tuple[bool, Any]]],
    ) -> None:
        """Run ``run(ops)`` in a worker thread and answer the batch's callers (a tracked task)."""

        async def in_thread() -> None:
            try:
                if self._pool is None:  # closed meanwhile: the callers get the error
                    raise RuntimeError("PostgresBackend is closed")
                results = await anyio.to_thread.run_sync(run, [op for op, _future in batch])
            except BaseException as exc:
                settle(batch, exc)
                return
            settle(batch, results)

        task = asyncio.get_running_loop().create_task(in_thread())
        self._batches.add(task)
        task.add_done_callback(self._batches.discard)

    async def transaction(self, op: Callable[[Any], T]) -> T:
        """Run ``op`` in its own transaction on a pooled connection (administrative writes).

        Raises:
            StorageUnavailableError: the database stayed unreachable.
            Exception: whatever ``op`` raised; its writes are rolled back.
        """
        if self._pending:
            self._flush()
        ((ok, value),) = await anyio.to_thread.run_sync(self._run_batch_now, [op])
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]

    async def read(self, op: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``op(conn, *args, **kwargs)`` on a pooled connection in autocommit mode, off the loop.

        Reads are grouped like writes: those asked for during one turn of the
        event loop run together, in one hand-off to a worker thread, on one
        connection (up to ``READ_BATCH`` a hand-off). The hand-off, not the
        query, is what a read costs (a thread wake-up and two GIL transfers;
        profiled under load, one hand-off per read spent 40 % of the server's
        CPU in the kernel's scheduler), so a busy server pays it once per
        batch instead of once per read.

        Raises:
            StorageUnavailableError: the database stayed unreachable.
            Exception: what ``op`` raised (the other reads of its batch are unaffected).
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._reads.append((lambda conn: op(conn, *args, **kwargs), future))
        if not self._reads_soon:
            self._reads_soon = True
            loop.call_soon(self._flush_reads)
        return await future

    def _flush_reads(self) -> None:
        self._reads_soon = False
        pending, self._reads = self._reads, []
        for start in range(0, len(pending), READ_BATCH):
            self._hand_off(pending[start : start + READ_BATCH], self._read_now)

    def _read_now(self, ops: list[Op]) -> list[tuple[bool, Any]]:
        """Run read ops one after the other on one pooled connection (a worker thread)."""

        def attempt() -> list[tuple[bool, Any]]:
            with self.pool.connection(timeout=self._checkout_timeout) as raw:
                raw.autocommit = True
                conn: Any = PgConnection(raw)
                results: list[tuple[bool, Any]] = []
                try:
                    for op in ops:
                        try:
                            results.append((True, op(conn)))
                        except psycopg.OperationalError:
                            raise  # the connection: all of them again, elsewhere
                        except Exception as exc:  # this read's own failure
                            results.append((False, exc))
                finally:
                    if not raw.closed and not raw.broken:
                        raw.autocommit = False
                return results

        return self._with_retries(attempt)

    # ------------------------------------------------------------------ wake-ups

    async def wait_for_work(self, max_wait: float) -> None:
        """Wait for a job written by any process (``LISTEN``), or ``max_wait`` seconds."""
        if self._listener is None or self._listener.done():
            self._listener = asyncio.get_running_loop().create_task(self._listen())
        await super().wait_for_work(max_wait)

    async def _listen(self) -> None:
        """Set the work event on every ``commtunnel_jobs`` notification; reconnect on failure."""
        delay = 0.1
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.url, autocommit=True, **self._connect_kwargs()
                ) as conn:
                    await conn.execute(f"LISTEN {JOBS_CHANNEL}")
                    delay = 0.1
                    self._work.set()  # anything written while not listening is looked for now
                    async for _notify in conn.notifies():
                        self._work.set()
            except psycopg.OperationalError as exc:
                log.warning("LISTEN connection lost (%s); reconnecting in %.1f s", exc, delay)
                self._work.set()  # poll once meanwhile
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
