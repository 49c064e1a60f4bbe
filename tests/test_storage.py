"""The storage contract: the backend and its sibling stores, on SQLite or PostgreSQL
(``--backend``): group commit, tenancy, idempotency keys, queue leases, and the
records read back; and SQLite's own schema migrations and WAL (PostgreSQL's
are in ``test_storage_postgres.py``)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest

import pg
from commtunnel.backends import make_backend, schema
from commtunnel.backends.sqlite import INTEGRITY_ERRORS, SqliteBackend, parse_ts, ts
from commtunnel.backends.sqlite_sms import SqliteSmsStore
from commtunnel.backends.sqlite_whatsapp import SqliteWhatsAppStore
from commtunnel.domain.errors import ConflictError
from commtunnel.domain.events import TimelineEvent
from commtunnel.domain.keys import ApiKey, Organization
from commtunnel.domain.messages import Attempt, Channel, EmailContent, Message, Status
from commtunnel.ids import new_id
from commtunnel.ports import (
    AcceptResult,
    ClaimedJob,
    Completion,
    IdempotencyRecord,
    LineState,
    ReceiptOutcome,
    Template,
)
from commtunnel.testing import ManualClock

pytestmark = pytest.mark.anyio


def queued_email(clock: ManualClock, org_id: str = "org-1") -> tuple[Message, TimelineEvent]:
    """A QUEUED email of ``org_id`` created now, and its first event (shared with
    ``test_perf_paths``)."""
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
async def backend(tmp_path: Path, clock: ManualClock) -> AsyncIterator[SqliteBackend]:
    """The backend under test (``--backend``), opened on an empty database."""
    b = make_backend(pg.fresh_db(tmp_path / "s.db"), clock=clock)
    await b.open()
    yield b
    await b.aclose()


def _event(message: Message, clock: ManualClock, status: Status) -> TimelineEvent:
    return TimelineEvent(
        id=new_id(),
        message_id=message.id,
        org_id=message.org_id,
        type=f"email_{status.lower()}",
        status=status,
        created_at=clock.now(),
    )


def sent_completion(job: ClaimedJob, clock: ManualClock) -> Completion:
    """The result of one accepted attempt at ``job``: its message is SENT (shared with
    ``test_perf_paths``)."""
    message = job.message
    attempt = Attempt(
        message_id=message.id,
        number=job.attempt_number,
        provider="mock",
        outcome="accepted",
        error_category=None,
        error_message=None,
        duration_ms=1.0,
        started_at=clock.now(),
    )
    return Completion(
        job=job, attempt=attempt, new_status=Status.SENT, event=_event(message, clock, Status.SENT)
    )


async def _send_once(backend: SqliteBackend, clock: ManualClock) -> None:
    """Claim the one due job and record an accepted attempt (its message is SENT)."""
    (job,) = await backend.claim(
        worker_id="w",
        now=clock.now(),
        lease_seconds=30,
        limit=1,
        processing_event=lambda m, _n: _event(m, clock, Status.PROCESSING),
    )
    assert await backend.complete(sent_completion(job, clock))


def test_timestamps_round_trip_and_sort() -> None:
    """Storage text is fixed-width UTC, so text order is time order."""
    clock = ManualClock()
    a = clock.now()
    b = clock.advance(0.001)
    assert parse_ts(ts(a)) == a
    assert ts(a) < ts(b)


async def test_fresh_file_is_at_latest_version_and_in_wal(backend: SqliteBackend) -> None:
    """A new database is migrated to the latest schema version (a SQLite file in WAL mode)."""
    assert backend.schema_version() == schema.LATEST_VERSION
    if pg.BACKEND == "sqlite":
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
    assert rows == len(schema.MIGRATIONS)
    assert (await second.get_org(name="acme")) is not None
    await second.aclose()


def old_schema_file(path: Path, clock: ManualClock, version: int, *rows: str) -> Path:
    """``path`` as a library at schema ``version`` left it, holding ``rows``.

    Each of ``rows`` is one SQL statement whose ``?`` marks all stand for the
    clock's now (as stored).
    """
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        now = ts(clock.now())
        schema.migrate(conn, now, target=version)
        for sql in rows:
            conn.execute(sql, (now,) * sql.count("?"))
    finally:
        conn.close()
    return path


async def test_older_file_is_upgraded(
    tmp_path: Path, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file written by an older library gains the newer migrations and keeps its rows."""
    path = old_schema_file(
        tmp_path / "old.db",
        clock,
        1,
        "INSERT INTO orgs (id, name, created_at) VALUES ('o1', 'old', ?)",
        "INSERT INTO events (id, org_id, message_id, type, status, created_at, details) "
        "VALUES ('e1', 'o1', 'm1', 'email_queued', 'QUEUED', ?, '{}')",
        "INSERT INTO jobs (id, message_id, run_at, created_at) VALUES ('m1', 'm1', ?, ?)",
    )
    future = schema.LATEST_VERSION + 1
    newer = [
        *schema.MIGRATIONS,
        (future, "CREATE TABLE future_feature (id TEXT PRIMARY KEY)"),
    ]
    monkeypatch.setattr(schema, "MIGRATIONS", newer)
    monkeypatch.setattr(schema, "LATEST_VERSION", future)
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


async def test_newer_file_is_refused(
    tmp_path: Path, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file from a newer library is refused instead of being guessed at, and left closed."""
    path = tmp_path / "new.db"
    conn = sqlite3.connect(path, isolation_level=None)
    schema.migrate(conn, ts(clock.now()))
    conn.execute("INSERT INTO schema_version VALUES (99, 'x')")
    conn.close()
    opened: list[sqlite3.Connection] = []
    connect = sqlite3.connect

    def recording_connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        opened.append(connect(*args, **kwargs))
        return opened[-1]

    monkeypatch.setattr(sqlite3, "connect", recording_connect)
    b = SqliteBackend(path, clock=clock)
    with pytest.raises(schema.SchemaTooNewError, match="99"):
        await b.open()
    assert len(opened) == 1
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        opened[0].execute("SELECT 1")
    with pytest.raises(RuntimeError, match="not open"):
        b.conn  # noqa: B018 - the property is what is checked


async def test_duplicate_org_name_conflicts(backend: SqliteBackend, clock: ManualClock) -> None:
    """Organization names are unique."""
    await backend.create_org(Organization(id="a", name="acme", created_at=clock.now()))
    with pytest.raises(ConflictError):
        await backend.create_org(Organization(id="b", name="acme", created_at=clock.now()))


async def test_accept_writes_message_event_and_job_together(
    backend: SqliteBackend, clock: ManualClock
) -> None:
    """One accept leaves the message, its first event and a due job."""
    message, event = queued_email(clock)
    result = await backend.accept(message, event, run_at=clock.now(), idempotency=None)
    assert result.message == message and not result.duplicate
    assert await backend.get_message("org-1", message.id) == message
    assert [e.type for e in await backend.list_events("org-1", message.id, 10)] == ["email_queued"]
    assert await backend.pending_job_count() == 1


async def test_reads_are_scoped_to_the_organization(
    backend: SqliteBackend, clock: ManualClock
) -> None:
    """Another organization's message reads as missing, events and attempts too."""
    message, event = queued_email(clock)
    await backend.accept(message, event, run_at=clock.now(), idempotency=None)
    await _send_once(backend, clock)
    assert [a.number for a in await backend.list_attempts("org-1", message.id)] == [1]
    assert len(await backend.list_events("org-1", message.id, 10)) == 3
    assert await backend.get_message("org-2", message.id) is None
    assert await backend.list_events("org-2", message.id, 10) == []
    assert await backend.list_attempts("org-2", message.id) == []


async def test_group_commit_isolates_a_failing_write(
    backend: SqliteBackend, clock: ManualClock
) -> None:
    """In one batch, an accept that violates a constraint fails alone (its message row,
    written before the clashing event, is undone too); the other accepts commit."""
    m1, e1 = queued_email(clock)
    m2, _e2 = queued_email(clock)
    bad_event = TimelineEvent(
        id=e1.id,  # duplicate primary key -> IntegrityError inside the batch
        message_id=m2.id,
        org_id="org-1",
        type="email_queued",
        status=Status.QUEUED,
        created_at=clock.now(),
    )
    m3, e3 = queued_email(clock)
    results = await asyncio.gather(
        backend.accept(m1, e1, run_at=clock.now(), idempotency=None),
        backend.accept(m2, bad_event, run_at=clock.now(), idempotency=None),
        backend.accept(m3, e3, run_at=clock.now(), idempotency=None),
        return_exceptions=True,
    )
    assert isinstance(results[1], INTEGRITY_ERRORS)
    assert await backend.get_message("org-1", m1.id) == m1
    assert await backend.get_message("org-1", m2.id) is None  # rolled back to its savepoint
    assert await backend.get_message("org-1", m3.id) == m3
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

    m1, e1 = queued_email(clock)
    m2, e2 = queued_email(clock)
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
    message, event = queued_email(clock)
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
    message, event = queued_email(clock)
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


# ----------------------------------------------------------------------------- idempotency keys


async def test_an_idempotency_key_answers_the_same_until_it_expires(
    backend: SqliteBackend, clock: ManualClock
) -> None:
    """find_replay and accept answer a stored key alike: the original for the same payload,
    the conflict for another; once expired, nothing, and the next accept takes the key over."""

    def record(message_id: str, fingerprint: str) -> IdempotencyRecord:
        return IdempotencyRecord(
            org_id="org-1",
            key="k",
            endpoint="emails.send",
            fingerprint=fingerprint,
            message_id=message_id,
            created_at=clock.now(),
            expires_at=clock.now() + timedelta(hours=24),
        )

    async def replay(fingerprint: str, org_id: str = "org-1") -> AcceptResult | None:
        return await backend.find_replay(
            org_id, "k", endpoint="emails.send", fingerprint=fingerprint, now=clock.now()
        )

    assert await replay("f") is None
    m1, e1 = queued_email(clock)
    await backend.accept(m1, e1, run_at=clock.now(), idempotency=record(m1.id, "f"))
    original = AcceptResult(message=m1, duplicate=True)
    conflict = AcceptResult(message=None, conflict=record(m1.id, "f"))
    assert await replay("f") == original
    assert await replay("other") == conflict
    assert await replay("f", org_id="org-2") is None  # keys are per organization
    m2, e2 = queued_email(clock)
    assert await backend.accept(m2, e2, run_at=clock.now(), idempotency=record(m2.id, "f")) == (
        original
    )
    assert await backend.accept(m2, e2, run_at=clock.now(), idempotency=record(m2.id, "x")) == (
        conflict
    )
    clock.advance(24 * 3600)
    assert await replay("f") is None
    m3, e3 = queued_email(clock)
    taken = await backend.accept(m3, e3, run_at=clock.now(), idempotency=record(m3.id, "x"))
    assert taken == AcceptResult(message=m3)
    assert await replay("x") == AcceptResult(message=m3, duplicate=True)
    assert await backend.pending_job_count() == 2


# ----------------------------------------------------------------------------- records read back


async def test_templates_read_back_and_names_are_unique_per_organization(
    backend: SqliteBackend, clock: ManualClock
) -> None:
    """A template reads back as written; a second one with its name in the organization
    is refused with ConflictError, while another organization may use the name."""
    for org_id in ("org-1", "org-2"):
        await backend.create_org(Organization(id=org_id, name=org_id, created_at=clock.now()))
    template = Template(
        id=new_id(),
        org_id="org-1",
        name="welcome",
        subject="Hi {{ name }}",
        html=None,
        text="Welcome",
        created_at=clock.now(),
        updated_at=clock.now(),
    )
    await backend.create_template(template)
    with pytest.raises(ConflictError, match="welcome") as refused:
        await backend.create_template(attrs.evolve(template, id=new_id()))
    assert refused.value.details == {"name": "welcome"}
    elsewhere = attrs.evolve(template, id=new_id(), org_id="org-2")
    await backend.create_template(elsewhere)
    assert await backend.get_template("org-1", template.id) == template
    assert await backend.get_template("org-2", template.id) is None
    assert await backend.list_templates("org-1") == [template]
    assert await backend.list_templates("org-2") == [elsewhere]


async def test_api_keys_read_back_and_a_revocation_keeps_its_first_time(
    backend: SqliteBackend, clock: ManualClock
) -> None:
    """A key reads back as written; revoking it again keeps the first revocation time,
    and another organization cannot revoke it."""
    await backend.create_org(Organization(id="org-1", name="acme", created_at=clock.now()))
    key = ApiKey(
        id=new_id(),
        org_id="org-1",
        name="ci",
        key_hash="hash-1",
        display="ct_test_abcd",
        scopes=frozenset({"send:email", "read:email"}),
        test=True,
        created_at=clock.now(),
    )
    await backend.create_api_key(key)
    assert await backend.get_api_key_by_hash("hash-1") == key
    revoked_at = clock.advance(5)
    assert await backend.revoke_api_key("org-2", key.id, revoked_at) is False
    assert await backend.revoke_api_key("org-1", key.id, revoked_at) is True
    assert await backend.revoke_api_key("org-1", key.id, clock.advance(5)) is True
    assert await backend.list_api_keys("org-1") == [attrs.evolve(key, revoked_at=revoked_at)]


async def test_a_receipt_and_a_requeue_answer_the_message_as_stored(
    backend: SqliteBackend, clock: ManualClock
) -> None:
    """apply_receipt and requeue answer the moved message exactly as a later read returns it;
    a move that is not allowed changes nothing."""
    store = SqliteSmsStore(backend)
    message, event = queued_email(clock)
    await backend.accept(message, event, run_at=clock.now(), idempotency=None)
    await _send_once(backend, clock)
    sent_only = frozenset({Status.SENT})
    clock.advance(1)
    failed_event = attrs.evolve(_event(message, clock, Status.FAILED), details={"error": "gone"})
    failed = await store.apply_receipt(
        message.id, new_status=Status.FAILED, allowed_from=sent_only, event=failed_event
    )
    assert failed is not None and failed.applied
    assert failed.message == await backend.get_message("org-1", message.id)
    assert (failed.message.status, failed.message.last_error) == (Status.FAILED, "gone")
    assert failed.message.updated_at == clock.now()
    late = await store.apply_receipt(
        message.id,
        new_status=Status.DELIVERED,
        allowed_from=sent_only,
        event=_event(message, clock, Status.DELIVERED),
    )
    assert late == ReceiptOutcome(message=failed.message, applied=False)
    unknown = _event(message, clock, Status.DELIVERED)
    assert (
        await store.apply_receipt(
            "no-such-id", new_status=Status.DELIVERED, allowed_from=sent_only, event=unknown
        )
        is None
    )

    clock.advance(1)
    requeue_event = _event(message, clock, Status.QUEUED)
    assert await store.requeue("org-2", message.id, event=requeue_event, run_at=clock.now()) is None
    requeued = await store.requeue("org-1", message.id, event=requeue_event, run_at=clock.now())
    assert requeued is not None and requeued[1] is True
    assert requeued[0] == await backend.get_message("org-1", message.id)
    assert (requeued[0].status, requeued[0].last_error) == (Status.QUEUED, "gone")
    assert await backend.pending_job_count() == 1
    again = _event(message, clock, Status.QUEUED)
    assert await store.requeue("org-1", message.id, event=again, run_at=clock.now()) == (
        requeued[0],
        False,
    )
    types = [e.type for e in await backend.list_events("org-1", message.id, 10)]
    assert types == [
        "email_queued",
        "email_processing",
        "email_sent",
        "email_failed",
        "email_queued",
    ]


async def test_an_unchanged_line_state_records_nothing(
    backend: SqliteBackend, clock: ManualClock
) -> None:
    """The same state and token fingerprint again writes no row and no event;
    a new fingerprint is recorded with its event."""
    store = SqliteWhatsAppStore(backend)

    def paused() -> TimelineEvent:
        return TimelineEvent(
            id=new_id(),
            message_id=None,
            org_id="org-1",
            type="whatsapp_line_paused",
            status=None,
            created_at=clock.now(),
        )

    first = paused()
    assert await store.set_line_state(
        "pn-1", state="PAUSED", reason="expired", token_fingerprint="fp-1", event=first
    )
    clock.advance(1)
    assert not await store.set_line_state(
        "pn-1", state="PAUSED", reason="again", token_fingerprint="fp-1", event=paused()
    )
    assert await store.get_line_state("pn-1") == LineState(
        phone_number_id="pn-1",
        state="PAUSED",
        reason="expired",
        token_fingerprint="fp-1",
        updated_at=first.created_at,
    )
    assert await store.set_line_state(
        "pn-1", state="PAUSED", reason="expired too", token_fingerprint="fp-2", event=paused()
    )
    state = await store.get_line_state("pn-1")
    assert state is not None and (state.reason, state.token_fingerprint) == ("expired too", "fp-2")
    events = backend.conn.execute("SELECT COUNT(*) FROM events WHERE message_id IS NULL")
    assert events.fetchone()[0] == 2


async def test_v4_keeps_sms_webhook_tokens_and_drops_their_digest(
    tmp_path: Path, clock: ManualClock
) -> None:
    """A v3 file's tokens still open their organization after the upgrade; no digest is left."""
    path = old_schema_file(
        tmp_path / "v3.db",
        clock,
        3,
        "INSERT INTO orgs (id, name, created_at) VALUES ('o1', 'acme', ?)",
        "INSERT INTO sms_tokens (org_id, token, token_hash, created_at) "
        "VALUES ('o1', 'smst_abc', 'digest', ?)",
    )
    backend = SqliteBackend(path, clock=clock)
    await backend.open()
    try:
        store = SqliteSmsStore(backend)
        assert await store.org_for_sms_token("smst_abc") == "o1"
        assert await store.org_for_sms_token("digest") is None
        columns = {row[1] for row in backend.conn.execute("PRAGMA table_info(sms_tokens)")}
        assert columns == {"org_id", "token", "created_at"}
    finally:
        await backend.aclose()
