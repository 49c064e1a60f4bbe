"""Public test helpers: a manual clock and recording email and SMS providers.

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
from typing import Generic, TypeVar

from commtunnel.domain.delivery import ProviderResult
from commtunnel.domain.errors import NotFoundError
from commtunnel.ports import DeliveryReceipt, OutgoingEmail, OutgoingSms

#: the start time of a fresh ManualClock: fixed, so tests are reproducible.
EPOCH = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


class ManualClock:
    """A clock that moves only when told to.

    Args:
        start: the initial time (timezone-aware); defaults to :data:`EPOCH`.

    Raises:
        ValueError: ``start`` is naive.
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
        """Seconds advanced since creation (starts at 0.0)."""
        return self._mono

    def advance(self, seconds: float) -> datetime:
        """Move time forward by ``seconds`` (>= 0) and return the new now.

        Raises:
            ValueError: ``seconds`` is negative (time only moves forward).
        """
        if seconds < 0:
            raise ValueError("time only moves forward")
        self._now += timedelta(seconds=seconds)
        self._mono += seconds
        return self._now

    def set(self, when: datetime) -> None:
        """Jump to ``when`` (timezone-aware).

        Raises:
            ValueError: ``when`` is earlier than now.
        """
        self.advance((when - self._now).total_seconds())


_Item = TypeVar("_Item")
Handler = Callable[[OutgoingEmail], ProviderResult | Awaitable[ProviderResult]]
SmsHandler = Callable[[OutgoingSms], ProviderResult | Awaitable[ProviderResult]]


class _Recording(Generic[_Item]):
    """What both mock providers do: record each item, answer with the handler's result.

    Without a handler every item is accepted with id ``<id_prefix>-<n>``
    (n counts from 1).
    """

    def __init__(
        self,
        handler: Callable[[_Item], ProviderResult | Awaitable[ProviderResult]] | None,
        *,
        name: str,
        id_prefix: str,
    ) -> None:
        self.name = name
        self.sent: list[_Item] = []
        self.closed = False
        self._handler = handler
        self._id_prefix = id_prefix

    async def _answer(self, item: _Item) -> ProviderResult:
        self.sent.append(item)
        if self._handler is None:
            return ProviderResult.accepted(f"{self._id_prefix}-{len(self.sent)}")
        result = self._handler(item)
        if isinstance(result, ProviderResult):
            return result
        return await result

    async def aclose(self) -> None:
        """Mark closed (tests assert the facade closes its providers)."""
        self.closed = True


class MockProvider(_Recording[OutgoingEmail]):
    """An email provider that records what it is given and answers with ``handler``.

    Args:
        handler: called for each email; returns the result (sync or async).
            Defaults to accepting everything with id ``mock-<n>``.
        name: the provider name recorded on attempts.

    Attributes:
        sent: every email handed over, in order (accepted or not).
        closed: whether :meth:`aclose` was called.
    """

    def __init__(self, handler: Handler | None = None, *, name: str = "mock") -> None:
        super().__init__(handler, name=name, id_prefix="mock")

    async def send_email(self, email: OutgoingEmail) -> ProviderResult:
        """Record ``email`` and return the handler's result."""
        return await self._answer(email)


class MockSmsProvider(_Recording[OutgoingSms]):
    """An SMS provider that records what it is given and answers with ``handler``.

    Args:
        handler: called for each SMS; returns the result (sync or async).
            Defaults to accepting everything with id ``mock-sms-<n>``.
        name: the provider name recorded on attempts.

    Attributes:
        sent: every SMS handed over, in order (accepted or not).
        closed: whether :meth:`aclose` was called.
    """

    def __init__(self, handler: SmsHandler | None = None, *, name: str = "mock-sms") -> None:
        super().__init__(handler, name=name, id_prefix="mock-sms")

    async def send_sms(self, sms: OutgoingSms) -> ProviderResult:
        """Record ``sms`` and return the handler's result."""
        return await self._answer(sms)

    def parse_status_callback(
        self, *, url: str, headers: Mapping[str, str], body: bytes
    ) -> list[DeliveryReceipt]:
        """The mock has no signed callbacks.

        Raises:
            NotFoundError: always.
        """
        raise NotFoundError("This SMS provider has no status callbacks")
