"""SQLite storage and queue: the embedded default (one file, WAL mode).

All access happens on the event loop's thread through one connection.
Writes on the hot paths (accepting a message, recording an attempt) go
through a *group commit*: every write submitted during one turn of the event
loop runs inside one transaction, and every caller is answered only after the
COMMIT. ``../shared/PERFORMANCE.md`` measured this at ~1.5x the throughput
of one commit per request, with no thread hop per write. The batch runs
optimistically, without a SAVEPOINT per write (each one opens a statement
journal that copies the rows it touches); when one write raises, the batch is
rolled back and replayed with one SAVEPOINT per write, so one failing write
never undoes the others. Queue writes (claims, attempt results) may wait up
to ``commit_window`` seconds for company, since a worker's attempts finish on
separate loop turns; an accept flushes them with it at once.

``synchronous = NORMAL`` makes a commit durable at the next checkpoint. WAL
checkpoints (which write and fsync the database file) run off the event loop:
the loop's connection has ``wal_autocheckpoint = 0`` and a thread with its own
connection runs ``PRAGMA wal_checkpoint(PASSIVE)`` every
``checkpoint_interval`` seconds, so no COMMIT on the loop pays for one.

Other processes (``commtunnel worker`` beside ``commtunnel serve``) may open
the same file; SQLite's locking and ``busy_timeout`` serialize their writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import secrets
import sqlite3
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Generic, NamedTuple, TypeVar

import attrs
import psycopg
import sqlite_utils

from commtunnel.backends import schema
from commtunnel.domain.errors import ConflictError
from commtunnel.domain.events import TimelineEvent
from commtunnel.domain.keys import ApiKey, Organization
from commtunnel.domain.messages import (
    Attempt,
    Channel,
    EmailContent,
    Message,
    SmsContent,
    Status,
    WhatsAppContent,
    event_for,
)
from commtunnel.domain.tracking import EngagementCounts
from commtunnel.ids import new_id
from commtunnel.ports import (
    AcceptResult,
    ClaimedJob,
    Clock,
    Completion,
    CooldownClaim,
    IdempotencyRecord,
    Sender,
    Template,
)

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger(__name__)


# One send writes the same "now" into up to 7 columns: memoize. Equal datetimes
# (the same instant, whatever their tzinfo) share one entry, which is right: the
# text is in UTC.
@functools.lru_cache(maxsize=256)
def ts(value: datetime) -> str:
    """Storage text for a timezone-aware datetime (fixed width, UTC).

    The format is ``%Y-%m-%dT%H:%M:%S.%fZ`` (``2026-01-01T12:00:00.000000Z``),
    built with ``isoformat``, which is faster than ``strftime``.
    """
    utc = value if value.tzinfo is UTC else value.astimezone(UTC)
    return utc.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def parse_ts(value: str) -> datetime:
    """The datetime (UTC) for storage text written by :func:`ts`."""
    # fromisoformat reads the trailing Z (Python 3.11+) and is ~10x faster than strptime.
    return datetime.fromisoformat(value)


def _opt_ts(value: str | None) -> datetime | None:
    return None if value is None else parse_ts(value)


# ---------------------------------------------------------------------------- rows -> records


class Rows(Generic[R]):
    """One table's ``SELECT`` and how each of its rows becomes a record.

    Args:
        table: the table read (a fixed name, never input).
        columns: the columns selected, comma-separated, in ``from_row``'s order.
        from_row: the record for one row.
    """

    def __init__(self, table: str, columns: str, from_row: Callable[[tuple[Any, ...]], R]) -> None:
        self.table = table
        self.columns = columns
        self.from_row = from_row
        self._select = f"SELECT {columns} FROM {table}"  # noqa: S608 - fixed names

    def one(self, conn: sqlite3.Connection, where: str, params: Sequence[Any] = ()) -> R | None:
        """The record of the first row matching ``where`` (SQL text with ``?``), or None."""
        row = conn.execute(f"{self._select} {where}", params).fetchone()
        return None if row is None else self.from_row(row)

    def all(self, conn: sqlite3.Connection, where: str, params: Sequence[Any] = ()) -> list[R]:
        """The records of every row matching ``where`` (which may end in ORDER BY, LIMIT)."""
        return [self.from_row(row) for row in conn.execute(f"{self._select} {where}", params)]

    def grouped(
        self, conn: sqlite3.Connection, column: str, keys: Sequence[str], *, order_by: str
    ) -> dict[str, list[R]]:
        """Every key -> the records whose ``column`` (also the records' attribute) holds it.

        One ``IN (...)`` query for a page of parents (keep ``keys`` to a page:
        each is a host parameter); a key with no row maps to an empty list.
        """
        groups: dict[str, list[R]] = {key: [] for key in keys}
        if groups:
            marks = ", ".join("?" * len(groups))
            for record in self.all(
                conn, f"WHERE {column} IN ({marks}) ORDER BY {order_by}", list(groups)
            ):
                groups[getattr(record, column)].append(record)
        return groups

    def page(
        self,
        conn: sqlite3.Connection,
        where: str,
        params: Sequence[Any],
        *,
        order_by: str,
        offset: int,
        limit: int,
    ) -> tuple[list[R], int]:
        """(``limit`` records from the ``offset``-th row in ``order_by`` order, all rows' count)."""
        total = conn.execute(
            f"SELECT COUNT(*) FROM {self.table} {where}",  # noqa: S608 - fixed names
            params,
        ).fetchone()[0]
        items = self.all(
            conn, f"{where} ORDER BY {order_by} LIMIT ? OFFSET ?", [*params, limit, offset]
        )
        return items, int(total)


def record_rows(
    table: str, record: Callable[..., R], columns: str, **convert: Callable[[Any], Any]
) -> Rows[R]:
    """:class:`Rows` whose columns are named like the attributes of ``record``.

    A column named ``*_at`` holds :func:`ts` text (or NULL) and is read with
    :func:`parse_ts`; every other column is passed as stored unless
    ``convert`` names it (``bool`` for a 0/1 column, an enum class ...).

    Args:
        table: the table read.
        record: the record class, called with one keyword per column.
        columns: the columns, comma-separated.
        convert: column name -> the function applied to its stored value.
    """
    names = tuple(name.strip() for name in columns.split(","))
    converters = tuple(
        convert.get(name, _opt_ts if name.endswith("_at") else None) for name in names
    )

    def from_row(row: tuple[Any, ...]) -> R:
        return record(
            **{
                name: value if conv is None else conv(value)
                for name, conv, value in zip(names, converters, row, strict=True)
            }
        )

    return Rows(table, columns, from_row)


class _ContentColumn(NamedTuple):
    """How one channel's content is kept in the ``content`` column (JSON)."""

    attribute: str  # the Message attribute holding it
    make: Callable[..., Any]  # its class
    keys: dict[str, str]  # field -> JSON key (camelCase, as on the wire)


_CONTENT: dict[Channel, _ContentColumn] = {
    Channel.EMAIL: _ContentColumn(
        "email",
        EmailContent,
        {
            "from_addr": "from",
            "to": "to",
            "subject": "subject",
            "html": "html",
            "text": "text",
            "message_id_header": "messageIdHeader",
            "template_id": "templateId",
            "tracking": "tracking",
            "unsubscribe": "unsubscribe",
        },
    ),
    Channel.SMS: _ContentColumn(
        "sms",
        SmsContent,
        {
            "sender_id": "senderId",
            "to": "to",
            "body": "body",
            "send_type": "sendType",
            "encoding": "encoding",
            "segments": "segments",
            "flow": "flow",
            "purpose": "purpose",
        },
    ),
    Channel.WHATSAPP: _ContentColumn(
        "whatsapp",
        WhatsAppContent,
        {
            "to": "to",
            "kind": "kind",
            "body": "body",
            "template_name": "templateName",
            "template_language": "templateLanguage",
            "template_variables": "templateVariables",
            "phone_number_id": "phoneNumberId",
        },
    ),
}


def _content(message: Message) -> EmailContent | SmsContent | WhatsAppContent | None:
    content: EmailContent | SmsContent | WhatsAppContent | None = getattr(
        message, _CONTENT[message.channel].attribute
    )
    return content


def _content_json(message: Message) -> str:
    content = _content(message)
    if content is None:
        return "{}"
    keys = _CONTENT[message.channel].keys
    return json.dumps(
        {key: getattr(content, field) for field, key in keys.items()}, separators=(",", ":")
    )


def _message_from_row(row: tuple[Any, ...]) -> Message:
    (
        mid,
        org_id,
        channel,
        status,
        sandbox,
        api_key_id,
        content,
        pmid,
        count,
        err,
        cat,
        uat,
        sat,
    ) = row
    column = _CONTENT[Channel(channel)]
    data = json.loads(content)
    contents: dict[str, Any] = {"email": None}  # the one Message field without a default
    # A key added to a content after rows were written (email "unsubscribe") is
    # absent from those rows: the content class's default applies.
    contents[column.attribute] = column.make(
        **{f: data[k] for f, k in column.keys.items() if k in data}
    )
    return Message(
        id=mid,
        org_id=org_id,
        channel=Channel(channel),
        status=Status(status),
        sandbox=bool(sandbox),
        api_key_id=api_key_id,
        provider_message_id=pmid,
        attempt_count=count,
        last_error=err,
        created_at=parse_ts(cat),
        updated_at=parse_ts(uat),
        scheduled_at=_opt_ts(sat),
        **contents,
    )


#: messages as records (the sibling stores read them too).
MESSAGES = Rows(
    "messages",
    "id, org_id, channel, status, sandbox, api_key_id, content, provider_message_id, "
    "attempt_count, last_error, created_at, updated_at, scheduled_at",
    _message_from_row,
)
# The same columns of the alias ``m``, for the claim's join with jobs.
_CLAIM_MESSAGE_COLUMNS = ", ".join(f"m.{c.strip()}" for c in MESSAGES.columns.split(","))

_ORGS = record_rows(
    "orgs", Organization, "id, name, created_at, otp_ignores_opt_out", otp_ignores_opt_out=bool
)
_KEYS = record_rows(
    "api_keys",
    ApiKey,
    "id, org_id, name, key_hash, display, scopes, test, created_at, revoked_at",
    scopes=lambda text: frozenset(text.split()),
    test=bool,
)
_SENDERS = record_rows("senders", Sender, "id, org_id, value, created_at")
_TEMPLATES = record_rows(
    "templates", Template, "id, org_id, name, subject, html, text, created_at, updated_at"
)
#: timeline events as records (the webhook store reads them too).
EVENTS = record_rows(
    "events",
    TimelineEvent,
    "id, org_id, message_id, type, status, created_at, details",
    status=lambda text: None if text is None else Status(text),
    details=json.loads,
)
#: attempts as records (the routing store reads them too).
ATTEMPTS = record_rows(
    "attempts",
    Attempt,
    "message_id, number, provider, outcome, error_category, error_message, duration_ms, "
    "started_at, status",
    status=lambda text: None if text is None else Status(text),
)
_IDEMPOTENCY_KEYS = record_rows(
    "idempotency_keys",
    IdempotencyRecord,
    "org_id, key, endpoint, fingerprint, message_id, created_at, expires_at",
)


def get_message(
    conn: sqlite3.Connection, message_id: str, org_id: str | None = None, *, lock: bool = False
) -> Message | None:
    """A message by id, of the organization ``org_id`` when given, else of any.

    Args:
        lock: inside a write that decides on the message's status, hold its
            row until COMMIT (``FOR UPDATE`` on PostgreSQL; SQLite's single
            writer already excludes every other write).
    """
    suffix = " FOR UPDATE" if lock and not isinstance(conn, sqlite3.Connection) else ""
    if org_id is None:
        return MESSAGES.one(conn, f"WHERE id = ?{suffix}", (message_id,))
    return MESSAGES.one(conn, f"WHERE id = ? AND org_id = ?{suffix}", (message_id, org_id))


#: What a uniqueness constraint's violation raises, from either database.
INTEGRITY_ERRORS: tuple[type[Exception], ...] = (sqlite3.IntegrityError, psycopg.IntegrityError)


def skip_locked(conn: sqlite3.Connection, *tables: str) -> str:
    """The suffix that makes a claim's SELECT lock its rows and pass over locked ones.

    `` FOR UPDATE OF t SKIP LOCKED`` on PostgreSQL, so that workers in many
    processes claim different rows without waiting for each other; nothing
    on SQLite, whose write transaction (BEGIN IMMEDIATE) excludes every other.
    """
    if isinstance(conn, sqlite3.Connection):
        return ""
    return f" FOR UPDATE OF {', '.join(tables)} SKIP LOCKED"


def serialize(conn: sqlite3.Connection, *key: str) -> None:
    """Hold ``key`` until COMMIT, so two writes that read then decide on it run one after the other.

    A transaction-scoped advisory lock (``pg_advisory_xact_lock``) on
    PostgreSQL, where READ COMMITTED lets concurrent transactions read the
    same "nothing there yet"; nothing on SQLite (one writer at a time).
    """
    if not isinstance(conn, sqlite3.Connection):
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(?, 0))", ("\x1f".join(key),))


def insert_event(conn: sqlite3.Connection, event: TimelineEvent) -> None:
    """Write one timeline event (a message's, or an organization-level one) and its fan-out.

    Each enabled webhook endpoint of the event's organization whose filter
    names its type (or that has none) gets one PENDING delivery due at the
    event's time, in the caller's transaction: the delivery exists if and
    only if the event does. An organization without endpoints costs one
    indexed SELECT.
    """
    created_at = ts(event.created_at)
    conn.execute(
        "INSERT INTO events (id, org_id, message_id, type, status, created_at, details) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            event.id,
            event.org_id,
            event.message_id,
            event.type,
            None if event.status is None else str(event.status),
            created_at,
            json.dumps(event.details, separators=(",", ":")),
        ),
    )
    # The filter is stored as ",type,type," so that one instr() matches a whole type.
    endpoints = conn.execute(
        "SELECT id FROM webhook_endpoints WHERE org_id = ? AND enabled = 1 "
        "AND (events IS NULL OR instr(events, ?) > 0)",
        (event.org_id, f",{event.type},"),
    ).fetchall()
    if endpoints:
        conn.executemany(
            "INSERT INTO webhook_deliveries (id, endpoint_id, org_id, event_id, event_type, "
            "message_id, payload, status, attempt_count, next_attempt_at, created_at, "
            "updated_at) VALUES (?, ?, ?, ?, ?, ?, NULL, 'PENDING', 0, ?, ?, ?)",
            [
                (
                    new_id(),
                    endpoint_id,
                    event.org_id,
                    event.id,
                    event.type,
                    event.message_id,
                    created_at,
                    created_at,
                    created_at,
                )
                for (endpoint_id,) in endpoints
            ],
        )


def insert_message(conn: sqlite3.Connection, m: Message) -> None:
    """Write a new message row (its event and job are the caller's, in the same transaction).

    Raises:
        sqlite3.IntegrityError: a message with this id is stored already.
    """
    content = _content(m)
    conn.execute(
        "INSERT INTO messages (id, org_id, channel, status, sandbox, api_key_id, recipient, "
        "content, provider_message_id, attempt_count, last_error, created_at, updated_at, "
        "scheduled_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            m.id,
            m.org_id,
            str(m.channel),
            str(m.status),
            int(m.sandbox),
            m.api_key_id,
            "" if content is None else content.to,
            _content_json(m),
            m.provider_message_id,
            m.attempt_count,
            m.last_error,
            ts(m.created_at),
            ts(m.updated_at),
            None if m.scheduled_at is None else ts(m.scheduled_at),
        ),
    )


def insert_job(
    conn: sqlite3.Connection,
    message_id: str,
    *,
    run_at: datetime,
    created_at: datetime,
    attempts_before: int = 0,
) -> None:
    """Write a message's dispatch job, due at ``run_at``.

    Args:
        attempts_before: provider attempts the message had before this job (a
            re-queue keeps counting from there).

    Raises:
        sqlite3.IntegrityError: the message has a job already.
    """
    conn.execute(
        "INSERT INTO jobs (id, message_id, run_at, created_at, attempts_before) "
        "VALUES (?, ?, ?, ?, ?)",
        (message_id, message_id, ts(run_at), ts(created_at), attempts_before),
    )


def unexpired_key(
    conn: sqlite3.Connection, org_id: str, key: str, now: datetime
) -> IdempotencyRecord | None:
    """The organization's stored idempotency ``key``; None when absent or expired at ``now``."""
    record = _IDEMPOTENCY_KEYS.one(conn, "WHERE org_id = ? AND key = ?", (org_id, key))
    return None if record is None or record.expires_at <= now else record


def _replay(
    conn: sqlite3.Connection,
    org_id: str,
    key: str,
    *,
    endpoint: str,
    fingerprint: str,
    now: datetime,
) -> AcceptResult | None:
    """What the stored idempotency key answers at ``now``.

    Returns:
        None when the key is unused or expired (or its message is gone); the
        original message as a duplicate when endpoint and fingerprint match;
        else the stored record as the ``conflict``.
    """
    record = unexpired_key(conn, org_id, key, now)
    if record is None:
        return None
    if (record.endpoint, record.fingerprint) != (endpoint, fingerprint):
        return AcceptResult(message=None, conflict=record)
    message = get_message(conn, record.message_id, org_id)
    return None if message is None else AcceptResult(message=message, duplicate=True)


def _due_event(message: Message, at: datetime) -> TimelineEvent:
    """The ``<channel>_queued`` event of a scheduled message whose time came (``scheduled``).

    The status machine goes SCHEDULED -> QUEUED -> PROCESSING; a claim takes a
    due scheduled message through both moves in one transaction.
    """
    return TimelineEvent(
        id=new_id(),
        message_id=message.id,
        org_id=message.org_id,
        type=event_for(message.channel, Status.QUEUED),
        status=Status.QUEUED,
        created_at=at,
        details={"scheduled": True},
    )


def claim_idempotency_key(
    conn: sqlite3.Connection,
    record: IdempotencyRecord,
    target_id: str,
    replay: Callable[..., R | None],
) -> R | None:
    """Take an idempotency key for ``target_id`` (a message, or a batch), or answer its replay.

    The primary key (org_id, key) is what guarantees one result per key,
    across processes too. The insert comes first: a new key (the usual case)
    costs one statement, and the stored key is read only on a conflict.

    Args:
        conn: the connection, inside the caller's transaction.
        record: the key, its endpoint, fingerprint and window.
        target_id: what the key produces (stored in ``message_id``).
        replay: ``replay(conn, org_id, key, endpoint=, fingerprint=, now=)``:
            what an unexpired stored key answers (a duplicate or a conflict),
            None when it has expired or what it named is gone.

    Returns:
        None when the key is now this request's (new, or an expired one taken
        over); else ``replay``'s answer, and nothing was written.
    """
    key_values = (
        record.endpoint,
        record.fingerprint,
        target_id,
        ts(record.created_at),
        ts(record.expires_at),
        record.org_id,
        record.key,
    )
    inserted = conn.execute(
        "INSERT INTO idempotency_keys (endpoint, fingerprint, message_id, "
        "created_at, expires_at, org_id, key) VALUES (?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (org_id, key) DO NOTHING",
        key_values,
    ).rowcount
    if inserted:
        return None
    answer = replay(
        conn,
        record.org_id,
        record.key,
        endpoint=record.endpoint,
        fingerprint=record.fingerprint,
        now=record.created_at,
    )
    if answer is not None:
        return answer
    conn.execute(
        "UPDATE idempotency_keys SET endpoint = ?, fingerprint = ?, "
        "message_id = ?, created_at = ?, expires_at = ? "
        "WHERE org_id = ? AND key = ?",
        key_values,
    )
    return None


class _CooldownRefusal(Exception):
    """Raised inside an accept op so that the whole op is undone (the key too)."""

    def __init__(self, until: datetime) -> None:
        super().__init__("cooldown running")
        self.until = until


def _claim_cooldown(
    conn: sqlite3.Connection, claim: CooldownClaim, message_id: str
) -> datetime | None:
    """Record ``claim`` unless a running one blocks it; returns the blocking claim's end."""
    serialize(conn, "otp_cooldowns", claim.org_id, claim.recipient, claim.purpose)
    row = conn.execute(
        "SELECT until FROM otp_cooldowns WHERE org_id = ? AND recipient = ? AND purpose = ?",
        (claim.org_id, claim.recipient, claim.purpose),
    ).fetchone()
    if row is not None:
        until = parse_ts(row[0])
        if until > claim.now:
            return until
    conn.execute(
        "INSERT INTO otp_cooldowns (org_id, recipient, purpose, message_id, until) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT (org_id, recipient, purpose) DO UPDATE SET "
        "message_id = excluded.message_id, until = excluded.until",
        (claim.org_id, claim.recipient, claim.purpose, message_id, ts(claim.until)),
    )
    return None


class WalCheckpointer:
    """Runs ``PRAGMA wal_checkpoint(PASSIVE)`` on a database file from its own thread.

    A checkpoint copies WAL frames into the database file and fsyncs it; done by
    SQLite's auto-checkpoint it would happen inside a COMMIT on the event loop
    and stall every request for 10-40 ms. PASSIVE never waits for readers or
    writers, and SQLite runs without the GIL, so the loop keeps going.

    SQLite starts the WAL file over only when a write finds every frame already
    copied, which a checkpoint running beside a steady stream of commits never
    achieves: the WAL would grow for as long as the load lasts (hundreds of MB
    in a minute of benchmark). So when the WAL holds ``restart_frames`` frames
    or more, the thread copies what was written meanwhile and then calls
    ``finish``, which is expected to run one more (short) checkpoint on the
    writing connection, between two commits: the next commit then restarts
    the WAL from its beginning.

    Args:
        path: the database file (never ``":memory:"``).
        interval: seconds between checkpoints.
        restart_frames: WAL size (in frames, one per page written) above which
            ``finish`` is called.
        finish: called from the thread; None never calls anything.

    Attributes:
        completed: checkpoints run so far (for tests and metrics).
        finishes: times ``finish`` was called.
    """

    def __init__(
        self,
        path: str,
        *,
        interval: float,
        restart_frames: int = 4096,
        finish: Callable[[], None] | None = None,
    ) -> None:
        self.path = path
        self.interval = interval
        self.restart_frames = restart_frames
        self.completed = 0
        self.finishes = 0
        self._finish = finish
        self._stop = threading.Event()
        self._ran = threading.Condition()
        self._thread = threading.Thread(
            target=self._run, name=f"commtunnel-wal-checkpoint:{path}", daemon=True
        )

    @property
    def running(self) -> bool:
        """Whether the thread is alive."""
        return self._thread.is_alive()

    def start(self) -> None:
        """Start the thread (it opens its own connection)."""
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to end and wait for it (at most one checkpoint's time)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def wait_for(self, completed: int, timeout: float) -> bool:
        """Wait until ``completed`` checkpoints have run; False after ``timeout`` seconds."""
        with self._ran:
            return self._ran.wait_for(lambda: self.completed >= completed, timeout)

    def run_once(self, conn: sqlite3.Connection) -> None:
        """One pass of the thread: a checkpoint, and ``finish`` when the WAL is large.

        Args:
            conn: a connection to ``path`` other than the writer's.
        """
        _busy, frames, _copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if frames >= self.restart_frames and self._finish is not None:
            # Copy the frames written during the pass above, so that the writer's
            # own checkpoint has only a short tail left to copy.
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            self._finish()
            self.finishes += 1
        with self._ran:
            self.completed += 1
            self._ran.notify_all()

    def _run(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
        try:
            while not self._stop.wait(self.interval):
                try:
                    self.run_once(conn)
                except sqlite3.Error:  # e.g. the file was removed; try again next time
                    log.warning("WAL checkpoint of %s failed", self.path, exc_info=True)
        finally:
            conn.close()


Op = Callable[[sqlite3.Connection], Any]


class SqliteBackend:
    """Storage + Queue on one SQLite file.

    Args:
        path: the database file (created if missing); ``":memory:"`` for tests
            that need no file.
        clock: used for migration timestamps.
        busy_timeout: milliseconds to wait for another process's write lock.
        commit_window: seconds a queue write (claim, attempt result) may wait
            for others to share its commit, while leases taken here are still
            out; 0 commits each at the next loop turn like accepts.
        checkpoint_interval: seconds between WAL checkpoints on a background
            thread; None leaves checkpoints to SQLite (inside commits).
            Never used for ``":memory:"``.
        checkpoint_restart_frames: WAL frames (pages written) above which the
            loop's connection copies the last few frames itself, so that the
            WAL starts over (see :class:`WalCheckpointer`).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        clock: Clock,
        busy_timeout: int = 5000,
        commit_window: float = 0.002,
        checkpoint_interval: float | None = 1.0,
        checkpoint_restart_frames: int = 4096,
    ) -> None:
        self.path = str(path)
        self._clock = clock
        self._busy_timeout = busy_timeout
        self._commit_window = commit_window
        self._checkpoint_interval = checkpoint_interval
        self._checkpoint_restart_frames = checkpoint_restart_frames
        self._checkpointer: WalCheckpointer | None = None
        self._conn: sqlite3.Connection | None = None
        self._pending: list[tuple[Op, asyncio.Future[Any]]] = []
        self._flush_handle: asyncio.Handle | None = None  # a call_soon or call_later
        self._flush_soon = False  # whether _flush_handle is a call_soon
        # Jobs claimed through this backend whose result is not yet submitted: while
        # any are out, a queue write may wait for theirs (see commit_window).
        self._leases_out = 0
        self._work = asyncio.Event()

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Open the file, switch to WAL and apply pending migrations (no-op when open).

        Raises:
            SchemaTooNewError: the file was written by a newer Commtunnel; it is
                left untouched and no connection stays open.
            sqlite3.Error: the file cannot be opened or migrated.
        """
        if self._conn is not None:
            return
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            if self.path != ":memory:":
                sqlite_utils.Database(conn).enable_wal()
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout)}")
            # Durable at the next checkpoint; WAL keeps every commit atomic.
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            schema.migrate(conn, ts(self._clock.now()))
        except BaseException:
            conn.close()
            raise
        if self.path != ":memory:" and self._checkpoint_interval is not None:
            conn.execute("PRAGMA wal_autocheckpoint = 0")  # the checkpointer's job
            loop = asyncio.get_running_loop()

            def finish() -> None:
                with contextlib.suppress(RuntimeError):  # the loop has already closed
                    loop.call_soon_threadsafe(self._finish_checkpoint)

            self._checkpointer = WalCheckpointer(
                self.path,
                interval=self._checkpoint_interval,
                restart_frames=self._checkpoint_restart_frames,
                finish=finish,
            )
            self._checkpointer.start()
        self._conn = conn

    async def aclose(self) -> None:
        """Commit what is pending, stop the checkpoint thread, then close the connection."""
        if self._pending:
            self._flush()
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpointer = None
        if self._conn is not None:
            self._conn.close()  # the last connection to close checkpoints the WAL
            self._conn = None

    @property
    def checkpointer(self) -> WalCheckpointer | None:
        """The WAL checkpoint thread while open on a file (None for ``":memory:"``)."""
        return self._checkpointer

    def _finish_checkpoint(self) -> None:
        """Copy the WAL's last frames on the loop, between commits (see WalCheckpointer).

        The checkpoint thread has copied nearly everything, so this is short;
        afterwards every frame is copied and the next commit restarts the WAL.
        """
        conn = self._conn
        if conn is None or conn.in_transaction:
            return
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error:  # the thread tries again once the WAL is large again
            log.warning("WAL checkpoint of %s failed", self.path, exc_info=True)

    @property
    def conn(self) -> sqlite3.Connection:
        """The open connection.

        Raises:
            RuntimeError: :meth:`open` was not awaited, or :meth:`aclose` was.
        """
        if self._conn is None:
            raise RuntimeError("SqliteBackend is not open; await open() first")
        return self._conn

    def schema_version(self) -> int:
        """The schema version of the open file."""
        return schema.current_version(self.conn)

    async def read_schema_version(self) -> int:
        """The schema version stored in the database, read like any other read."""
        return await self.read(schema.current_version)

    # ------------------------------------------------------------------ group commit

    def submit(
        self, op: Callable[[sqlite3.Connection], T], *, window: float = 0.0
    ) -> asyncio.Future[T]:
        """Queue ``op`` for the next group commit; the future resolves after COMMIT.

        ``op`` may run twice (see :meth:`_run_batch`): it must only touch the
        connection, with no other side effect.

        Args:
            op: the write, given the connection inside the transaction.
            window: seconds the commit may wait for more writes while leases
                taken here are out (queue writes); 0 commits at the next loop turn.

        Returns:
            A future with ``op``'s value. It raises what ``op`` raised (``op``'s
            writes alone are undone), or RuntimeError when the backend was
            closed before the commit.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._pending.append((op, future))
        if window <= 0 or self._leases_out == 0:
            if not self._flush_soon:
                if self._flush_handle is not None:
                    self._flush_handle.cancel()  # a waiting queue write goes along now
                # call_soon runs after every callback already ready in this loop turn,
                # so concurrent requests that reached this point share one commit.
                self._flush_handle = loop.call_soon(self._flush)
                self._flush_soon = True
        elif self._flush_handle is None:
            self._flush_handle = loop.call_later(window, self._flush)
        return future

    def _flush(self) -> None:
        """Take the pending writes (cancelling the scheduled flush) and commit them."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()  # when called directly, not by the handle
            self._flush_handle = None
        self._flush_soon = False
        batch, self._pending = self._pending, []
        if batch:
            self._commit_batch(batch)

    def _commit_batch(self, batch: list[tuple[Op, asyncio.Future[Any]]]) -> None:
        """Run ``batch`` in one transaction on the loop's connection and answer its callers."""
        conn = self._conn
        try:
            if conn is None:  # closed meanwhile: the callers get the error, not a hang
                raise RuntimeError("SqliteBackend is closed")
            results = self._run_batch(conn, [op for op, _future in batch])
        except BaseException as exc:
            if conn is not None and conn.in_transaction:
                conn.execute("ROLLBACK")
            settle(batch, exc)
            return
        settle(batch, results)

    @staticmethod
    def _run_batch(conn: sqlite3.Connection, ops: list[Op]) -> list[tuple[bool, Any]]:
        """Run ``ops`` in one transaction and commit; (ok, value or exception) per op."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            values = [op(conn) for op in ops]
        except Exception:  # which op failed is found by the replay below
            # Rare: start again with one SAVEPOINT per op, so that the failing op
            # is undone alone and every other op still commits.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            conn.execute("BEGIN IMMEDIATE")
            results: list[tuple[bool, Any]] = []
            for op in ops:
                conn.execute("SAVEPOINT op")
                try:
                    value = op(conn)
                except Exception as exc:  # one op's failure must not undo the others
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    results.append((False, exc))
                else:
                    conn.execute("RELEASE op")
                    results.append((True, value))
        else:
            results = [(True, value) for value in values]
        conn.execute("COMMIT")
        return results

    async def transaction(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``op`` in its own immediate transaction, now (administrative writes).

        Writes pending for the group commit are committed first.

        Raises:
            RuntimeError: the backend is not open.
            Exception: whatever ``op`` raised; its writes are rolled back.
        """
        if self._pending:
            self._flush()
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            value = op(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return value

    async def read(self, op: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``op(conn, *args, **kwargs)``: a read, run at once on the loop's connection.

        SQLite answers a read from its page cache in microseconds, so it runs
        inline; the PostgreSQL backend runs it on a pooled connection off the loop.
        ``op`` must not write.

        Raises:
            RuntimeError: the backend is not open.
        """
        return op(self.conn, *args, **kwargs)

    # ------------------------------------------------------------------ organizations

    async def create_org(self, org: Organization) -> None:
        """Store ``org``.

        Raises:
            ConflictError: another organization has the name.
        """
        try:
            await self.transaction(
                lambda c: c.execute(
                    "INSERT INTO orgs (id, name, created_at) VALUES (?, ?, ?)",
                    (org.id, org.name, ts(org.created_at)),
                )
            )
        except INTEGRITY_ERRORS:
            raise ConflictError(
                f"An organization named '{org.name}' already exists", details={"name": org.name}
            ) from None

    async def get_org(
        self, *, org_id: str | None = None, name: str | None = None
    ) -> Organization | None:
        """An organization by id or by name."""
        column, value = ("id", org_id) if org_id is not None else ("name", name)
        return await self.read(_ORGS.one, f"WHERE {column} = ?", (value,))

    async def list_orgs(self) -> list[Organization]:
        """All organizations, oldest first."""
        return await self.read(_ORGS.all, "ORDER BY created_at, id")

    # ------------------------------------------------------------------ API keys

    async def create_api_key(self, key: ApiKey) -> None:
        """Store a key record (its hash, never the key)."""
        await self.transaction(
            lambda c: c.execute(
                "INSERT INTO api_keys (id, org_id, name, key_hash, display, scopes, test, "
                "created_at, revoked_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL)",
                (
                    key.id,
                    key.org_id,
                    key.name,
                    key.key_hash,
                    key.display,
                    " ".join(sorted(key.scopes)),
                    int(key.test),
                    ts(key.created_at),
                ),
            )
        )

    async def get_api_key_by_hash(self, key_hash: str) -> ApiKey | None:
        """The key with this hash, revoked or not."""
        return await self.read(_KEYS.one, "WHERE key_hash = ?", (key_hash,))

    async def list_api_keys(self, org_id: str) -> list[ApiKey]:
        """Keys of one organization, oldest first."""
        return await self.read(_KEYS.all, "WHERE org_id = ? ORDER BY created_at, id", (org_id,))

    async def revoke_api_key(self, org_id: str, key_id: str, at: datetime) -> bool:
        """Revoke a key of the organization (a revoked key keeps its first ``at``).

        Returns:
            False when the organization has no such key.
        """
        cursor = await self.transaction(
            lambda c: c.execute(
                "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?) "
                "WHERE id = ? AND org_id = ?",
                (ts(at), key_id, org_id),
            )
        )
        return bool(cursor.rowcount)

    # ------------------------------------------------------------------ senders, templates

    async def add_sender(self, sender: Sender) -> Sender:
        """Add a verified sender; an existing value is returned unchanged."""
        await self.transaction(
            lambda c: c.execute(
                "INSERT INTO senders (id, org_id, value, created_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT DO NOTHING",
                (sender.id, sender.org_id, sender.value, ts(sender.created_at)),
            )
        )
        stored = await self.read(
            _SENDERS.one, "WHERE org_id = ? AND value = ?", (sender.org_id, sender.value)
        )
        assert stored is not None  # just written, or there already
        return stored

    async def list_senders(self, org_id: str) -> list[Sender]:
        """Verified senders of one organization, by value."""
        return await self.read(_SENDERS.all, "WHERE org_id = ? ORDER BY value", (org_id,))

    async def is_sender_verified(self, org_id: str, address: str, domain: str) -> bool:
        """Whether ``address`` or its ``domain`` is a verified sender (values are lower case)."""
        row = await self.read(
            fetch_one,
            "SELECT 1 FROM senders WHERE org_id = ? AND value IN (?, ?) LIMIT 1",
            (org_id, address.lower(), domain.lower()),
        )
        return row is not None

    async def create_template(self, template: Template) -> None:
        """Store a template.

        Raises:
            ConflictError: the organization has a template with the name.
        """
        try:
            await self.transaction(
                lambda c: c.execute(
                    "INSERT INTO templates (id, org_id, name, subject, html, text, created_at, "
                    "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        template.id,
                        template.org_id,
                        template.name,
                        template.subject,
                        template.html,
                        template.text,
                        ts(template.created_at),
                        ts(template.updated_at),
                    ),
                )
            )
        except INTEGRITY_ERRORS:
            raise ConflictError(
                f"A template named '{template.name}' already exists",
                details={"name": template.name},
            ) from None

    async def get_template(self, org_id: str, template_id: str) -> Template | None:
        """One template of the organization."""
        return await self.read(_TEMPLATES.one, "WHERE id = ? AND org_id = ?", (template_id, org_id))

    async def list_templates(self, org_id: str) -> list[Template]:
        """Templates of one organization, oldest first."""
        return await self.read(
            _TEMPLATES.all, "WHERE org_id = ? ORDER BY created_at, id", (org_id,)
        )

    # ------------------------------------------------------------------ messages

    async def accept(
        self,
        message: Message,
        event: TimelineEvent,
        *,
        run_at: datetime,
        idempotency: IdempotencyRecord | None,
        cooldown: CooldownClaim | None = None,
    ) -> AcceptResult:
        """Message + first event + job (+ idempotency key, + cooldown) in one transaction.

        The answers are those of :meth:`commtunnel.ports.Storage.accept`.

        Raises:
            sqlite3.IntegrityError: an id (message, event) is stored already;
                nothing of this accept is written.
        """

        def op(conn: sqlite3.Connection) -> AcceptResult:
            if idempotency is not None:
                replay = claim_idempotency_key(conn, idempotency, message.id, _replay)
                if replay is not None:
                    return replay
            if cooldown is not None:
                blocked_until = _claim_cooldown(conn, cooldown, message.id)
                if blocked_until is not None:
                    # Undo the key inserted above: a refused request stores nothing.
                    raise _CooldownRefusal(blocked_until)
            insert_message(conn, message)
            insert_event(conn, event)
            insert_job(conn, message.id, run_at=run_at, created_at=message.created_at)
            return AcceptResult(message=message)

        try:
            result = await self.submit(op)
        except _CooldownRefusal as refusal:
            return AcceptResult(message=None, cooldown_until=refusal.until)
        if not result.duplicate and result.conflict is None:
            self.notify_work()
        return result

    async def find_replay(
        self, org_id: str, key: str, *, endpoint: str, fingerprint: str, now: datetime
    ) -> AcceptResult | None:
        """What an unexpired idempotency key already answers, before any other check.

        Returns:
            None when the key is unused (or expired); the original message as a
            duplicate when endpoint and fingerprint match; else the ``conflict``.
        """
        return await self.read(
            _replay, org_id, key, endpoint=endpoint, fingerprint=fingerprint, now=now
        )

    async def get_message(self, org_id: str, message_id: str) -> Message | None:
        """One message of the organization."""
        return await self.read(get_message, message_id, org_id)

    async def list_events(self, org_id: str, message_id: str, limit: int) -> list[TimelineEvent]:
        """The first ``limit`` events of a message, oldest first."""
        return await self.read(
            EVENTS.all,
            "WHERE message_id = ? AND org_id = ? ORDER BY created_at, id LIMIT ?",
            (message_id, org_id, limit),
        )

    async def list_attempts(self, org_id: str, message_id: str) -> list[Attempt]:
        """Every attempt of a message of the organization, in order."""
        return await self.read(
            ATTEMPTS.all,
            # The subquery is NULL (nothing matches) for another organization's message.
            "WHERE message_id = (SELECT id FROM messages WHERE id = ? AND org_id = ?) "
            "ORDER BY number",
            (message_id, org_id),
        )

    async def stats(
        self,
        org_id: str,
        channel: Channel,
        start: datetime,
        end: datetime,
        *,
        include_bots: bool = False,
    ) -> tuple[dict[str, int], dict[str, int], EngagementCounts]:
        """Counts of one organization and channel for the window ``[start, end)``.

        Returns:
            (messages created in the window by status, events in the window by
            type, opens and clicks in the window: totals and distinct messages,
            without those marked ``isBot`` unless ``include_bots``).
        """
        by_status = dict(
            await self.read(
                fetch_all,
                "SELECT status, COUNT(*) FROM messages WHERE org_id = ? AND channel = ? "
                "AND created_at >= ? AND created_at < ? GROUP BY status",
                (org_id, str(channel), ts(start), ts(end)),
            )
        )
        by_event = dict(
            await self.read(
                fetch_all,
                "SELECT type, COUNT(*) FROM events WHERE org_id = ? AND substr(type, 1, ?) = ? "
                "AND created_at >= ? AND created_at < ? GROUP BY type",
                (org_id, len(channel) + 1, f"{channel}_", ts(start), ts(end)),
            )
        )
        # details.isBot is JSON true/false (1/0 for json_extract); absent counts as human.
        opened, clicked = f"{channel}_opened", f"{channel}_clicked"
        engagement = {
            kind: (total, unique)
            for kind, total, unique in (
                await self.read(
                    fetch_all,
                    "SELECT type, COUNT(*), COUNT(DISTINCT message_id) FROM events "
                    "WHERE org_id = ? AND type IN (?, ?) AND created_at >= ? AND created_at < ? "
                    "AND (? OR COALESCE(json_extract(details, '$.isBot'), 0) = 0) GROUP BY type",
                    (org_id, opened, clicked, ts(start), ts(end), include_bots),
                )
            )
        }
        opens, unique_opens = engagement.get(opened, (0, 0))
        clicks, unique_clicks = engagement.get(clicked, (0, 0))
        counts = EngagementCounts(
            opens=opens, unique_opens=unique_opens, clicks=clicks, unique_clicks=unique_clicks
        )
        return by_status, by_event, counts

    async def append_event(self, event: TimelineEvent) -> TimelineEvent:
        """Write an event that changes no status, with its webhook fan-out (group commit).

        Returns:
            The event as written: its details gain ``first``, True when it is
            not a bot's (``isBot``) and the message had no earlier event of its
            type that was not a bot's (decided inside the write's transaction,
            so concurrent writers cannot both be first). A scanner that opens
            or clicks before the person does leaves ``first`` to the person.
        """

        is_bot = event.details.get("isBot") is True

        def op(conn: sqlite3.Connection) -> TimelineEvent:
            serialize(conn, "first", event.message_id or "", event.type)
            earlier = conn.execute(
                "SELECT 1 FROM events WHERE message_id = ? AND type = ? "
                "AND json_extract(details, '$.isBot') IS NOT 1 LIMIT 1",
                (event.message_id, event.type),
            ).fetchone()
            first = not is_bot and earlier is None
            written = attrs.evolve(event, details={**event.details, "first": first})
            insert_event(conn, written)
            return written

        return await self.submit(op)

    async def instance_secret(self, name: str, candidate: str, at: datetime) -> str:
        """The server-made secret ``name``; ``candidate`` is stored when there is none."""

        def op(conn: sqlite3.Connection) -> str:
            conn.execute(
                "INSERT INTO instance_secrets (name, value, created_at) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO NOTHING",
                (name, candidate, ts(at)),
            )
            row = conn.execute(
                "SELECT value FROM instance_secrets WHERE name = ?", (name,)
            ).fetchone()
            return str(row[0])

        return await self.transaction(op)

    # ------------------------------------------------------------------ queue

    async def claim(
        self,
        *,
        worker_id: str,
        now: datetime,
        lease_seconds: float,
        limit: int,
        processing_event: Callable[[Message, int], TimelineEvent],
        message_id: str | None = None,
    ) -> list[ClaimedJob]:
        """Lease up to ``limit`` due jobs and move their messages to PROCESSING.

        A due SCHEDULED message passes through QUEUED on the way (two events).

        Args:
            worker_id: recorded as the lease's owner.
            now: jobs with ``run_at`` at or before it, and no lease alive at it, are due.
            lease_seconds: how long the lease lasts; after it another claim may take the job.
            limit: the most jobs claimed.
            processing_event: the PROCESSING event of a message and its attempt number.
            message_id: lease that message's job only, whatever its ``run_at`` (a
                synchronous hand-off such as a WhatsApp send).

        Returns:
            The claimed jobs, earliest ``run_at`` first (none when nothing is due).
        """
        now_text = ts(now)
        lease_until = now + timedelta(seconds=lease_seconds)
        lease_text = ts(lease_until)
        # Jobs and their messages in one query; the writes then go per statement
        # with executemany (a claim takes several jobs: the worker claims in batches).

        def op(conn: sqlite3.Connection) -> list[ClaimedJob]:
            due, due_args = (
                ("j.message_id = ?", message_id) if message_id else ("j.run_at <= ?", now_text)
            )
            rows = conn.execute(
                f"SELECT j.id, j.attempts_before, {_CLAIM_MESSAGE_COLUMNS} FROM jobs j "  # noqa: S608
                f"JOIN messages m ON m.id = j.message_id WHERE {due} "
                "AND (j.lease_until IS NULL OR j.lease_until <= ?) ORDER BY j.run_at LIMIT ?"
                + skip_locked(conn, "j", "m"),
                (due_args, now_text, limit),
            ).fetchall()
            claimed: list[ClaimedJob] = []
            events: list[TimelineEvent] = []
            for job_id, attempts_before, *message_row in rows:
                message = MESSAGES.from_row(tuple(message_row))
                number = message.attempt_count + 1
                if message.status == Status.SCHEDULED:
                    # Built first: event ids are time-ordered, so it sorts before PROCESSING.
                    events.append(_due_event(message, now))
                events.append(processing_event(message, number))
                claimed.append(
                    ClaimedJob(
                        job_id=job_id,
                        lease_token=secrets.token_hex(8),
                        lease_until=lease_until,
                        message=message,
                        attempt_number=number,
                        attempts_before=attempts_before,
                    )
                )
            conn.executemany(
                "UPDATE jobs SET lease_owner = ?, lease_token = ?, lease_until = ? WHERE id = ?",
                [(worker_id, c.lease_token, lease_text, c.job_id) for c in claimed],
            )
            processing = str(Status.PROCESSING)
            conn.executemany(
                "UPDATE messages SET status = ?, updated_at = ? WHERE id = ?",
                [(processing, now_text, c.message.id) for c in claimed],
            )
            for event in events:
                insert_event(conn, event)
            return claimed

        jobs = await self.submit(op, window=self._commit_window)
        self._leases_out += len(jobs)
        return jobs

    async def complete(self, completion: Completion) -> bool:
        """Record one attempt's result if the lease is still ours.

        Returns:
            False, with nothing written, when the job's lease token is no longer
            ``completion.job``'s (the lease expired and another claim took it).
        """
        job = completion.job
        attempt = completion.attempt

        def op(conn: sqlite3.Connection) -> bool:
            # Fencing: the job is finished (or rescheduled) only under our lease token;
            # when another worker holds the job now, nothing at all is written.
            if completion.retry_at is None:
                job_write = conn.execute(
                    "DELETE FROM jobs WHERE id = ? AND lease_token = ?",
                    (job.job_id, job.lease_token),
                )
            else:
                job_write = conn.execute(
                    "UPDATE jobs SET run_at = ?, lease_owner = NULL, lease_token = NULL, "
                    "lease_until = NULL WHERE id = ? AND lease_token = ?",
                    (ts(completion.retry_at), job.job_id, job.lease_token),
                )
            if job_write.rowcount == 0:
                return False
            conn.execute(
                "INSERT INTO attempts (message_id, number, provider, outcome, "
                "error_category, error_message, duration_ms, started_at, status) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (message_id, number) DO UPDATE "
                "SET provider = excluded.provider, outcome = excluded.outcome, "
                "error_category = excluded.error_category, error_message = excluded.error_message, "
                "duration_ms = excluded.duration_ms, started_at = excluded.started_at, "
                "status = excluded.status",
                (
                    attempt.message_id,
                    attempt.number,
                    attempt.provider,
                    attempt.outcome,
                    attempt.error_category,
                    attempt.error_message,
                    attempt.duration_ms,
                    ts(attempt.started_at),
                    None if attempt.status is None else str(attempt.status),
                ),
            )
            conn.execute(
                "UPDATE messages SET status = ?, attempt_count = ?, "
                "provider_message_id = COALESCE(?, provider_message_id), last_error = ?, "
                "updated_at = ? WHERE id = ?",
                (
                    str(completion.new_status),
                    attempt.number,
                    completion.provider_message_id,
                    attempt.error_message,
                    ts(completion.event.created_at),
                    attempt.message_id,
                ),
            )
            insert_event(conn, completion.event)
            return True

        # The last result of the leases out here commits at once: nothing else will join.
        self._leases_out = max(0, self._leases_out - 1)
        return await self.submit(op, window=self._commit_window)

    async def wait_for_work(self, max_wait: float) -> None:
        """Wait until a message is accepted in this process, or ``max_wait`` seconds."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._work.wait(), max_wait)
        self._work.clear()

    async def leased_job_count(self) -> int:
        """Jobs holding a lease right now."""
        row = await self.read(fetch_one, "SELECT COUNT(*) FROM jobs WHERE lease_token IS NOT NULL")
        return int(row[0])

    async def pending_job_count(self) -> int:
        """Jobs not yet finished."""
        return int((await self.read(fetch_one, "SELECT COUNT(*) FROM jobs"))[0])

    async def next_run_at(self) -> datetime | None:
        """The earliest ``run_at`` of any job, leased or not; None when there is no job."""
        row = await self.read(fetch_one, "SELECT MIN(run_at) FROM jobs")
        return None if row[0] is None else parse_ts(row[0])

    def notify_work(self) -> None:
        """Wake a worker waiting in :meth:`wait_for_work` (new work was written)."""
        self._work.set()


def settle(
    batch: list[tuple[Op, asyncio.Future[Any]]], outcome: list[tuple[bool, Any]] | BaseException
) -> None:
    """Answer each caller of a committed batch with its op's value or exception.

    ``outcome`` is (ok, value or exception) per op, or one exception for all
    (the batch did not commit); a non-``Exception`` one (a cancellation, an
    interrupt) is raised again once every caller has it. A caller that was
    cancelled meanwhile is skipped: its write stands.
    """
    if isinstance(outcome, BaseException):
        for _op, future in batch:
            if not future.done():
                future.set_exception(outcome)
        if not isinstance(outcome, Exception):
            raise outcome
        return
    for (_op, future), (ok, value) in zip(batch, outcome, strict=True):
        if future.done():
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


def fetch_one(conn: sqlite3.Connection, sql: str, params: Any = ()) -> Any:
    """The first row of a query (a tuple), or None; for :meth:`SqliteBackend.read`."""
    return conn.execute(sql, params).fetchone()


def fetch_all(conn: sqlite3.Connection, sql: str, params: Any = ()) -> list[Any]:
    """Every row of a query (tuples); for :meth:`SqliteBackend.read`."""
    return conn.execute(sql, params).fetchall()


class BackendStore:
    """Base of the per-area stores (SMS, WhatsApp, webhooks) that share one backend.

    Args:
        backend: an opened (or soon opened) backend whose connection and
            group commit the store uses.
    """

    def __init__(self, backend: SqliteBackend) -> None:
        self._backend = backend

    @property
    def _conn(self) -> sqlite3.Connection:
        return self._backend.conn
