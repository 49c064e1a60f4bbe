"""Property tests: any interleaving of requests sharing keys yields one message per key."""

from __future__ import annotations

import asyncio
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from commtunnel import Commtunnel, Settings
from commtunnel.domain.errors import IdempotencyKeyInUseError, IdempotencyKeyReusedError
from commtunnel.testing import ManualClock, MockProvider

requests = st.lists(
    st.tuples(st.sampled_from(["k1", "k2", "k3"]), st.sampled_from(["A", "B"])),
    min_size=1,
    max_size=12,
)


async def _run(batch: list[tuple[str, str]], seed: int) -> None:
    rng = random.Random(seed)
    async with Commtunnel.open(
        db=":memory:",
        email_provider=MockProvider(),
        clock=ManualClock(),
        settings=Settings(embedded_worker=False),
    ) as ct:
        await ct.admin.add_sender(ct.org.id, "example.com")

        async def one(key: str, subject: str) -> tuple[str, str, object]:
            for _ in range(rng.randrange(3)):  # shuffle the interleaving
                await asyncio.sleep(0)
            try:
                result = await ct.email.send(
                    from_="a@example.com",
                    to="b@example.org",
                    subject=subject,
                    text="t",
                    idempotency_key=key,
                )
            except (IdempotencyKeyInUseError, IdempotencyKeyReusedError) as exc:
                return key, subject, exc
            return key, subject, result

        outcomes = await asyncio.gather(*(one(k, s) for k, s in batch))
        await ct.run_worker_until_idle()
        stored = ct.backend.conn.execute("SELECT key, message_id FROM idempotency_keys").fetchall()
        winners = dict(stored)
        messages = ct.backend.conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
        assert messages == len({k for k, _ in batch}) == len(winners)
        assert len(ct.email_provider.sent) == messages  # type: ignore[attr-defined]
        winning_subject = {}
        for key, message_id in winners.items():
            msg = await ct.backend.get_message(ct.org.id, message_id)
            winning_subject[key] = msg.email.subject  # type: ignore[union-attr]
        for key, subject, outcome in outcomes:
            if isinstance(outcome, IdempotencyKeyReusedError):
                assert subject != winning_subject[key]
            elif isinstance(outcome, IdempotencyKeyInUseError):
                continue
            else:
                assert outcome.message.id == winners[key]  # type: ignore[attr-defined]
                assert subject == winning_subject[key]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests, st.integers(0, 2**16))
def test_one_message_per_key_under_any_interleaving(
    batch: list[tuple[str, str]], seed: int
) -> None:
    """However requests interleave, each key yields exactly one message and delivery."""
    asyncio.run(_run(batch, seed))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(["k1", "k2"]), min_size=1, max_size=8))
def test_sequential_replays_are_duplicates(keys: list[str]) -> None:
    """Sequential repeats of a key return the first message with duplicate=True."""

    async def run() -> None:
        async with Commtunnel.open(
            db=":memory:",
            email_provider=MockProvider(),
            clock=ManualClock(),
            settings=Settings(embedded_worker=False),
        ) as ct:
            await ct.admin.add_sender(ct.org.id, "example.com")
            first: dict[str, str] = {}
            for key in keys:
                r = await ct.email.send(
                    from_="a@example.com",
                    to="b@example.org",
                    subject="s",
                    text="t",
                    idempotency_key=key,
                )
                assert r.duplicate == (key in first)
                assert r.message.id == first.setdefault(key, r.message.id)

    asyncio.run(run())
