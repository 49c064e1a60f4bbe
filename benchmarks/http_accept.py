"""HTTP accept: ``commtunnel serve --no-worker`` vs. a bare Starlette endpoint, under wrk.

Both servers are subprocesses run the same way (one uvicorn process, uvloop,
httptools, access log off) and receive the same load: wrk with one thread
and ``connections`` keep-alive connections posting the same ~1.8 KB JSON
body, each request with its own ``x-idempotency-key`` (``wrk_send.lua``),
a warm-up run first, then the measured run with ``--latency``.

Commtunnel answers only after authenticating the bearer key, validating the
request, claiming the idempotency key and committing message + event + job
(+ key) through the group commit; the worker is off, so only acceptance is
measured. The bare endpoint reads the body and answers a fixed 202 JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from benchmarks import payload
from benchmarks._util import REPO, free_port, log, managed_process, ratio, wait_port

LUA = REPO / "benchmarks" / "wrk_send.lua"
PATH = "/v1/public/emails/send"


def ensure_wrk() -> tuple[str | None, str]:
    """The wrk binary, installing the Debian package if missing (root only)."""
    found = shutil.which("wrk")
    if found:
        return found, "already installed"
    if shutil.which("apt-get") and hasattr(os, "geteuid") and os.geteuid() == 0:
        log("http_accept: wrk not found; apt-get update && apt-get install -y wrk")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        try:
            subprocess.run(
                ["apt-get", "update", "-qq"],
                check=True,
                env=env,
                timeout=180,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            subprocess.run(
                ["apt-get", "install", "-y", "-qq", "wrk"],
                check=True,
                env=env,
                timeout=300,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        except (subprocess.SubprocessError, OSError) as exc:
            return None, f"apt-get install wrk failed: {exc}"
        found = shutil.which("wrk")
        if found:
            return found, "installed with apt-get"
    return None, "wrk not installed and could not be installed"


async def prepare_db(db: str, outbox: Path) -> str:
    """Migrate ``db`` and add an organization with a verified domain and a send key.

    Args:
        db: a SQLite path or a PostgreSQL URL (anything ``COMMTUNNEL_DB`` takes).
        outbox: directory for the outbox provider (nothing is delivered).

    Returns:
        The send key's bearer secret, rate-limited at 1,000,000 requests/s.
    """
    from commtunnel.client import Commtunnel
    from commtunnel.config import Settings

    ct = Commtunnel.open(email_provider=f"outbox://{outbox}", settings=Settings(db=db))
    await ct.start()
    try:
        await ct.admin.add_sender(ct.org.id, payload.SENDER_DOMAIN)
        record, secret = await ct.keys.create(
            ct.org.id, scopes=frozenset({"send:email", "read:email"}), name="bench"
        )
        # The default (100 a minute) would answer the load with 429s.
        await ct.access.set_key_rate_limit(ct.org.id, record.id, "1000000/second")
        return secret
    finally:
        await ct.aclose()


@contextlib.contextmanager
def serve_process(
    db: str, root: Path, *, name: str = "serve", env: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[Any], int]]:
    """``commtunnel serve --no-worker --db DB`` on a free port, listening: (process, port).

    Its output goes to ``root / f"{name}.log"``, whose tail is in the error when
    it does not start (RuntimeError). ``env`` replaces the environment.
    """
    port = free_port()
    log_path = root / f"{name}.log"
    logfile = log_path.open("wb")
    args = [
        sys.executable,
        "-m",
        "commtunnel",
        "serve",
        "--db",
        db,
        "--port",
        str(port),
        "--no-worker",
        "--email-provider",
        f"outbox://{root / 'outbox'}",
    ]
    try:
        with managed_process(args, stdout=logfile, stderr=subprocess.STDOUT, env=env) as proc:
            try:
                wait_port(port, proc)
            except RuntimeError as exc:
                logfile.flush()
                tail = log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"commtunnel serve did not start: {exc}\n{tail}") from None
            yield proc, port
    finally:
        logfile.close()


@contextlib.contextmanager
def commtunnel_server(root: Path) -> Iterator[tuple[subprocess.Popen[Any], int, str, Path]]:
    """``commtunnel serve --no-worker`` on a prepared SQLite file: (process, port, key, db)."""
    db = root / "http.db"
    token = asyncio.run(prepare_db(str(db), root / "outbox"))
    with serve_process(str(db), root) as (proc, port):
        yield proc, port, token, db


@contextlib.contextmanager
def bare_server() -> Iterator[tuple[subprocess.Popen[Any], int]]:
    """The bare Starlette baseline (``benchmarks/bare_app.py``): (process, port)."""
    port = free_port()
    args = [sys.executable, "-m", "benchmarks.bare_app", "--port", str(port)]
    with managed_process(args) as proc:
        wait_port(port, proc)
        yield proc, port


def probe(port: int, token: str, body: bytes) -> dict[str, Any]:
    """One request before the load: the status and the JSON answered."""
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{PATH}",
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "Authorization": f"Bearer {token}",
            "x-idempotency-key": f"probe-{time.time_ns()}",
        },
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return {"status": resp.status, "body": json.loads(resp.read())}
    except urllib.error.HTTPError as exc:
        return {"status": exc.code, "body": exc.read()[:300].decode(errors="replace")}


def load(
    *,
    wrk: str | None,
    port: int | Sequence[int],
    seconds: float,
    connections: int,
    threads: int,
    nonce: str,
    token: str,
    body_file: Path,
) -> dict[str, Any]:
    """One load run; the parsed ``WRKJSON`` line plus req/s.

    ``port`` may be several ports (servers): wrk then runs ``threads`` threads per
    server, each thread connected to one of them (``WRK_PORTS`` in
    ``wrk_send.lua``), the ``connections`` shared evenly, and reports one
    latency histogram over all of them. That needs wrk (RuntimeError without).
    """
    ports = [port] if isinstance(port, int) else list(port)
    env = None
    if len(ports) > 1:
        if not wrk:
            raise RuntimeError("load on several servers needs wrk (not the Python fallback)")
        threads *= len(ports)
        env = dict(os.environ, WRK_PORTS=",".join(map(str, ports)))
    port = ports[0]
    if wrk:
        args = [
            wrk,
            f"-t{threads}",
            f"-c{connections}",
            f"-d{seconds:g}s",
            "--latency",
            "--timeout",
            "10s",
            "-s",
            str(LUA),
            f"http://127.0.0.1:{port}{PATH}",
            "--",
            nonce,
            token,
            str(body_file),
        ]
    else:
        args = [
            sys.executable,
            "-m",
            "benchmarks.loadgen",
            "--port",
            str(port),
            "--connections",
            str(connections),
            "--duration",
            str(seconds),
            "--nonce",
            nonce,
            "--token",
            token,
            "--body-file",
            str(body_file),
        ]
    done = subprocess.run(
        args, capture_output=True, text=True, timeout=seconds + 60, cwd=REPO, check=False, env=env
    )
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"load generator failed ({done.returncode}): {done.stderr[-1000:]}")
    result: dict[str, Any] = json.loads(line.removeprefix("WRKJSON "))
    result["rps"] = round(result["requests"] / (result["duration_us"] / 1e6), 1)
    return result


def measure(
    *,
    wrk: str | None,
    port: int | Sequence[int],
    token: str,
    body_file: Path,
    seconds: float,
    warmup: float,
    connections: int,
    threads: int,
    label: str,
) -> dict[str, Any]:
    """Warm-up run, then the measured run."""
    common: dict[str, Any] = {
        "wrk": wrk,
        "port": port,
        "connections": connections,
        "threads": threads,
        "token": token,
        "body_file": body_file,
    }
    warm = load(seconds=warmup, nonce=f"{label}-warm-{time.time_ns()}", **common)
    run = load(seconds=seconds, nonce=f"{label}-run-{time.time_ns()}", **common)
    run["warmup_requests"] = warm["requests"]
    run["warmup_non202"] = warm["non202"]
    return run


def summary(run: dict[str, Any]) -> dict[str, Any]:
    """The figures of one measured run (``measure``): req/s, latency in ms, errors."""
    lat = run["latency_us"]
    return {
        "rps": run["rps"],
        "requests": run["requests"],
        "p50_ms": round(lat["p50"] / 1000, 2),
        "p90_ms": round(lat["p90"] / 1000, 2),
        "p99_ms": round(lat["p99"] / 1000, 2),
        "max_ms": round(lat["max"] / 1000, 2),
        "non_2xx": run["non202"],
        "socket_errors": sum(
            run[k] for k in ("connect_errors", "read_errors", "write_errors", "timeouts")
        ),
        "warmup_requests": run["warmup_requests"],
        "warmup_non_2xx": run["warmup_non202"],
        **({"first_non_2xx": run["first_non202"]} if run["first_non202"] else {}),
    }


def run(
    *, quick: bool, connections: int = 64, threads: int = 1, python_load: bool = False
) -> dict[str, Any]:
    """Bare baseline first, then Commtunnel, same load (wrk, or the Python fallback)."""
    seconds = 3.0 if quick else 10.0
    warmup = 2.0
    wrk, wrk_note = (None, "--python-load given") if python_load else ensure_wrk()
    generator = (
        f"wrk ({wrk_note})"
        if wrk
        else (
            f"FALLBACK Python load generator (benchmarks/loadgen.py): {wrk_note}; "
            "it competes with the server for CPU, so both figures are lower bounds"
        )
    )
    log(f"http_accept: load generator: {generator}")
    with tempfile.TemporaryDirectory(prefix="ct-bench-http-") as tmp:
        root = Path(tmp)
        body_file = root / "body.json"
        body = payload.http_body()
        body_file.write_bytes(body)

        def bare_run() -> dict[str, Any]:
            with bare_server() as (_proc, port):
                bare_probe = probe(port, "", body)
                log(
                    f"http_accept: bare Starlette on {port}, probe {bare_probe['status']}; "
                    f"{warmup:g} s warm-up + {seconds:g} s, {connections} connections"
                )
                result = measure(
                    wrk=wrk,
                    port=port,
                    token="",
                    body_file=body_file,
                    seconds=seconds,
                    warmup=warmup,
                    connections=connections,
                    threads=threads,
                    label="bare",
                )
            p99 = result["latency_us"]["p99"] / 1000
            log(f"http_accept: bare {result['rps']:.0f} req/s, p99 {p99:.1f} ms")
            return result

        # The baseline runs before and after Commtunnel; their mean is the reference.
        bare = bare_run()

        with commtunnel_server(root) as (_proc, port, token, db):
            ct_probe = probe(port, token, body)
            log(f"http_accept: commtunnel serve on {port}, probe {ct_probe['status']}")
            if ct_probe["status"] != 202:
                raise RuntimeError(f"commtunnel serve refused the probe request: {ct_probe}")
            ct = measure(
                wrk=wrk,
                port=port,
                token=token,
                body_file=body_file,
                seconds=seconds,
                warmup=warmup,
                connections=connections,
                threads=threads,
                label="ct",
            )
        # The server has stopped (and committed what was pending): count what is durable.
        with contextlib.closing(sqlite3.connect(db)) as conn:
            stored = conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
            keys = conn.execute("SELECT COUNT(*) FROM idempotency_keys").fetchone()[0]
            jobs = conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
        p99 = ct["latency_us"]["p99"] / 1000
        log(f"http_accept: commtunnel {ct['rps']:.0f} req/s, p99 {p99:.1f} ms")
        bare_after = bare_run()

    accepted = ct["requests"] + ct["warmup_requests"] + 1 - ct["non202"] - ct["warmup_non202"]
    c, b, b2 = summary(ct), summary(bare), summary(bare_after)
    base_rps = round((b["rps"] + b2["rps"]) / 2, 1)
    return {
        "commtunnel_rps": c["rps"],
        "baseline_rps": base_rps,
        "ratio": ratio(c["rps"], base_rps),
        "p50_ms": c["p50_ms"],
        "p99_ms": c["p99_ms"],
        "non_2xx": c["non_2xx"],
        "baseline_p50_ms": b["p50_ms"],
        "baseline_p99_ms": b["p99_ms"],
        "baseline_non_2xx": b["non_2xx"] + b2["non_2xx"],
        "baseline_runs_rps": [b["rps"], b2["rps"]],
        "target_ratio": 0.5,
        "target_p99_ms": 20,
        "meets_target": bool(
            c["rps"] / base_rps >= 0.5 and c["p99_ms"] <= 20 and c["non_2xx"] == 0
        ),
        "load_generator": generator,
        "load": f"{threads} thread(s), {connections} keep-alive connections, "
        f"{warmup:g} s warm-up then {seconds:g} s measured, POST {PATH} with a {len(body)}-byte "
        "JSON body and a unique x-idempotency-key per request",
        "baseline_note": "bare endpoint measured before and after Commtunnel; baseline_rps is "
        "their mean, baseline_p50_ms/p99_ms are from the first run",
        "server": "one uvicorn process, uvloop, httptools, access log off; "
        "`python -m commtunnel serve --no-worker` vs `python -m benchmarks.bare_app`",
        "durable_check": {
            "every_202_stored": bool(stored >= accepted and keys == stored and jobs == stored),
            "accepted_202_counted_by_client": accepted,
            "messages_stored": stored,
            "idempotency_keys_stored": keys,
            "jobs_queued": jobs,
            "note": "stored >= counted: requests in flight when wrk stops are answered but "
            "not counted",
        },
        "probe_response": ct_probe,
        "commtunnel_detail": c,
        "baseline_detail": b,
        "baseline_after_detail": b2,
    }
