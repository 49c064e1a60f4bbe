"""Harness helpers: logging to stderr, free ports, subprocesses that are always cleaned up."""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parent.parent


def log(*parts: object) -> None:
    """Progress goes to stderr; stdout carries only the final JSON object."""
    print("[bench]", *parts, file=sys.stderr, flush=True)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[Any] | None, timeout: float = 30.0) -> None:
    """Wait until something accepts connections on 127.0.0.1:``port``.

    Raises:
        RuntimeError: the process exited first, or the timeout passed.
    """
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with code {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listened on port {port} within {timeout:g} s")


def stop_process(proc: subprocess.Popen[Any], *, grace: float = 5.0) -> None:
    """Terminate ``proc`` (its whole process group), then kill it if it lingers."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        proc.terminate()
    try:
        proc.wait(timeout=grace)
        return
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    proc.wait(timeout=grace)


@contextlib.contextmanager
def managed_process(
    args: Sequence[str],
    *,
    stdin: int | IO[Any] | None = subprocess.DEVNULL,
    stdout: int | IO[Any] | None = subprocess.DEVNULL,
    stderr: int | IO[Any] | None = None,
    env: dict[str, str] | None = None,
    text: bool = False,
) -> Iterator[subprocess.Popen[Any]]:
    """Start ``args`` in its own session; always terminate (then kill) it on exit."""
    proc = subprocess.Popen(
        list(args),
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        env=env,
        text=text,
        start_new_session=True,  # own process group: killpg reaches its children too
        cwd=REPO,
    )
    try:
        yield proc
    finally:
        stop_process(proc)


def machine_info() -> dict[str, Any]:
    """What the figures were measured on."""
    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "sqlite": sqlite3.sqlite_version,
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError, AttributeError):
        info["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    return info


def background_cpu(seconds: float = 1.0) -> float | None:
    """Share of all CPUs busy during ``seconds`` while the harness itself sleeps.

    Other work on the machine (a test suite, a build) takes CPU from one side of
    a ratio and not the other: this says how busy the machine was just before.
    """

    def busy_total() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields) - idle, sum(fields)

    try:
        b0, t0 = busy_total()
        time.sleep(seconds)
        b1, t1 = busy_total()
    except (OSError, ValueError, IndexError):
        return None
    return round((b1 - b0) / (t1 - t0), 3) if t1 > t0 else None


def ratio(value: float, baseline: float) -> float | None:
    """``value / baseline`` rounded, or None when the baseline is zero."""
    return round(value / baseline, 3) if baseline else None
