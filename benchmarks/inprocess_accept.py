"""In-process accept: ``await ct.email.send(...)`` from N concurrent tasks vs. plain SQLite.

Commtunnel side: a fresh SQLite file, one organization with a verified
sending domain, ``concurrency`` asyncio tasks each awaiting ``ct.email.send``
in a loop until ``total`` sends are accepted (validation, sender check,
rendering, message + event + job committed by the backend's group commit).
Measured twice: without an idempotency key (the same rows as the baseline)
and with a unique ``idempotency_key`` per send (adds the key row and its
look-up, what the HTTP benchmark exercises).

Baseline: what the same durable rows cost in SQLite alone (see
:data:`BASELINE_DESCRIPTION`).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import tempfile
import time
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import payload
from benchmarks._util import log, ratio

BASELINE_DESCRIPTION = (
    "sqlite3 (stdlib) on a fresh file with the Commtunnel schema (same tables and indexes), "
    "journal_mode=WAL, synchronous=NORMAL, autocommit connection; rows built before timing "
    "(UUIDv7 ids, the same content JSON and timestamps as Commtunnel stores); per batch of "
    "{batch} messages: BEGIN IMMEDIATE, executemany INSERT into messages, events and jobs "
    "(one row each per message), COMMIT. No Python-side validation, no idempotency row, "
    "no event loop: the floor of the durable write the accept path must make."
)


async def _commtunnel(
    db: Path,
    *,
    total: int,
    concurrency: int,
    keyed: bool,
    warmup: int,
    phase: AbstractContextManager[Any] | None = None,
) -> dict[str, Any]:
    """Accept ``total`` sends after ``warmup`` ones; ``phase`` wraps the timed part (profilers)."""
    from commtunnel.client import Commtunnel
    from commtunnel.config import Settings

    ct = Commtunnel.open(
        db=db,
        email_provider=f"outbox://{db.parent / 'outbox'}",
        settings=Settings(db=str(db)),
    )
    await ct.start()
    try:
        await ct.admin.add_sender(ct.org.id, payload.SENDER_DOMAIN)
        email = ct.email

        # Count the group-commit batches (harness instrumentation, not library code).
        backend = ct.backend
        batches: list[int] = []
        original_flush = backend._flush

        def counting_flush() -> None:
            batches.append(len(backend._pending))
            original_flush()

        backend._flush = counting_flush  # type: ignore[method-assign]

        async def run(n: int, prefix: str) -> None:
            per_task, extra = divmod(n, concurrency)

            async def one_task(k: int) -> None:
                for i in range(per_task + (1 if k < extra else 0)):
                    await email.send(
                        from_=payload.FROM,
                        to=payload.TO,
                        subject=payload.SUBJECT,
                        html=payload.HTML,
                        text=payload.TEXT,
                        idempotency_key=f"{prefix}-{k}-{i}" if keyed else None,
                    )

            await asyncio.gather(*(one_task(k) for k in range(concurrency)))

        await run(warmup, "warm")
        batches.clear()
        with phase or nullcontext():
            c0 = time.process_time()
            t0 = time.perf_counter()
            await run(total, "run")
            elapsed = time.perf_counter() - t0
            cpu = time.process_time() - c0
        stored = backend.conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
        jobs = await backend.pending_job_count()
        nonempty = [b for b in batches if b]
        return {
            "sends": total,
            "seconds": round(elapsed, 3),
            "rps": round(total / elapsed, 1),
            "cpu_ms_per_send": round(cpu / total * 1000, 3),
            "messages_stored": stored - warmup,
            "jobs_queued": jobs - warmup,
            "group_commits": len(nonempty),
            "mean_group_commit_batch": round(sum(nonempty) / len(nonempty), 1) if nonempty else 0,
        }
    finally:
        await ct.aclose()


def _baseline(db: Path, *, total: int, batch: int) -> dict[str, Any]:
    from commtunnel.backends import schema
    from commtunnel.ids import new_id

    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    now_text = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    schema.migrate(conn, now_text)
    org_id = new_id()
    messages, events, jobs = [], [], []
    b0 = time.perf_counter()
    for _ in range(total):
        mid = new_id()
        content = json.dumps(
            {
                "from": payload.FROM,
                "to": payload.TO,
                "subject": payload.SUBJECT,
                "html": payload.HTML,
                "text": payload.TEXT,
                "messageIdHeader": f"<{mid}@{payload.SENDER_DOMAIN}>",
                "templateId": None,
                "tracking": False,
            },
            separators=(",", ":"),
        )
        messages.append(
            (
                mid,
                org_id,
                "email",
                "queued",
                0,
                None,
                payload.TO,
                content,
                None,
                0,
                None,
                now_text,
                now_text,
            )
        )
        events.append((new_id(), org_id, mid, "email_queued", "queued", now_text, "{}"))
        jobs.append((mid, mid, now_text, now_text))
    build_seconds = time.perf_counter() - b0
    c0 = time.process_time()
    t0 = time.perf_counter()
    for start in range(0, total, batch):
        end = start + batch
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO messages (id, org_id, channel, status, sandbox, api_key_id, recipient, "
            "content, provider_message_id, attempt_count, last_error, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            messages[start:end],
        )
        conn.executemany(
            "INSERT INTO events (id, org_id, message_id, type, status, created_at, details) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            events[start:end],
        )
        conn.executemany(
            "INSERT INTO jobs (id, message_id, run_at, created_at) VALUES (?, ?, ?, ?)",
            jobs[start:end],
        )
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - c0
    conn.close()
    return {
        "sends": total,
        "seconds": round(elapsed, 3),
        "rps": round(total / elapsed, 1),
        "cpu_ms_per_send": round(cpu / total * 1000, 3),
        "row_building_seconds": round(build_seconds, 3),
        "rps_including_row_building": round(total / (elapsed + build_seconds), 1),
    }


def run(*, quick: bool, concurrency: int = 64) -> dict[str, Any]:
    """Both Commtunnel variants and the baseline, in this process."""
    total = 5_000 if quick else 20_000
    warmup = 500
    batch = 64
    with tempfile.TemporaryDirectory(prefix="ct-bench-inproc-") as tmp:
        root = Path(tmp)
        # The baseline runs before, between and after the two Commtunnel runs; its
        # median is the reference, so a burst of other work on the machine during
        # one run skews the ratio less.
        bases: list[dict[str, Any]] = []

        def baseline() -> None:
            log(f"inprocess_accept: baseline, {total} messages in batches of {batch}")
            bases.append(_baseline(root / f"baseline{len(bases)}.db", total=total, batch=batch))
            log(f"inprocess_accept: baseline {bases[-1]['rps']:.0f} msg/s")

        baseline()
        log(f"inprocess_accept: commtunnel, {concurrency} tasks, {total} sends, no idempotency key")
        plain = asyncio.run(
            _commtunnel(
                root / "plain.db", total=total, concurrency=concurrency, keyed=False, warmup=warmup
            )
        )
        log(f"inprocess_accept: commtunnel {plain['rps']:.0f} sends/s")
        baseline()
        log(f"inprocess_accept: commtunnel, {concurrency} tasks, {total} sends, idempotency keys")
        keyed = asyncio.run(
            _commtunnel(
                root / "keyed.db", total=total, concurrency=concurrency, keyed=True, warmup=warmup
            )
        )
        baseline()
        log(f"inprocess_accept: commtunnel with keys {keyed['rps']:.0f} sends/s")
    base = sorted(bases, key=lambda b: b["rps"])[len(bases) // 2]
    return {
        "commtunnel_rps": plain["rps"],
        "baseline_rps": base["rps"],
        "ratio": ratio(plain["rps"], base["rps"]),
        "target_ratio": 0.5,
        "meets_target": (plain["rps"] / base["rps"]) >= 0.5,
        "baseline_rps_including_row_building": base["rps_including_row_building"],
        "commtunnel_rps_with_idempotency_key": keyed["rps"],
        "ratio_with_idempotency_key": ratio(keyed["rps"], base["rps"]),
        "concurrency": concurrency,
        "sends": total,
        "warmup_sends": warmup,
        "event_loop": "asyncio (stdlib, asyncio.run)",
        "what": "accepted sends/s via `await ct.email.send(...)` (from, to, subject, html, text; "
        "~1.7 KB of content), each committed with its event and job before it returns",
        "baseline": BASELINE_DESCRIPTION.format(batch=batch)
        + " Run 3 times (before, between and after the Commtunnel runs); the median is reported.",
        "commtunnel_detail": plain,
        "commtunnel_with_idempotency_key_detail": keyed,
        "baseline_detail": base,
        "baseline_runs_rps": [b["rps"] for b in bases],
    }
