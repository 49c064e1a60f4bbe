"""Provider routing: a channel's providers in failover order, each behind a circuit breaker.

Which provider makes an attempt (:meth:`ProviderRoute.choose`):

1. The first attempt starts at the first provider of the list.
2. After a failure that another provider may fix
   (:attr:`~commtunnel.domain.delivery.ProviderResult.may_fail_over`: an outage,
   a timeout, refused credentials, a content refusal), the next attempt starts
   at the provider after the one that failed, wrapping round to the first.
   After a failure no other provider can fix (an invalid recipient) there is
   no next attempt; after a held one (a paused WhatsApp line) it stays.
3. From that start, providers whose circuit is open are passed over. When
   every circuit is open the attempt is not made: the dispatcher records a
   transient ``PROVIDER_OUTAGE`` and retries once the first circuit lets a
   probe through.

How long the next attempt waits is the dispatcher's rule: at once when it
moves on down the list to a provider whose circuit would take the call
(:meth:`ProviderRoute.next_after`), with the retry policy's backoff (the
provider's ``Retry-After`` as its floor) when it wraps round to the first
provider again or every later circuit is open.

Breakers live in the worker's memory (each worker judges the providers by
its own calls, as Hystrix-style breakers do); their health is written to
storage on every state change and at most every ``report_interval``
seconds otherwise, so that any server can show it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Generic, TypeVar

import attrs

from commtunnel.domain.circuit import CircuitBreaker, CircuitState, ProviderHealth
from commtunnel.domain.delivery import ErrorCategory, Outcome, ProviderResult
from commtunnel.domain.messages import Attempt

P = TypeVar("P")

#: what a provider's name in a route may look like (it is shown in attempts[]).
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@attrs.define
class RoutedProvider(Generic[P]):
    """One provider of a route: its name in attempts[], the provider, its breaker."""

    name: str
    provider: P
    breaker: CircuitBreaker


def _failed_over_from(previous: Attempt) -> bool:
    """Whether ``previous`` failed in a way that moves the next attempt down the list."""
    if previous.outcome == str(Outcome.ACCEPTED) or previous.error_category is None:
        return False
    try:
        category = ErrorCategory(previous.error_category)
    except ValueError:
        return True  # a category this version does not know: not a recipient fault
    return ProviderResult(outcome=Outcome(previous.outcome), error_category=category).may_fail_over


class ProviderRoute(Generic[P]):
    """A channel's providers in failover order.

    Args:
        channel: ``email`` or ``sms`` (shown in the health report).
        providers: (name, provider) pairs in order; names unique and not empty
            (names given in provider URLs match :data:`NAME_PATTERN`).
        failure_threshold: provider faults in a row that open a circuit.
        cooldown: seconds an open circuit waits before a half-open probe.
        report_interval: seconds between health reports without a state change.

    Raises:
        ValueError: no providers, an empty name or a duplicate one.
    """

    def __init__(
        self,
        channel: str,
        providers: Sequence[tuple[str, P]],
        *,
        failure_threshold: int = 5,
        cooldown: float = 30.0,
        report_interval: float = 5.0,
    ) -> None:
        if not providers:
            raise ValueError(f"the {channel} channel needs at least one provider")
        names = [name for name, _ in providers]
        if not all(names):
            raise ValueError("a provider name may not be empty")
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"provider names must be unique: {', '.join(duplicates)}")
        self.channel = channel
        self.routes: list[RoutedProvider[P]] = [
            RoutedProvider(
                name,
                provider,
                CircuitBreaker(failure_threshold=failure_threshold, cooldown=cooldown),
            )
            for name, provider in providers
        ]
        self._index = {route.name: i for i, route in enumerate(self.routes)}
        self._report_interval = timedelta(seconds=report_interval)
        self._last_report: datetime | None = None

    @classmethod
    def of(cls, channel: str, provider: P | ProviderRoute[P]) -> ProviderRoute[P]:
        """``provider`` when it is a route already, else a route of that one provider named
        after it (no failover; its breaker, with the default settings, still reports health)."""
        if isinstance(provider, ProviderRoute):
            return provider
        return cls(channel, [(provider.name, provider)])  # type: ignore[attr-defined]

    @property
    def primary(self) -> P:
        """The first provider of the list."""
        return self.routes[0].provider

    @property
    def names(self) -> list[str]:
        """The providers' names, in order."""
        return [route.name for route in self.routes]

    def choose(self, now: datetime, previous: Attempt | None) -> RoutedProvider[P] | None:
        """The provider for the next attempt (rules in the module docstring).

        Args:
            now: the current UTC time (the Clock's).
            previous: the message's last attempt, None before the first.

        Returns:
            The provider whose circuit lets the call through (a half-open one
            hands its probe to this call), or None when every circuit is open.
        """
        start = 0
        if previous is not None and previous.provider in self._index:
            start = self._index[previous.provider]
            if _failed_over_from(previous):
                start = (start + 1) % len(self.routes)
        for step in range(len(self.routes)):
            route = self.routes[(start + step) % len(self.routes)]
            if route.breaker.allows(now):
                return route
        return None

    def next_after(self, name: str, now: datetime) -> str | None:
        """The first provider after ``name`` in the list whose circuit would take a call now.

        Without wrapping round: None when every later provider's circuit is
        open (the next attempt then waits for the backoff), at the end of the
        list, and for a name not in the route (``sandbox``, ``none``).
        """
        index = self._index.get(name)
        if index is None:
            return None
        for route in self.routes[index + 1 :]:
            if route.breaker.would_allow(now):
                return route.name
        return None

    def seconds_until_probe(self, now: datetime) -> float:
        """Seconds until the first open circuit lets a probe through (0 if one already may)."""
        waits = [
            max(0.0, (route.breaker.opened_until - now).total_seconds())
            for route in self.routes
            if route.breaker.state == CircuitState.OPEN and route.breaker.opened_until is not None
        ]
        return min(waits, default=0.0)

    def record(self, name: str, now: datetime, result: ProviderResult) -> bool:
        """Count a call's result against provider ``name``'s breaker.

        Returns:
            True when a health report is due: the state changed, or
            ``report_interval`` seconds passed since the last report. Names not
            in the route (``sandbox``, ``none``) count for nothing.
        """
        index = self._index.get(name)
        if index is None:
            return False
        changed = self.routes[index].breaker.record(now, result)
        return (
            changed or self._last_report is None or now - self._last_report >= self._report_interval
        )

    @property
    def used(self) -> bool:
        """Whether any call's result was recorded here (the breakers know something)."""
        return any(route.breaker.total_calls for route in self.routes)

    def reported(self, now: datetime) -> None:
        """Note that the health was stored at ``now`` (the next is due an interval later)."""
        self._last_report = now

    def health(self, now: datetime, *, worker: str | None) -> list[ProviderHealth]:
        """Every provider's health at ``now`` as ``worker`` sees it (None: nobody reported)."""
        return [
            route.breaker.health(now, provider=route.name, channel=self.channel, worker=worker)
            for route in self.routes
        ]
