"""Public test helpers: a manual clock and a recording provider.

Apps that embed Commtunnel use these in their own tests, as the project does::

    clock = ManualClock()
    provider = MockProvider()                       # accepts everything
    async with Commtunnel.open(db=tmp_path / "ct.db", email_provider=provider,
                               clock=clock) as ct:
        await ct.email.send(...)
        await ct.run_worker_until_idle()
        assert provider.sent[0].content.subject == "Hi"
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta

from commtunnel.domain.delivery import ProviderResult
from commtunnel.domain.errors import NotFoundError
from commtunnel.ports import DeliveryReceipt, OutgoingEmail, OutgoingSms

#: the start time of a fresh ManualClock: fixed, so tests are reproducible.
EPOCH = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


class ManualClock:
    """A clock that moves only when told to.

    Args:
        start: the initial time (timezone-aware); defaults to :data:`EPOCH`.
    """

    def __init__(self, start: datetime = EPOCH) -> None:
        if start.tzinfo is None:
            raise ValueError("ManualClock needs a timezone-aware start time")
        self._now = start
        self._mono = 0.0

    def now(self) -> datetime:
        """The current manual time."""
        return self._now

    def monotonic(self) -> float:
        """Seconds advanced since creation."""
        return self._mono

    def advance(self, seconds: float) -> datetime:
        """Move time forward by ``seconds`` (>= 0) and return the new now."""
        if seconds < 0:
            raise ValueError("time only moves forward")
        self._now += timedelta(seconds=seconds)
        self._mono += seconds
        return self._now

    def set(self, when: datetime) -> None:
        """Jump to ``when`` (not earlier than now)."""
        self.advance((when - self._now).total_seconds())


Handler = Callable[[OutgoingEmail], ProviderResult | Awaitable[ProviderResult]]


class MockProvider:
    """An email provider that records what it is given and answers with ``handler``.

    Args:
        handler: called for each email; returns the result (sync or async).
            Defaults to accepting everything with id ``mock-<n>``.
        name: the provider name recorded on attempts.

    Attributes:
        sent: every email handed over, in order (accepted or not).
    """

    def __init__(self, handler: Handler | None = None, *, name: str = "mock") -> None:
        self.name = name
        self.sent: list[OutgoingEmail] = []
        self._handler = handler
        self.closed = False

    async def send_email(self, email: OutgoingEmail) -> ProviderResult:
        """Record ``email`` and return the handler's result."""
        self.sent.append(email)
        if self._handler is None:
            return ProviderResult.accepted(f"mock-{len(self.sent)}")
        result = self._handler(email)
        if isinstance(result, ProviderResult):
            return result
        return await result

    async def aclose(self) -> None:
        """Mark closed (tests assert the facade closes its providers)."""
        self.closed = True


SmsHandler = Callable[[OutgoingSms], ProviderResult | Awaitable[ProviderResult]]


class MockSmsProvider:
    """An SMS provider that records what it is given and answers with ``handler``.

    Args:
        handler: called for each SMS; returns the result (sync or async).
            Defaults to accepting everything with id ``mock-sms-<n>``.
        name: the provider name recorded on attempts.

    Attributes:
        sent: every SMS handed over, in order (accepted or not).
    """

    def __init__(self, handler: SmsHandler | None = None, *, name: str = "mock-sms") -> None:
        self.name = name
        self.sent: list[OutgoingSms] = []
        self._handler = handler
        self.closed = False

    async def send_sms(self, sms: OutgoingSms) -> ProviderResult:
        """Record ``sms`` and return the handler's result."""
        self.sent.append(sms)
        if self._handler is None:
            return ProviderResult.accepted(f"mock-sms-{len(self.sent)}")
        result = self._handler(sms)
        if isinstance(result, ProviderResult):
            return result
        return await result

    def parse_status_callback(
        self, *, url: str, headers: Mapping[str, str], body: bytes
    ) -> list[DeliveryReceipt]:
        """The mock has no signed callbacks.

        Raises:
            NotFoundError: always.
        """
        raise NotFoundError("This SMS provider has no status callbacks")

    async def aclose(self) -> None:
        """Mark closed."""
        self.closed = True
