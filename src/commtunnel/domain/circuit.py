"""A circuit breaker per provider, and the health it reports (pure rules, no I/O).

The classic three states (M. Nygard, *Release It!*, "Circuit Breaker"):

* ``CLOSED``: calls go through. Each failure that says the provider is in
  trouble (:attr:`~commtunnel.domain.delivery.ProviderResult.provider_fault`:
  an outage, a timeout, refused credentials...) adds one to a run of
  consecutive failures; any other answer, a success or a refusal of one
  recipient, ends the run. ``failure_threshold`` failures in a row open it.
* ``OPEN``: no call goes through for ``cooldown`` seconds; the dispatcher
  sends to the next provider of the channel instead.
* ``HALF_OPEN``: after the cool-down, one call (the probe) goes through. Its
  success closes the circuit; its failure opens it for another cool-down. A
  probe that never reports (its worker died) is given up after ``cooldown``
  seconds and another call may probe.

While the circuit is OPEN, results of calls that started before it opened
(a worker has many in flight) are counted in the error rate but change no
state: a late success does not close it, a late fault does not lengthen
the cool-down.

The last fault's text is kept for the health report, which any API key may
read: email addresses and phone numbers in it (an SMTP reply may quote the
recipient) are replaced by ``<address>`` and ``<number>`` first.

Every "now" is passed in (the Clock port's), so tests drive the breaker with
a manual clock. The breaker also keeps the outcomes of the last ``window``
seconds (at most :data:`MAX_OUTCOMES`) for the recent error rate that the
health endpoint shows.
"""

from __future__ import annotations

import enum
import re
from collections import deque
from datetime import datetime, timedelta

import attrs

from commtunnel.domain.delivery import ProviderResult

#: the most outcomes kept for the recent error rate.
MAX_OUTCOMES = 1000

_ADDRESS = re.compile(r"[^\s<>()\[\]\"',;:]+@[^\s<>()\[\]\"',;:]+")
_NUMBER = re.compile(r"\+?\d(?:[ -]?\d){7,14}")


def redact(text: str | None) -> str | None:
    """``text`` with email addresses and phone-number-like digit runs masked.

    Returns:
        The text with each ``local@domain`` as ``<address>`` and each run of
        8 to 15 digits (single spaces or dashes allowed between them, a
        leading ``+``) as ``<number>``; SMTP codes such as ``451 4.3.0`` stay.
        None stays None.
    """
    if text is None:
        return None
    return _NUMBER.sub("<number>", _ADDRESS.sub("<address>", text))


class CircuitState(enum.StrEnum):
    """Where a provider's circuit stands."""

    CLOSED = "CLOSED"
    OPEN = "OPEN"
    HALF_OPEN = "HALF_OPEN"


@attrs.frozen(kw_only=True)
class ProviderHealth:
    """A provider's health as one worker saw it (``GET /v1/public/providers/health``).

    Attributes:
        provider: the provider's name in its channel's route (e.g. ``smtp-primary``).
        channel: ``email`` or ``sms``.
        state: the circuit's state.
        consecutive_failures: provider faults in a row, now.
        opened_until: when an open circuit lets a probe through (UTC), else None.
        calls: calls recorded in the window.
        failures: of those, the provider faults.
        last_error: the text of the last provider fault (no recipient data:
            recipient refusals are not faults), None if there was none.
        last_error_category: its error category.
        last_error_at: when it was recorded (UTC).
        reported_by: the worker that reported this; None when no worker has
            reported on the provider yet.
        updated_at: when it was reported (UTC); None with ``reported_by``.
    """

    provider: str
    channel: str
    state: CircuitState
    consecutive_failures: int
    opened_until: datetime | None
    calls: int
    failures: int
    last_error: str | None
    last_error_category: str | None
    last_error_at: datetime | None
    reported_by: str | None
    updated_at: datetime | None

    @property
    def error_rate(self) -> float:
        """``failures / calls`` in the window, 0.0 without calls."""
        return 0.0 if self.calls == 0 else self.failures / self.calls


@attrs.define
class CircuitBreaker:
    """One provider's circuit (see the module docstring for the rules).

    Args:
        failure_threshold: provider faults in a row that open the circuit (>= 1).
        cooldown: seconds an open circuit refuses calls before a probe (> 0).
        window: seconds of outcomes kept for the recent error rate (> 0).
    """

    failure_threshold: int = attrs.field(default=5, validator=attrs.validators.ge(1))
    cooldown: float = attrs.field(default=30.0, validator=attrs.validators.gt(0))
    window: float = attrs.field(default=300.0, validator=attrs.validators.gt(0))
    state: CircuitState = CircuitState.CLOSED
    consecutive_failures: int = 0
    opened_until: datetime | None = None
    probe_started: datetime | None = None
    last_error: str | None = None
    last_error_category: str | None = None
    last_error_at: datetime | None = None
    total_calls: int = 0
    _outcomes: deque[tuple[datetime, bool]] = attrs.field(
        factory=lambda: deque(maxlen=MAX_OUTCOMES)
    )

    def allows(self, now: datetime) -> bool:
        """Whether a call may go to the provider at ``now`` (and, half-open, take the probe).

        An open circuit whose cool-down has ended turns half-open here; the
        first caller then holds the probe until it reports (:meth:`record`)
        or ``cooldown`` seconds pass.
        """
        if not self.would_allow(now):
            return False
        if self.state != CircuitState.CLOSED:
            self.state = CircuitState.HALF_OPEN
            self.probe_started = now
        return True

    def would_allow(self, now: datetime) -> bool:
        """Whether a call may go to the provider at ``now``, changing nothing (no probe taken).

        Closed: yes. Open: once its cool-down has ended. Half-open: while no
        probe is out, or once the last one has gone ``cooldown`` seconds
        without reporting.
        """
        if self.state == CircuitState.CLOSED:
            return True
        if self.state == CircuitState.OPEN:
            return self.opened_until is None or now >= self.opened_until
        cooldown = timedelta(seconds=self.cooldown)
        return self.probe_started is None or now >= self.probe_started + cooldown

    def record(self, now: datetime, result: ProviderResult) -> bool:
        """Count one call's result.

        Returns:
            True when the state changed (the caller reports health at once).
        """
        before = self.state
        self.total_calls += 1
        fault = result.provider_fault
        self._outcomes.append((now, fault))
        if fault:
            self.last_error = redact(result.error_message)
            self.last_error_category = (
                None if result.error_category is None else str(result.error_category)
            )
            self.last_error_at = now
        if self.state == CircuitState.OPEN:
            return False  # a call that started before the circuit opened: no state change
        if fault:
            self.consecutive_failures += 1
            if (
                self.state == CircuitState.HALF_OPEN
                or self.consecutive_failures >= self.failure_threshold
            ):
                self.state = CircuitState.OPEN
                self.opened_until = now + timedelta(seconds=self.cooldown)
                self.probe_started = None
        else:
            self.consecutive_failures = 0
            self.state = CircuitState.CLOSED
            self.opened_until = None
            self.probe_started = None
        return self.state != before

    def recent(self, now: datetime) -> tuple[int, int]:
        """(calls, provider faults) recorded in the last ``window`` seconds before ``now``."""
        horizon = now - timedelta(seconds=self.window)
        while self._outcomes and self._outcomes[0][0] < horizon:
            self._outcomes.popleft()
        failures = sum(1 for _, fault in self._outcomes if fault)
        return len(self._outcomes), failures

    def health(
        self, now: datetime, *, provider: str, channel: str, worker: str | None
    ) -> ProviderHealth:
        """The breaker as a :class:`ProviderHealth` reported at ``now`` by ``worker``.

        With ``worker`` None (a breaker that has seen no call in this process)
        the report says nobody reported: ``reported_by`` and ``updated_at`` are None.
        """
        calls, failures = self.recent(now)
        return ProviderHealth(
            provider=provider,
            channel=channel,
            state=self.state,
            consecutive_failures=self.consecutive_failures,
            opened_until=self.opened_until if self.state != CircuitState.CLOSED else None,
            calls=calls,
            failures=failures,
            last_error=self.last_error,
            last_error_category=self.last_error_category,
            last_error_at=self.last_error_at,
            reported_by=worker,
            updated_at=None if worker is None else now,
        )
