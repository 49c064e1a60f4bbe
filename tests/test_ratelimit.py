"""Request limits: the limiter in memory and in Redis, the access service, two servers sharing.

The Redis tests use the local server (127.0.0.1:6379, started by ``.ci/run``)
and fail, never skip, when it is down. Each test namespaces its keys with a
prefix of its own and deletes them at the end. No test sleeps: a window is
started afresh by clearing the count, not by waiting for it to pass.

Tests that count past a limit use day windows: the sliding window counter
weighs the previous fixed window (in memory aligned on the epoch), so hits
straddling a window boundary count for a little less. A test spanning a
minute boundary is possible; one spanning midnight UTC, hardly.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
import redis.asyncio

import pg
from app_client import app_client, assert_error
from commtunnel import Commtunnel, Settings
from commtunnel.domain.errors import (
    IpNotAllowedError,
    NotFoundError,
    RateLimitedError,
    ValidationError,
)
from commtunnel.domain.keys import ALL_SCOPES, Principal
from commtunnel.domain.network import parse_address
from commtunnel.services.ratelimit import (
    Quota,
    RateLimiter,
    format_rate_limit,
    normalize_rate_limit,
    parse_rate_limit,
)
from commtunnel.testing import ManualClock, MockProvider
from commtunnel_http import create_app
from processes import Spawned, clean_env, cli, free_port, org_with_key, serve

pytestmark = pytest.mark.anyio

REDIS_URL = "redis://127.0.0.1:6379/0"
READ_SCOPES = frozenset({"read:email"})


def unique_prefix() -> str:
    """A Redis key prefix no other test (or parallel run) uses."""
    return f"commtunnel-test-{uuid.uuid4().hex}"


@pytest.fixture
async def shared_limiter(anyio_backend: str) -> AsyncIterator[Callable[[], RateLimiter]]:
    """Makes Redis limiters on one test-private prefix; deletes its keys and closes them after."""
    prefix = unique_prefix()
    made: list[RateLimiter] = []

    def make() -> RateLimiter:
        limiter = RateLimiter(REDIS_URL, key_prefix=prefix)
        made.append(limiter)
        return limiter

    yield make
    cleaner = RateLimiter(REDIS_URL, key_prefix=prefix)
    await cleaner.reset()
    await cleaner.aclose()
    for limiter in made:
        await limiter.aclose()


# --------------------------------------------------------------------------- notation


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("100/minute", "100/minute"),
        ("100 per minute", "100/minute"),
        (" 10/second ", "10/second"),
        ("20/30 seconds", "20/30 seconds"),
        ("5000/hour", "5000/hour"),
        ("1/day", "1/day"),
    ],
)
def test_limits_are_read_in_limits_notation_and_kept_canonical(text: str, canonical: str) -> None:
    """Every way of writing a limit is stored one way."""
    assert normalize_rate_limit(text) == canonical
    assert format_rate_limit(parse_rate_limit(canonical)) == canonical


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("fast", "not a limit like 100/minute"),
        ("", "not a limit like 100/minute"),
        ("0/minute", "must be 1 to"),
        ("2000000/second", "must be 1 to"),
        ("10/second;100/minute", "give one limit"),
        ("1000/month", "a day at most"),
        ("10/2 days", "a day at most"),
    ],
)
def test_bad_limits_are_refused(text: str, reason: str) -> None:
    """Garbage, zero, huge counts, several limits and windows over a day raise ValueError."""
    with pytest.raises(ValueError, match=reason):
        parse_rate_limit(text)


# --------------------------------------------------------------------------- the limiter


async def hits(limiter: RateLimiter, limit: str, identity: str, count: int) -> list[Quota]:
    """``count`` hits of ``identity`` under ``limit``; every answer must be a quota."""
    quotas = []
    for _ in range(count):
        quota = await limiter.hit(parse_rate_limit(limit), "key", identity)
        assert quota is not None
        quotas.append(quota)
    return quotas


async def test_memory_limiter_counts_down_then_refuses() -> None:
    """Within the limit the remaining count falls; the next request is refused, with a wait."""
    limiter = RateLimiter()
    try:
        first, second, third, refused = await hits(limiter, "3/day", "k1", 4)
        assert (first.allowed, first.remaining, first.limit, first.window) == (True, 2, 3, 86_400)
        assert (second.remaining, third.remaining) == (1, 0)
        assert third.allowed and third.retry_after == 0
        assert not refused.allowed
        assert refused.remaining == 0
        assert 1 <= refused.retry_after <= 86_400
        assert refused.reset == refused.retry_after
        assert refused.policy == "3/day"
    finally:
        await limiter.aclose()


async def test_identities_are_counted_apart_and_clearing_starts_a_new_window() -> None:
    """One key's use leaves another's untouched; a cleared count allows again."""
    limiter = RateLimiter()
    limit = parse_rate_limit("1/day")
    try:
        assert [q.allowed for q in await hits(limiter, "1/day", "a", 2)] == [True, False]
        (other,) = await hits(limiter, "1/day", "b", 1)
        assert other.allowed
        await limiter.clear(limit, "key", "a")
        assert [q.allowed for q in await hits(limiter, "1/day", "a", 2)] == [True, False]
        assert await limiter.check()
        assert not limiter.shared
    finally:
        await limiter.aclose()


def test_quota_enforce_raises_rate_limited_with_the_wait() -> None:
    """A refused quota raises 429 RATE_LIMITED with retry_after and the limit in details."""
    refused = Quota(
        allowed=False, policy="3/minute", limit=3, window=60, remaining=0, reset=12, retry_after=12
    )
    with pytest.raises(RateLimitedError) as raised:
        refused.enforce()
    assert raised.value.code == "RATE_LIMITED"
    assert raised.value.retry_after == 12
    assert raised.value.details == {"retryAfter": 12, "limit": "3/minute"}
    allowed = Quota(
        allowed=True, policy="3/minute", limit=3, window=60, remaining=2, reset=60, retry_after=0
    )
    allowed.enforce()  # no error: the request goes on


# --------------------------------------------------------------------------- Redis


async def test_redis_limiters_share_one_count(
    shared_limiter: Callable[[], RateLimiter],
) -> None:
    """Two limiters on one Redis (two servers) draw from the same count."""
    one, two = shared_limiter(), shared_limiter()
    assert await one.check(), "Redis at 127.0.0.1:6379 must be running (.ci/run starts it)"
    assert one.shared
    (a,) = await hits(one, "3/day", "k1", 1)
    (b,) = await hits(two, "3/day", "k1", 1)
    (c,) = await hits(one, "3/day", "k1", 1)
    (refused,) = await hits(two, "3/day", "k1", 1)
    assert [a.remaining, b.remaining, c.remaining] == [2, 1, 0]
    assert not refused.allowed
    assert 1 <= refused.retry_after <= 86_400


async def test_redis_keys_are_namespaced_and_reset_removes_them(
    shared_limiter: Callable[[], RateLimiter],
) -> None:
    """Every key the limiter writes starts with its prefix; reset deletes exactly those."""
    limiter = shared_limiter()
    await hits(limiter, "5/minute", "k1", 2)
    client = redis.asyncio.Redis.from_url(REDIS_URL)
    try:
        keys = await client.keys(f"{limiter.key_prefix}:*")
        assert keys, "the count lives in Redis"
        await limiter.reset()
        assert await client.keys(f"{limiter.key_prefix}:*") == []
    finally:
        await client.aclose()
    (fresh,) = await hits(limiter, "5/minute", "k1", 1)
    assert fresh.remaining == 4


async def test_unreachable_redis_admits_requests_and_logs_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With Redis down the request is admitted (no quota) and the failure is logged, once."""
    limiter = RateLimiter(f"redis://127.0.0.1:{free_port()}/0", key_prefix=unique_prefix())
    try:
        with caplog.at_level(logging.ERROR, logger="commtunnel.ratelimit"):
            assert await limiter.hit(parse_rate_limit("1/minute"), "key", "k") is None
            assert await limiter.hit(parse_rate_limit("1/minute"), "key", "k") is None
        assert not await limiter.check()
    finally:
        await limiter.aclose()
    failures = [r for r in caplog.records if "rate-limit storage unavailable" in r.message]
    assert len(failures) == 1


# --------------------------------------------------------------------------- the access service


async def key_principal(ct: Commtunnel, org_id: str | None = None) -> tuple[str, Principal]:
    """A new key of ``org_id`` (the facade's org by default) and its principal."""
    record, key = await ct.keys.create(org_id or ct.org.id, scopes=READ_SCOPES)
    return record.id, await ct.authenticate(key)


ANY_ADDRESS = parse_address("203.0.113.5")


async def test_in_process_callers_are_never_limited(ct: Commtunnel) -> None:
    """A principal without a key (the facade's own, the CLI) gets no quota and no refusal."""
    principal = Principal(org_id=ct.org.id, scopes=ALL_SCOPES)
    await ct.access.set_org_access(ct.org.id, ip_allowlist=["198.51.100.0/24"])
    assert await ct.access.admit(principal, None) is None


async def test_the_server_default_applies_to_a_key_without_limits(ct: Commtunnel) -> None:
    """With nothing set, a key has COMMTUNNEL_RATE_LIMIT: 100 a minute."""
    _, principal = await key_principal(ct)
    quota = await ct.access.admit(principal, ANY_ADDRESS)
    assert quota is not None
    assert (quota.policy, quota.limit, quota.window, quota.remaining) == ("100/minute", 100, 60, 99)
    assert ct.access.default_rate_limit == "100/minute"


async def test_key_limit_beats_org_limit_beats_default(ct: Commtunnel) -> None:
    """A key's own limit wins over its organization's, which wins over the server default."""
    key_id, principal = await key_principal(ct)
    _, sibling = await key_principal(ct)
    access = await ct.access.set_org_access(ct.org.id, rate_limit="2 per minute")
    assert access.rate_limit == "2/minute"
    assert await ct.access.set_key_rate_limit(ct.org.id, key_id, "5/minute") == "5/minute"
    own = await ct.access.admit(principal, ANY_ADDRESS)
    inherited = await ct.access.admit(sibling, ANY_ADDRESS)
    assert own is not None and own.limit == 5
    assert inherited is not None and inherited.limit == 2
    assert await ct.access.key_rate_limits(ct.org.id) == {key_id: "5/minute"}
    assert await ct.access.set_key_rate_limit(ct.org.id, key_id, None) == "2/minute"
    assert await ct.access.key_rate_limits(ct.org.id) == {}
    assert await ct.access.org_rate_limit(ct.org.id) == "2/minute"
    await ct.access.set_org_access(ct.org.id, rate_limit=None)
    assert await ct.access.org_rate_limit(ct.org.id) == "100/minute"
    assert await ct.access.set_key_rate_limit(ct.org.id, key_id, None) == "100/minute"
    back = await ct.access.admit(principal, ANY_ADDRESS)
    assert back is not None and back.limit == 100


async def test_over_the_limit_admit_raises_and_refused_requests_are_not_counted(
    ct: Commtunnel,
) -> None:
    """The request past the limit raises RATE_LIMITED; the refusal itself uses no quota."""
    key_id, principal = await key_principal(ct)
    await ct.access.set_key_rate_limit(ct.org.id, key_id, "2/day")
    await ct.access.admit(principal, ANY_ADDRESS)
    await ct.access.admit(principal, ANY_ADDRESS)
    for _ in range(3):
        with pytest.raises(RateLimitedError):
            await ct.access.admit(principal, ANY_ADDRESS)
    await ct.access.limiter.clear(parse_rate_limit("2/day"), "key", key_id)
    quota = await ct.access.admit(principal, ANY_ADDRESS)
    assert quota is not None and quota.remaining == 1


async def test_allowlist_refuses_outside_addresses_before_counting(ct: Commtunnel) -> None:
    """Outside the allowlist (or unknown) is IP_NOT_ALLOWED and draws nothing from the quota."""
    key_id, principal = await key_principal(ct)
    await ct.access.set_key_rate_limit(ct.org.id, key_id, "1/day")
    access = await ct.access.set_org_access(ct.org.id, ip_allowlist=["198.51.100.7/24"])
    assert access.ip_allowlist == ("198.51.100.0/24",)
    with pytest.raises(IpNotAllowedError) as outside:
        await ct.access.check(principal, ANY_ADDRESS)
    assert outside.value.details == {"ip": "203.0.113.5"}
    with pytest.raises(IpNotAllowedError) as unknown:
        await ct.access.check(principal, None)
    assert unknown.value.details == {"ip": None}
    quota = await ct.access.admit(principal, parse_address("198.51.100.20"))
    assert quota is not None and quota.allowed
    await ct.access.set_org_access(ct.org.id, ip_allowlist=None)
    assert (await ct.access.get_org_access(ct.org.id)).ip_allowlist is None


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"ip_allowlist": []}, "ipAllowlist"),
        ({"ip_allowlist": ["office"]}, "ipAllowlist"),
        ({"ip_allowlist": "10.0.0.0/8"}, "ipAllowlist"),
        ({"ip_allowlist": [f"10.0.{n}.0/24" for n in range(101)]}, "ipAllowlist"),
        ({"rate_limit": "lots"}, "rateLimit"),
        ({"rate_limit": 100}, "rateLimit"),
    ],
)
async def test_bad_org_settings_are_validation_errors(
    ct: Commtunnel, changes: dict[str, object], field: str
) -> None:
    """An empty, oversized or unparsable allowlist and a bad limit name their field."""
    with pytest.raises(ValidationError) as raised:
        await ct.access.set_org_access(ct.org.id, **changes)
    assert set(raised.value.details) == {field}
    unchanged = await ct.access.get_org_access(ct.org.id)
    assert unchanged == (await ct.access.list_org_access())[ct.org.id]
    assert (unchanged.ip_allowlist, unchanged.rate_limit) == (None, None)


async def test_unknown_org_or_key_is_not_found(ct: Commtunnel) -> None:
    """Settings of an organization that does not exist, or of another's key, are NOT_FOUND."""
    other = await ct.admin.create_org("globex")
    key_id, _ = await key_principal(ct, other.id)
    with pytest.raises(NotFoundError):
        await ct.access.set_org_access("no-such-org", rate_limit="5/minute")
    with pytest.raises(NotFoundError):
        await ct.access.get_org_access("no-such-org")
    with pytest.raises(NotFoundError):
        await ct.access.org_rate_limit("no-such-org")
    with pytest.raises(NotFoundError):
        await ct.access.set_key_rate_limit(ct.org.id, key_id, "5/minute")
    with pytest.raises(ValidationError):
        await ct.access.set_key_rate_limit(other.id, key_id, "5 a minute")


@pytest.mark.parametrize(
    ("setting", "value"),
    [("rate_limit", "plenty"), ("trusted_proxies", "10.0.0.0/8,proxy")],
)
def test_bad_settings_stop_the_facade_naming_the_variable(
    tmp_path: Path, setting: str, value: str
) -> None:
    """COMMTUNNEL_RATE_LIMIT and COMMTUNNEL_TRUSTED_PROXIES are checked when the facade is built."""
    with pytest.raises(ValueError, match=f"COMMTUNNEL_{setting.upper()}"):
        Commtunnel.open(
            db=pg.fresh_db(tmp_path / "ct.db"),
            email_provider=MockProvider(),
            settings=Settings(**{setting: value}),  # type: ignore[arg-type]
        )


# --------------------------------------------------------------------------- two servers


async def open_server(db: Path, limiter: RateLimiter) -> Commtunnel:
    """A started facade on ``db`` counting with ``limiter`` (one 'server')."""
    ct = Commtunnel.open(
        db=db,
        email_provider=MockProvider(),
        clock=ManualClock(),
        settings=Settings(embedded_worker=False),
        rate_limiter=limiter,
    )
    return await ct.start()


async def alternate(clients: list[httpx.AsyncClient], key: str, count: int) -> list[int]:
    """``count`` reads with ``key``, taking turns between the servers; their statuses."""
    statuses = []
    for n in range(count):
        r = await clients[n % 2].get(
            "/v1/public/emails/nope", headers={"Authorization": f"Bearer {key}"}
        )
        statuses.append(r.status_code)
        if r.status_code == 429:
            assert_error(r, 429, "RATE_LIMITED")
    return statuses


async def two_servers_statuses(
    tmp_path: Path, one: RateLimiter, two: RateLimiter, count: int
) -> list[int]:
    """Two apps over two facades on one SQLite file; a key limited to 3/day; statuses."""
    db = pg.fresh_db(tmp_path / "shared.db")
    first, second = await open_server(db, one), await open_server(db, two)
    try:
        record, key = await first.keys.create(first.org.id, scopes=READ_SCOPES)
        await first.access.set_key_rate_limit(first.org.id, record.id, "3/day")
        async with app_client(create_app(first)) as a, app_client(create_app(second)) as b:
            return await alternate([a, b], key, count)
    finally:
        await first.aclose()
        await second.aclose()


async def test_two_servers_on_redis_share_the_key_limit(
    tmp_path: Path, shared_limiter: Callable[[], RateLimiter]
) -> None:
    """With Redis, requests spread over two servers stop at the key's one limit."""
    statuses = await two_servers_statuses(tmp_path, shared_limiter(), shared_limiter(), 5)
    assert statuses == [404, 404, 404, 429, 429]


async def test_two_servers_in_memory_count_apart(tmp_path: Path, anyio_backend: str) -> None:
    """Without Redis each server keeps its own count: why several servers need Redis."""
    statuses = await two_servers_statuses(tmp_path, RateLimiter(), RateLimiter(), 6)
    assert statuses == [404] * 6


# --------------------------------------------------------------------------- real servers


@pytest.mark.slow
def test_two_serve_processes_share_the_limit_through_redis(
    tmp_path: Path, spawn: Callable[..., Spawned]
) -> None:
    """Two ``commtunnel serve`` with COMMTUNNEL_REDIS_URL on one database: one limit, one list."""
    db = pg.fresh_db(tmp_path / "ct.db")
    key = org_with_key(db, "read:email")
    (record,) = json.loads(cli(db, "keys", "list", "--org", "acme", "--json"))
    cli(db, "orgs", "set", "--org", "acme", "--rate-limit", "3/day")
    env = clean_env(COMMTUNNEL_REDIS_URL=REDIS_URL, COMMTUNNEL_EMBEDDED_WORKER="false")
    bases = [serve(spawn, db, env=env)[1], serve(spawn, db, env=env)[1]]
    auth = {"Authorization": f"Bearer {key}"}
    try:
        answers = [
            httpx.get(f"{bases[n % 2]}/v1/public/emails/nope", headers=auth, timeout=10)
            for n in range(5)
        ]
        assert [r.status_code for r in answers] == [404, 404, 404, 429, 429]
        assert answers[0].headers["ratelimit-policy"] == "3;w=86400"
        assert int(answers[3].headers["retry-after"]) >= 1
        assert answers[3].json()["retryAfter"] == int(answers[3].headers["retry-after"])
        # The allowlist is read per request too: these servers see the peer 127.0.0.1.
        cli(db, "orgs", "set", "--org", "acme", "--ip-allowlist", "198.51.100.0/24")
        spoofed = {**auth, "X-Forwarded-For": "198.51.100.7"}  # no trusted proxy: ignored
        for base in bases:
            refused = httpx.get(f"{base}/v1/public/emails/nope", headers=spoofed, timeout=10)
            assert assert_error(refused, 403, "IP_NOT_ALLOWED") == {"ip": "127.0.0.1"}
    finally:
        asyncio.run(forget_key(record["id"]))


async def forget_key(key_id: str) -> None:
    """Delete the Redis counts of ``key_id`` (written under the default prefix)."""
    client = redis.asyncio.Redis.from_url(REDIS_URL)
    try:
        keys = await client.keys(f"commtunnel:*/{key_id}/*")
        assert keys, "the servers counted in Redis"
        await client.delete(*keys)
    finally:
        await client.aclose()
