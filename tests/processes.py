"""Helpers for tests that start real processes: ``commtunnel serve``/``worker`` and fakes.

Every wait here is bounded (a deadline, never a bare sleep-and-hope) and
fails naming what it waited for.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

#: How long a process may take to start answering, seconds.
STARTUP_SECONDS = 15.0


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without COMMTUNNEL_* settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMMTUNNEL_")}
    env.update(extra)
    return env


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Spawned(subprocess.Popen[bytes]):
    """A process whose stdout and stderr go to files, readable while it runs.

    Args:
        args: the command line.
        logs: the stdout and stderr files' path without suffix (``.out``/``.err`` added).
        env: the environment (default: :func:`clean_env`).
    """

    def __init__(self, args: list[str], *, logs: Path, env: dict[str, str] | None = None) -> None:
        self.stdout_path = logs.with_suffix(".out")
        self.stderr_path = logs.with_suffix(".err")
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            super().__init__(
                args, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env or clean_env()
            )

    def stdout_text(self) -> str:
        """What the process wrote on stdout so far."""
        return self.stdout_path.read_text(errors="replace")

    def stderr_text(self) -> str:
        """What the process wrote on stderr so far."""
        return self.stderr_path.read_text(errors="replace")


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` every 50 ms until it holds; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def wait_until_answering(url: str, proc: Spawned, what: str) -> None:
    """Poll ``GET url`` until it answers 200; fail at once (with its stderr) if ``proc`` exits."""

    def answering() -> bool:
        assert proc.poll() is None, f"{what}: the process exited\n{proc.stderr_text()}"
        try:
            return httpx.get(url, timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(answering, STARTUP_SECONDS, what)


def serve(
    spawn: Callable[..., Spawned], db: Path | str, *args: str, **kwargs: str
) -> tuple[Spawned, str]:
    """Start ``commtunnel serve --db DB`` on a free port and wait for ``/healthz``.

    Args:
        spawn: the ``spawn`` fixture.
        db: the database file, or a ``COMMTUNNEL_DB`` URL (``postgresql://...``).
        *args: more ``serve`` flags.
        **kwargs: passed to ``spawn`` (``env=``).

    Returns:
        The process and its base URL (``http://127.0.0.1:<port>``).
    """
    port = free_port()
    server = spawn("serve", "--db", str(db), "--port", str(port), *args, **kwargs)
    base = f"http://127.0.0.1:{port}"
    wait_until_answering(f"{base}/healthz", server, "/healthz")
    return server, base


def stop_cleanly(proc: Spawned) -> None:
    """SIGTERM ``proc``; it must exit with status 0 within 10 s and without a traceback."""
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0, proc.stderr_text()
    assert "Traceback" not in proc.stderr_text()


def cli(db: Path | str, *args: str) -> str:
    """Run ``python -m commtunnel ARGS --db DB`` to completion (exit 0); return its stdout.

    ``db`` is a database file or a ``COMMTUNNEL_DB`` URL (``postgresql://...``).
    """
    done = subprocess.run(
        [sys.executable, "-m", "commtunnel", *args, "--db", str(db)],
        capture_output=True,
        text=True,
        timeout=30,
        env=clean_env(),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def org_with_key(
    db: Path | str, scopes: str, *, org: str = "acme", sender: str | None = None
) -> str:
    """Create organization ``org`` with the CLI and an API key with ``scopes``; return the key.

    Args:
        scopes: comma-separated, e.g. ``send:email,read:email``.
        sender: a verified sender (address or domain) to add, if any.
    """
    cli(db, "orgs", "create", org)
    key: str = json.loads(cli(db, "keys", "create", "--org", org, "--scopes", scopes, "--json"))[
        "key"
    ]
    if sender is not None:
        cli(db, "senders", "add", "--org", org, sender)
    return key
