"""The Twilio SMS provider against a fake of Twilio's documented REST API (httpx.MockTransport).

The fake answers like https://www.twilio.com/docs/messaging/api/message-resource
(201 with the Message resource) and https://www.twilio.com/docs/usage/twilios-response
(``{"code", "message", "more_info", "status"}`` errors). Signatures are computed
here independently, following https://www.twilio.com/docs/usage/webhooks/webhooks-security.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode

import httpx
import pytest

from commtunnel.domain.delivery import ErrorCategory, Outcome
from commtunnel.domain.errors import ProviderConfigError, ValidationError, WebhookSignatureError
from commtunnel.domain.messages import Status
from commtunnel.ports import DeliveryReceipt, SmsProvider
from commtunnel.providers import load_provider
from commtunnel.providers.twilio import (
    TwilioProvider,
    TwilioSettings,
    compute_signature,
    is_valid_sender,
)
from commtunnel.testing import ManualClock
from http_fakes import CALLBACK, FakeService, Handler, Responder
from http_fakes import outgoing_sms as outgoing

SID = "AC" + "0123456789abcdef" * 2
TOKEN = "f00dfacecafebeef0123456789abcdef"
SERVICE = "MG" + "fedcba9876543210" * 2
FROM = "+15005550006"
URL = f"twilio://{SID}:{TOKEN}@?from=%2B15005550006"
SM_SID = "SM" + "1" * 32


def created(request: httpx.Request) -> httpx.Response:
    """Twilio's 201 answer to "create a message" (trimmed to the fields that matter)."""
    form = dict(parse_qsl(request.content.decode()))
    return httpx.Response(
        201,
        json={
            "sid": SM_SID,
            "account_sid": SID,
            "to": form.get("To"),
            "from": form.get("From"),
            "body": form.get("Body"),
            "status": "queued",
            "error_code": None,
            "error_message": None,
        },
    )


def twilio_error(status: int, code: int, message: str, **headers: str) -> Handler:
    """A handler answering with Twilio's documented JSON error body."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            status,
            json={
                "code": code,
                "message": message,
                "more_info": f"https://www.twilio.com/docs/errors/{code}",
                "status": status,
            },
            headers=headers,
        )

    return handler


def provider_for(answer: Responder, url: str = URL, clock: ManualClock | None = None) -> Any:
    """The provider for ``url``, its requests answered by a fake (or a FakeService itself)."""
    service = answer if isinstance(answer, FakeService) else FakeService(answer)
    return TwilioProvider.from_url(url, clock=clock or ManualClock(), transport=service.transport())


def twilio_sign(token: str, url: str, params: dict[str, str]) -> str:
    """The signature as Twilio's docs describe it, written out independently of the provider."""
    data = url
    for name in sorted(params):
        data += name + params[name]
    mac = hmac.new(token.encode(), data.encode(), hashlib.sha1)
    return base64.b64encode(mac.digest()).decode()


# --------------------------------------------------------------------------- send


@pytest.mark.anyio
async def test_send_posts_the_documented_form_with_basic_auth() -> None:
    """send_sms POSTs To/From/Body/StatusCallback to Messages.json with SID:TOKEN Basic auth."""
    twilio = FakeService(created)
    async with provider_for(twilio) as provider:
        assert isinstance(provider, SmsProvider)
        result = await provider.send_sms(outgoing())

    assert result.outcome is Outcome.ACCEPTED
    assert result.provider_message_id == SM_SID
    (request,) = twilio.requests
    assert request.method == "POST"
    assert str(request.url) == f"https://api.twilio.com/2010-04-01/Accounts/{SID}/Messages.json"
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    expected_auth = base64.b64encode(f"{SID}:{TOKEN}".encode()).decode()
    assert request.headers["Authorization"] == f"Basic {expected_auth}"
    assert dict(parse_qsl(request.content.decode())) == {
        "To": "+2348012345678",
        "From": "ACME",
        "Body": "Your code is 123456",
        "StatusCallback": CALLBACK,
    }


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("sender_id", "query", "expected"),
    [
        ("ACME", "", {"From": "ACME"}),
        ("My-Shop & Co"[:11], "", {"From": "My-Shop & C"}),
        ("+2348099999999", "", {"From": "+2348099999999"}),
        ("12345", "", {"From": "12345"}),
        ("not valid!", "", {"From": FROM}),
        ("TooLongSenderId", "", {"From": FROM}),
        ("12345678", "", {"From": "12345678"}),
        ("ACME", "&use_sender_id=false", {"From": FROM}),
        (
            "ACME",
            f"&messaging_service_sid={SERVICE}",
            {"From": "ACME", "MessagingServiceSid": SERVICE},
        ),
    ],
)
async def test_from_is_the_message_sender_id_else_the_configured_sender(
    sender_id: str, query: str, expected: dict[str, str]
) -> None:
    """A sender ID of a valid shape is sent as From; otherwise the URL's from is the fallback."""
    twilio = FakeService(created)
    async with provider_for(twilio, URL + query) as provider:
        await provider.send_sms(outgoing(sender_id=sender_id))
    form = twilio.forms()[0]
    sender_fields = {k: v for k, v in form.items() if k in ("From", "MessagingServiceSid")}
    assert sender_fields == expected


@pytest.mark.anyio
async def test_messaging_service_alone_sends_no_from_for_an_invalid_sender_id() -> None:
    """With only messaging_service_sid configured, an unusable sender ID leaves From out."""
    twilio = FakeService(created)
    url = f"twilio://{SID}:{TOKEN}@?messaging_service_sid={SERVICE}"
    async with provider_for(twilio, url) as provider:
        await provider.send_sms(outgoing(sender_id="bad sender!"))
    (form,) = twilio.forms()
    assert "From" not in form
    assert form["MessagingServiceSid"] == SERVICE


@pytest.mark.anyio
async def test_no_status_callback_field_without_a_callback_url_and_flash_is_sent_normally() -> None:
    """No StatusCallback when unset; a flash SMS goes out as a normal one (no extra field)."""
    twilio = FakeService(created)
    async with provider_for(twilio) as provider:
        result = await provider.send_sms(outgoing(callback=None, send_type=1))
    assert result.outcome is Outcome.ACCEPTED
    assert set(twilio.forms()[0]) == {"To", "From", "Body"}


@pytest.mark.anyio
async def test_timeout_and_base_url_options_reach_the_request() -> None:
    """base_url redirects the API origin (loopback fake) and timeout applies to every phase."""
    twilio = FakeService(created)
    url = URL + "&base_url=http%3A%2F%2F127.0.0.1%3A8080%2F&timeout=2.5"
    async with provider_for(twilio, url) as provider:
        await provider.send_sms(outgoing())
    (request,) = twilio.requests
    assert str(request.url) == f"http://127.0.0.1:8080/2010-04-01/Accounts/{SID}/Messages.json"
    assert request.extensions["timeout"] == {"connect": 2.5, "read": 2.5, "write": 2.5, "pool": 2.5}


# --------------------------------------------------------------------------- classification


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("status", "code", "outcome", "category"),
    [
        (400, 21211, Outcome.PERMANENT, ErrorCategory.INVALID_RECIPIENT),
        (400, 21614, Outcome.PERMANENT, ErrorCategory.INVALID_RECIPIENT),
        (400, 21612, Outcome.PERMANENT, ErrorCategory.INVALID_RECIPIENT),
        (400, 21408, Outcome.PERMANENT, ErrorCategory.REJECTED),
        (400, 21606, Outcome.PERMANENT, ErrorCategory.REJECTED),
        (400, 21659, Outcome.PERMANENT, ErrorCategory.REJECTED),
        (400, 21602, Outcome.PERMANENT, ErrorCategory.REJECTED),  # other 4xx: message body required
        (401, 20003, Outcome.TRANSIENT, ErrorCategory.AUTH),
        (400, 20005, Outcome.TRANSIENT, ErrorCategory.AUTH),
        (403, 20403, Outcome.TRANSIENT, ErrorCategory.AUTH),
        (429, 20429, Outcome.TRANSIENT, ErrorCategory.RATE_LIMITED),
        (500, 20500, Outcome.TRANSIENT, ErrorCategory.PROVIDER_OUTAGE),
        (503, 20503, Outcome.TRANSIENT, ErrorCategory.PROVIDER_OUTAGE),
    ],
)
async def test_twilio_errors_are_classified(
    status: int, code: int, outcome: Outcome, category: ErrorCategory
) -> None:
    """Each documented Twilio error code / HTTP status maps to its outcome and category."""
    handler = twilio_error(status, code, f"Twilio says no ({code})")
    async with provider_for(handler) as provider:
        result = await provider.send_sms(outgoing())
    assert (result.outcome, result.error_category) == (outcome, category)
    assert result.error_message is not None
    assert f"HTTP {status}" in result.error_message
    assert str(code) in result.error_message
    assert f"https://www.twilio.com/docs/errors/{code}" in result.error_message


@pytest.mark.anyio
async def test_unsubscribed_recipient_21610_is_permanent_and_says_so() -> None:
    """21610 (recipient replied STOP) is a permanent RECIPIENT_OPTED_OUT naming it."""
    handler = twilio_error(400, 21610, "Attempt to send to unsubscribed recipient")
    async with provider_for(handler) as provider:
        result = await provider.send_sms(outgoing())
    assert result.outcome is Outcome.PERMANENT
    assert result.error_category is ErrorCategory.RECIPIENT_OPTED_OUT
    assert result.error_message is not None
    assert "21610" in result.error_message
    assert "unsubscribed" in result.error_message


@pytest.mark.anyio
async def test_rate_limit_honours_retry_after_seconds() -> None:
    """HTTP 429 with Retry-After: 7 is RATE_LIMITED with retry_after 7 seconds."""
    handler = twilio_error(429, 20429, "Too Many Requests", **{"Retry-After": "7"})
    async with provider_for(handler) as provider:
        result = await provider.send_sms(outgoing())
    assert result.error_category is ErrorCategory.RATE_LIMITED
    assert result.retry_after == 7.0


@pytest.mark.anyio
async def test_retry_after_http_date_is_measured_on_the_clock() -> None:
    """A Retry-After HTTP date is turned into seconds from the provider's clock, not the wall."""
    clock = ManualClock(datetime(2026, 3, 1, 9, 0, tzinfo=UTC))
    when = format_datetime(clock.now() + timedelta(seconds=90), usegmt=True)
    handler = twilio_error(503, 20503, "Service unavailable", **{"Retry-After": when})
    async with provider_for(handler, clock=clock) as provider:
        result = await provider.send_sms(outgoing())
    assert result.error_category is ErrorCategory.PROVIDER_OUTAGE
    assert result.retry_after == 90.0


@pytest.mark.anyio
async def test_http_401_without_a_body_is_auth() -> None:
    """A bare 401 (no Twilio body) is still a transient AUTH failure."""
    async with provider_for(httpx.Response(401)) as provider:
        result = await provider.send_sms(outgoing())
    assert (result.outcome, result.error_category) == (Outcome.TRANSIENT, ErrorCategory.AUTH)


@pytest.mark.anyio
async def test_a_4xx_that_is_not_twilios_error_body_is_transient_unknown() -> None:
    """A proxy's HTML 404 says nothing about the message: transient UNKNOWN, not a lost message."""
    async with provider_for(httpx.Response(404, text="<h1>Not Found</h1>")) as provider:
        result = await provider.send_sms(outgoing())
    assert (result.outcome, result.error_category) == (Outcome.TRANSIENT, ErrorCategory.UNKNOWN)
    assert result.error_message is not None
    assert "404" in result.error_message


@pytest.mark.anyio
async def test_201_without_a_sid_is_transient_unknown() -> None:
    """A 2xx with no message sid is not Twilio's answer: transient UNKNOWN."""
    async with provider_for(httpx.Response(201, text="ok")) as provider:
        result = await provider.send_sms(outgoing())
    assert (result.outcome, result.error_category) == (Outcome.TRANSIENT, ErrorCategory.UNKNOWN)


@pytest.mark.anyio
async def test_the_auth_token_never_appears_in_error_messages() -> None:
    """A server or library echoing the auth token has it masked in error_message."""
    echo = twilio_error(401, 20003, f"Authenticate: bad credentials {SID}:{TOKEN}")

    def raising(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"cannot reach https://{SID}:{TOKEN}@api.twilio.com")

    for handler in (echo, raising):
        async with provider_for(handler) as provider:
            result = await provider.send_sms(outgoing())
        assert result.error_message is not None
        assert TOKEN not in result.error_message
        assert "***" in result.error_message


# --------------------------------------------------------------------------- signatures

DOC_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
SIGNATURE = "X-Twilio-Signature"


@pytest.mark.parametrize(
    ("caller", "signature"),
    [
        # Twilio's current webhooks-security page.
        ("+14158675310", "GvWf1cFY/Q7PnoempGyD5oXAezc="),
        # The same example in Twilio's older security page, with another caller number.
        ("+12349013030", "0/KCTR6DLpKmkAf8muzZqo1nDgQ="),
    ],
)
def test_compute_signature_matches_twilios_documented_examples(caller: str, signature: str) -> None:
    """compute_signature reproduces the worked examples of Twilio's docs (auth token 12345)."""
    params = {
        "CallSid": "CA1234567890ABCDE",
        "Caller": caller,
        "Digits": "1234",
        "From": caller,
        "To": "+18005551212",
    }
    assert compute_signature(DOC_URL, params.items(), "12345") == signature
    assert twilio_sign("12345", DOC_URL, params) == signature


def test_documented_example_passes_verification() -> None:
    """The docs' signed request gets past the signature check (it then fails as a non-DLR body)."""
    provider = TwilioProvider.from_url(f"twilio://{SID}:12345@?from=ACME", clock=ManualClock())
    params = {
        "CallSid": "CA1234567890ABCDE",
        "Caller": "+14158675310",
        "Digits": "1234",
        "From": "+14158675310",
        "To": "+18005551212",
    }
    headers = {"X-Twilio-Signature": "GvWf1cFY/Q7PnoempGyD5oXAezc="}
    with pytest.raises(ValidationError) as excinfo:
        provider.parse_status_callback(
            url=DOC_URL, headers=headers, body=urlencode(params).encode()
        )
    assert set(excinfo.value.details) == {"MessageSid", "MessageStatus"}


def status_callback(status: str, **extra: str) -> dict[str, str]:
    """The form Twilio POSTs to a StatusCallback URL."""
    return {
        "AccountSid": SID,
        "ApiVersion": "2010-04-01",
        "From": "ACME",
        "MessageSid": SM_SID,
        "MessageStatus": status,
        "SmsSid": SM_SID,
        "SmsStatus": status,
        "To": "+2348012345678",
        **extra,
    }


def parse(form: dict[str, str], *, url: str = CALLBACK, signature: str | None = None) -> Any:
    provider = TwilioProvider.from_url(URL, clock=ManualClock())
    sig = signature if signature is not None else twilio_sign(TOKEN, url, form)
    return provider.parse_status_callback(
        url=url, headers={"x-twilio-signature": sig}, body=urlencode(form).encode()
    )


@pytest.mark.parametrize(
    ("word", "status"),
    [
        ("sent", Status.SENT),
        ("delivered", Status.DELIVERED),
        ("read", Status.DELIVERED),
    ],
)
def test_status_callbacks_become_receipts(word: str, status: Status) -> None:
    """sent -> SENT, delivered/read -> DELIVERED, with Twilio's word kept."""
    assert parse(status_callback(word)) == [
        DeliveryReceipt(provider_message_id=SM_SID, status=status, provider_status=word)
    ]


@pytest.mark.parametrize("word", ["undelivered", "failed"])
def test_failed_status_callbacks_carry_the_error(word: str) -> None:
    """undelivered/failed -> FAILED with ErrorCode (and ErrorMessage when Twilio sends one)."""
    form = status_callback(word, ErrorCode="30003", ErrorMessage="Unreachable destination handset")
    assert parse(form) == [
        DeliveryReceipt(
            provider_message_id=SM_SID,
            status=Status.FAILED,
            provider_status=word,
            error_code="30003",
            error_message="Unreachable destination handset",
        )
    ]


@pytest.mark.parametrize("word", ["queued", "accepted", "sending", "scheduled"])
def test_intermediate_statuses_move_nothing(word: str) -> None:
    """queued/accepted/sending/scheduled are verified but yield no receipt."""
    assert parse(status_callback(word)) == []


def test_signature_over_the_url_with_its_default_port_is_accepted() -> None:
    """Like Twilio's helper libraries, the URL is also tried with its default port added."""
    form = status_callback("delivered")
    sig = twilio_sign(TOKEN, "https://ct.example.com:443/v1/webhooks/sms/provider", form)
    assert parse(form, signature=sig)[0].status is Status.DELIVERED


def test_signature_over_the_url_without_its_default_port_is_accepted() -> None:
    """The other way round: a callback URL with :443 also matches a signature without it."""
    form = status_callback("delivered")
    sig = twilio_sign(TOKEN, CALLBACK, form)
    url = "https://ct.example.com:443/v1/webhooks/sms/provider"
    assert parse(form, url=url, signature=sig)[0].status is Status.DELIVERED


@pytest.mark.parametrize(
    ("signed", "called"),
    [
        ("https://ct.example.com/hook", "https://ct.example.com:8443/hook"),
        ("https://ct.example.com/hook", "https://ct.example.com:80/hook"),
        ("https://ct.example.com:8443/hook", "https://ct.example.com/hook"),
    ],
)
def test_only_the_default_port_is_optional(signed: str, called: str) -> None:
    """Another port (or the other scheme's default) is part of what is signed."""
    form = status_callback("delivered")
    with pytest.raises(WebhookSignatureError):
        parse(form, url=called, signature=twilio_sign(TOKEN, signed, form))


@pytest.mark.parametrize(
    "body",
    [b"MessageSid=SM1&MessageStatus=sent&Body=\xff", b"&".join([b"a=1"] * 201)],
    ids=["not-utf8", "too-many-fields"],
)
def test_bodies_that_cannot_be_verified_are_refused(body: bytes) -> None:
    """A body that is not UTF-8, or has more than 200 fields, is refused as unsigned."""
    provider = TwilioProvider.from_url(URL, clock=ManualClock())
    with pytest.raises(WebhookSignatureError, match="cannot be verified"):
        provider.parse_status_callback(url=CALLBACK, headers={SIGNATURE: "x"}, body=body)


@pytest.mark.parametrize(
    "tamper",
    ["missing", "wrong-token", "other-url", "changed-body", "garbage"],
)
def test_bad_signatures_are_refused(tamper: str) -> None:
    """A missing, wrong, other-URL or stale signature raises WebhookSignatureError."""
    form = status_callback("delivered")
    provider = TwilioProvider.from_url(URL, clock=ManualClock())
    headers: dict[str, str] = {"X-Twilio-Signature": twilio_sign(TOKEN, CALLBACK, form)}
    body = urlencode(form).encode()
    if tamper == "missing":
        headers = {}
    elif tamper == "wrong-token":
        headers["X-Twilio-Signature"] = twilio_sign("0" * 32, CALLBACK, form)
    elif tamper == "other-url":
        headers["X-Twilio-Signature"] = twilio_sign(TOKEN, "https://evil.example/hook", form)
    elif tamper == "changed-body":
        body = urlencode({**form, "MessageStatus": "failed"}).encode()
    else:
        headers["X-Twilio-Signature"] = "not base64 at all"
    with pytest.raises(WebhookSignatureError):
        provider.parse_status_callback(url=CALLBACK, headers=headers, body=body)


def test_signed_callback_without_a_known_status_is_a_validation_error() -> None:
    """A verified body with an unknown MessageStatus is refused as ValidationError."""
    with pytest.raises(ValidationError) as excinfo:
        parse(status_callback("received"))
    assert "MessageStatus" in excinfo.value.details


# --------------------------------------------------------------------------- configuration


def test_load_provider_builds_twilio_through_the_entry_point() -> None:
    """load_provider('twilio://...') builds a TwilioProvider; its repr hides the token."""
    url = f"twilio://{SID}:{TOKEN}@?messaging_service_sid={SERVICE}&timeout=5"
    provider = load_provider(url, clock=ManualClock())
    assert isinstance(provider, TwilioProvider)
    assert isinstance(provider, SmsProvider)
    assert provider.name == "twilio"
    assert provider.settings.messaging_service_sid == SERVICE
    assert provider.settings.timeout == 5.0
    assert TOKEN not in repr(provider)
    assert TOKEN not in provider.redacted_url
    assert provider.redacted_url.startswith(f"twilio://{SID}:***@?")


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        (f"twilio://{SID}:{TOKEN}@", "from= or messaging_service_sid="),
        (f"twilio://{SID}@?from=ACME", "auth token"),
        (f"twilio://ACbad:{TOKEN}@?from=ACME", "account SID"),
        (f"twilio://{SID}:{TOKEN}@?from=ACME&colour=blue", "unknown option"),
        (f"twilio://{SID}:{TOKEN}@?from=ACME&timeout=0", "timeout"),
        (f"twilio://{SID}:{TOKEN}@?from=ACME&timeout=soon", "timeout"),
        (f"twilio://{SID}:{TOKEN}@?from=+15005550006", "%2B"),
        (f"twilio://{SID}:{TOKEN}@?messaging_service_sid=MG123", "messaging_service_sid"),
        (f"twilio://{SID}:{TOKEN}@?from=ACME&base_url=ftp%3A%2F%2Fx", "base_url"),
        (f"twilio://{SID}:{TOKEN}@?from=ACME&base_url=https%3A%2F%2Fu%3Ap%40x.test", "credentials"),
        (f"twilio://{SID}:{TOKEN}@?from=ACME&base_url=https%3A%2F%2Fx.test%3Fa%3D1", "query"),
        (f"twilio://{SID}:{TOKEN}@/Messages.json?from=ACME", "no host, path"),
        (f"twilio://{SID}:{TOKEN}@?from=ACME#frag", "fragment"),
        (f"twilio://{SID}:{TOKEN}@api.twilio.com?from=ACME", "no host"),
        (f"twilio://{SID}:{TOKEN}@?from=ACME&use_sender_id=maybe", "use_sender_id"),
        (f"twilio://{SID}:{TOKEN}@?from=ACME&from=BETA", "twice"),
    ],
)
def test_bad_urls_are_config_errors_without_the_token(url: str, reason: str) -> None:
    """Invalid Twilio URLs raise ProviderConfigError naming the problem, token redacted."""
    with pytest.raises(ProviderConfigError) as excinfo:
        load_provider(url, clock=ManualClock())
    assert reason in str(excinfo.value)
    assert TOKEN not in str(excinfo.value)


def test_another_scheme_is_refused() -> None:
    """TwilioSettings.from_url takes twilio:// URLs only."""
    with pytest.raises(ValueError, match="expected a twilio:// URL"):
        TwilioSettings.from_url(f"sms+https://{SID}:{TOKEN}@?from=ACME")


def test_redacted_url_lists_every_option_and_masks_the_token() -> None:
    """redacted_url writes back each non-default option (encoded) and *** for the token."""
    url = (
        f"twilio://{SID}:{TOKEN}@?from=%2B15005550006&messaging_service_sid={SERVICE}"
        "&base_url=http%3A%2F%2F127.0.0.1%3A8080&timeout=2.5&use_sender_id=false"
    )
    assert TwilioSettings.from_url(url).redacted_url == (
        f"twilio://{SID}:***@?from=%2B15005550006&messaging_service_sid={SERVICE}"
        "&base_url=http%3A%2F%2F127.0.0.1%3A8080&timeout=2.5&use_sender_id=false"
    )


@pytest.mark.parametrize(
    ("sender", "valid"),
    [
        ("ACME", True),
        ("A", True),
        ("Shop_2-Go+&", True),
        ("+15005550006", True),
        ("12345", True),
        ("12345678901", True),
        ("123", True),
        ("12", False),
        ("ABCDEFGHIJKL", False),
        ("only 1 2 3", True),
        ("1234-56", False),
        (" ACME", False),
        ("ACME!", False),
        ("", False),
    ],
)
def test_sender_shapes(sender: str, valid: bool) -> None:
    """Numbers/short codes and Twilio's alphanumeric sender IDs are usable as From."""
    assert is_valid_sender(sender) is valid
