"""Delivery: the dispatch worker over the SMTP provider vs. raw aiosmtplib, to one sink process.

The sink (``benchmarks/sink.py``) is an aiosmtpd ``Controller`` in its own
process, counting what it receives.

Commtunnel side: ``messages`` emails are accepted first (not timed), so
that ``messages`` jobs are QUEUED; then ``Dispatcher.run`` (``ct.run_worker``)
with the ``smtp://127.0.0.1:PORT?pool_size=8`` provider and
``worker_concurrency`` attempts in flight is timed until
``pending_job_count() == 0``: claim (QUEUED -> PROCESSING + event), MIME
build, SMTP transaction over a pooled connection, attempt row + SENT status
+ event, job deleted. The sink's count must equal ``messages``.

Baseline: ``aiosmtplib.SMTP`` with ``pool_size`` connections opened inside
the timed window and reused, each taking the next prebuilt ~2 KB
multipart/alternative message (same text and HTML) until ``messages`` are
sent. No storage, no status, no MIME building while timed.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from benchmarks import payload
from benchmarks._util import free_port, log, managed_process, ratio


class Sink:
    """Talks to a running ``benchmarks.sink`` process over its stdin/stdout."""

    def __init__(self, proc: subprocess.Popen[str], port: int, loop: str) -> None:
        self.proc = proc
        self.port = port
        self.loop = loop

    def _ask(self, command: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().strip()
        if not answer:
            raise RuntimeError("the SMTP sink stopped answering")
        return answer

    def count(self) -> tuple[int, int]:
        messages, size = self._ask("count").split()
        return int(messages), int(size)

    def reset(self) -> None:
        self._ask("reset")


@contextlib.contextmanager
def sink_process() -> Iterator[Sink]:
    """Start ``benchmarks.sink`` (uvloop) on a free port; yield it once it listens, then stop it.

    Raises:
        RuntimeError: the sink did not report ``ready``.
    """
    port = free_port()
    with managed_process(
        [sys.executable, "-m", "benchmarks.sink", "--port", str(port), "--loop", "uvloop"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        ready = proc.stdout.readline().split()
        if not ready or ready[0] != "ready":
            raise RuntimeError(f"SMTP sink did not start: {ready!r}")
        yield Sink(proc, port, ready[2])
        proc.stdin.write("quit\n")
        proc.stdin.flush()


async def wait_sink(sink: Sink, expected: int, limit: float) -> int:
    """The sink's count once it reaches ``expected`` (or after ``limit`` seconds)."""
    deadline = time.perf_counter() + limit
    while True:
        got = sink.count()[0]
        if got >= expected or time.perf_counter() > deadline:
            return got
        await asyncio.sleep(0.01)


async def raw_send(sink: Sink, *, messages: int, connections: int) -> dict[str, Any]:
    """Baseline: send ``messages`` prebuilt emails over ``connections`` reused aiosmtplib links.

    Returns:
        ``rps`` (messages/s, connecting included), ``seconds``, CPU ms per message,
        what the sink counted, per-connection counts.
    """
    import aiosmtplib

    built = [payload.raw_mime(n) for n in range(messages)]
    sizes = sorted(len(b) for b in built)
    sink.reset()
    next_index = iter(range(messages))

    async def one_connection() -> int:
        sent = 0
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=sink.port, timeout=30)
        await smtp.connect()
        try:
            for n in next_index:
                await smtp.sendmail(payload.FROM_ADDR, [payload.TO], built[n])
                sent += 1
        finally:
            await smtp.quit()
        return sent

    c0 = time.process_time()
    t0 = time.perf_counter()
    per_connection = await asyncio.gather(*(one_connection() for _ in range(connections)))
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - c0
    received = await wait_sink(sink, messages, 10)
    return {
        "messages": messages,
        "seconds": round(elapsed, 3),
        "rps": round(messages / elapsed, 1),
        "cpu_ms_per_message": round(cpu / messages * 1000, 3),
        "connections": connections,
        "per_connection": per_connection,
        "sink_received": received,
        "message_bytes_median": sizes[len(sizes) // 2],
    }


async def prefill(ct: Any, messages: int, *, tasks: int = 64) -> tuple[str, float]:
    """Accept ``messages`` benchmark emails through ``ct.email.send`` from ``tasks`` tasks.

    ``ct`` is a started ``Commtunnel`` whose organization has the payload's
    sender domain. Returns the first message's id and the seconds it took.
    """
    t0 = time.perf_counter()
    per_task, extra = divmod(messages, tasks)
    first_ids: list[str] = []

    async def fill(k: int) -> None:
        for _ in range(per_task + (1 if k < extra else 0)):
            result = await ct.email.send(
                from_=payload.FROM,
                to=payload.TO,
                subject=payload.SUBJECT,
                html=payload.HTML,
                text=payload.TEXT,
            )
            if not first_ids:
                first_ids.append(result.message.id)

    await asyncio.gather(*(fill(k) for k in range(tasks)))
    return first_ids[0], time.perf_counter() - t0


async def _commtunnel(
    sink: Sink,
    root: Path,
    *,
    messages: int,
    pool_size: int,
    concurrency: int,
    phase: AbstractContextManager[Any] | None = None,
) -> dict[str, Any]:
    """Prefill ``messages`` QUEUED emails, then time the worker; ``phase`` wraps the timed part."""
    from commtunnel.client import Commtunnel
    from commtunnel.config import Settings

    db = root / "delivery.db"
    url = f"smtp://127.0.0.1:{sink.port}?pool_size={pool_size}&timeout=30"
    ct = Commtunnel.open(
        db=db,
        email_provider=url,
        settings=Settings(db=str(db), worker_concurrency=concurrency, email_provider=url),
    )
    await ct.start()
    try:
        await ct.admin.add_sender(ct.org.id, payload.SENDER_DOMAIN)
        email = ct.email
        # Prefill (not timed): `messages` QUEUED emails.
        first_id, fill_seconds = await prefill(ct, messages)
        pending = await ct.backend.pending_job_count()
        assert pending == messages, (pending, messages)
        sink.reset()

        # Count group commits and claims while timed (harness instrumentation).
        backend = ct.backend
        batches: list[int] = []
        claims: list[int] = []
        original_flush = backend._flush
        original_claim = ct.dispatcher.claim

        def counting_flush() -> None:
            batches.append(len(backend._pending))
            original_flush()

        async def counting_claim(limit: int) -> list[Any]:
            jobs = await original_claim(limit)
            claims.append(len(jobs))
            return jobs

        backend._flush = counting_flush  # type: ignore[method-assign]
        ct.dispatcher.claim = counting_claim  # type: ignore[method-assign]

        stop = asyncio.Event()
        progress: list[tuple[float, int]] = []
        phase_cm = phase or nullcontext()
        phase_cm.__enter__()
        c0 = time.process_time()
        t0 = time.perf_counter()
        worker = asyncio.create_task(ct.run_worker(stop))
        try:
            next_sample = 0.5
            while True:
                left = await ct.backend.pending_job_count()
                now = time.perf_counter() - t0
                if now >= next_sample:
                    progress.append((round(now, 2), messages - left))
                    next_sample += 0.5
                if left == 0:
                    break
                if worker.done():
                    worker.result()  # raises what killed the worker
                    raise RuntimeError("the worker stopped before the queue was empty")
                if now > 300:
                    raise RuntimeError(f"delivery did not finish in 300 s ({left} left)")
                await asyncio.sleep(0.005)
            elapsed = time.perf_counter() - t0
            cpu = time.process_time() - c0
        finally:
            phase_cm.__exit__(None, None, None)
            stop.set()
            await worker
            backend._flush = original_flush  # type: ignore[method-assign]
        commits = [n for n in batches if n]
        nonempty_claims = [n for n in claims if n]
        received = await wait_sink(sink, messages, 10)
        conn = ct.backend.conn
        statuses = dict(conn.execute("SELECT status, COUNT(*) FROM messages GROUP BY status"))
        events = dict(conn.execute("SELECT type, COUNT(*) FROM events GROUP BY type"))
        attempts = dict(conn.execute("SELECT outcome, COUNT(*) FROM attempts GROUP BY outcome"))
        durations = sorted(
            r[0] for r in conn.execute("SELECT duration_ms FROM attempts WHERE number = 1")
        )
        timeline = await email.timeline(first_id)
        return {
            "messages": messages,
            "seconds": round(elapsed, 3),
            "rps": round(messages / elapsed, 1),
            "cpu_ms_per_message": round(cpu / messages * 1000, 3),
            "provider_url": url,
            "worker_concurrency": concurrency,
            "pool_size": pool_size,
            "sink_received": received,
            "statuses": statuses,
            "events": events,
            "attempts_by_outcome": attempts,
            "provider_call_ms_p50": durations[len(durations) // 2] if durations else None,
            "provider_call_ms_p99": durations[int(len(durations) * 0.99)] if durations else None,
            "sample_timeline": [
                {"type": e.type, "status": None if e.status is None else str(e.status)}
                for e in timeline
            ],
            "progress_delivered": progress,
            "prefill_seconds": round(fill_seconds, 3),
            "group_commits": len(commits),
            "mean_group_commit_batch": round(sum(commits) / len(commits), 1) if commits else 0,
            "claims": len(nonempty_claims),
            "mean_jobs_per_claim": (
                round(sum(nonempty_claims) / len(nonempty_claims), 1) if nonempty_claims else 0
            ),
        }
    finally:
        await ct.aclose()


def _event_loop(name: str) -> Any:
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop


def run(
    *, quick: bool, pool_size: int = 8, concurrency: int = 32, loop: str = "asyncio"
) -> dict[str, Any]:
    """Start the sink, run the baseline then Commtunnel against it, stop the sink."""
    messages = 2_000 if quick else 5_000
    with tempfile.TemporaryDirectory(prefix="ct-bench-delivery-") as tmp, sink_process() as sink:
        log(
            f"delivery: sink on port {sink.port} ({sink.loop}); raw aiosmtplib, {messages} messages"
        )
        with asyncio.Runner(loop_factory=_event_loop(loop)) as runner:
            # warm-up
            runner.run(raw_send(sink, messages=min(500, messages), connections=pool_size))
            raw = runner.run(raw_send(sink, messages=messages, connections=pool_size))
        log(f"delivery: raw aiosmtplib {raw['rps']:.0f} msg/s")
        log(f"delivery: commtunnel worker, concurrency {concurrency}, pool {pool_size}")
        with asyncio.Runner(loop_factory=_event_loop(loop)) as runner:
            ct = runner.run(
                _commtunnel(
                    sink,
                    Path(tmp),
                    messages=messages,
                    pool_size=pool_size,
                    concurrency=concurrency,
                )
            )
        log(f"delivery: commtunnel {ct['rps']:.0f} msg/s")
        # The baseline again after Commtunnel: their mean is the reference, so drift
        # in the machine's load during the run skews the ratio less.
        with asyncio.Runner(loop_factory=_event_loop(loop)) as runner:
            raw_after = runner.run(raw_send(sink, messages=messages, connections=pool_size))
        log(f"delivery: raw aiosmtplib again {raw_after['rps']:.0f} msg/s")
    raw_rps = round((raw["rps"] + raw_after["rps"]) / 2, 1)
    ok = (
        ct["sink_received"] == messages
        and ct["statuses"] == {"SENT": messages}
        and ct["events"]
        == {"email_queued": messages, "email_processing": messages, "email_sent": messages}
        and ct["attempts_by_outcome"] == {"accepted": messages}
        and raw["sink_received"] == messages
        and raw_after["sink_received"] == messages
    )
    return {
        "commtunnel_rps": ct["rps"],
        "baseline_rps": raw_rps,
        "ratio": ratio(ct["rps"], raw_rps),
        "target_ratio": 0.6,
        "meets_target": ct["rps"] / raw_rps >= 0.6,
        "all_delivered_and_sent": ok,
        "messages": messages,
        "event_loop": loop,
        "sink": f"aiosmtpd Controller in a separate process ({sink.loop} loop), accepts all",
        "what": "emails/s from QUEUED to SENT by the dispatch worker (claim + PROCESSING event, "
        "MIME build, SMTP over pooled connections, attempt + SENT status + event, job deleted), "
        "timed until pending_job_count() == 0",
        "baseline": f"raw aiosmtplib, {pool_size} reused connections (connect inside the timed "
        "window), prebuilt ~2 KB multipart/alternative messages, no storage; run before and after "
        "Commtunnel, the mean is reported",
        "commtunnel_detail": ct,
        "baseline_detail": raw,
        "baseline_runs_rps": [raw["rps"], raw_after["rps"]],
    }
