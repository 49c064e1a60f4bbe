"""Request limits over a sliding window, kept in memory or in Redis (the ``limits`` library).

A limit is written in ``limits`` notation: ``100/minute``, ``10/second``,
``5000/hour``, ``20/30 seconds``. :class:`RateLimiter` counts one hit per
request for an identity (an API key id) and answers a :class:`Quota`: allowed
or not, how many are left, and the seconds until the window frees a request.

The strategy is ``limits``' *sliding window counter*
(``SlidingWindowCounterRateLimiter``): the count is the current fixed window's
hits plus the previous window's, weighted by how much of it still overlaps the
sliding window. It keeps two counters per identity (a moving window would keep
one entry per request), and on Redis its windows follow the server's own TTLs,
so servers whose clocks differ still share one count.

Storage: in the process's memory by default (one server), or Redis when
``COMMTUNNEL_REDIS_URL`` is set (``redis://host:6379/0``, ``rediss://...``,
``unix:///path/redis.sock``), so every server shares the count. Keys are
``<key_prefix>:LIMITER/...``. When Redis cannot be reached, requests are
admitted and the failure is logged (fail open, like Envoy's and Kong's
defaults): abuse protection must not take the API down with it.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import attrs
import limits
from limits.aio.storage import MemoryStorage, RedisStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.errors import StorageError

from commtunnel.clock import SystemClock
from commtunnel.domain.errors import RateLimitedError
from commtunnel.ports import Clock

log = logging.getLogger("commtunnel.ratelimit")

#: the default namespace of the limiter's Redis keys.
DEFAULT_KEY_PREFIX = "commtunnel"
#: the most requests one window may allow.
MAX_REQUESTS = 1_000_000
#: the longest window, seconds (a day).
MAX_WINDOW = 86_400
#: seconds a Redis connection attempt or command may take before the request is admitted.
REDIS_TIMEOUT = 2.0
#: seconds between two log lines about an unreachable Redis.
_FAILURE_LOG_INTERVAL = 60.0


def parse_rate_limit(text: str) -> limits.RateLimitItem:
    """One limit in ``limits`` notation (``100/minute``, ``100 per minute``, ``20/30 seconds``).

    Returns:
        The parsed limit.

    Raises:
        ValueError: not the notation, several limits, fewer than 1 or more than
            :data:`MAX_REQUESTS` requests, or a window over a day.
    """
    try:
        items = limits.parse_many(text.strip())
    except ValueError:
        raise ValueError(f"'{text}' is not a limit like 100/minute") from None
    if len(items) != 1:
        raise ValueError(f"'{text}': give one limit, like 100/minute")
    item = items[0]
    if not 1 <= item.amount <= MAX_REQUESTS:
        raise ValueError(f"'{text}': the number of requests must be 1 to {MAX_REQUESTS}")
    if item.get_expiry() > MAX_WINDOW:
        raise ValueError(f"'{text}': the window may be a day at most")
    return item


def format_rate_limit(item: limits.RateLimitItem) -> str:
    """The canonical notation of a limit: ``100/minute``, ``20/30 seconds``."""
    unit = item.GRANULARITY.name
    if item.multiples == 1:
        return f"{item.amount}/{unit}"
    return f"{item.amount}/{item.multiples} {unit}s"


def normalize_rate_limit(text: str) -> str:
    """``text`` checked and in canonical notation (``100 per minute`` -> ``100/minute``).

    Raises:
        ValueError: as :func:`parse_rate_limit`.
    """
    return format_rate_limit(parse_rate_limit(text))


@attrs.frozen(kw_only=True)
class Quota:
    """One identity's standing after a request was counted.

    Attributes:
        allowed: whether the request fits the limit (a refused one is not counted).
        policy: the limit in canonical notation (``100/minute``).
        limit: requests allowed per window.
        window: the window, seconds.
        remaining: requests left in the window now.
        reset: seconds (rounded up) until the window frees at least one request.
        retry_after: seconds to wait before retrying, >= 1 when refused, 0 when allowed.
    """

    allowed: bool
    policy: str
    limit: int
    window: int
    remaining: int
    reset: int
    retry_after: int

    def enforce(self) -> None:
        """Raise when the request was refused.

        Raises:
            RateLimitedError: 429 ``RATE_LIMITED`` with ``retry_after`` and
                ``details`` ``{"retryAfter": seconds, "limit": policy}``.
        """
        if not self.allowed:
            error = RateLimitedError(
                f"Too many requests: this API key may make {self.policy}; "
                f"retry after {self.retry_after} seconds",
                retry_after=self.retry_after,
            )
            error.details["limit"] = self.policy
            raise error


def _redis_storage(url: str, key_prefix: str) -> tuple[RedisStorage, Any]:
    """A ``limits`` Redis storage over a connection pool this module owns (and closes)."""
    import redis.asyncio

    pool = redis.asyncio.ConnectionPool.from_url(
        url, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT
    )
    storage = RedisStorage(
        "async+redis://",
        wrap_exceptions=True,
        implementation="redispy",
        key_prefix=key_prefix,
        connection_pool=pool,  # type: ignore[arg-type]  # passed on to redis.asyncio.Redis
    )
    return storage, pool


class RateLimiter:
    """Counts requests per identity against a limit, in memory or in Redis.

    Args:
        redis_url: Redis to share counts across servers (``redis://``,
            ``rediss://``, ``unix://``); None keeps them in this process.
        key_prefix: namespace of the Redis keys (tests use one per test).
        wall_clock: the system clock; ``limits`` reads the wall clock itself,
            so a manual clock cannot drive it, and this one only turns its
            reset times into seconds from now.

    Nothing is connected until the first hit; :meth:`aclose` releases the
    Redis connections (or the memory storage's expiry task).
    """

    def __init__(
        self,
        redis_url: str | None = None,
        *,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        wall_clock: Clock | None = None,
    ) -> None:
        self.redis_url = redis_url
        self.key_prefix = key_prefix
        self._wall = wall_clock or SystemClock()
        self._storage: MemoryStorage | RedisStorage | None = None
        self._pool: Any = None
        self._strategy: SlidingWindowCounterRateLimiter | None = None
        self._last_failure_log = -math.inf

    @property
    def shared(self) -> bool:
        """Whether counts live in Redis (shared by every server using it)."""
        return self.redis_url is not None

    def _limiter(self) -> SlidingWindowCounterRateLimiter:
        if self._strategy is None:
            if self.redis_url is None:
                self._storage = MemoryStorage()
            else:
                self._storage, self._pool = _redis_storage(self.redis_url, self.key_prefix)
            self._strategy = SlidingWindowCounterRateLimiter(self._storage)
        return self._strategy

    async def hit(self, limit: limits.RateLimitItem, *identity: str) -> Quota | None:
        """Count one request for ``identity`` (e.g. ``("key", key_id)``) against ``limit``.

        Returns:
            The :class:`Quota` after the request; None when the storage cannot
            be reached (the request is admitted, the failure logged).
        """
        limiter = self._limiter()
        try:
            allowed = await limiter.hit(limit, *identity)
            stats = await limiter.get_window_stats(limit, *identity)
        except StorageError as exc:
            self._log_failure(exc)
            return None
        reset = max(0, math.ceil(stats.reset_time - self._wall.now().timestamp()))
        return Quota(
            allowed=allowed,
            policy=format_rate_limit(limit),
            limit=limit.amount,
            window=limit.get_expiry(),
            remaining=0 if not allowed else stats.remaining,
            reset=reset,
            retry_after=0 if allowed else max(1, reset),
        )

    def _log_failure(self, exc: StorageError) -> None:
        now = self._wall.monotonic()
        if now - self._last_failure_log >= _FAILURE_LOG_INTERVAL:
            self._last_failure_log = now
            log.error("rate-limit storage unavailable, requests admitted unlimited: %r", exc)

    async def clear(self, limit: limits.RateLimitItem, *identity: str) -> None:
        """Forget ``identity``'s count under ``limit`` (its next window starts afresh)."""
        await self._limiter().clear(limit, *identity)

    async def check(self) -> bool:
        """Whether the storage answers (Redis ``PING``; always True in memory)."""
        self._limiter()
        assert self._storage is not None
        return await self._storage.check()

    async def reset(self) -> None:
        """Forget every count under this limiter's key prefix (tests clean up with it)."""
        self._limiter()
        assert self._storage is not None
        await self._storage.reset()

    async def aclose(self) -> None:
        """Release the Redis connections, or stop the memory storage's expiry task."""
        storage, pool = self._storage, self._pool
        self._storage = self._pool = self._strategy = None
        if pool is not None:
            await pool.aclose()
        timer = getattr(storage, "timer", None)
        if timer is not None and not timer.done():
            timer.cancel()
