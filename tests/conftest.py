"""Shared fixtures: an in-process Commtunnel on a real SQLite file with a manual clock."""

from __future__ import annotations

import random
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from commtunnel import Commtunnel, Settings
from commtunnel.testing import ManualClock, MockProvider, MockSmsProvider
from processes import Spawned


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def provider() -> MockProvider:
    return MockProvider()


@pytest.fixture
def sms_provider() -> MockSmsProvider:
    return MockSmsProvider()


@pytest.fixture
def settings() -> Settings:
    return Settings(embedded_worker=False, lease_seconds=60, send_timeout=5)


@pytest.fixture
async def ct(
    tmp_path: Path,
    clock: ManualClock,
    provider: MockProvider,
    sms_provider: MockSmsProvider,
    settings: Settings,
) -> AsyncIterator[Commtunnel]:
    async with Commtunnel.open(
        db=tmp_path / "ct.db",
        email_provider=provider,
        sms_provider=sms_provider,
        clock=clock,
        settings=settings,
        rng=random.Random(7),
    ) as facade:
        await facade.admin.add_sender(facade.org.id, "example.com")
        yield facade


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Spawned]]:
    """Start ``python -m commtunnel ARGS``; output goes to ``procN.out``/``procN.err``.

    Every process started is killed (if still running) and reaped afterwards.
    """
    procs: list[Spawned] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Spawned:
        proc = Spawned(
            [sys.executable, "-m", "commtunnel", *args],
            logs=tmp_path / f"proc{len(procs)}",
            env=env,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
