"""Shared fixtures: an in-process Commtunnel on a real SQLite file with a manual clock."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from commtunnel import Commtunnel, Settings
from commtunnel.testing import ManualClock, MockProvider, MockSmsProvider


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
