"""What every HTTP provider (Twilio, generic SMS, WhatsApp Cloud) does the same way.

The shared plumbing of ``commtunnel.providers._http``, run against each
provider and a fake service (``tests/http_fakes.py``): network failures are
classified and never raised, one client is reused and closed once, an injected
client is used with the provider's timeout and left open.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from commtunnel.domain.delivery import ErrorCategory, Outcome, ProviderResult, retry_after_seconds
from commtunnel.domain.messages import WhatsAppContent
from commtunnel.ports import OutgoingWhatsApp, WhatsAppLine
from commtunnel.providers._http import (
    HttpProvider,
    answer_text,
    classify_exception,
    classify_other_status,
)
from commtunnel.providers.sms_http import HttpSmsProvider
from commtunnel.providers.twilio import TwilioProvider
from commtunnel.providers.whatsapp import WhatsAppCloudProvider
from commtunnel.testing import ManualClock
from http_fakes import NETWORK_FAILURES, FakeService, outgoing_sms

TWILIO_URL = f"twilio://AC{'0' * 32}:f00dfacecafebeef0123456789abcdef@?from=ACME"
SMS_HTTP_URL = "sms+https://tok_9f8e7d6c5b4a@sms.example.com/api/send?timeout=10"
LINE = WhatsAppLine(phone_number_id="106540352242922", access_token="EAAplatformTOKEN123")


def _twilio_ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(201, json={"sid": "SM" + "1" * 32})


def _sms_http_ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"message_id": "agg-42"})


def _graph_ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"messages": [{"id": "wamid.X"}]})


async def _send_sms(provider: Any) -> ProviderResult:
    result: ProviderResult = await provider.send_sms(outgoing_sms())
    return result


async def _send_whatsapp(provider: Any) -> ProviderResult:
    message = OutgoingWhatsApp(
        message_id="0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
        org_id="org-1",
        content=WhatsAppContent(to="+2348012345678", kind="text", body="Hi"),
        line=LINE,
        created_at=datetime(2026, 1, 1, 12, tzinfo=UTC),
    )
    result: ProviderResult = await provider.send_whatsapp(message)
    return result


@dataclass(frozen=True)
class Case:
    """One HTTP provider: how to build it, send with it, and what success looks like."""

    build: Callable[..., HttpProvider]  # (transport=..., http_client=...) -> provider
    send: Callable[[Any], Awaitable[ProviderResult]]
    ok: Callable[[httpx.Request], httpx.Response]
    timeout: float  # seconds every request must carry


TWILIO = Case(
    build=lambda **kw: TwilioProvider.from_url(TWILIO_URL, clock=ManualClock(), **kw),
    send=_send_sms,
    ok=_twilio_ok,
    timeout=10.0,
)
SMS_HTTP = Case(
    build=lambda **kw: HttpSmsProvider.from_url(SMS_HTTP_URL, clock=ManualClock(), **kw),
    send=_send_sms,
    ok=_sms_http_ok,
    timeout=10.0,
)
WHATSAPP = Case(
    build=lambda **kw: WhatsAppCloudProvider(clock=ManualClock(), timeout=7.5, **kw),
    send=_send_whatsapp,
    ok=_graph_ok,
    timeout=7.5,
)
ALL = pytest.mark.parametrize(
    "case", [TWILIO, SMS_HTTP, WHATSAPP], ids=["twilio", "sms_http", "whatsapp"]
)
# WhatsAppCloudProvider takes a transport only, not a caller's client.
WITH_CLIENT = pytest.mark.parametrize("case", [TWILIO, SMS_HTTP], ids=["twilio", "sms_http"])


# --------------------------------------------------------------------------- network failures


@ALL
@pytest.mark.parametrize(("exc", "category"), NETWORK_FAILURES)
@pytest.mark.anyio
async def test_network_failures_are_transient(
    case: Case, exc: Exception, category: ErrorCategory
) -> None:
    """Timeouts are TIMEOUT, refused/reset connections PROVIDER_OUTAGE; nothing is raised."""
    service = FakeService(exc)
    async with case.build(transport=service.transport()) as provider:
        result = await case.send(provider)
    assert (result.outcome, result.error_category) == (Outcome.TRANSIENT, category)
    assert len(service.requests) == 1


# --------------------------------------------------------------------------- client lifecycle


@ALL
@pytest.mark.anyio
async def test_one_client_is_reused_and_closed_once(case: Case) -> None:
    """Sends share one client with the provider's timeout; aclose() closes it, safe twice."""
    service = FakeService(case.ok)
    provider = case.build(transport=service.transport())
    assert (await case.send(provider)).outcome is Outcome.ACCEPTED
    client = provider._client
    assert (await case.send(provider)).outcome is Outcome.ACCEPTED
    assert client is not None and provider._client is client
    timeouts = [r.extensions["timeout"] for r in service.requests]
    assert timeouts == [dict.fromkeys(("connect", "read", "write", "pool"), case.timeout)] * 2
    await provider.aclose()
    await provider.aclose()
    assert client.is_closed


@ALL
@pytest.mark.anyio
async def test_a_closed_provider_sends_nothing_and_answers_transient(case: Case) -> None:
    """After aclose() a send is transient UNKNOWN and makes no request; nothing is raised."""
    service = FakeService(case.ok)
    provider = case.build(transport=service.transport())
    await provider.aclose()
    result = await case.send(provider)
    assert (result.outcome, result.error_category) == (Outcome.TRANSIENT, ErrorCategory.UNKNOWN)
    assert result.error_message is not None
    assert "closed" in result.error_message
    assert service.requests == []


@WITH_CLIENT
@pytest.mark.anyio
async def test_an_injected_client_is_used_with_the_providers_timeout_and_left_open(
    case: Case,
) -> None:
    """A caller's client is used for sends, each request keeps the provider's timeout, and
    aclose() leaves the client open."""
    service = FakeService(case.ok)
    async with httpx.AsyncClient(transport=service.transport(), timeout=1.0) as client:
        provider = case.build(http_client=client)
        result = await case.send(provider)
        await provider.aclose()
        assert result.outcome is Outcome.ACCEPTED
        assert not client.is_closed
    (request,) = service.requests
    assert request.extensions["timeout"] == dict.fromkeys(
        ("connect", "read", "write", "pool"), case.timeout
    )


@WITH_CLIENT
@pytest.mark.anyio
async def test_client_and_transport_are_exclusive(case: Case) -> None:
    """Passing both an http_client and a transport is a programming error."""
    async with httpx.AsyncClient() as client:
        with pytest.raises(TypeError, match="not both"):
            case.build(http_client=client, transport=httpx.MockTransport(case.ok))


# --------------------------------------------------------------------------- shared helpers


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        ("120", 120.0),
        (" 2.5 ", 2.5),
        ("-5", 0.0),
        ("999999999", 86400.0),
        ("Sun, 01 Mar 2026 09:01:30 GMT", 90.0),
        ("Sun, 01 Mar 2026 08:59:00 GMT", 0.0),
        ("soon", None),
        ("nan", None),
        ("inf", None),
    ],
)
def test_retry_after_reads_seconds_and_http_dates_on_the_clock(
    value: str | None, seconds: float | None
) -> None:
    """Retry-After in seconds or as an HTTP date (from the given now) becomes 0..86400
    seconds; absent, unreadable or non-finite values are None."""
    now = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
    assert retry_after_seconds(value, now=now) == seconds


def test_an_unexpected_exception_is_transient_unknown() -> None:
    """An exception that is neither a timeout nor a transport error is transient UNKNOWN."""
    result = classify_exception(RuntimeError("bug in a hook"))
    assert (result.outcome, result.error_category) == (Outcome.TRANSIENT, ErrorCategory.UNKNOWN)
    assert result.error_message == "RuntimeError: bug in a hook"


@pytest.mark.parametrize(
    ("status", "service_error", "outcome", "category"),
    [
        (503, False, Outcome.TRANSIENT, ErrorCategory.PROVIDER_OUTAGE),
        (500, True, Outcome.TRANSIENT, ErrorCategory.PROVIDER_OUTAGE),
        (400, True, Outcome.PERMANENT, ErrorCategory.REJECTED),
        (400, False, Outcome.TRANSIENT, ErrorCategory.UNKNOWN),
        (302, True, Outcome.TRANSIENT, ErrorCategory.UNKNOWN),
    ],
)
def test_other_statuses_are_rejected_only_when_the_service_said_so(
    status: int, service_error: bool, outcome: Outcome, category: ErrorCategory
) -> None:
    """5xx is an outage; a 4xx is REJECTED only with the service's own error body."""
    result = classify_other_status(status, "text", retry_after=3.0, service_error=service_error)
    assert (result.outcome, result.error_category) == (outcome, category)
    assert result.retry_after == (3.0 if status >= 500 else None)


@pytest.mark.parametrize(
    ("response", "words", "label", "text"),
    [
        (httpx.Response(400, json={"x": 1}), "bad To", "Twilio error 21211",
         "HTTP 400 Twilio error 21211: bad To"),
        (httpx.Response(400, json={"x": 1}), "", "Twilio error 21211",
         "HTTP 400 Twilio error 21211"),
        (httpx.Response(502, text="  <h1>Bad gateway</h1> "), None, "",
         "HTTP 502: <h1>Bad gateway</h1>"),
        (httpx.Response(404), None, "", "HTTP 404"),
        (httpx.Response(500, text="x" * 300), None, "", "HTTP 500: " + "x" * 200),
    ],
)  # fmt: skip
def test_answer_text_quotes_the_service_or_the_body(
    response: httpx.Response, words: str | None, label: str, text: str
) -> None:
    """The status, the label and the service's words; without words, 200 characters of body."""
    assert answer_text(response, words, label=label) == text
