"""Issue 7: scale-out under faults, with real processes on one PostgreSQL.

Two ``commtunnel serve --no-worker`` and three ``commtunnel worker``
processes share one PostgreSQL schema and one SMTP sink (aiosmtpd in its own
thread and event loop, recording each message's ``Message-ID`` and the EHLO
name of the worker that sent it: every worker's SMTP URL carries its own
``local_hostname``). The test sends a few thousand emails through both
servers at once, some keys sent twice (at the same time on the other server,
or later), and in the middle:

* SIGKILLs worker ``w0`` just after the sink took some of its messages and
  before it could hear so (the sink holds back those replies);
* terminates every PostgreSQL session of the test's processes
  (``pg_terminate_backend``, filtered by the ``application_name`` the test
  gives them), once;
* then keeps terminating them for OUTAGE_SECONDS, as a database restart
  would, while worker ``w1`` records the results of messages the sink has
  just taken.

A request refused meanwhile (503, or 409 while the same key is still in
flight) is retried with the same idempotency key, as a real client does, so
every logical send ends accepted. Then it waits (bounded) until the queue
is empty and checks: each key made one message, every message is SENT, every
one reached the sink exactly once by Message-ID, no job is left (leased or
not). The one exception the design allows (at-least-once) is a message the
killed worker handed to the sink before it could record the result: it may
arrive twice, first from ``w0``, then from a live worker that claimed it
again after ``w0``'s lease ran out (its timeline says ``leaseExpired``). Any
other duplicate fails the test.

With ``--backend sqlite`` the same processes share a SQLite file, without
the PostgreSQL faults.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

import pg
from processes import STARTUP_SECONDS, Spawned, clean_env, free_port, org_with_key, wait_until
from processes import wait_until_answering as wait_answering
from test_providers_smtp import FreePortController

pytestmark = pytest.mark.slow

#: Logical sends (distinct idempotency keys, distinct bodies).
SENDS = 2000
#: Share of keys sent a second time: half at the same moment on the other server, half later.
REPEAT_SHARE = 0.15
#: Requests in flight at once, over both servers.
CONCURRENCY = 16
#: Seconds a claimed job's lease lasts; the killed worker's jobs come back after this.
LEASE_SECONDS = 6
#: One provider call's limit, seconds (well under the lease, so no live lease runs out).
SEND_TIMEOUT = 3
#: Seconds the whole load may take, and the queue to drain afterwards.
LOAD_SECONDS = 90.0
DRAIN_SECONDS = 40.0
#: Messages of the victim the sink takes and never answers, just before the kill.
HELD = 4
#: Progress (share of logical sends accepted) at which each fault is injected.
KILL_AT, TERMINATE_AT, OUTAGE_AT = 0.3, 0.5, 0.75
#: Seconds the outage lasts: every session is terminated as soon as it appears.
OUTAGE_SECONDS = 1.5
#: Tags the test's PostgreSQL sessions, so only they are terminated.
APP_NAME = "ct_scaleout_faults"

FINAL = {"SENT", "DELIVERED", "READ", "FAILED", "BOUNCED", "CANCELED"}


# --------------------------------------------------------------------------- the SMTP sink


@dataclass
class Hold:
    """The next ``count`` messages from EHLO ``helo``: recorded, their 250 reply held back.

    To the sender this is a provider that took the message and did not say so
    yet. ``all_held`` is set once ``count`` are held; :meth:`MessageIdSink.release`
    sends the replies (if never called, the Controller cancels the waits when it stops).
    """

    helo: str
    count: int
    headers: list[str] = field(default_factory=list)  # Message-ID headers held
    all_held: threading.Event = field(default_factory=threading.Event)
    released: asyncio.Event = field(default_factory=asyncio.Event)  # set in the sink's loop

    def message_ids(self) -> set[str]:
        """The held messages' ids."""
        return {message_id(header) for header in self.headers}


def message_id(header: str) -> str:
    """The Commtunnel message id in a ``Message-ID`` header (``<id@sender-domain>``)."""
    return header.strip().strip("<>").split("@")[0]


class MessageIdSink:
    """aiosmtpd handler: records (EHLO name, Message-ID) of every message, in arrival order.

    Runs in the Controller's thread and event loop; readers take a copy
    under the lock. :meth:`hold` makes it hold back the replies to some
    messages of one sender.
    """

    def __init__(self, loop: Callable[[], asyncio.AbstractEventLoop]) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._received: list[tuple[str, str]] = []
        self._parser = BytesHeaderParser()
        self._holds: list[Hold] = []

    def hold(self, helo: str, count: int) -> Hold:
        """Hold back the replies to the next ``count`` messages from EHLO ``helo``."""
        hold = Hold(helo, count)
        with self._lock:
            self._holds.append(hold)
        return hold

    def release(self, hold: Hold) -> None:
        """Send the held replies (callable from any thread)."""
        self._loop().call_soon_threadsafe(hold.released.set)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Record who sent which Message-ID, then accept (after a hold, see :meth:`hold`)."""
        assert isinstance(envelope.content, bytes)
        helo = str(session.host_name)
        header = str(self._parser.parsebytes(envelope.content)["Message-ID"])
        hold = None
        with self._lock:
            self._received.append((helo, header))
            for candidate in self._holds:
                if candidate.helo == helo and len(candidate.headers) < candidate.count:
                    hold = candidate
                    hold.headers.append(header)
                    if len(hold.headers) == hold.count:
                        hold.all_held.set()
                    break
        if hold is not None:
            await hold.released.wait()
        return "250 2.0.0 queued"

    def received(self) -> list[tuple[str, str]]:
        """(EHLO name, Message-ID header) of every message so far, oldest first."""
        with self._lock:
            return list(self._received)

    def senders_by_message(self) -> dict[str, list[str]]:
        """Message id (the Message-ID's local part) -> EHLO names of its copies, in order."""
        copies: dict[str, list[str]] = {}
        for helo, header in self.received():
            copies.setdefault(message_id(header), []).append(helo)
        return copies


@pytest.fixture
def sink() -> Iterator[tuple[MessageIdSink, int]]:
    """A running sink and its port; stopped afterwards."""
    handler = MessageIdSink(lambda: controller.loop)
    controller = FreePortController(
        handler, hostname="127.0.0.1", port=0, server_hostname="localhost"
    )
    controller.start()
    yield handler, controller.port
    controller.stop()


# --------------------------------------------------------------------------- the database


@dataclass(frozen=True)
class Database:
    """Direct SQL on the database under test: a PostgreSQL schema URL or a SQLite file."""

    url: str

    @property
    def is_postgres(self) -> bool:
        return self.url.startswith(("postgresql://", "postgres://"))

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        """Run ``sql`` (no parameters) in its own connection; return every row."""
        if self.is_postgres:
            with psycopg.connect(self.url, autocommit=True) as pg_conn:
                return list(pg_conn.execute(sql.encode()).fetchall())
        conn = sqlite3.connect(self.url.removeprefix("sqlite:///"), timeout=10)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()

    def count(self, sql: str) -> int:
        """The single integer ``sql`` selects."""
        [(value,)] = self.rows(sql)
        return int(value)

    def terminate_backends(self) -> int:
        """``pg_terminate_backend`` every session of this test's processes; return how many.

        The processes are told ``application_name`` in their URL; this very
        connection (``pg_backend_pid()``) and other tests' sessions are left alone.
        """
        sql = (
            "SELECT COUNT(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
            f"AND application_name = '{APP_NAME}'"
        )
        return self.count(sql)

    def sessions(self) -> Counter[str]:
        """Sessions on this database by ``application_name`` (for failure messages)."""
        rows = self.rows(
            "SELECT application_name, COUNT(*) FROM pg_stat_activity "
            "WHERE datname = current_database() GROUP BY application_name"
        )
        return Counter({str(name): int(n) for name, n in rows})


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    """An empty database of the suite's backend (``--backend``): a PostgreSQL schema,
    its processes' sessions tagged APP_NAME (dropped afterwards), or a SQLite file
    (the same test without the terminated backends).
    """
    if pg.BACKEND == "sqlite":
        yield Database(str(tmp_path / "ct.db"))
        return
    with pg.pg_schema("faults") as url:
        yield Database(f"{url}&application_name={APP_NAME}")


# --------------------------------------------------------------------------- the load


@dataclass
class Send:
    """One logical send: its key, its body, and every answer it got."""

    key: str
    body: dict[str, str]
    ids: list[str] = field(default_factory=list)  # the id of every 202 for this key
    replays: int = 0  # 202 answers with duplicate: true


@dataclass
class Load:
    """The client side: the sends, why requests were retried, and progress."""

    sends: list[Send]
    bases: list[str]
    key: str
    retried: Counter[str] = field(default_factory=Counter)  # "503 CODE", "409 CODE", "ReadError"
    requests: int = 0
    accepted: set[int] = field(default_factory=set)  # logical sends with a 202 so far

    async def post_until_accepted(
        self, clients: list[httpx.AsyncClient], index: int, server: int, deadline: float
    ) -> None:
        """POST send ``index`` until a 202, switching servers on each retry, as a client behind a
        load balancer would. 409/429/5xx/transport errors are retried; anything else fails.
        """
        send = self.sends[index]
        headers = {"Authorization": f"Bearer {self.key}", "x-idempotency-key": send.key}
        for attempt in range(10_000):
            assert time.monotonic() < deadline, f"send {send.key} not accepted in time"
            client = clients[(server + attempt) % len(clients)]
            self.requests += 1
            try:
                answer = await client.post(
                    "/v1/public/emails/send", json=send.body, headers=headers
                )
            except httpx.TransportError as exc:
                self.retried[type(exc).__name__] += 1
            else:
                if answer.status_code == 202:
                    sent = answer.json()
                    send.ids.append(sent["id"])
                    send.replays += bool(sent["duplicate"])
                    self.accepted.add(index)
                    return
                retryable = answer.status_code in {409, 429} or answer.status_code >= 500
                assert retryable, (answer.status_code, answer.text)
                code = answer.json().get("code", "?") if answer.content else "?"
                self.retried[f"{answer.status_code} {code}"] += 1
            await asyncio.sleep(min(0.02 * (attempt + 1), 0.5))  # client back-off
        pytest.fail(f"send {send.key} never accepted")

    async def run(self, rng: random.Random) -> None:
        """Every logical send once, some twice; at most CONCURRENCY requests in flight."""
        repeated = rng.sample(range(SENDS), int(SENDS * REPEAT_SHARE))
        at_once, later = set(repeated[::2]), repeated[1::2]
        plan: list[tuple[int, int]] = []  # (send, first server), in starting order
        late_at: dict[int, list[int]] = {}
        for i in later:
            late_at.setdefault(min(SENDS - 1, i + rng.randrange(50, 300)), []).append(i)
        for i in range(SENDS):
            plan.append((i, i % 2))
            if i in at_once:
                plan.append((i, 1 - i % 2))  # the same key on the other server, concurrently
            plan.extend((earlier, rng.randrange(2)) for earlier in late_at.get(i, []))
        deadline = time.monotonic() + LOAD_SECONDS
        requests = iter(plan)
        async with contextlib.AsyncExitStack() as stack:
            clients = [
                await stack.enter_async_context(httpx.AsyncClient(base_url=base, timeout=30))
                for base in self.bases
            ]

            async def runner() -> None:  # one of CONCURRENCY clients, each taking the next
                for index, server in requests:
                    await self.post_until_accepted(clients, index, server, deadline)

            async with asyncio.TaskGroup() as group:
                for _ in range(CONCURRENCY):
                    group.create_task(runner())


async def wait_for(predicate: Callable[[], bool], within: float, what: str) -> None:
    """Poll ``predicate`` every 50 ms until it holds; fail naming ``what`` after ``within`` s."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.05)


@dataclass
class Faults:
    """What the fault injector did, for the checks and the summary."""

    killed: Hold | None = None  # w0's messages the sink took as it was killed
    victim_sent_before_kill: int = 0
    leased_after_kill: int = 0  # jobs leased just after the kill (w0's, and the live ones')
    terminated: list[int] = field(default_factory=list)  # sessions: once, during the outage
    in_outage: Hold | None = None  # w1's messages whose results it records during the outage


async def inject_faults(
    load: Load, database: Database, victim: Spawned, sink: MessageIdSink, faults: Faults
) -> None:
    """SIGKILL ``victim`` mid-send at KILL_AT; on PostgreSQL terminate the test's sessions
    at TERMINATE_AT, and keep terminating them for OUTAGE_SECONDS at OUTAGE_AT.
    """
    await wait_for(lambda: len(load.accepted) >= KILL_AT * SENDS, LOAD_SECONDS, "kill point")
    # The sink takes HELD messages from the victim and holds back its replies: the victim
    # is killed after the provider took them and before it could record so.
    faults.killed = sink.hold("w0", HELD)
    assert await asyncio.to_thread(faults.killed.all_held.wait, 20), "the victim sent nothing"
    os.kill(victim.pid, signal.SIGKILL)
    assert await asyncio.to_thread(victim.wait, 10) == -signal.SIGKILL
    faults.victim_sent_before_kill = sum(helo == "w0" for helo, _ in sink.received())
    faults.leased_after_kill = await asyncio.to_thread(
        database.count, "SELECT COUNT(*) FROM jobs WHERE lease_token IS NOT NULL"
    )
    if not database.is_postgres:
        return
    # Connections restarted: every session of the test's processes, once.
    await wait_for(lambda: len(load.accepted) >= TERMINATE_AT * SENDS, LOAD_SECONDS, "terminate")
    faults.terminated.append(await asyncio.to_thread(database.terminate_backends))
    # An outage, as a database restart: sessions are terminated as they appear, for longer
    # than a process's own retries last (callers get 503 and retry). Worker w1 hears the
    # sink take HELD messages just as it starts: it records their results during it.
    await wait_for(lambda: len(load.accepted) >= OUTAGE_AT * SENDS, LOAD_SECONDS, "the outage")
    faults.in_outage = sink.hold("w1", HELD)
    assert await asyncio.to_thread(faults.in_outage.all_held.wait, 20), "w1 sent nothing"
    outage_ends = time.monotonic() + OUTAGE_SECONDS
    killed = await asyncio.to_thread(database.terminate_backends)
    sink.release(faults.in_outage)
    while time.monotonic() < outage_ends:
        await asyncio.sleep(0.02)
        killed += await asyncio.to_thread(database.terminate_backends)
    faults.terminated.append(killed)


# --------------------------------------------------------------------------- the test


def smtp_url(port: int, name: str) -> str:
    """The sink's URL as process ``name`` uses it (``name`` is its EHLO name)."""
    return f"smtp://127.0.0.1:{port}?local_hostname={name}&timeout={SEND_TIMEOUT}&pool_size=8"


def test_two_servers_three_workers_survive_a_killed_worker_and_terminated_backends(
    database: Database,
    sink: tuple[MessageIdSink, int],
    spawn: Callable[..., Spawned],
) -> None:
    """Every send accepted once per key, every message SENT and received once (bar the killed
    worker's in-flight ones), no job left after a SIGKILLed worker and terminated backends.
    """
    started = time.monotonic()
    recorder, port = sink
    db = database.url
    key = org_with_key(db, "send:email,read:email", sender="example.com")
    env = clean_env(
        COMMTUNNEL_LEASE_SECONDS=str(LEASE_SECONDS),
        COMMTUNNEL_SEND_TIMEOUT=str(SEND_TIMEOUT),
        COMMTUNNEL_RETRY_BASE_DELAY="0.5",
        COMMTUNNEL_RATE_LIMIT="1000000/minute",
    )
    servers: list[Spawned] = []
    bases: list[str] = []
    for name in ("api0", "api1"):
        http_port = free_port()
        flags = ["--no-worker", "--port", str(http_port), "--email-provider", smtp_url(port, name)]
        servers.append(spawn("serve", "--db", db, *flags, env=env))
        bases.append(f"http://127.0.0.1:{http_port}")
    workers = [
        spawn("worker", "--db", db, "--email-provider", smtp_url(port, f"w{n}"), env=env)
        for n in range(3)
    ]
    for server, base in zip(servers, bases, strict=True):
        wait_answering(f"{base}/healthz", server, f"{base}/healthz")
    for worker in workers:

        def running(w: Spawned = worker) -> bool:
            return "worker running" in w.stdout_text() or w.poll() is not None

        wait_until(running, STARTUP_SECONDS, "a worker to start")
        assert worker.poll() is None, worker.stderr_text()
    ready = time.monotonic()

    rng = random.Random(7)
    load = Load(
        sends=[
            Send(
                key=f"faults-{i}",
                body={
                    "from": "App <app@example.com>",
                    "to": f"user{i}@example.net",
                    "subject": f"Fault test {i}",
                    "text": f"Message number {i}",
                },
            )
            for i in range(SENDS)
        ],
        bases=bases,
        key=key,
    )
    faults = Faults()

    async def main() -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(load.run(rng))
            group.create_task(inject_faults(load, database, workers[0], recorder, faults))

    asyncio.run(main())
    loaded = time.monotonic()

    # ---- drain: every message final, no job left (the victim's leases ran out meanwhile)
    def drained() -> bool:
        statuses = dict(database.rows("SELECT status, COUNT(*) FROM messages GROUP BY status"))
        jobs = database.count("SELECT COUNT(*) FROM jobs")
        return jobs == 0 and set(statuses) <= FINAL

    wait_until(drained, DRAIN_SECONDS, "every message final and the queue empty")
    drained_at = time.monotonic()
    alive = {"api0": servers[0], "api1": servers[1], "w1": workers[1], "w2": workers[2]}
    for proc in alive.values():
        proc.send_signal(signal.SIGTERM)
    exits = {name: proc.wait(timeout=15) for name, proc in alive.items()}

    # ---- what happened (printed first: it explains any failure below)
    ids_by_key = {s.key: set(s.ids) for s in load.sends}
    accepted = {i for ids in ids_by_key.values() for i in ids}
    answers = sum(len(s.ids) for s in load.sends)
    statuses = dict(database.rows("SELECT id, status FROM messages"))
    reclaimed = {
        row[0]
        for row in database.rows(
            "SELECT message_id FROM events WHERE type = 'email_processing' "
            "AND CAST(details AS TEXT) LIKE '%leaseExpired%'"
        )
    }
    copies = recorder.senders_by_message()
    duplicates = {m: helos for m, helos in copies.items() if len(helos) > 1}
    print(
        f"\nscale-out faults ({'postgresql' if database.is_postgres else 'sqlite'}): "
        f"setup {ready - started:.1f} s, load {loaded - ready:.1f} s "
        f"({load.requests} requests, {answers} accepted, {SENDS / (loaded - ready):.0f} sends/s), "
        f"drain {drained_at - loaded:.1f} s, total {time.monotonic() - started:.1f} s; "
        f"retried {dict(load.retried)}; w0 sent {faults.victim_sent_before_kill} then killed "
        f"with {faults.leased_after_kill} jobs leased; re-claimed {len(reclaimed)}; "
        f"sent twice {duplicates}; sessions terminated {faults.terminated}; "
        f"tracebacks {[p.stderr_text().count('Traceback') for p in [*servers, *workers]]}"
    )

    # ---- the client's view: one message id per key, whatever the retries and repeats
    assert all(len(ids) == 1 for ids in ids_by_key.values()), [
        (k, v) for k, v in ids_by_key.items() if len(v) != 1
    ]
    assert len(accepted) == SENDS  # distinct keys -> distinct messages
    assert answers == SENDS + int(SENDS * REPEAT_SHARE)  # every request ended in one 202
    assert all(len(s.ids) - s.replays <= 1 for s in load.sends)  # else replays: true
    # the server agrees: one stored key -> the message the client was told
    stored_keys = dict(database.rows("SELECT key, message_id FROM idempotency_keys"))
    assert stored_keys == {k: next(iter(v)) for k, v in ids_by_key.items()}

    # ---- the database: each accepted message is SENT, and there is no other; no job left
    assert set(statuses) == accepted
    assert Counter(statuses.values()) == {"SENT": SENDS}
    assert database.count("SELECT COUNT(*) FROM jobs WHERE lease_token IS NOT NULL") == 0
    assert database.count("SELECT COUNT(*) FROM jobs") == 0

    # ---- the sink: once each by Message-ID, bar the killed worker's in-flight ones
    assert set(copies) == accepted  # nothing lost, nothing unknown
    assert all(helo in {"w0", "w1", "w2"} for helos in copies.values() for helo in helos)
    # A live worker that records a result while the database is down keeps trying while
    # its lease lasts: the message must not be sent again.
    if faults.in_outage is not None:
        in_outage = {m: copies[m] for m in faults.in_outage.message_ids()}
        assert all(helos == ["w1"] for helos in in_outage.values()), in_outage
    # At-least-once, by design, only here: w0 handed the message to the sink and was
    # killed before it recorded the result; after w0's lease ran out a live worker
    # claimed it again (leaseExpired) and sent it a second time, same Message-ID.
    allowed = {
        m
        for m, helos in duplicates.items()
        if len(helos) == 2 and helos[0] == "w0" and helos[1] != "w0" and m in reclaimed
    }
    assert duplicates.keys() == allowed, {m: duplicates[m] for m in duplicates.keys() - allowed}
    # The messages the sink took from w0 as it was killed are such: each came twice.
    assert faults.killed is not None
    assert faults.killed.message_ids() <= allowed, {
        m: copies[m] for m in faults.killed.message_ids()
    }
    assert HELD <= len(reclaimed) <= faults.leased_after_kill  # only w0's leases ran out

    # ---- the faults were real and handled as designed
    if database.is_postgres:
        assert all(n >= 4 for n in faults.terminated), (faults.terminated, database.sessions())
    server_errors = {r for r in load.retried if r[:1] == "5" and not r.startswith("503 ")}
    assert not server_errors, load.retried  # a dead connection is a 503, never a 500
    transport = {r for r in load.retried if not r[:1].isdigit()}
    assert not transport, load.retried  # the servers stayed up
    assert exits == dict.fromkeys(exits, 0), {n: p.stderr_text()[-3000:] for n, p in alive.items()}
