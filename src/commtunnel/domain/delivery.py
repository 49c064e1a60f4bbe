"""What a provider call can return, and the retry schedule (pure rules).

A provider never returns ``False`` and never lets an exception escape to the
worker: it returns a :class:`ProviderResult` that says accepted, transient
(try again later) or permanent, with an :class:`ErrorCategory`.
"""

from __future__ import annotations

import enum
import math
import random
from datetime import datetime
from email.utils import parsedate_to_datetime

import attrs


class Outcome(enum.StrEnum):
    """How a provider call ended."""

    ACCEPTED = "accepted"
    TRANSIENT = "transient"
    PERMANENT = "permanent"


class ErrorCategory(enum.StrEnum):
    """Why a provider call failed (``../shared/DESIGN.md``, "Provider results")."""

    PROVIDER_OUTAGE = "PROVIDER_OUTAGE"  # connection refused, 5xx/4xx server trouble
    RATE_LIMITED = "RATE_LIMITED"
    TIMEOUT = "TIMEOUT"
    AUTH = "AUTH"  # the provider refused our credentials
    INVALID_RECIPIENT = "INVALID_RECIPIENT"  # mailbox unknown: a hard bounce
    RECIPIENT_DEFERRED = "RECIPIENT_DEFERRED"  # this mailbox, for now: greylisted, full
    REJECTED = "REJECTED"  # content or policy refused
    RECIPIENT_OPTED_OUT = "RECIPIENT_OPTED_OUT"  # the recipient told the provider to stop
    UNDELIVERABLE = "UNDELIVERABLE"  # the provider will not deliver to this recipient
    TEMPLATE_REQUIRED = "TEMPLATE_REQUIRED"  # outside a conversation window: use a template
    POLICY_BLOCKED = "POLICY_BLOCKED"  # spam or policy block on the sending line
    LINE_PAUSED = "LINE_PAUSED"  # the sending line is paused (e.g. its token expired)
    UNSUPPORTED = "UNSUPPORTED"  # the provider cannot do what was asked
    UNKNOWN = "UNKNOWN"  # an unexpected exception, classified as transient


#: Failures that say the provider, not the recipient or the content, is in
#: trouble: they count against its circuit breaker (``domain/circuit.py``).
PROVIDER_FAULTS: frozenset[ErrorCategory] = frozenset(
    {
        ErrorCategory.PROVIDER_OUTAGE,
        ErrorCategory.TIMEOUT,
        ErrorCategory.RATE_LIMITED,
        ErrorCategory.AUTH,
        ErrorCategory.UNSUPPORTED,
        ErrorCategory.UNKNOWN,
    }
)

#: Failures about the recipient (or the sending line) that no other provider
#: can fix: the message does not fail over on them.
RECIPIENT_FAULTS: frozenset[ErrorCategory] = frozenset(
    {
        ErrorCategory.INVALID_RECIPIENT,
        ErrorCategory.RECIPIENT_DEFERRED,
        ErrorCategory.RECIPIENT_OPTED_OUT,
        ErrorCategory.UNDELIVERABLE,
        ErrorCategory.TEMPLATE_REQUIRED,
        ErrorCategory.LINE_PAUSED,
    }
)


@attrs.frozen(kw_only=True)
class ProviderResult:
    """The classified result of one provider call.

    Attributes:
        outcome: accepted, transient or permanent.
        provider_message_id: the provider's id for the message (accepted only).
        error_category: why it failed (None when accepted).
        error_message: the provider's words, at most 500 characters, no secrets.
        retry_after: seconds the provider asked us to wait (transient only).
    """

    outcome: Outcome
    provider_message_id: str | None = None
    error_category: ErrorCategory | None = None
    error_message: str | None = None
    retry_after: float | None = None

    @classmethod
    def accepted(cls, provider_message_id: str | None = None) -> ProviderResult:
        """The provider took the message."""
        return cls(outcome=Outcome.ACCEPTED, provider_message_id=provider_message_id)

    @classmethod
    def transient(
        cls, category: ErrorCategory, message: str, *, retry_after: float | None = None
    ) -> ProviderResult:
        """A failure worth retrying later (``retry_after`` in seconds, if the provider said)."""
        return cls(
            outcome=Outcome.TRANSIENT,
            error_category=category,
            error_message=message[:500],
            retry_after=retry_after,
        )

    @classmethod
    def permanent(cls, category: ErrorCategory, message: str) -> ProviderResult:
        """A failure that no retry will fix."""
        return cls(outcome=Outcome.PERMANENT, error_category=category, error_message=message[:500])

    @property
    def provider_fault(self) -> bool:
        """Whether this failure counts against the provider's health (:data:`PROVIDER_FAULTS`)."""
        return self.outcome != Outcome.ACCEPTED and self.error_category in PROVIDER_FAULTS

    @property
    def may_fail_over(self) -> bool:
        """Whether another provider might deliver what this one did not.

        True for every failure except :data:`RECIPIENT_FAULTS`: an outage, a
        timeout, refused credentials, and a content refusal too (another ESP's
        filters may differ), transient or permanent.
        """
        return self.outcome != Outcome.ACCEPTED and self.error_category not in RECIPIENT_FAULTS


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """Exponential backoff with jitter for transient failures.

    The n-th retry waits ``min(max_delay, base_delay * 2**(n-1))`` seconds, of
    which the upper half is randomized ("equal jitter") so that messages that
    failed together do not retry together. A provider's ``retry_after`` is a
    floor. After ``max_attempts`` provider calls the message is FAILED.

    Attributes:
        max_attempts: provider calls before giving up (>= 1).
        base_delay: seconds before the first retry.
        max_delay: ceiling of a single wait, seconds.
    """

    max_attempts: int = 8
    base_delay: float = 10.0
    max_delay: float = 3600.0

    def should_retry(self, attempts_made: int) -> bool:
        """Whether another attempt is allowed after ``attempts_made`` calls."""
        return attempts_made < self.max_attempts

    def delay(
        self, attempts_made: int, rng: random.Random, retry_after: float | None = None
    ) -> float:
        """Seconds to wait before attempt ``attempts_made + 1``.

        Args:
            attempts_made: provider calls made so far (>= 1).
            rng: the random source for jitter (seeded in tests).
            retry_after: the provider's requested wait in seconds, used as a floor.
        """
        ceiling = min(self.max_delay, self.base_delay * 2.0 ** max(0, attempts_made - 1))
        wait: float = ceiling / 2 + rng.uniform(0, ceiling / 2)
        if retry_after is not None:
            wait = max(wait, retry_after)
        return wait


#: the longest ``Retry-After`` honoured, seconds (a larger one is capped).
MAX_RETRY_AFTER = 86400.0


def retry_after_seconds(value: str | None, *, now: datetime) -> float | None:
    """Read a ``Retry-After`` header (RFC 9110 §10.2.3).

    Args:
        value: the header: delay seconds (``"120"``) or an HTTP date; None if absent.
        now: the current UTC time (from the clock), for HTTP dates.

    Returns:
        Seconds to wait (0 to :data:`MAX_RETRY_AFTER`), or None when absent or unreadable.
    """
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = (parsedate_to_datetime(value) - now).total_seconds()
        except (TypeError, ValueError):
            return None
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)
