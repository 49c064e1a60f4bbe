"""Shared fixtures: an in-process Commtunnel on a real database with a manual clock.

``pytest --backend postgresql`` (or ``COMMTUNNEL_TEST_BACKEND=postgresql``)
runs every test that takes its database from :func:`pg.fresh_db` on a new
PostgreSQL schema instead of a SQLite file; ``./dev test`` runs both.
"""

from __future__ import annotations

import os
import random
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

import pg
from commtunnel import Commtunnel, Settings
from commtunnel.testing import ManualClock, MockProvider, MockSmsProvider
from processes import Spawned


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--backend",
        choices=("sqlite", "postgresql"),
        default=os.environ.get("COMMTUNNEL_TEST_BACKEND", "sqlite"),
        help="the database the tests' Commtunnel runs on (default: sqlite)",
    )


def pytest_configure(config: pytest.Config) -> None:
    pg.BACKEND = config.getoption("--backend")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leave the tests of PostgreSQL alone (``postgresql_only``) to the PostgreSQL pass."""
    if config.getoption("--backend") == "postgresql":
        return
    kept = [item for item in items if item.get_closest_marker("postgresql_only") is None]
    if len(kept) < len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in kept])
        items[:] = kept


def pytest_unconfigure(config: pytest.Config) -> None:
    pg.drop_spare()


def pytest_report_header(config: pytest.Config) -> str:
    return f"commtunnel backend: {config.getoption('--backend')}"


@pytest.fixture(autouse=True)
def _drop_schemas() -> Iterator[None]:
    """Release the PostgreSQL schemas a test used (after its processes are gone)."""
    yield
    pg.release_created()


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
        db=pg.fresh_db(tmp_path / "ct.db"),
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
