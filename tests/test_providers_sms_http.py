"""The generic HTTP SMS provider against a fake aggregator (httpx.MockTransport).

The fake speaks the shape documented in ``commtunnel.providers.sms_http``: one
JSON POST per message with a bearer token, and status callbacks signed with
HMAC-SHA256 of the body (``X-Signature: sha256=<hex>``), computed here independently.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from typing import Any

import httpx
import pytest

from commtunnel.domain.delivery import ErrorCategory, Outcome
from commtunnel.domain.errors import (
    NotFoundError,
    ProviderConfigError,
    ValidationError,
    WebhookSignatureError,
)
from commtunnel.domain.messages import Status
from commtunnel.ports import DeliveryReceipt, SmsProvider
from commtunnel.providers import load_provider
from commtunnel.providers.sms_http import HttpSmsProvider, HttpSmsSettings
from commtunnel.testing import ManualClock
from http_fakes import CALLBACK, MESSAGE_ID, FakeService, Responder
from http_fakes import outgoing_sms as outgoing

TOKEN = "tok_9f8e7d6c5b4a"
URL = f"sms+https://{TOKEN}@sms.example.com/api/send?timeout=10"


def ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"message_id": "agg-42", "status": "queued"})


def provider_for(answer: Responder, url: str = URL) -> Any:
    """The provider for ``url``, its requests answered by a fake (or a FakeService itself)."""
    service = answer if isinstance(answer, FakeService) else FakeService(answer)
    return HttpSmsProvider.from_url(url, clock=ManualClock(), transport=service.transport())


def sign(body: bytes, token: str = TOKEN) -> str:
    """Commtunnel's generic callback signature, written out independently of the provider."""
    return "sha256=" + hmac.new(token.encode(), body, hashlib.sha256).hexdigest()


# --------------------------------------------------------------------------- send


@pytest.mark.anyio
async def test_send_posts_the_json_shape_with_a_bearer_token() -> None:
    """send_sms POSTs the documented JSON to the https URL (options removed) with Bearer auth."""
    aggregator = FakeService(ok)
    async with provider_for(aggregator) as provider:
        assert isinstance(provider, SmsProvider)
        result = await provider.send_sms(outgoing())

    assert result.outcome is Outcome.ACCEPTED
    assert result.provider_message_id == "agg-42"
    (request,) = aggregator.requests
    assert request.method == "POST"
    assert str(request.url) == "https://sms.example.com/api/send"
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.headers["Content-Type"] == "application/json"
    assert json.loads(request.content) == {
        "from": "ACME",
        "to": "+2348012345678",
        "message": "Your code is 123456",
        "type": "normal",
        "reference": MESSAGE_ID,
        "callback_url": CALLBACK,
    }
    assert request.extensions["timeout"] == {
        "connect": 10.0,
        "read": 10.0,
        "write": 10.0,
        "pool": 10.0,
    }


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("send_type", "encoding", "expected"),
    [
        (0, "GSM7", "normal"),
        (1, "GSM7", "flash"),
        (2, "UCS2", "unicode"),
        (0, "UCS2", "unicode"),
    ],
)
async def test_type_follows_send_type_and_encoding(
    send_type: int, encoding: str, expected: str
) -> None:
    """type is flash for send_type 1, unicode for send_type 2 or a UCS-2 body, else normal."""
    aggregator = FakeService(ok)
    async with provider_for(aggregator) as provider:
        await provider.send_sms(outgoing(send_type=send_type, encoding=encoding))
    assert aggregator.bodies()[0]["type"] == expected


@pytest.mark.anyio
async def test_plain_http_without_token_sends_no_authorization_and_no_callback_url() -> None:
    """sms+http://host:port/path goes to http://host:port/path, unauthenticated; no callback_url."""
    aggregator = FakeService(ok)
    async with provider_for(aggregator, "sms+http://127.0.0.1:8080/send") as provider:
        await provider.send_sms(outgoing(callback=None))
    (request,) = aggregator.requests
    assert str(request.url) == "http://127.0.0.1:8080/send"
    assert "Authorization" not in request.headers
    assert "callback_url" not in json.loads(request.content)


@pytest.mark.anyio
async def test_token_may_be_given_as_the_password() -> None:
    """sms+https://:TOKEN@host uses the (percent-decoded) password as the bearer token."""
    aggregator = FakeService(ok)
    async with provider_for(aggregator, "sms+https://:a%2Fb@sms.example.com/v2/sms") as provider:
        await provider.send_sms(outgoing())
    (request,) = aggregator.requests
    assert request.headers["Authorization"] == "Bearer a/b"
    assert str(request.url) == "https://sms.example.com/v2/sms"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("response", "expected_id"),
    [
        (httpx.Response(200, json={"message_id": "m-1", "id": "ignored"}), "m-1"),
        (httpx.Response(201, json={"id": 987654}), "987654"),
        (httpx.Response(202, json={"status": "accepted"}), MESSAGE_ID),
        (httpx.Response(200, text="OK"), MESSAGE_ID),
    ],
)
async def test_accepted_id_is_the_aggregators_else_our_reference(
    response: httpx.Response, expected_id: str
) -> None:
    """2xx is accepted with message_id, else id, else the reference Commtunnel sent."""
    async with provider_for(response) as provider:
        result = await provider.send_sms(outgoing())
    assert result.outcome is Outcome.ACCEPTED
    assert result.provider_message_id == expected_id


# --------------------------------------------------------------------------- classification


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("status", "outcome", "category"),
    [
        (400, Outcome.PERMANENT, ErrorCategory.REJECTED),
        (422, Outcome.PERMANENT, ErrorCategory.REJECTED),
        (413, Outcome.PERMANENT, ErrorCategory.REJECTED),
        (401, Outcome.TRANSIENT, ErrorCategory.AUTH),
        (403, Outcome.TRANSIENT, ErrorCategory.AUTH),
        (408, Outcome.TRANSIENT, ErrorCategory.TIMEOUT),
        (429, Outcome.TRANSIENT, ErrorCategory.RATE_LIMITED),
        (500, Outcome.TRANSIENT, ErrorCategory.PROVIDER_OUTAGE),
        (502, Outcome.TRANSIENT, ErrorCategory.PROVIDER_OUTAGE),
        (503, Outcome.TRANSIENT, ErrorCategory.PROVIDER_OUTAGE),
        (404, Outcome.TRANSIENT, ErrorCategory.UNKNOWN),
        (302, Outcome.TRANSIENT, ErrorCategory.UNKNOWN),
    ],
)
async def test_http_failures_are_classified_not_raised(
    status: int, outcome: Outcome, category: ErrorCategory
) -> None:
    """Each HTTP status maps to its outcome and category, with the service's words kept."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json={"error": "invalid destination", "code": "E17"})

    async with provider_for(handler) as provider:
        result = await provider.send_sms(outgoing())
    assert (result.outcome, result.error_category) == (outcome, category)
    assert result.error_message is not None
    assert f"HTTP {status}" in result.error_message
    assert "[E17] invalid destination" in result.error_message


@pytest.mark.anyio
@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_is_honoured(status: int) -> None:
    """Retry-After (seconds) on 429 and 503 becomes retry_after."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, text="slow down", headers={"Retry-After": "30"})

    async with provider_for(handler) as provider:
        result = await provider.send_sms(outgoing())
    assert result.retry_after == 30.0
    assert result.error_message == f"HTTP {status}: slow down"


@pytest.mark.anyio
async def test_the_token_never_appears_in_error_messages() -> None:
    """An aggregator echoing the bearer token has it masked in error_message."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"error": f"unknown token {TOKEN}"})

    async with provider_for(handler) as provider:
        result = await provider.send_sms(outgoing())
    assert result.error_message == "HTTP 401: unknown token ***"


# --------------------------------------------------------------------------- callbacks


def parse(body: bytes, headers: dict[str, str] | None = None, url: str = URL) -> Any:
    provider = HttpSmsProvider.from_url(url, clock=ManualClock())
    if headers is None:
        headers = {"X-Signature": sign(body)}
    return provider.parse_status_callback(url=CALLBACK, headers=headers, body=body)


def test_a_signed_receipt_is_parsed() -> None:
    """A correctly signed JSON receipt becomes a DeliveryReceipt."""
    body = json.dumps({"message_id": "agg-42", "status": "DELIVERED"}).encode()
    assert parse(body) == [
        DeliveryReceipt(
            provider_message_id="agg-42", status=Status.DELIVERED, provider_status="DELIVERED"
        )
    ]


def test_an_array_of_receipts_with_errors_is_parsed_in_order() -> None:
    """An array carries several receipts; error_code is kept as text, status in any case."""
    body = json.dumps(
        [
            {"message_id": "a", "status": "sent"},
            {
                "message_id": 7,
                "status": "FAILED",
                "error_code": 30003,
                "error": "absent subscriber",
            },
        ]
    ).encode()
    assert parse(body, {"x-signature": sign(body).upper().replace("SHA256=", "sha256=")}) == [
        DeliveryReceipt(provider_message_id="a", status=Status.SENT, provider_status="sent"),
        DeliveryReceipt(
            provider_message_id="7",
            status=Status.FAILED,
            provider_status="FAILED",
            error_code="30003",
            error_message="absent subscriber",
        ),
    ]


@pytest.mark.parametrize("tamper", ["missing", "wrong-key", "changed-body", "no-prefix"])
def test_bad_signatures_are_refused(tamper: str) -> None:
    """A missing, wrongly keyed, stale or malformed signature raises WebhookSignatureError."""
    body = json.dumps({"message_id": "agg-42", "status": "DELIVERED"}).encode()
    headers = {"X-Signature": sign(body)}
    if tamper == "missing":
        headers = {}
    elif tamper == "wrong-key":
        headers["X-Signature"] = sign(body, "another-token")
    elif tamper == "changed-body":
        body = body.replace(b"DELIVERED", b"FAILED")
    else:
        headers["X-Signature"] = sign(body).removeprefix("sha256=")
    with pytest.raises(WebhookSignatureError):
        parse(body, headers)


def test_without_a_token_callbacks_are_not_taken() -> None:
    """With no token there is nothing to verify with: NotFoundError."""
    body = b'{"message_id": "x", "status": "SENT"}'
    with pytest.raises(NotFoundError):
        parse(body, url="sms+http://127.0.0.1:8080/send")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"not json", "body"),
        (b"[]", "body"),
        (b'"DELIVERED"', "body"),
        (b'{"status": "DELIVERED"}', "message_id"),
        (b'{"message_id": "x", "status": "LOST"}', "status"),
        (b'{"message_id": "x", "status": "SENT", "error_code": [1]}', "error_code"),
        (b'[{"message_id": "x", "status": "SENT"}, {"message_id": "y"}]', "[1].status"),
    ],
)
def test_signed_bodies_that_are_not_receipts_are_validation_errors(body: bytes, field: str) -> None:
    """A verified body that is not a receipt (or array of them) names the bad field."""
    with pytest.raises(ValidationError) as excinfo:
        parse(body)
    assert field in excinfo.value.details


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize("scheme", ["sms+https", "sms+http"])
def test_load_provider_builds_it_through_the_entry_point(scheme: str) -> None:
    """load_provider('sms+https://...') returns an HttpSmsProvider; repr hides the token."""
    provider = load_provider(
        f"{scheme}://{TOKEN}@sms.example.com:8443/api/send", clock=ManualClock()
    )
    assert isinstance(provider, HttpSmsProvider)
    assert isinstance(provider, SmsProvider)
    assert provider.settings.endpoint == f"{scheme[4:]}://sms.example.com:8443/api/send"
    assert TOKEN not in repr(provider)
    assert provider.redacted_url == f"{scheme}://***@sms.example.com:8443/api/send?timeout=10"


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        (f"sms+https://{TOKEN}@sms.example.com/send?colour=blue", "unknown option"),
        (f"sms+https://{TOKEN}@sms.example.com/send?timeout=-1", "timeout"),
        (f"sms+https://{TOKEN}@sms.example.com/send?timeout=later", "timeout"),
        (f"sms+https://user:{TOKEN}@sms.example.com/send", "token once"),
        (f"sms+https://{TOKEN}:user@sms.example.com/send", "token once"),
        (f"sms+https://{TOKEN}@sms.example.com:0/send", "port"),
        (f"sms+https://{TOKEN}@/send", "host"),
        (f"sms+https://{TOKEN}@sms.example.com:99999/send", "port"),
        (f"sms+https://{TOKEN}@sms.example.com/send#frag", "fragment"),
        ("sms+https://to%20ken@sms.example.com/send", "printable ASCII"),
    ],
)
def test_bad_urls_are_config_errors_without_the_token(url: str, reason: str) -> None:
    """Invalid URLs raise ProviderConfigError naming the problem; the whole user part is
    masked, since either half of ``a:b@`` may be the token."""
    with pytest.raises(ProviderConfigError) as excinfo:
        load_provider(url, clock=ManualClock())
    message = str(excinfo.value)
    assert reason in message
    assert TOKEN not in message
    assert "***@" in message


def test_another_scheme_is_refused() -> None:
    """HttpSmsSettings.from_url takes sms+https:// and sms+http:// URLs only."""
    with pytest.raises(ValueError, match="expected an sms"):
        HttpSmsSettings.from_url(f"https://{TOKEN}@sms.example.com/send")


@pytest.mark.parametrize(
    ("endpoint", "reason"),
    [
        ("ftp://sms.example.com/send", "http(s) URL with a host"),
        ("https:///send", "http(s) URL with a host"),
        ("https://me:s3cret@sms.example.com/send", "credentials"),
        ("https://sms.example.com/send?key=s3cret", "query"),
        ("https://sms.example.com/send#top", "fragment"),
    ],
)
def test_settings_refuse_an_endpoint_that_is_not_a_plain_http_url(
    endpoint: str, reason: str
) -> None:
    """Settings built directly check the endpoint too: http(s), a host, nothing else."""
    with pytest.raises(ValueError, match=re.escape(reason)):
        HttpSmsSettings(endpoint=endpoint, token=TOKEN)
