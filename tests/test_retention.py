"""Retention: the purge, driven by the manual clock, its batches, the worker loop and the CLI."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

import pg
from commtunnel import Commtunnel, Settings
from commtunnel.backends.sqlite_retention import SqliteRetentionStore
from commtunnel.cli import main
from commtunnel.domain.errors import IdempotencyKeyReusedError, NotFoundError
from commtunnel.domain.keys import ALL_SCOPES, Principal
from commtunnel.ports import PurgeCounts, PurgeCutoffs
from commtunnel.services.retention import Purger
from commtunnel.testing import ManualClock, MockProvider, MockSmsProvider

pytestmark = pytest.mark.anyio

DAY = 86_400.0
PHONE = "+14155552671"
TABLES = (
    "messages",
    "events",
    "attempts",
    "jobs",
    "webhook_deliveries",
    "webhook_attempts",
    "inbound_messages",
    "idempotency_keys",
    "email_batches",
)


@pytest.fixture
def settings() -> Settings:
    """The shared ``ct`` fixture's settings: loopback webhooks allowed, a platform sender ID."""
    return Settings(
        embedded_worker=False, webhooks_allow_private=True, sms_default_sender_id="INFO"
    )


def rows(ct: Commtunnel, table: str, where: str = "1 = 1", *params: object) -> int:
    sql = f"SELECT COUNT(*) FROM {table} WHERE {where}"
    return int(ct.backend.conn.execute(sql, params).fetchone()[0])


def snapshot(ct: Commtunnel) -> dict[str, int]:
    return {table: rows(ct, table) for table in TABLES}


async def send(ct: Commtunnel, subject: str = "Hi", key: str | None = None) -> str:
    result = await ct.email.send(
        from_="hi@example.com",
        to="ada@example.org",
        subject=subject,
        text="Hello",
        idempotency_key=key,
    )
    return result.message.id


async def subscribe(ct: Commtunnel) -> None:
    """A webhook endpoint on a closed loopback port: every event gets a failing delivery."""
    principal = Principal(org_id=ct.org.id, scopes=ALL_SCOPES)
    await ct.webhooks.create(principal, {"url": "http://127.0.0.1:9/hook"})


async def test_old_messages_go_with_everything_of_theirs(ct: Commtunnel) -> None:
    """After 90 days a delivered message goes with its events, attempts and webhook deliveries."""
    await subscribe(ct)
    old = await send(ct, "old")
    await ct.run_worker_until_idle()
    await ct.run_webhooks_until_idle()
    ct.clock.advance(30 * DAY)  # type: ignore[attr-defined]
    recent = await send(ct, "recent")
    await ct.run_worker_until_idle()
    await ct.run_webhooks_until_idle()
    expected = PurgeCounts(
        messages=1,
        events=rows(ct, "events", "message_id = ?", old),
        attempts=rows(ct, "attempts", "message_id = ?", old),
        webhook_deliveries=rows(ct, "webhook_deliveries", "message_id = ?", old),
        webhook_attempts=rows(
            ct,
            "webhook_attempts",
            "delivery_id IN (SELECT id FROM webhook_deliveries WHERE message_id = ?)",
            old,
        ),
    )
    assert expected.events == 3 and expected.attempts == 1
    assert expected.webhook_deliveries == 3 and expected.webhook_attempts >= 3  # retried
    before = snapshot(ct)

    ct.clock.advance(60 * DAY)  # old: 90 days exactly, not older
    assert (await ct.purge_until_done()).total == 0
    ct.clock.advance(1)  # type: ignore[attr-defined]
    counts = await ct.purge_until_done()

    assert counts == expected
    after = snapshot(ct)
    for table, deleted in (
        ("messages", 1),
        ("events", expected.events),
        ("attempts", 1),
        ("webhook_deliveries", expected.webhook_deliveries),
        ("webhook_attempts", expected.webhook_attempts),
    ):
        assert after[table] == before[table] - deleted
    with pytest.raises(NotFoundError):
        await ct.email.get(old)
    assert (await ct.email.get(recent)).message.id == recent
    assert rows(ct, "webhook_endpoints") == 1
    assert (await ct.purge_until_done()).total == 0  # nothing left to do


async def test_a_message_with_a_job_is_kept_whatever_its_age(ct: Commtunnel) -> None:
    """A queued message keeps its job and survives; once delivered, the next purge takes it."""
    queued = await send(ct)
    ct.clock.advance(91 * DAY)  # type: ignore[attr-defined]
    counts = await ct.purge_until_done()
    assert counts.messages == 0
    assert (await ct.email.get(queued)).message.status == "QUEUED"
    await ct.run_worker_until_idle()
    assert (await ct.purge_until_done()).messages == 1
    with pytest.raises(NotFoundError):
        await ct.email.get(queued)


async def test_expired_idempotency_keys_are_purged_and_free_again(ct: Commtunnel) -> None:
    """Within its window a key is kept (and guards its payload); after it, it goes and is free."""
    first = await send(ct, "A", key="welcome-1")
    ct.clock.advance(DAY - 1)  # type: ignore[attr-defined]
    assert (await ct.purge_until_done()).idempotency_keys == 0
    with pytest.raises(IdempotencyKeyReusedError):
        await send(ct, "B", key="welcome-1")
    ct.clock.advance(1)  # type: ignore[attr-defined]
    assert (await ct.purge_until_done()).idempotency_keys == 1
    assert rows(ct, "idempotency_keys") == 0
    second = await send(ct, "B", key="welcome-1")
    assert second != first
    assert rows(ct, "idempotency_keys", "message_id = ?", second) == 1


async def test_organization_events_inbound_messages_and_batches(ct: Commtunnel) -> None:
    """Batch answers go after the idempotency window; opt-out events and MO after 90 days."""
    await ct.sms_service.opt_out(ct.org.id, PHONE, source="api")
    token = await ct.sms_service.token(ct.org.id)
    await ct.sms_service.receive_inbound(
        token, {"sms_from": PHONE, "sms_to": "12345", "sms_message": "hello"}
    )
    ct.backend.conn.execute(
        "INSERT INTO email_batches (id, org_id, items, created_at) VALUES ('b1', ?, '[]', ?)",
        (ct.org.id, ct.clock.now().strftime("%Y-%m-%dT%H:%M:%S.%fZ")),
    )
    org_events = rows(ct, "events", "message_id IS NULL")
    assert org_events >= 1 and rows(ct, "inbound_messages") == 1

    ct.clock.advance(DAY + 1)  # type: ignore[attr-defined]
    assert await ct.purge_until_done() == PurgeCounts(email_batches=1)

    ct.clock.advance(89 * DAY)  # type: ignore[attr-defined]
    await ct.sms_service.opt_out(ct.org.id, "+2348031234567", source="api")  # recent: kept
    counts = await ct.purge_until_done()
    assert counts == PurgeCounts(events=org_events, inbound_messages=1)
    assert rows(ct, "events", "message_id IS NULL") == 1
    assert rows(ct, "sms_opt_outs") == 2  # the list itself is not history: it stays


async def test_organization_level_webhook_deliveries_go_after_90_days(ct: Commtunnel) -> None:
    """Deliveries of events without a message (an opt-out) and their attempts are purged too."""
    await subscribe(ct)
    await ct.sms_service.opt_out(ct.org.id, PHONE, source="api")
    await ct.run_webhooks_until_idle()
    deliveries = rows(ct, "webhook_deliveries", "message_id IS NULL")
    attempts = rows(ct, "webhook_attempts")
    assert deliveries == 1 and attempts == 1
    ct.clock.advance(91 * DAY)  # type: ignore[attr-defined]
    counts = await ct.purge_until_done()
    assert (counts.webhook_deliveries, counts.webhook_attempts) == (deliveries, attempts)
    assert rows(ct, "webhook_deliveries") == rows(ct, "webhook_attempts") == 0


class RecordingStore(SqliteRetentionStore):
    """The SQLite store, recording the messages each batch deleted."""

    batches: list[int]

    async def purge_messages(self, before: datetime, limit: int) -> PurgeCounts:
        counts = await super().purge_messages(before, limit)
        self.batches.append(counts.messages)
        return counts


async def test_the_purge_works_in_small_batches(ct: Commtunnel) -> None:
    """With a batch of 2, five old messages (two organizations) go in batches of at most 2."""
    other = await ct.admin.ensure_org("other")
    for i in range(3):
        await send(ct, str(i))
    principal = Principal(org_id=other.id, scopes=ALL_SCOPES)
    await ct.admin.add_sender(other.id, "example.com")
    for i in range(2):
        await ct.email_for(principal).send(
            from_="hi@example.com", to="bob@example.org", subject=str(i), text="x"
        )
    await ct.run_worker_until_idle()
    store = RecordingStore(ct.backend)
    store.batches = []
    purger = Purger(store, ct.clock, retention=90 * DAY, idempotency_retention=DAY, batch=2)
    ct.clock.advance(91 * DAY)  # type: ignore[attr-defined]
    counts = await purger.purge_once(ct.clock.now())
    assert counts.messages == 5 and counts.events == 15
    assert store.batches == [2, 2, 1, 0]
    assert rows(ct, "messages") == 0


async def test_a_dry_run_counts_what_the_purge_deletes(ct: Commtunnel) -> None:
    """``dry_run`` deletes nothing and counts exactly what the real purge then deletes."""
    await subscribe(ct)
    await send(ct, "old", key="k1")
    await ct.sms_service.opt_out(ct.org.id, PHONE, source="api")
    await ct.run_worker_until_idle()
    await ct.run_webhooks_until_idle()
    ct.clock.advance(60 * DAY)  # type: ignore[attr-defined]
    await send(ct, "kept")  # queued, recent: stays
    ct.clock.advance(31 * DAY)  # type: ignore[attr-defined]
    before = snapshot(ct)
    dry = await ct.purge_until_done(dry_run=True)
    assert snapshot(ct) == before
    assert dry.messages == 1 and dry.idempotency_keys == 1 and dry.webhook_attempts > 0
    assert await ct.purge_until_done() == dry


async def test_the_loop_purges_survives_a_failed_pass_and_stops(
    ct: Commtunnel, caplog: pytest.LogCaptureFixture
) -> None:
    """A pass that fails is logged and tried again; ``stop`` ends the loop."""
    await send(ct)
    await ct.run_worker_until_idle()
    ct.clock.advance(91 * DAY)  # type: ignore[attr-defined]
    stop = asyncio.Event()

    class Flaky(SqliteRetentionStore):
        calls = 0

        async def purge_messages(self, before: datetime, limit: int) -> PurgeCounts:
            Flaky.calls += 1
            if Flaky.calls == 1:
                raise RuntimeError("database is locked")
            counts = await super().purge_messages(before, limit)
            stop.set()  # one good pass is all this test needs
            return counts

    purger = Purger(
        Flaky(ct.backend), ct.clock, retention=90 * DAY, idempotency_retention=DAY, batch=10
    )
    with caplog.at_level(logging.ERROR, logger="commtunnel.retention"):
        await purger.run(stop, interval=0)
    assert "purge pass failed" in caplog.text
    assert rows(ct, "messages") == 0


async def test_the_worker_runs_the_purge(ct: Commtunnel) -> None:
    """``run_worker`` purges as soon as it starts (then every purge_interval seconds)."""
    await send(ct)
    await ct.run_worker_until_idle()
    ct.clock.advance(91 * DAY)  # type: ignore[attr-defined]
    stop = asyncio.Event()
    worker = asyncio.create_task(ct.run_worker(stop))
    for _ in range(1000):  # loop turns, not time: the first pass runs at once
        if rows(ct, "messages") == 0:
            break
        await asyncio.sleep(0)
    stop.set()
    await worker
    assert rows(ct, "messages") == 0


@pytest.mark.parametrize(
    "arguments",
    [
        {"retention": 90 * DAY, "idempotency_retention": DAY, "batch": 0},
        {"retention": -1.0, "idempotency_retention": DAY, "batch": 10},
        {"retention": 90 * DAY, "idempotency_retention": -1.0, "batch": 10},
    ],
)
def test_a_purger_refuses_unusable_settings(arguments: dict[str, float]) -> None:
    """A batch below 1 or a negative retention is a configuration error."""
    with pytest.raises(ValueError, match=r"batch|negative"):
        Purger(None, ManualClock(), **arguments)  # type: ignore[arg-type]


def test_cutoffs_follow_the_settings() -> None:
    """Records go before now - retention, batches before now - idempotency retention."""
    now = datetime(2026, 6, 1, tzinfo=UTC)
    purger = Purger(None, ManualClock(), retention=10.0, idempotency_retention=5.0, batch=1)  # type: ignore[arg-type]
    assert purger.cutoffs(now) == PurgeCutoffs(
        records=now - timedelta(seconds=10), now=now, batches=now - timedelta(seconds=5)
    )


# --------------------------------------------------------------------------- the CLI


@pytest.fixture
def old_db(tmp_path: Path) -> Path:
    """A database with one email delivered 100 days ago (by the real calendar)."""
    db = pg.fresh_db(tmp_path / "ct.db")

    async def build() -> None:
        async with Commtunnel.open(
            db=db,
            email_provider=MockProvider(),
            sms_provider=MockSmsProvider(),
            clock=ManualClock(datetime.now(UTC) - timedelta(days=100)),
            settings=Settings(embedded_worker=False),
            rng=random.Random(1),
        ) as ct:
            await ct.admin.add_sender(ct.org.id, "example.com")
            await send(ct)
            await ct.run_worker_until_idle()

    asyncio.run(build())
    return db


def test_cli_purge_dry_run_then_purge(
    old_db: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``commtunnel purge --dry-run --json`` counts; ``commtunnel purge`` deletes and says so."""
    for var in ("COMMTUNNEL_DB", "COMMTUNNEL_RETENTION", "COMMTUNNEL_PURGE_BATCH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    dry = runner.invoke(main, ["purge", "--db", str(old_db), "--dry-run", "--json"])
    assert dry.exit_code == 0, dry.output
    counts = json.loads(dry.stdout)
    assert counts["dryRun"] is True
    assert set(counts) - {"dryRun"} == {
        "messages",
        "events",
        "attempts",
        "webhookDeliveries",
        "webhookAttempts",
        "inboundMessages",
        "idempotencyKeys",
        "emailBatches",
    }
    assert (counts["messages"], counts["events"], counts["attempts"]) == (1, 3, 1)
    done = runner.invoke(main, ["purge", "--db", str(old_db)])
    assert done.exit_code == 0, done.output
    assert done.stdout.startswith("purged 1 messages, 3 events, 1 attempts")
    again = runner.invoke(main, ["purge", "--db", str(old_db), "--json"])
    assert json.loads(again.stdout)["messages"] == 0
