"""The synchronous facade, as a Flask view or a script would use it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from commtunnel import Settings, SyncCommtunnel
from commtunnel.domain.errors import SenderNotVerifiedError
from commtunnel.domain.messages import Status
from commtunnel.testing import MockProvider


def test_sync_send_deliver_and_read(tmp_path: Path) -> None:
    """Send, deliver and read back with plain blocking calls."""
    provider = MockProvider()
    with SyncCommtunnel(
        db=tmp_path / "s.db", email_provider=provider, settings=Settings(embedded_worker=False)
    ) as ct:
        ct.call(ct.ct.admin.add_sender, ct.ct.org.id, "example.com")
        sent = ct.email.send(from_="a@example.com", to="b@example.org", subject="Hi", text="x")
        assert ct.run_worker_until_idle() == 1
        got = ct.email.get(sent.message.id)
        assert got.message.status == Status.SENT
        assert [e.type for e in ct.email.timeline(sent.message.id)][-1] == "email_sent"
        with pytest.raises(SenderNotVerifiedError):
            ct.email.send(from_="a@elsewhere.com", to="b@example.org", subject="Hi", text="x")
    assert provider.closed


def test_sync_background_worker_delivers(tmp_path: Path) -> None:
    """With background_worker=True, accepted mail is delivered without further calls."""
    provider = MockProvider()
    with SyncCommtunnel(
        background_worker=True,
        db=tmp_path / "b.db",
        email_provider=provider,
        settings=Settings(embedded_worker=False),
    ) as ct:
        ct.call(ct.ct.admin.add_sender, ct.ct.org.id, "example.com")
        sent = ct.email.send(from_="a@example.com", to="b@example.org", subject="Hi", text="x")
        deadline = time.monotonic() + 5
        while ct.email.get(sent.message.id).message.status != Status.SENT:
            assert time.monotonic() < deadline, "background worker did not deliver within 5 s"
            time.sleep(0.01)
    assert len(provider.sent) == 1
