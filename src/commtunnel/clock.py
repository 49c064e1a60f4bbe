"""The system clock adapter: the one place that reads the wall clock."""

from __future__ import annotations

import time
from datetime import UTC, datetime


class SystemClock:
    """The real clock: UTC wall time and the monotonic timer."""

    def now(self) -> datetime:
        """Current UTC time, timezone-aware."""
        return datetime.now(UTC)

    def monotonic(self) -> float:
        """Seconds on the monotonic clock (durations only)."""
        return time.monotonic()
