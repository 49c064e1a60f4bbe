"""The synchronous facade, as a Flask view or a script would use it."""

from __future__ import annotations

import inspect
import time
from datetime import timedelta
from pathlib import Path

import pytest

import pg
from commtunnel import Settings, SyncCommtunnel
from commtunnel.client import EmailClient, SmsClient
from commtunnel.domain.errors import SenderNotVerifiedError
from commtunnel.domain.messages import Status
from commtunnel.testing import EPOCH, ManualClock, MockProvider, MockSmsProvider


def test_sync_send_deliver_and_read(tmp_path: Path) -> None:
    """Send, deliver and read back with plain blocking calls."""
    provider = MockProvider()
    with SyncCommtunnel(
        db=pg.fresh_db(tmp_path / "s.db"),
        email_provider=provider,
        settings=Settings(embedded_worker=False),
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
        db=pg.fresh_db(tmp_path / "b.db"),
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


def public_methods(cls: type) -> set[str]:
    """Names of the public methods defined on ``cls`` or its bases (``object``'s excluded)."""
    return {n for n, _ in inspect.getmembers(cls, callable) if not n.startswith("_")}


def test_sync_clients_have_every_method_of_the_async_ones(tmp_path: Path) -> None:
    """``sc.email`` and ``sc.sms`` offer each method of EmailClient and SmsClient, same docs."""
    with SyncCommtunnel(db=pg.fresh_db(tmp_path / "m.db"), email_provider=MockProvider()) as sc:
        pairs = [(type(sc.email), EmailClient), (type(sc.sms), SmsClient)]
    for sync_cls, async_cls in pairs:
        assert public_methods(sync_cls) == public_methods(async_cls)
        for name in public_methods(async_cls):
            assert getattr(sync_cls, name).__doc__ == getattr(async_cls, name).__doc__


def test_sync_clients_block_for_each_result(tmp_path: Path) -> None:
    """Preview, stats and the SMS reads answer what the async clients answer, synchronously."""
    sms_provider = MockSmsProvider(name="sms")
    with SyncCommtunnel(
        db=pg.fresh_db(tmp_path / "r.db"),
        email_provider=MockProvider(),
        sms_provider=sms_provider,
        clock=ManualClock(),
        settings=Settings(embedded_worker=False, sms_default_sender_id="INFO"),
    ) as sc:
        sc.call(sc.ct.admin.add_sender, sc.ct.org.id, "example.com")
        rendered = sc.email.preview(subject="Hi {{ name }}", text="x", variables={"name": "Bo"})
        assert rendered.subject == "Hi Bo"
        sc.email.send(from_="a@example.com", to="b@example.org", subject="Hi", text="x")
        stats = sc.email.stats(start=EPOCH, end=EPOCH + timedelta(seconds=1))
        assert (stats.total, stats.by_status) == (1, {"QUEUED": 1})
        sent = sc.sms.send(to="+14155552671", sender_id="INFO", body="hello")
        assert sc.run_worker_until_idle() == 2
        assert [m.id for m in sc.sms.list(status="SENT").items] == [sent.message.id]
        types = [e.type for e in sc.sms.timeline(sent.message.id, limit=2)]
        assert types == ["sms_queued", "sms_processing"]
    assert len(sms_provider.sent) == 1
