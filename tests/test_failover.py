"""Provider failover and circuit breakers: two real SMTP servers, primary and fallback.

The primary (an aiosmtpd server, or a port nothing listens on) refuses,
times out or answers 4xx/5xx; the message must land on the fallback with
both attempts recorded. Breakers open and close on the manual clock. The
pure rules (breaker states, route choice, provider names) are tested on
their own first.
"""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

import pg
from app_client import app_client, assert_error
from commtunnel import Commtunnel, Settings
from commtunnel.domain.circuit import CircuitBreaker, CircuitState
from commtunnel.domain.delivery import ErrorCategory, ProviderResult
from commtunnel.domain.errors import ProviderConfigError
from commtunnel.domain.messages import Attempt, Status
from commtunnel.providers import load_named_providers
from commtunnel.services.routing import ProviderRoute
from commtunnel.testing import ManualClock, MockProvider, MockSmsProvider
from commtunnel_http.app import create_app
from processes import Spawned, clean_env, cli, org_with_key, serve, stop_cleanly, wait_until
from test_providers_smtp import FreePortController, Recorder, Smtpd, free_port

T0 = datetime(2026, 1, 1, 12, tzinfo=UTC)
OUTAGE = ProviderResult.transient(ErrorCategory.PROVIDER_OUTAGE, "connection refused")
BAD_RECIPIENT = ProviderResult.permanent(ErrorCategory.INVALID_RECIPIENT, "550 no such user")
OK = ProviderResult.accepted("id-1")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# --------------------------------------------------------------------------- the breaker


def test_breaker_opens_after_the_threshold_of_faults_in_a_row() -> None:
    breaker = CircuitBreaker(failure_threshold=3, cooldown=30)
    for _ in range(2):
        assert breaker.allows(T0)
        assert breaker.record(T0, OUTAGE) is False  # still closed
    assert breaker.record(T0, OUTAGE) is True
    assert breaker.state == CircuitState.OPEN
    assert breaker.opened_until == T0 + timedelta(seconds=30)
    assert not breaker.allows(T0 + timedelta(seconds=29.9))


def test_a_success_or_a_recipient_refusal_ends_the_run_of_faults() -> None:
    """Only provider faults count; an invalid recipient means the provider answered."""
    breaker = CircuitBreaker(failure_threshold=2)
    breaker.record(T0, OUTAGE)
    breaker.record(T0, BAD_RECIPIENT)
    breaker.record(T0, OUTAGE)
    assert (breaker.state, breaker.consecutive_failures) == (CircuitState.CLOSED, 1)
    breaker.record(T0, OK)
    assert breaker.consecutive_failures == 0
    rejected = ProviderResult.permanent(ErrorCategory.REJECTED, "554 spam")
    breaker.record(T0, rejected)
    breaker.record(T0, rejected)
    assert breaker.state == CircuitState.CLOSED  # content refusals are not outages


def test_after_the_cooldown_one_probe_goes_through_and_its_success_closes() -> None:
    breaker = CircuitBreaker(failure_threshold=1, cooldown=30)
    breaker.record(T0, OUTAGE)
    later = T0 + timedelta(seconds=30)
    assert breaker.allows(later)  # the probe
    assert breaker.state == CircuitState.HALF_OPEN
    assert not breaker.allows(later)  # one probe at a time
    assert breaker.record(later, OK) is True
    assert breaker.state == CircuitState.CLOSED
    assert breaker.opened_until is None
    assert breaker.allows(later)


def test_a_failed_probe_opens_the_circuit_for_another_cooldown() -> None:
    breaker = CircuitBreaker(failure_threshold=5, cooldown=10)
    for _ in range(5):
        breaker.record(T0, OUTAGE)
    probe_at = T0 + timedelta(seconds=10)
    assert breaker.allows(probe_at)
    breaker.record(probe_at, OUTAGE)  # one fault is enough while half-open
    assert breaker.state == CircuitState.OPEN
    assert breaker.opened_until == probe_at + timedelta(seconds=10)


def test_a_probe_that_never_reports_is_given_up_after_the_cooldown() -> None:
    breaker = CircuitBreaker(failure_threshold=1, cooldown=10)
    breaker.record(T0, OUTAGE)
    assert breaker.allows(T0 + timedelta(seconds=10))
    assert not breaker.allows(T0 + timedelta(seconds=19))
    assert breaker.allows(T0 + timedelta(seconds=20))  # its worker died: probe again


def test_recent_error_rate_covers_the_window_only() -> None:
    breaker = CircuitBreaker(failure_threshold=100, window=60)
    breaker.record(T0, OUTAGE)
    breaker.record(T0 + timedelta(seconds=30), OK)
    breaker.record(T0 + timedelta(seconds=40), OUTAGE)
    assert breaker.recent(T0 + timedelta(seconds=40)) == (3, 2)
    assert breaker.recent(T0 + timedelta(seconds=61)) == (2, 1)
    health = breaker.health(T0 + timedelta(seconds=61), provider="p", channel="email", worker="w")
    assert (health.calls, health.failures, health.error_rate) == (2, 1, 0.5)
    assert (health.last_error, health.last_error_at) == (
        "connection refused",
        T0 + timedelta(seconds=40),
    )


def test_breaker_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="failure_threshold"):
        CircuitBreaker(failure_threshold=0)
    with pytest.raises(ValueError, match="cooldown"):
        CircuitBreaker(cooldown=0)


# --------------------------------------------------------------------------- the route


def attempt(provider: str, result: ProviderResult, number: int = 1) -> Attempt:
    return Attempt(
        message_id="m",
        number=number,
        provider=provider,
        outcome=str(result.outcome),
        error_category=None if result.error_category is None else str(result.error_category),
        error_message=result.error_message,
        duration_ms=1.0,
        started_at=T0,
    )


def three() -> ProviderRoute[str]:
    return ProviderRoute("email", [("a", "A"), ("b", "B"), ("c", "C")], failure_threshold=1)


def test_the_first_attempt_starts_at_the_first_provider() -> None:
    chosen = three().choose(T0, None)
    assert chosen is not None and chosen.name == "a"


def test_a_failure_another_provider_may_fix_moves_on_and_wraps_round() -> None:
    route = three()
    for previous, expected in (("a", "b"), ("b", "c"), ("c", "a")):
        chosen = route.choose(T0, attempt(previous, OUTAGE))
        assert chosen is not None and chosen.name == expected
    auth = ProviderResult.permanent(ErrorCategory.AUTH, "535 bad credentials")
    chosen = route.choose(T0, attempt("a", auth))
    assert chosen is not None and chosen.name == "b"


def test_a_held_attempt_stays_on_its_provider() -> None:
    paused = ProviderResult.transient(ErrorCategory.LINE_PAUSED, "token expired")
    chosen = three().choose(T0, attempt("b", paused))
    assert chosen is not None and chosen.name == "b"


def test_open_circuits_are_passed_over_and_all_open_chooses_none() -> None:
    route = three()
    route.record("a", T0, OUTAGE)
    chosen = route.choose(T0, None)
    assert chosen is not None and chosen.name == "b"
    route.record("b", T0 + timedelta(seconds=5), OUTAGE)
    route.record("c", T0, OUTAGE)
    assert route.choose(T0 + timedelta(seconds=1), None) is None
    assert route.seconds_until_probe(T0 + timedelta(seconds=1)) == 29.0


def test_next_after_does_not_wrap_and_ignores_unknown_names() -> None:
    route = three()
    names = [route.next_after(n, T0) for n in ("a", "b", "c", "sandbox")]
    assert names == ["b", "c", None, None]


def test_next_after_passes_over_open_circuits_without_taking_a_probe() -> None:
    route = three()
    route.record("b", T0, OUTAGE)  # b opens for 30 s
    assert route.next_after("a", T0) == "c"
    route.record("c", T0, OUTAGE)
    assert route.next_after("a", T0) is None  # every later circuit is open: back off
    later = T0 + timedelta(seconds=30)
    assert route.next_after("a", later) == "b"
    assert route.routes[1].breaker.state == CircuitState.OPEN  # asking took no probe
    assert route.routes[1].breaker.allows(later)


def test_results_of_calls_started_before_the_circuit_opened_change_nothing() -> None:
    breaker = CircuitBreaker(failure_threshold=1, cooldown=30)
    breaker.record(T0, OUTAGE)
    assert breaker.record(T0 + timedelta(seconds=1), OK) is False  # a late success
    assert breaker.state == CircuitState.OPEN
    breaker.record(T0 + timedelta(seconds=2), OUTAGE)  # a late fault
    assert breaker.opened_until == T0 + timedelta(seconds=30)
    assert breaker.recent(T0 + timedelta(seconds=2)) == (3, 2)  # but both are counted


def test_a_deferred_recipient_is_not_a_provider_fault_and_does_not_fail_over() -> None:
    deferred = ProviderResult.transient(ErrorCategory.RECIPIENT_DEFERRED, "452 4.2.2 full")
    assert not deferred.provider_fault and not deferred.may_fail_over
    breaker = CircuitBreaker(failure_threshold=1)
    breaker.record(T0, deferred)
    assert breaker.state == CircuitState.CLOSED


def test_the_last_error_hides_addresses_and_numbers() -> None:
    breaker = CircuitBreaker()
    breaker.record(
        T0,
        ProviderResult.transient(
            ErrorCategory.PROVIDER_OUTAGE,
            "421 busy (recipient Bob.X@tenant.example, +1 415 555 0123)",
        ),
    )
    assert breaker.last_error == "421 busy (recipient <address>, <number>)"


def test_route_refuses_no_providers_and_duplicate_names() -> None:
    with pytest.raises(ValueError, match="at least one"):
        ProviderRoute("email", [])
    with pytest.raises(ValueError, match="unique: a"):
        ProviderRoute("email", [("a", 1), ("a", 2)])
    with pytest.raises(ValueError, match="empty"):
        ProviderRoute("email", [("", 1)])


def test_a_health_report_is_due_on_a_state_change_or_after_the_interval() -> None:
    route = ProviderRoute("email", [("a", "A")], failure_threshold=2, report_interval=5)
    assert route.record("a", T0, OK) is True  # nothing reported yet
    route.reported(T0)
    assert route.record("a", T0 + timedelta(seconds=1), OUTAGE) is False
    assert route.record("a", T0 + timedelta(seconds=2), OUTAGE) is True  # opened
    route.reported(T0 + timedelta(seconds=2))
    assert route.record("a", T0 + timedelta(seconds=7), OUTAGE) is True  # interval
    assert route.record("none", T0, OUTAGE) is False


# --------------------------------------------------------------------------- provider names


def test_provider_urls_are_named_by_fragment_or_numbered_by_kind(tmp_path: Path) -> None:
    clock = ManualClock()
    named = load_named_providers(
        [
            "smtp://127.0.0.1:2525#primary",
            f"outbox://{tmp_path}/a",
            f"outbox://{tmp_path}/b",
            "smtp://127.0.0.1:2526",
        ],
        clock=clock,
    )
    assert [name for name, _ in named] == ["primary", "outbox-1", "outbox-2", "smtp"]


@pytest.mark.parametrize(
    ("urls", "reason"),
    [
        (["smtp://127.0.0.1:25#bad name"], "must be 1-64 letters"),
        (["smtp://127.0.0.1:25#x", "smtp://127.0.0.1:26#x"], "unique: x"),
        (["nope://x#a"], "No provider for scheme 'nope'"),
    ],
)
def test_provider_names_that_cannot_be_used_are_refused(urls: list[str], reason: str) -> None:
    with pytest.raises(ProviderConfigError, match=reason):
        load_named_providers(urls, clock=ManualClock())


def test_an_sms_provider_url_naming_an_email_only_provider_is_refused(tmp_path: Path) -> None:
    """``sms_provider`` must name a provider that sends SMS; the refusal hides the password."""
    with pytest.raises(ProviderConfigError) as caught:
        Commtunnel.open(
            db=pg.fresh_db(tmp_path / "ct.db"),
            sms_provider="smtp://user:secret@127.0.0.1:25#mail",
            clock=ManualClock(),
            settings=Settings(),
        )
    assert caught.value.message == (
        "The provider mail (smtp://user:***@127.0.0.1:25#mail) cannot send SMS"
    )


def test_a_provider_assigned_later_gets_the_settings_breaker(tmp_path: Path) -> None:
    """``ct.email_provider = p`` and ``ct.sms_provider = p`` use the configured threshold and
    cool-down, as the providers given to ``open`` do."""
    settings = Settings(breaker_failures=2, breaker_cooldown=7)
    ct = Commtunnel.open(
        db=pg.fresh_db(tmp_path / "ct.db"),
        email_provider=MockProvider(),
        clock=ManualClock(),
        settings=settings,
    )
    ct.email_provider = MockProvider(name="other")
    ct.sms_provider = MockSmsProvider()
    assert ct.sms_route is not None
    for route in (ct.email_route, ct.sms_route):
        breaker = route.routes[0].breaker
        assert (breaker.failure_threshold, breaker.cooldown) == (2, 7)


def test_settings_split_the_provider_list_and_fall_back_to_the_single_url() -> None:
    settings = Settings.from_env(
        {"COMMTUNNEL_EMAIL_PROVIDERS": "smtp://a:25#one, smtp://b:25#two,", "X": "1"}
    )
    assert settings.email_provider_urls == ["smtp://a:25#one", "smtp://b:25#two"]
    assert Settings(sms_provider="twilio://s:t@").sms_provider_urls == ["twilio://s:t@"]


# --------------------------------------------------------------------------- two SMTP servers


@pytest.fixture
def smtpd() -> Iterator[Callable[[], Smtpd]]:
    started: list[FreePortController] = []

    def start() -> Smtpd:
        handler = Recorder()
        controller = FreePortController(
            handler, hostname="127.0.0.1", port=0, server_hostname="localhost"
        )
        controller.start()
        started.append(controller)
        return Smtpd(controller, handler)

    yield start
    for controller in started:
        controller.stop()


def smtp_url(port: int, name: str, *, timeout: float = 5) -> str:
    return f"smtp://127.0.0.1:{port}?local_hostname=localhost&timeout={timeout:g}#{name}"


@asynccontextmanager
async def facade(
    tmp_path: Path, clock: ManualClock, providers: list[str], **settings: Any
) -> AsyncIterator[Commtunnel]:
    options: dict[str, Any] = {
        "embedded_worker": False,
        "lease_seconds": 60,
        "send_timeout": 10,
        "breaker_failures": 5,
        "breaker_cooldown": 30,
        "email_providers": ",".join(providers),
        **settings,
    }
    async with Commtunnel.open(
        db=pg.fresh_db(tmp_path / "ct.db"),
        settings=Settings(**options),
        sms_provider=MockSmsProvider(),
        clock=clock,
        rng=random.Random(3),
    ) as ct:
        await ct.admin.add_sender(ct.org.id, "example.com")
        yield ct


async def send(ct: Commtunnel, to: str = "bob@example.com") -> str:
    result = await ct.email.send(from_="shop@example.com", to=to, subject="Hi", text="Hello")
    return result.message.id


def shaped(attempts: list[Attempt]) -> list[tuple[str, str | None, str | None]]:
    return [(a.provider, a.status, a.error_category) for a in attempts]


def landed(server: Smtpd) -> list[str]:
    """The Message-ID headers the server received."""
    return [str(m.parsed()["Message-ID"]) for m in server.handler.messages]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("failure", "category"),
    [
        ("refuses connections", "PROVIDER_OUTAGE"),
        ("times out", "TIMEOUT"),
        ("answers 4xx", "PROVIDER_OUTAGE"),
        ("answers 452", "RATE_LIMITED"),
        ("answers 5xx", "REJECTED"),
    ],
)
async def test_the_message_lands_on_the_fallback_with_both_attempts_recorded(
    tmp_path: Path, smtpd: Callable[[], Smtpd], failure: str, category: str
) -> None:
    clock = ManualClock()
    primary, fallback = smtpd(), smtpd()
    port = primary.port
    if failure == "refuses connections":
        port = free_port()
    elif failure == "times out":
        primary.handler.hold, primary.handler.hold_target = True, 1
    elif failure == "answers 4xx":
        primary.handler.mail_reply = "451 4.3.0 try again later"
    elif failure == "answers 452":
        primary.handler.rcpt_reply = "452 4.5.3 too many recipients this hour"
    else:
        primary.handler.data_reply = "554 5.7.1 message refused by policy"
    providers = [smtp_url(port, "primary", timeout=0.5), smtp_url(fallback.port, "fallback")]
    try:
        async with facade(tmp_path, clock, providers) as ct:
            message_id = await send(ct)
            assert await ct.run_worker_until_idle() == 2  # the fallback at once, no backoff
            status = await ct.email.get(message_id)
            assert status.message.status == Status.SENT
            assert shaped(status.attempts) == [
                ("primary", Status.RETRYING, category),
                ("fallback", Status.SENT, None),
            ]
            header = status.message.email.message_id_header  # type: ignore[union-attr]
            assert landed(fallback) == [header]
            assert primary.handler.messages == []
            events = await ct.email.timeline(message_id)
            retrying = next(e for e in events if e.type == "email_retrying")
            assert retrying.details["failoverTo"] == "fallback"
            assert retrying.details["retryInSeconds"] == 0
    finally:
        if failure == "times out":
            await primary.release_held()


@pytest.mark.anyio
async def test_an_invalid_recipient_does_not_fail_over(
    tmp_path: Path, smtpd: Callable[[], Smtpd]
) -> None:
    """550 for the recipient: no other provider can fix it; BOUNCED after one attempt."""
    primary, fallback = smtpd(), smtpd()
    primary.handler.rcpt_reply = "550 5.1.1 no such user here"
    providers = [smtp_url(primary.port, "primary"), smtp_url(fallback.port, "fallback")]
    async with facade(tmp_path, ManualClock(), providers) as ct:
        message_id = await send(ct)
        assert await ct.run_worker_until_idle() == 1
        status = await ct.email.get(message_id)
        assert status.message.status == Status.BOUNCED
        assert shaped(status.attempts) == [("primary", Status.BOUNCED, "INVALID_RECIPIENT")]
        assert fallback.handler.messages == []


@pytest.mark.anyio
async def test_a_refusal_on_the_last_provider_is_final(
    tmp_path: Path, smtpd: Callable[[], Smtpd]
) -> None:
    primary, fallback = smtpd(), smtpd()
    for server in (primary, fallback):
        server.handler.data_reply = "554 5.7.1 refused"
    providers = [smtp_url(primary.port, "primary"), smtp_url(fallback.port, "fallback")]
    async with facade(tmp_path, ManualClock(), providers) as ct:
        message_id = await send(ct)
        await ct.run_worker_until_idle()
        status = await ct.email.get(message_id)
        assert status.message.status == Status.FAILED
        assert shaped(status.attempts) == [
            ("primary", Status.RETRYING, "REJECTED"),
            ("fallback", Status.FAILED, "REJECTED"),
        ]


@pytest.mark.anyio
async def test_wrapping_round_to_the_first_provider_waits_for_the_backoff(
    tmp_path: Path, smtpd: Callable[[], Smtpd]
) -> None:
    clock = ManualClock()
    primary, fallback = smtpd(), smtpd()
    for server in (primary, fallback):
        server.handler.mail_reply = "451 4.3.0 later"
    providers = [smtp_url(primary.port, "primary"), smtp_url(fallback.port, "fallback")]
    async with facade(tmp_path, clock, providers) as ct:
        message_id = await send(ct)
        assert await ct.run_worker_until_idle() == 2
        status = await ct.email.get(message_id)
        assert status.message.status == Status.RETRYING
        events = await ct.email.timeline(message_id)
        last = [e for e in events if e.type == "email_retrying"][-1]
        assert "failoverTo" not in last.details
        assert last.details["retryInSeconds"] >= 5  # the policy's backoff (base 10 s, jitter)
        primary.handler.mail_reply = None
        clock.advance(last.details["retryInSeconds"])
        assert await ct.run_worker_until_idle() == 1
        status = await ct.email.get(message_id)
        assert [a.provider for a in status.attempts] == ["primary", "fallback", "primary"]
        assert status.message.status == Status.SENT
        assert len(primary.handler.messages) == 1


@pytest.mark.anyio
async def test_the_breaker_opens_sends_straight_to_the_fallback_and_a_probe_closes_it(
    tmp_path: Path, smtpd: Callable[[], Smtpd]
) -> None:
    clock = ManualClock()
    primary, fallback = smtpd(), smtpd()
    primary.handler.mail_reply = "421 4.3.2 service shutting down"
    providers = [smtp_url(primary.port, "primary"), smtp_url(fallback.port, "fallback")]
    async with facade(tmp_path, clock, providers, breaker_failures=2, breaker_cooldown=30) as ct:
        for _ in range(2):
            await send(ct)
            await ct.run_worker_until_idle()
        health = {h.provider: h for h in await ct.provider_health()}
        assert health["primary"].state == CircuitState.OPEN
        assert health["primary"].consecutive_failures == 2
        assert health["primary"].opened_until == clock.now() + timedelta(seconds=30)
        assert health["primary"].last_error_category == "PROVIDER_OUTAGE"
        assert health["fallback"].state == CircuitState.CLOSED

        # Open: the primary is not even tried.
        third = await send(ct)
        assert await ct.run_worker_until_idle() == 1
        assert shaped((await ct.email.get(third)).attempts) == [("fallback", Status.SENT, None)]

        # After the cool-down the primary is back; the next message is its probe.
        primary.handler.mail_reply = None
        clock.advance(30)
        fourth = await send(ct)
        assert await ct.run_worker_until_idle() == 1
        assert shaped((await ct.email.get(fourth)).attempts) == [("primary", Status.SENT, None)]
        health = {h.provider: h for h in await ct.provider_health()}
        assert health["primary"].state == CircuitState.CLOSED
        assert health["primary"].opened_until is None
        assert len(fallback.handler.messages) == 3
        assert len(primary.handler.messages) == 1

        # The reports were stored for other processes too.
        stored = {h.provider: h for h in await ct.routing_store.list_provider_health()}
        assert stored["primary"].state == CircuitState.CLOSED
        assert stored["primary"].reported_by == ct.dispatcher.worker_id


@pytest.mark.anyio
async def test_when_every_circuit_is_open_the_attempt_waits_for_the_first_probe(
    tmp_path: Path, smtpd: Callable[[], Smtpd]
) -> None:
    clock = ManualClock()
    primary, fallback = smtpd(), smtpd()
    for server in (primary, fallback):
        server.handler.mail_reply = "451 4.3.0 down"
    providers = [smtp_url(primary.port, "primary"), smtp_url(fallback.port, "fallback")]
    async with facade(tmp_path, clock, providers, breaker_failures=1, breaker_cooldown=60) as ct:
        first = await send(ct)
        await ct.run_worker_until_idle()  # primary fails, fallback fails: both open
        clock.advance(20)  # the backoff is over, the circuits are still open
        second = await send(ct)
        await ct.run_worker_until_idle()
        status = await ct.email.get(second)
        assert shaped(status.attempts) == [("none", Status.RETRYING, "PROVIDER_OUTAGE")]
        assert "circuit is open" in (status.attempts[0].error_message or "")
        events = await ct.email.timeline(second)
        retrying = [e for e in events if e.type == "email_retrying"][-1]
        assert retrying.details["retryInSeconds"] >= 40  # until the first probe
        for server in (primary, fallback):
            server.handler.mail_reply = None
        clock.advance(retrying.details["retryInSeconds"])
        await ct.run_worker_until_idle()
        for message_id in (first, second):
            assert (await ct.email.get(message_id)).message.status == Status.SENT


@pytest.mark.anyio
async def test_with_the_fallback_open_a_rate_limited_primary_waits_for_its_retry_after(
    tmp_path: Path, clock: ManualClock
) -> None:
    """No instant failover to an open circuit: the backoff applies, Retry-After its floor."""
    limited = ProviderResult.transient(ErrorCategory.RATE_LIMITED, "429", retry_after=60)
    primary = MockProvider(lambda e: limited, name="primary")
    fallback = MockProvider(lambda e: OK, name="fallback")
    route = ProviderRoute(
        "email", [("primary", primary), ("fallback", fallback)], failure_threshold=1, cooldown=600
    )
    route.routes[0].breaker.failure_threshold = 5
    route.record("fallback", clock.now(), OUTAGE)  # the fallback's circuit is open
    async with Commtunnel.open(
        db=pg.fresh_db(tmp_path / "ct.db"),
        email_provider=route,
        settings=Settings(embedded_worker=False),
        clock=clock,
    ) as ct:
        await ct.admin.add_sender(ct.org.id, "example.com")
        message_id = await send(ct)
        assert await ct.run_worker_until_idle() == 1  # no instant second call
        status = await ct.email.get(message_id)
        assert shaped(status.attempts) == [("primary", Status.RETRYING, "RATE_LIMITED")]
        retrying = [e for e in await ct.email.timeline(message_id) if e.type == "email_retrying"]
        assert "failoverTo" not in retrying[-1].details
        assert retrying[-1].details["retryInSeconds"] >= 60
        assert fallback.sent == []


@pytest.mark.anyio
async def test_email_and_sms_providers_of_one_name_keep_their_own_health(
    tmp_path: Path, clock: ManualClock
) -> None:
    async with Commtunnel.open(
        db=pg.fresh_db(tmp_path / "ct.db"),
        email_provider=MockProvider(lambda e: OUTAGE, name="main"),
        sms_provider=MockSmsProvider(name="main"),
        settings=Settings(embedded_worker=False, breaker_failures=1),
        clock=clock,
    ) as ct:
        await ct.admin.add_sender(ct.org.id, "example.com")
        await send(ct)
        await ct.run_worker_until_idle()
        await ct.routing_store.report_provider_health(
            ct.sms_route.health(clock.now(), worker="w2")  # type: ignore[union-attr]
        )
        stored = {
            (h.channel, h.provider): h.state for h in await ct.routing_store.list_provider_health()
        }
        assert stored == {
            ("email", "main"): CircuitState.OPEN,
            ("sms", "main"): CircuitState.CLOSED,
        }


@pytest.mark.anyio
async def test_health_shows_no_recipient_data_to_another_organization(
    tmp_path: Path, clock: ManualClock
) -> None:
    fault = ProviderResult.transient(
        ErrorCategory.PROVIDER_OUTAGE, "421 try later (recipient secret.customer@tenant-a.example)"
    )
    async with Commtunnel.open(
        db=pg.fresh_db(tmp_path / "ct.db"),
        email_provider=MockProvider(lambda e: fault),
        settings=Settings(embedded_worker=False),
        clock=clock,
    ) as ct:
        await ct.admin.add_sender(ct.org.id, "example.com")
        await send(ct, to="secret.customer@tenant-a.example")
        await ct.run_worker_until_idle()
        other = await ct.admin.create_org("other")
        _, key = await ct.keys.create(other.id, scopes=frozenset({"read:sms"}))
        async with app_client(create_app(ct)) as client:
            r = await client.get(
                "/v1/public/providers/health", headers={"Authorization": f"Bearer {key}"}
            )
        assert r.status_code == 200
        assert "tenant-a" not in r.text
        assert r.json()["providers"][0]["lastError"] == "421 try later (recipient <address>)"


@pytest.mark.anyio
async def test_sandbox_sends_touch_no_breaker(tmp_path: Path, clock: ManualClock) -> None:
    provider = MockProvider(lambda e: OUTAGE)
    async with Commtunnel.open(
        db=pg.fresh_db(tmp_path / "ct.db"),
        email_provider=provider,
        settings=Settings(embedded_worker=False),
        clock=clock,
    ) as ct:
        await ct.admin.add_sender(ct.org.id, "example.com")
        await ct.email.send(
            from_="a@example.com", to="b@example.com", subject="s", text="t", sandbox_mode=True
        )
        await ct.run_worker_until_idle()
        health = (await ct.provider_health())[0]
        assert (health.provider, health.calls, health.reported_by) == ("mock", 0, None)


# --------------------------------------------------------------------------- health over HTTP


@pytest.mark.anyio
async def test_health_endpoint_shows_each_provider_and_needs_a_key(
    tmp_path: Path, smtpd: Callable[[], Smtpd]
) -> None:
    clock = ManualClock()
    primary, fallback = smtpd(), smtpd()
    primary.handler.mail_reply = "451 4.3.0 down"
    providers = [smtp_url(primary.port, "primary"), smtp_url(fallback.port, "fallback")]
    async with facade(tmp_path, clock, providers, breaker_failures=1) as ct:
        _, key = await ct.keys.create(ct.org.id, scopes=frozenset({"read:email"}))
        await send(ct)
        await ct.run_worker_until_idle()
        async with app_client(create_app(ct)) as client:
            r = await client.get(
                "/v1/public/providers/health", headers={"Authorization": f"Bearer {key}"}
            )
            assert r.status_code == 200, r.text
            by_name = {p["provider"]: p for p in r.json()["providers"]}
            assert [p["provider"] for p in r.json()["providers"]] == [
                "primary",
                "fallback",
                "mock-sms",
            ]
            assert by_name["primary"]["state"] == "OPEN"
            assert by_name["primary"]["channel"] == "email"
            assert by_name["primary"]["errorRate"] == 1.0
            assert by_name["primary"]["lastError"].startswith("451")
            assert by_name["primary"]["openedUntil"] == "2026-01-01T12:00:30.000Z"
            assert by_name["fallback"]["state"] == "CLOSED"
            assert by_name["fallback"]["errorRate"] == 0.0
            assert by_name["mock-sms"]["reportedBy"] is None

            unauthenticated = await client.get("/v1/public/providers/health")
            assert_error(unauthenticated, 401, "UNAUTHORIZED")


@pytest.mark.anyio
async def test_a_server_without_a_worker_shows_what_the_workers_stored(
    tmp_path: Path, smtpd: Callable[[], Smtpd]
) -> None:
    clock = ManualClock()
    primary = smtpd()
    primary.handler.mail_reply = "451 4.3.0 down"
    providers = [smtp_url(primary.port, "primary")]
    async with facade(tmp_path, clock, providers, breaker_failures=1) as worker:
        await send(worker)
        await worker.run_worker_until_idle()
    async with facade(tmp_path, clock, providers) as server:  # a fresh process: no calls made
        [health, _sms] = await server.provider_health()
        assert (health.provider, health.state, health.reported_by) == (
            "primary",
            CircuitState.OPEN,
            health.reported_by,
        )
        assert health.reported_by is not None and health.reported_by.startswith("worker-")


# --------------------------------------------------------------------------- commtunnel serve


@pytest.mark.slow
def test_serve_fails_over_between_two_smtp_servers_and_reports_health(
    tmp_path: Path, smtpd: Callable[[], Smtpd], spawn: Callable[..., Spawned]
) -> None:
    """`commtunnel serve` with COMMTUNNEL_EMAIL_PROVIDERS: the primary refuses connections."""
    fallback = smtpd()
    db = pg.fresh_db(tmp_path / "ct.db")
    key = org_with_key(db, "send:email,read:email", sender="example.com")
    providers = f"{smtp_url(free_port(), 'primary')},{smtp_url(fallback.port, 'fallback')}"
    server, base = serve(
        spawn,
        db,
        env=clean_env(COMMTUNNEL_EMAIL_PROVIDERS=providers, COMMTUNNEL_BREAKER_FAILURES="1"),
    )
    auth = {"Authorization": f"Bearer {key}"}
    body = {"from": "shop@example.com", "to": "bob@example.com", "subject": "Hi", "text": "Hello"}
    sent = httpx.post(f"{base}/v1/public/emails/send", json=body, headers=auth, timeout=10)
    assert sent.status_code == 202, sent.text
    message_id = sent.json()["id"]

    def message() -> dict[str, Any]:
        got = httpx.get(f"{base}/v1/public/emails/{message_id}", headers=auth, timeout=10)
        answer: dict[str, Any] = got.json()
        return answer

    wait_until(lambda: message()["status"] == "SENT", 20, "the fallback to take the email")
    attempts = message()["attempts"]
    assert [(a["provider"], a["status"], a["errorCategory"]) for a in attempts] == [
        ("primary", "RETRYING", "PROVIDER_OUTAGE"),
        ("fallback", "SENT", None),
    ]
    assert len(fallback.handler.messages) == 1
    health = httpx.get(f"{base}/v1/public/providers/health", headers=auth, timeout=10).json()
    states = {p["provider"]: p["state"] for p in health["providers"]}
    assert states["primary"] == "OPEN" and states["fallback"] == "CLOSED"
    stop_cleanly(server)
    # The CLI shows what the worker stored (its own configuration here is the default outbox).
    shown = json.loads(cli(db, "providers", "health", "--json"))
    stored = {p["provider"]: p for p in shown["providers"]}
    assert stored["primary"]["state"] == "OPEN"
    assert stored["primary"]["reportedBy"].startswith("worker-")
    assert stored["outbox"]["reportedBy"] is None
