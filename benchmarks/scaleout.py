"""Scale-out: several ``commtunnel serve`` and ``commtunnel worker`` processes on one database.

PostgreSQL by default (SQLite with ``db="sqlite"``); every configuration gets
a fresh database (a new PostgreSQL schema, dropped afterwards, or a new SQLite
file), so no run reads the rows of another.

* **Accept**: 1 and 2 ``commtunnel serve --no-worker --db URL`` processes,
  loaded by one wrk with one thread per server (``WRK_PORTS`` in
  ``wrk_send.lua``) and the same 64 connections in total, so p50/p99 come
  from one histogram. Baseline: 1 and 2 processes of the bare Starlette
  endpoint under the same load (like with like), measured before and after
  Commtunnel; their mean is the reference. Load and checks are
  ``http_accept``'s: a unique ``x-idempotency-key`` per request, and every
  202 must have left a stored message, key and job.
* **Delivery**: 1, 2 and 4 ``commtunnel worker`` processes with
  ``smtp://127.0.0.1:SINK?pool_size=8`` and ``COMMTUNNEL_WORKER_CONCURRENCY``
  attempts in flight each, into ``delivery``'s aiosmtpd sink. The workers are
  started on an empty queue, stopped (SIGSTOP) once they run, ``messages``
  emails are accepted in process (``delivery.prefill``), then all workers are
  continued at once (SIGCONT) and timed until the sink holds every message
  and no job is left (every result committed). So process start-up is not
  timed, and all workers start together. Baseline: ``delivery.raw_send``
  (raw aiosmtplib, ``pool_size`` reused connections, one process) into the
  same sink, before and after; the sink is one process, so this is the
  ceiling for any number of workers.

Each timed window also reports where the CPU went (``cpu``: cores used by the
servers or workers, PostgreSQL, the whole machine), which on a small machine
says more than the figure alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from benchmarks import http_accept, payload
from benchmarks._cpu import CpuWindow
from benchmarks._util import log, managed_process, ratio
from benchmarks.delivery import Sink, prefill, raw_send, sink_process

SERVERS = (1, 2)
WORKERS = (1, 2, 4)
DEFAULT_PG_URL = "postgresql://127.0.0.1:5432/test"


# --------------------------------------------------------------------------- databases


@contextlib.contextmanager
def fresh_db(kind: str, root: Path, label: str, pg_url: str) -> Iterator[str]:
    """A new, empty database for one configuration: its ``--db`` value.

    Args:
        kind: ``"postgresql"`` (a new schema on ``pg_url``, dropped with
            everything in it afterwards) or ``"sqlite"`` (a new file in ``root``).
        label: part of the schema or file name.
        pg_url: a PostgreSQL URL without a query string, whose database this
            process may create schemas in.
    """
    if kind == "sqlite":
        yield str(root / f"{label}.db")
        return
    import psycopg

    schema = f"ct_bench_{label}_{secrets.token_hex(4)}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{pg_url}?options={quote(f'-csearch_path={schema}')}"
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def query(db: str, sql: str) -> list[tuple[Any, ...]]:
    """Rows of one read-only ``sql`` statement against ``db`` (SQLite path or PostgreSQL URL)."""
    if db.startswith(("postgresql://", "postgres://")):
        import psycopg

        with psycopg.connect(db, autocommit=True) as conn:
            return conn.execute(sql).fetchall()  # type: ignore[arg-type]
    with contextlib.closing(sqlite3.connect(db.removeprefix("sqlite:///"))) as conn:
        return conn.execute(sql).fetchall()


def pg_info(pg_url: str) -> dict[str, Any]:
    """The PostgreSQL server's version and the settings that bound commit speed."""
    import psycopg

    names = ("server_version", "synchronous_commit", "fsync", "shared_buffers", "max_connections")
    with psycopg.connect(pg_url, autocommit=True) as conn:
        info: dict[str, Any] = {n: conn.execute(f"SHOW {n}").fetchone()[0] for n in names}  # type: ignore[index]
    info["url"] = pg_url
    return info


class _NoRedisWarning(logging.Filter):
    """Drops the facade's "no Redis" warning in this process: the benchmark key's limit
    (1,000,000/s) never applies, whether each process counts alone or not."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "COMMTUNNEL_REDIS_URL is not set" not in record.getMessage()


def _child_env(**extra: str) -> dict[str, str]:
    """The harness's environment plus ``extra``; ``--db`` flags override COMMTUNNEL_DB."""
    return {**os.environ, **extra}


# --------------------------------------------------------------------------- accept


def _bare_run(n: int, load: dict[str, Any]) -> dict[str, Any]:
    """``n`` bare Starlette processes under the load: ``http_accept.summary`` + cpu."""
    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(http_accept.bare_server()) for _ in range(n)]
        cpu = CpuWindow({"servers": [proc.pid for proc, _port in servers]}, reaped_as="wrk")
        cpu.start()
        t0 = time.perf_counter()
        run = http_accept.measure(
            port=[port for _proc, port in servers], token="", label=f"bare{n}", **load
        )
        used = cpu.stop(time.perf_counter() - t0)
    result = http_accept.summary(run)
    result["cpu"] = used
    log(f"scaleout: bare x{n}: {result['rps']:.0f} req/s, p99 {result['p99_ms']} ms")
    return result


def _commtunnel_run(
    n: int, kind: str, root: Path, pg_url: str, body: bytes, load: dict[str, Any]
) -> dict[str, Any]:
    """``n`` ``commtunnel serve --no-worker`` processes on one fresh database under the load."""
    with fresh_db(kind, root, f"accept{n}", pg_url) as db:
        token = asyncio.run(http_accept.prepare_db(db, root / "outbox"))
        with contextlib.ExitStack() as stack:
            servers = [
                stack.enter_context(http_accept.serve_process(db, root, name=f"serve{n}-{i}"))
                for i in range(n)
            ]
            probes = [http_accept.probe(port, token, body) for _proc, port in servers]
            if any(p["status"] != 202 for p in probes):
                raise RuntimeError(f"commtunnel serve refused the probe request: {probes}")
            cpu = CpuWindow({"servers": [proc.pid for proc, _port in servers]}, reaped_as="wrk")
            cpu.start()
            t0 = time.perf_counter()
            run = http_accept.measure(
                port=[port for _proc, port in servers], token=token, label=f"ct{n}", **load
            )
            used = cpu.stop(time.perf_counter() - t0)
        # The servers have stopped (committing what was pending): count what is durable.
        (counts,) = query(
            db,
            "SELECT (SELECT COUNT(*) FROM messages), (SELECT COUNT(*) FROM idempotency_keys), "
            "(SELECT COUNT(*) FROM jobs)",
        )
    stored, keys, jobs = (int(c) for c in counts)
    accepted = run["requests"] + run["warmup_requests"] + n - run["non202"] - run["warmup_non202"]
    result = http_accept.summary(run)
    result["cpu"] = used
    result["durable_check"] = {
        "every_202_stored": bool(stored >= accepted and keys == stored and jobs == stored),
        "accepted_202_counted_by_client": accepted,
        "messages_stored": stored,
        "idempotency_keys_stored": keys,
        "jobs_queued": jobs,
    }
    log(f"scaleout: commtunnel serve x{n}: {result['rps']:.0f} req/s, p99 {result['p99_ms']} ms")
    return result


def accept(
    *,
    kind: str,
    root: Path,
    pg_url: str,
    seconds: float,
    warmup: float,
    connections: int,
    threads: int,
) -> dict[str, Any]:
    """Accepted sends/s and latency with 1 and 2 servers, each beside the bare endpoint.

    Order: bare x1, bare x2, Commtunnel x1, x2, bare x1, bare x2 (the baseline
    is the mean of its two runs, so drift in the machine's load skews less).

    Raises:
        RuntimeError: wrk is missing (the Python load generator cannot spread
            over servers), or a server did not start or refused the probe.
    """
    wrk, wrk_note = http_accept.ensure_wrk()
    if not wrk:
        raise RuntimeError(f"scaleout needs wrk: {wrk_note}")
    body = payload.http_body()
    body_file = root / "body.json"
    body_file.write_bytes(body)
    load: dict[str, Any] = {
        "wrk": wrk,
        "body_file": body_file,
        "seconds": seconds,
        "warmup": warmup,
        "connections": connections,
        "threads": threads,
    }
    bare = {n: _bare_run(n, load) for n in SERVERS}
    ct = {n: _commtunnel_run(n, kind, root, pg_url, body, load) for n in SERVERS}
    bare_after = {n: _bare_run(n, load) for n in SERVERS}

    figures: dict[str, Any] = {}
    for n in SERVERS:
        c, b, b2 = ct[n], bare[n], bare_after[n]
        base = round((b["rps"] + b2["rps"]) / 2, 1)
        figures[f"servers_{n}"] = {
            "commtunnel_rps": c["rps"],
            "baseline_rps": base,
            "ratio": ratio(c["rps"], base),
            "p50_ms": c["p50_ms"],
            "p99_ms": c["p99_ms"],
            "baseline_p50_ms": b["p50_ms"],
            "baseline_p99_ms": b["p99_ms"],
            "p99_ratio": ratio(c["p99_ms"], b["p99_ms"]),
            "non_2xx": c["non_2xx"] + c["warmup_non_2xx"],
            "server_cpu_ms_per_request": _cpu_ms(
                c["cpu"], "servers", c["requests"] + c["warmup_requests"]
            ),
            "postgres_cpu_ms_per_request": _cpu_ms(
                c["cpu"], "postgres", c["requests"] + c["warmup_requests"]
            ),
            "baseline_server_cpu_ms_per_request": _cpu_ms(
                b["cpu"], "servers", b["requests"] + b["warmup_requests"]
            ),
            "every_202_stored": c["durable_check"]["every_202_stored"],
        }
    first, last = SERVERS[0], SERVERS[-1]
    figures[f"scaling_{last}_over_{first}"] = {
        "commtunnel": ratio(ct[last]["rps"], ct[first]["rps"]),
        "baseline": ratio(
            bare[last]["rps"] + bare_after[last]["rps"],
            bare[first]["rps"] + bare_after[first]["rps"],
        ),
    }
    return {
        "figures": figures,
        "load": f"one wrk, {threads} thread(s) per server, {connections} keep-alive connections "
        f"in total shared evenly over the servers, {warmup:g} s warm-up then {seconds:g} s "
        "measured, a unique x-idempotency-key per request",
        "commtunnel_detail": {f"servers_{n}": ct[n] for n in SERVERS},
        "baseline_detail": {f"servers_{n}": [bare[n], bare_after[n]] for n in SERVERS},
    }


# --------------------------------------------------------------------------- delivery


def _wait_for_line(proc: subprocess.Popen[Any], log_path: Path, text: str, limit: float) -> None:
    """Wait until ``text`` appears in the process's log file.

    Raises:
        RuntimeError: the process exited first or ``limit`` seconds passed.
    """
    deadline = time.perf_counter() + limit
    while text not in log_path.read_text(errors="replace"):
        if proc.poll() is not None or time.perf_counter() > deadline:
            tail = log_path.read_text(errors="replace")[-2000:]
            why = f"exited with {proc.returncode}" if proc.returncode is not None else "timed out"
            raise RuntimeError(f"{log_path.stem} {why} before printing {text!r}:\n{tail}")
        time.sleep(0.05)


async def _prepare_sender(db: str, root: Path) -> None:
    """Migrate ``db`` and give the default organization the payload's sender domain."""
    from commtunnel.client import Commtunnel
    from commtunnel.config import Settings

    async with Commtunnel.open(
        email_provider=f"outbox://{root / 'outbox'}", settings=Settings(db=db)
    ) as ct:
        await ct.admin.add_sender(ct.org.id, payload.SENDER_DOMAIN)


async def _fill(db: str, root: Path, messages: int) -> float:
    """Accept ``messages`` emails into ``db`` in process; the seconds it took."""
    from commtunnel.client import Commtunnel
    from commtunnel.config import Settings

    async with Commtunnel.open(
        email_provider=f"outbox://{root / 'outbox'}", settings=Settings(db=db)
    ) as ct:
        _first, seconds = await prefill(ct, messages)
        pending = await ct.backend.pending_job_count()
    if pending != messages:
        raise RuntimeError(f"prefill left {pending} jobs, expected {messages}")
    return seconds


def _workers_run(
    n: int,
    sink: Sink,
    *,
    kind: str,
    root: Path,
    pg_url: str,
    messages: int,
    pool_size: int,
    concurrency: int,
) -> dict[str, Any]:
    """``n`` workers started together on ``messages`` QUEUED emails, timed until all are SENT."""
    provider = f"smtp://127.0.0.1:{sink.port}?pool_size={pool_size}&timeout=30"
    env = _child_env(COMMTUNNEL_WORKER_CONCURRENCY=str(concurrency))
    with fresh_db(kind, root, f"deliver{n}", pg_url) as db, contextlib.ExitStack() as stack:
        asyncio.run(_prepare_sender(db, root))
        workers = []
        for i in range(n):
            log_path = root / f"worker{n}-{i}.log"
            out = stack.enter_context(log_path.open("wb"))
            args = [sys.executable, "-m", "commtunnel", "worker", "--db", db]
            args += ["--email-provider", provider]
            proc = stack.enter_context(
                managed_process(args, stdout=out, stderr=subprocess.STDOUT, env=env)
            )
            workers.append((proc, log_path))
        for proc, log_path in workers:
            _wait_for_line(proc, log_path, "commtunnel worker running", 60)
        # Idle workers, stopped while the queue fills, continued together: only
        # delivery is timed, not start-up, and no worker gets a head start.
        stack.callback(_continue, [proc for proc, _ in workers])  # runs before they are stopped
        for proc, _ in workers:
            os.kill(proc.pid, signal.SIGSTOP)
        fill_seconds = asyncio.run(_fill(db, root, messages))
        log(f"scaleout: {messages} emails queued in {fill_seconds:.2f} s; {n} worker(s) go")
        sink.reset()
        cpu = CpuWindow({"workers": [proc.pid for proc, _ in workers], "sink": [sink.proc.pid]})
        cpu.start()
        t0 = time.perf_counter()
        _continue([proc for proc, _ in workers])
        progress: list[tuple[float, int]] = []
        next_sample = 0.5
        while (got := sink.count()[0]) < messages:
            now = time.perf_counter() - t0
            if now >= next_sample:
                progress.append((round(now, 2), got))
                next_sample += 0.5
            if any(proc.poll() is not None for proc, _ in workers):
                raise RuntimeError(f"a worker exited during delivery ({got}/{messages} delivered)")
            if now > 120:
                raise RuntimeError(f"delivery did not finish in 120 s ({got}/{messages})")
            time.sleep(0.01)
        to_sink = time.perf_counter() - t0
        # Every result committed: the job is deleted with the SENT status's transaction.
        while query(db, "SELECT COUNT(*) FROM jobs")[0][0]:
            if time.perf_counter() - t0 > 150:
                raise RuntimeError("jobs were left after the sink had every message")
            time.sleep(0.02)
        elapsed = time.perf_counter() - t0
        used = cpu.stop(elapsed)
        stack.close()  # stop the workers (SIGTERM, they drain) before reading the results
        statuses = dict(query(db, "SELECT status, COUNT(*) FROM messages GROUP BY status"))
        events = dict(query(db, "SELECT type, COUNT(*) FROM events GROUP BY type"))
        attempts = dict(query(db, "SELECT outcome, COUNT(*) FROM attempts GROUP BY outcome"))
    received = sink.count()[0]
    ok = (
        received == messages
        and statuses == {"SENT": messages}
        and events
        == {"email_queued": messages, "email_processing": messages, "email_sent": messages}
        and attempts == {"accepted": messages}
    )
    rps = round(messages / elapsed, 1)
    log(f"scaleout: {n} worker(s): {rps:.0f} msg/s ({to_sink:.2f} s to the sink)")
    return {
        "rps": rps,
        "seconds": round(elapsed, 3),
        "seconds_until_sink_had_all": round(to_sink, 3),
        "messages": messages,
        "all_delivered_and_sent": ok,
        "sink_received": received,
        "statuses": statuses,
        "events": events,
        "attempts_by_outcome": attempts,
        "progress_delivered": progress,
        "prefill_seconds": round(fill_seconds, 3),
        "cpu": used,
    }


def _cpu_ms(cpu: dict[str, Any], group: str, count: int) -> float | None:
    """CPU milliseconds ``group`` spent per request or message in a ``CpuWindow`` result."""
    cores = cpu.get(group)
    return round(cores * cpu["seconds"] / count * 1000, 3) if cores is not None and count else None


def _continue(procs: Sequence[subprocess.Popen[Any]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)


def delivery(
    *,
    kind: str,
    root: Path,
    pg_url: str,
    messages: int,
    pool_size: int,
    concurrency: int,
) -> dict[str, Any]:
    """Delivered emails/s with 1, 2 and 4 workers, each beside raw aiosmtplib to the same sink."""
    with sink_process() as sink:
        log(f"scaleout: sink on port {sink.port}; raw aiosmtplib, {messages} messages")
        asyncio.run(raw_send(sink, messages=min(500, messages), connections=pool_size))  # warm-up
        raw = asyncio.run(raw_send(sink, messages=messages, connections=pool_size))
        log(f"scaleout: raw aiosmtplib {raw['rps']:.0f} msg/s")
        ct = {
            n: _workers_run(
                n,
                sink,
                kind=kind,
                root=root,
                pg_url=pg_url,
                messages=messages,
                pool_size=pool_size,
                concurrency=concurrency,
            )
            for n in WORKERS
        }
        raw_after = asyncio.run(raw_send(sink, messages=messages, connections=pool_size))
        log(f"scaleout: raw aiosmtplib again {raw_after['rps']:.0f} msg/s")
    base = round((raw["rps"] + raw_after["rps"]) / 2, 1)
    figures: dict[str, Any] = {
        f"workers_{n}": {
            "commtunnel_rps": ct[n]["rps"],
            "baseline_rps": base,
            "ratio": ratio(ct[n]["rps"], base),
            "all_delivered_and_sent": ct[n]["all_delivered_and_sent"],
            "worker_cpu_ms_per_message": _cpu_ms(ct[n]["cpu"], "workers", messages),
            "postgres_cpu_ms_per_message": _cpu_ms(ct[n]["cpu"], "postgres", messages),
        }
        for n in WORKERS
    }
    figures["scaling_over_1_worker"] = {
        f"workers_{n}": ratio(ct[n]["rps"], ct[WORKERS[0]]["rps"]) for n in WORKERS[1:]
    }
    return {
        "figures": figures,
        "what": f"{messages} QUEUED emails; N `commtunnel worker` processes (SMTP pool_size="
        f"{pool_size}, COMMTUNNEL_WORKER_CONCURRENCY={concurrency} each) continued together, "
        "timed until the sink had every message and the jobs table was empty",
        "baseline": f"raw aiosmtplib, {pool_size} reused connections, one process, prebuilt "
        "messages, no storage, into the same sink (one aiosmtpd process: the ceiling for any "
        "number of workers); run before and after, the mean is reported",
        "commtunnel_detail": {f"workers_{n}": ct[n] for n in WORKERS},
        "baseline_runs_rps": [raw["rps"], raw_after["rps"]],
    }


# --------------------------------------------------------------------------- entry point


def run(
    *,
    quick: bool,
    db: str = "postgresql",
    pg_url: str = DEFAULT_PG_URL,
    connections: int = 64,
    threads: int = 1,
    pool_size: int = 8,
    concurrency: int = 32,
) -> dict[str, Any]:
    """Accept (1, 2 servers) then delivery (1, 2, 4 workers); about 2 minutes (1 with ``quick``).

    Args:
        quick: shorter load runs and fewer messages.
        db: ``"postgresql"`` or ``"sqlite"``.
        pg_url: the PostgreSQL database to create the schemas in (no query string).
        connections: wrk connections in total; threads: wrk threads per server.
        pool_size: SMTP connections per worker (and of the raw baseline).
        concurrency: attempts in flight per worker.

    Raises:
        ValueError: ``db`` is neither.
        RuntimeError: a process did not start, wrk is missing, or delivery stalled.
    """
    if db not in ("postgresql", "sqlite"):
        raise ValueError(f"db must be postgresql or sqlite, got {db!r}")
    seconds, warmup = (3.0, 1.0) if quick else (8.0, 2.0)
    messages = 1_000 if quick else 3_000
    database = pg_info(pg_url) if db == "postgresql" else {"sqlite": sqlite3.sqlite_version}
    log(f"scaleout: on {db} {database.get('server_version', database.get('sqlite'))}")
    # The facade warns through commtunnel.client's logger ("commtunnel.worker").
    quiet_logger, quiet = logging.getLogger("commtunnel.worker"), _NoRedisWarning()
    quiet_logger.addFilter(quiet)
    try:
        with tempfile.TemporaryDirectory(prefix="ct-bench-scaleout-") as tmp:
            root = Path(tmp)
            accepted = accept(
                kind=db,
                root=root,
                pg_url=pg_url,
                seconds=seconds,
                warmup=warmup,
                connections=connections,
                threads=threads,
            )
            delivered = delivery(
                kind=db,
                root=root,
                pg_url=pg_url,
                messages=messages,
                pool_size=pool_size,
                concurrency=concurrency,
            )
    finally:
        quiet_logger.removeFilter(quiet)
    return {
        "summary": {"accept": accepted["figures"], "delivery": delivered["figures"]},
        "database": {"kind": db, **database},
        "cores": os.cpu_count(),
        "note": "servers, workers, PostgreSQL, wrk and the SMTP sink share the machine's cores: "
        "read each scaling figure against the `cpu` entries (cores used) of its run",
        "accept": accepted,
        "delivery": delivered,
    }
