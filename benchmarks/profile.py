"""Profile the hot paths: in-process accept, worker delivery, and the HTTP server under load.

    .venv/bin/pip install py-spy pyinstrument        # profilers: not project dependencies
    .venv/bin/python -m benchmarks.profile --out /tmp/ct-profiles [--only accept,delivery,http]

py-spy (a sampling profiler in another process: it does not slow the code
it watches) records only the timed phase: it is attached to this process
when the phase starts and stopped when it ends; for ``http`` it is attached
to the ``commtunnel serve`` process while wrk loads it. Each profile is
written as collapsed stacks (``NAME.collapsed``, for flamegraph.pl or
speedscope) and summarized in ``NAME.txt``: frames by inclusive share of
samples, then by self share. With ``--tool pyinstrument`` (accept and
delivery only) a call tree is written instead; it instruments every call, so
it inflates the cost of code made of many small calls.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks import delivery, http_accept, inprocess_accept, payload
from benchmarks._util import free_port, log, managed_process

_LINE = re.compile(r":\d+\)$")


def summarize(collapsed: Path, *, top: int = 45, keep: tuple[str, ...] = ()) -> str:
    """Frames of a collapsed-stack file by inclusive and by self share of the samples.

    Args:
        collapsed: py-spy ``--format raw`` output.
        top: rows per table.
        keep: only stacks containing one of these substrings (all when empty).
    """
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        if keep and not any(k in stack for k in keep):
            continue
        n = int(count)
        total += n
        frames = [_LINE.sub(")", f) for f in stack.split(";")]
        for frame in set(frames):
            inclusive[frame] += n
        own[frames[-1]] += n
    if not total:
        return "no samples\n"
    out = [f"{total} samples\n", "== inclusive (share of samples with the frame on the stack)"]
    # Frames on (nearly) every stack are the trunk (event loop, runners): skip them.
    rows = [(f, n) for f, n in inclusive.most_common() if n < 0.9 * total]
    out += [f"{100 * n / total:6.1f}%  {f}" for f, n in rows[:top]]
    out += ["", "== self (share of samples where the frame is the innermost Python frame)"]
    out += [f"{100 * n / total:6.1f}%  {f}" for f, n in own.most_common(top // 2)]
    return "\n".join(out) + "\n"


def _py_spy() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


@contextlib.contextmanager
def py_spy(pid: int, out: Path, *, rate: int = 250) -> Iterator[None]:
    """Sample ``pid`` with py-spy for the duration of the block (raw collapsed stacks)."""
    exe = _py_spy()
    if exe is None:
        raise RuntimeError("py-spy is not installed: .venv/bin/pip install py-spy")
    proc = subprocess.Popen(
        [
            exe,
            "record",
            "--pid",
            str(pid),
            "--nonblocking",
            "--rate",
            str(rate),
            "--format",
            "raw",
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    time.sleep(0.5)  # let it attach
    try:
        yield
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if not out.exists():
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise RuntimeError(f"py-spy wrote no profile: {err[-500:]}")


@contextlib.contextmanager
def pyinstrument_tree(out: Path) -> Iterator[None]:
    """Run the block under pyinstrument and write its call tree as text."""
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.001, async_mode="disabled")
    profiler.start()
    try:
        yield
    finally:
        profiler.stop()
        out.write_text(profiler.output_text(unicode=False, color=False))


def _phase(tool: str, out: Path, name: str) -> contextlib.AbstractContextManager[Any]:
    if tool == "pyinstrument":
        return pyinstrument_tree(out / f"{name}.pyinstrument.txt")
    return py_spy(os.getpid(), out / f"{name}.collapsed")


def profile_accept(out: Path, tool: str, sends: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ct-prof-") as tmp:
        result = asyncio.run(
            inprocess_accept._commtunnel(
                Path(tmp) / "p.db",
                total=sends,
                concurrency=64,
                keyed=True,
                warmup=500,
                phase=_phase(tool, out, "accept"),
            )
        )
    return result


def profile_delivery(out: Path, tool: str, messages: int) -> dict[str, Any]:
    port = free_port()
    with (
        tempfile.TemporaryDirectory(prefix="ct-prof-") as tmp,
        managed_process(
            [sys.executable, "-m", "benchmarks.sink", "--port", str(port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        ) as proc,
    ):
        assert proc.stdout is not None
        ready = proc.stdout.readline().split()
        sink = delivery.Sink(proc, port, ready[2])
        return asyncio.run(
            delivery._commtunnel(
                sink,
                Path(tmp),
                messages=messages,
                pool_size=8,
                concurrency=32,
                phase=_phase(tool, out, "delivery"),
            )
        )


def profile_http(out: Path, seconds: float) -> dict[str, Any]:
    wrk, _note = http_accept.ensure_wrk()
    with tempfile.TemporaryDirectory(prefix="ct-prof-") as tmp:
        root = Path(tmp)
        body_file = root / "body.json"
        body_file.write_bytes(payload.http_body())
        with http_accept.commtunnel_server(root) as (proc, port, token, _db):
            common: dict[str, Any] = {
                "wrk": wrk,
                "port": port,
                "connections": 64,
                "threads": 1,
                "token": token,
                "body_file": body_file,
            }
            http_accept.load(seconds=2, nonce=f"warm-{time.time_ns()}", **common)
            with py_spy(proc.pid, out / "http.collapsed"):
                result = http_accept.load(seconds=seconds, nonce=f"prof-{time.time_ns()}", **common)
    return {"rps": result["rps"], "latency_us": result["latency_us"], "non202": result["non202"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "ct-profiles")
    parser.add_argument("--only", default="accept,delivery,http")
    parser.add_argument("--tool", choices=("py-spy", "pyinstrument"), default="py-spy")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    selected = {s.strip() for s in args.only.split(",")}
    for name in ("accept", "delivery", "http"):
        if name not in selected:
            continue
        if name == "http" and args.tool != "py-spy":
            log("http: profiled with py-spy only (the server is another process)")
        log(f"profiling {name} with {args.tool if name != 'http' else 'py-spy'}")
        if name == "accept":
            figures = profile_accept(args.out, args.tool, 5_000 if args.quick else 20_000)
        elif name == "delivery":
            figures = profile_delivery(args.out, args.tool, 2_000 if args.quick else 5_000)
        else:
            figures = profile_http(args.out, 4 if args.quick else 8)
        log(f"{name}: {figures.get('rps')} /s while profiled")
        collapsed = args.out / f"{name}.collapsed"
        if collapsed.exists() and (name == "http" or args.tool == "py-spy"):
            (args.out / f"{name}.txt").write_text(summarize(collapsed))
            log(f"{name}: wrote {args.out / (name + '.txt')}")
        else:
            log(f"{name}: wrote {args.out / (name + '.pyinstrument.txt')}")


if __name__ == "__main__":
    main()
