"""The dispatch worker: status machine, attempts, backoff, failures, leases."""

from __future__ import annotations

import asyncio
import random
import re
from datetime import datetime, timedelta

import pytest

import pg
from commtunnel import Commtunnel
from commtunnel.domain.delivery import ErrorCategory, ProviderResult, RetryPolicy
from commtunnel.domain.errors import StorageUnavailableError
from commtunnel.domain.keys import ALL_SCOPES, Principal
from commtunnel.domain.messages import Status
from commtunnel.ports import Completion, OutgoingEmail
from commtunnel.services.dispatch import Dispatcher
from commtunnel.testing import ManualClock, MockProvider

pytestmark = pytest.mark.anyio

BASE = {"from_": "shop@example.com", "to": "ann@example.org", "subject": "Hi", "text": "Hello"}


async def _types(ct: Commtunnel, message_id: str) -> list[str]:
    return [e.type for e in await ct.email.timeline(message_id)]


async def test_delivery_records_attempt_and_timeline(
    ct: Commtunnel, provider: MockProvider
) -> None:
    """QUEUED -> PROCESSING -> SENT, one accepted attempt, provider id stored."""
    sent = await ct.email.send(**BASE)
    assert await ct.run_worker_until_idle() == 1
    status = await ct.email.get(sent.message.id)
    assert status.message.status == Status.SENT
    assert status.message.provider_message_id == "mock-1"
    assert [(a.number, a.provider, a.outcome) for a in status.attempts] == [(1, "mock", "accepted")]
    assert await _types(ct, sent.message.id) == ["email_queued", "email_processing", "email_sent"]
    assert provider.sent[0].content.message_id_header == sent.message.email.message_id_header  # type: ignore[union-attr]
    assert await ct.backend.pending_job_count() == 0


async def test_transient_failure_backs_off_then_delivers(
    ct: Commtunnel, clock: ManualClock
) -> None:
    """A transient error moves to RETRYING; nothing happens before the backoff; then SENT."""
    outcomes = [ProviderResult.transient(ErrorCategory.PROVIDER_OUTAGE, "421 busy")]
    ct.email_provider._handler = lambda e: (
        outcomes.pop() if outcomes else ProviderResult.accepted("ok")
    )  # type: ignore[attr-defined]
    sent = await ct.email.send(**BASE)
    await ct.run_worker_until_idle()
    status = await ct.email.get(sent.message.id)
    assert status.message.status == Status.RETRYING
    events = await ct.email.timeline(sent.message.id)
    retry = events[-1]
    assert retry.type == "email_retrying"
    assert retry.details["errorCategory"] == "PROVIDER_OUTAGE"
    wait = retry.details["retryInSeconds"]
    assert ct.settings.retry_base_delay / 2 <= wait <= ct.settings.retry_base_delay
    clock.advance(wait - 0.01)
    assert await ct.run_worker_until_idle() == 0  # not due yet
    clock.advance(0.02)
    assert await ct.run_worker_until_idle() == 1
    final = await ct.email.get(sent.message.id)
    assert final.message.status == Status.SENT
    assert [a.outcome for a in final.attempts] == ["transient", "accepted"]
    assert await _types(ct, sent.message.id) == [
        "email_queued",
        "email_processing",
        "email_retrying",
        "email_processing",
        "email_sent",
    ]


async def test_retry_event_says_when_in_the_wire_time_format(
    ct: Commtunnel, clock: ManualClock
) -> None:
    """``details.retryAt`` is UTC with milliseconds and ``Z``, ``retryInSeconds`` from now."""
    ct.email_provider._handler = lambda e: ProviderResult.transient(  # type: ignore[attr-defined]
        ErrorCategory.PROVIDER_OUTAGE, "421 busy"
    )
    sent = await ct.email.send(**BASE)
    await ct.run_worker_until_idle()
    retry = (await ct.email.timeline(sent.message.id))[-1]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", retry.details["retryAt"])
    due = datetime.fromisoformat(retry.details["retryAt"])
    expected = clock.now() + timedelta(seconds=retry.details["retryInSeconds"])
    assert abs(due - expected) < timedelta(milliseconds=2)


async def test_retries_stop_at_max_attempts(tmp_path, clock: ManualClock) -> None:  # type: ignore[no-untyped-def]
    """After max_attempts transient failures the message is FAILED with every attempt kept."""
    from commtunnel import Settings

    failing = MockProvider(lambda e: ProviderResult.transient(ErrorCategory.TIMEOUT, "slow"))
    settings = Settings(max_attempts=3, retry_base_delay=1, retry_max_delay=4, send_timeout=5)
    async with Commtunnel.open(
        db=pg.fresh_db(tmp_path / "r.db"),
        email_provider=failing,
        clock=clock,
        settings=settings,
        rng=random.Random(1),
    ) as ct:
        await ct.admin.add_sender(ct.org.id, "example.com")
        sent = await ct.email.send(**BASE)
        for _ in range(5):
            await ct.run_worker_until_idle()
            clock.advance(10)
        status = await ct.email.get(sent.message.id)
        assert status.message.status == Status.FAILED
        assert len(status.attempts) == 3 == len(failing.sent)
        last = (await ct.email.timeline(sent.message.id))[-1]
        assert last.type == "email_failed" and "gave up after 3" in last.details["reason"]


@pytest.mark.parametrize(
    ("category", "status", "event"),
    [
        (ErrorCategory.INVALID_RECIPIENT, Status.BOUNCED, "email_bounced"),
        (ErrorCategory.REJECTED, Status.FAILED, "email_failed"),
    ],
)
async def test_permanent_failure_is_final(
    ct: Commtunnel, category: ErrorCategory, status: Status, event: str
) -> None:
    """A permanent failure ends delivery at once (invalid recipient is a bounce)."""
    ct.email_provider._handler = lambda e: ProviderResult.permanent(category, "550 no")  # type: ignore[attr-defined]
    sent = await ct.email.send(**BASE)
    await ct.run_worker_until_idle()
    got = await ct.email.get(sent.message.id)
    assert got.message.status == status
    assert got.attempts[0].error_category == str(category)
    assert (await _types(ct, sent.message.id))[-1] == event
    assert await ct.backend.pending_job_count() == 0


async def test_provider_exception_is_classified_not_fatal(ct: Commtunnel) -> None:
    """A provider that raises leaves the message RETRYING with UNKNOWN, and the worker goes on."""

    def boom(email: OutgoingEmail) -> ProviderResult:
        raise RuntimeError("driver bug")

    ct.email_provider._handler = boom  # type: ignore[attr-defined]
    sent = await ct.email.send(**BASE)
    await ct.run_worker_until_idle()
    got = await ct.email.get(sent.message.id)
    assert got.message.status == Status.RETRYING
    assert got.attempts[0].error_category == "UNKNOWN"
    assert "RuntimeError: driver bug" in (got.attempts[0].error_message or "")


async def test_hanging_provider_times_out(tmp_path, clock: ManualClock) -> None:  # type: ignore[no-untyped-def]
    """A provider call longer than send_timeout is a transient TIMEOUT."""
    from commtunnel import Settings

    async def hang(email: OutgoingEmail) -> ProviderResult:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    settings = Settings(send_timeout=0.05, lease_seconds=60)
    async with Commtunnel.open(
        db=pg.fresh_db(tmp_path / "h.db"),
        email_provider=MockProvider(hang),
        clock=clock,
        settings=settings,
    ) as ct:
        await ct.admin.add_sender(ct.org.id, "example.com")
        sent = await ct.email.send(**BASE)
        await ct.run_worker_until_idle()
        got = await ct.email.get(sent.message.id)
        assert got.message.status == Status.RETRYING
        assert got.attempts[0].error_category == "TIMEOUT"


async def test_sandbox_never_reaches_the_provider(ct: Commtunnel, provider: MockProvider) -> None:
    """sandboxMode and ct_test_ keys walk the timeline but never reach the provider."""
    by_flag = await ct.email.send(**BASE, sandbox_mode=True)
    test_key = ct.email_for(Principal(org_id=ct.org.id, scopes=ALL_SCOPES, sandbox=True))
    by_key = await test_key.send(**BASE)
    await ct.run_worker_until_idle()
    assert provider.sent == []
    for sent in (by_flag, by_key):
        got = await ct.email.get(sent.message.id)
        assert got.message.sandbox and got.message.status == Status.SENT
        assert got.attempts[0].provider == "sandbox"


async def test_lost_lease_result_is_discarded(ct: Commtunnel, clock: ManualClock) -> None:
    """A worker whose lease expired and was re-claimed cannot overwrite the new owner's result."""
    sent = await ct.email.send(**BASE)
    slow = Dispatcher(ct.backend, ct.email_provider, clock, lease_seconds=30, send_timeout=5)
    jobs = await slow.claim(10)
    clock.advance(31)
    fast = Dispatcher(ct.backend, ct.email_provider, clock, lease_seconds=30, send_timeout=5)
    assert await fast.run_until_idle() == 1
    assert await slow.process(jobs[0]) is False
    got = await ct.email.get(sent.message.id)
    assert got.message.status == Status.SENT
    assert len(got.attempts) == 1
    processing = [
        e for e in await ct.email.timeline(sent.message.id) if e.type == "email_processing"
    ]
    assert [e.details.get("leaseExpired", False) for e in processing] == [False, True]


async def test_run_loop_wakes_on_new_work(ct: Commtunnel, provider: MockProvider) -> None:
    """The long-running loop delivers a message accepted while it idles, and stops on request."""
    stop = asyncio.Event()
    worker = asyncio.create_task(ct.run_worker(stop))
    await asyncio.sleep(0)
    sent = await ct.email.send(**BASE)
    for _ in range(500):  # bounded wait for the loop, not for a backoff
        if provider.sent:
            break
        await asyncio.sleep(0.005)
    stop.set()
    await asyncio.wait_for(worker, 5)
    got = await ct.email.get(sent.message.id)
    assert got.message.status == Status.SENT


def test_send_timeout_must_be_below_lease() -> None:
    """A send timeout at or above the lease would let two workers send at once: refused."""
    with pytest.raises(ValueError, match="shorter than lease"):
        Dispatcher(None, MockProvider(), ManualClock(), lease_seconds=10, send_timeout=10)  # type: ignore[arg-type]


def test_retry_policy_from_settings() -> None:
    """Settings build the worker's retry policy."""
    from commtunnel import Settings

    assert Settings(
        max_attempts=2, retry_base_delay=3, retry_max_delay=9
    ).retry_policy == RetryPolicy(max_attempts=2, base_delay=3, max_delay=9)


async def test_a_result_is_recorded_once_the_database_is_back(
    ct: Commtunnel, provider: MockProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The provider accepted: an unavailable database is waited out while the lease lasts."""
    sent = await ct.email.send(from_="a@example.com", to="b@example.org", subject="s", text="t")
    [job] = await ct.dispatcher.claim(1)
    real_complete = ct.backend.complete
    failures = [StorageUnavailableError("down"), StorageUnavailableError("still down")]

    async def flaky(completion: Completion) -> bool:
        if failures:
            raise failures.pop(0)
        return await real_complete(completion)

    monkeypatch.setattr(ct.backend, "complete", flaky)
    assert await ct.dispatcher.process(job)
    assert failures == []
    assert (await ct.email.get(sent.message.id)).message.status == Status.SENT
    assert len(provider.sent) == 1


async def test_a_result_is_given_up_when_the_lease_is_ending(
    ct: Commtunnel, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the lease another worker may hold the job: the error goes up instead."""
    await ct.email.send(from_="a@example.com", to="b@example.org", subject="s", text="t")
    [job] = await ct.dispatcher.claim(1)
    clock.advance(59.5)  # the lease is 60 s

    async def down(_completion: Completion) -> bool:
        raise StorageUnavailableError("down")

    monkeypatch.setattr(ct.backend, "complete", down)
    with pytest.raises(StorageUnavailableError):
        await ct.dispatcher.process(job)
