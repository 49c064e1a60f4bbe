"""The WhatsApp Cloud provider against a fake of Meta's Graph API, and Meta's webhook rules.

The fake (``tests/http_fakes.py``'s FakeService) answers like the Cloud API messages endpoint
(https://developers.facebook.com/docs/whatsapp/cloud-api/reference/messages) and
with Graph's documented error body ``{"error": {"message", "type", "code",
"error_data": {"messaging_product", "details"}, "fbtrace_id"}}``
(https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes).
Webhook payloads follow https://developers.facebook.com/docs/whatsapp/cloud-api/webhooks/components;
their rules live in ``commtunnel.domain.whatsapp`` (pure, no provider involved) and
signatures are computed here independently (HMAC-SHA256 of the raw body). What every
HTTP provider does alike (network failures, closing, the client) is in test_providers_http.py.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from commtunnel.domain.delivery import ErrorCategory, Outcome, ProviderResult
from commtunnel.domain.errors import ValidationError, WebhookAuthError, WebhookSignatureError
from commtunnel.domain.messages import Status, WhatsAppContent
from commtunnel.domain.whatsapp import (
    InboundWhatsApp,
    StatusUpdate,
    parse_webhook,
    verify_handshake,
    verify_signature,
)
from commtunnel.ports import OutgoingWhatsApp, WhatsAppLine, WhatsAppProvider
from commtunnel.providers.whatsapp import WhatsAppCloudProvider, classify_response
from commtunnel.testing import ManualClock
from http_fakes import FakeService

pytestmark = pytest.mark.anyio

BASE = "https://graph.test"
PLATFORM = WhatsAppLine(phone_number_id="106540352242922", access_token="EAAplatformTOKEN123")
TENANT = WhatsAppLine(
    phone_number_id="224466880011223", access_token="EAAtenantTOKEN456", org_id="org-1"
)
ALICE = "+2348012345678"
BOB = "+4915112345678"
WAMID = "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBJDQjZCMzlEQUE4OTJBMTE4RTUA"
APP_SECRET = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"


def text(to: str = ALICE, body: str = "Your order shipped") -> WhatsAppContent:
    return WhatsAppContent(to=to, kind="text", body=body)


def outgoing(
    content: WhatsAppContent | None = None, line: WhatsAppLine = PLATFORM
) -> OutgoingWhatsApp:
    return OutgoingWhatsApp(
        message_id="0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
        org_id="org-1",
        content=content or text(),
        line=line,
        created_at=datetime(2026, 1, 1, 12, tzinfo=UTC),
    )


def sent_ok(request: httpx.Request) -> httpx.Response:
    """Graph's 200 answer to a messages POST."""
    body = json.loads(request.content)
    return httpx.Response(
        200,
        json={
            "messaging_product": "whatsapp",
            "contacts": [{"input": body["to"], "wa_id": body["to"]}],
            "messages": [{"id": WAMID}],
        },
    )


def sent_ok_for(to: str) -> httpx.Response:
    """Graph's 200 answer to a message for ``to``."""
    return sent_ok(httpx.Request("POST", BASE, json={"to": to.removeprefix("+")}))


def graph_error(
    status: int, code: int, message: str, details: str, *, headers: dict[str, str] | None = None
) -> httpx.Response:
    """Graph's documented error body."""
    return httpx.Response(
        status,
        headers=headers,
        json={
            "error": {
                "message": message,
                "type": "OAuthException",
                "code": code,
                "error_data": {"messaging_product": "whatsapp", "details": details},
                "fbtrace_id": "Az8or2yhqkZfEZ-_4Qn_Bam",
            }
        },
    )


@pytest.fixture
def graph() -> FakeService:
    """The fake Graph API; it answers success until a test sets its responder."""
    return FakeService(sent_ok)


@pytest.fixture
async def wa(graph: FakeService, clock: ManualClock) -> Any:
    provider = WhatsAppCloudProvider(graph_base_url=BASE, clock=clock, transport=graph.transport())
    yield provider
    await provider.aclose()


# --------------------------------------------------------------------------- sending


async def test_is_a_whatsapp_provider(wa: WhatsAppCloudProvider) -> None:
    """The provider satisfies the port and names itself whatsapp_cloud."""
    assert isinstance(wa, WhatsAppProvider)
    assert wa.name == "whatsapp_cloud"


async def test_text_message_exact_request(wa: WhatsAppCloudProvider, graph: FakeService) -> None:
    """A text message is POSTed to the line's messages endpoint with Meta's documented JSON."""
    result = await wa.send_whatsapp(outgoing())
    assert result == ProviderResult.accepted(WAMID)
    [request] = graph.requests
    assert request.method == "POST"
    assert str(request.url) == f"{BASE}/v21.0/{PLATFORM.phone_number_id}/messages"
    assert request.headers["Authorization"] == f"Bearer {PLATFORM.access_token}"
    assert request.headers["Content-Type"] == "application/json"
    assert json.loads(request.content) == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "2348012345678",
        "type": "text",
        "text": {"preview_url": False, "body": "Your order shipped"},
    }


async def test_template_with_positional_variables(
    wa: WhatsAppCloudProvider, graph: FakeService
) -> None:
    """A list of variables becomes the body component's positional text parameters."""
    content = WhatsAppContent(
        to=ALICE,
        kind="template",
        template_name="order_update",
        template_language="en_US",
        template_variables=["Ada", "#1234"],
    )
    assert (await wa.send_whatsapp(outgoing(content))).outcome is Outcome.ACCEPTED
    assert graph.bodies() == [
        {
            "messaging_product": "whatsapp",
            "to": "2348012345678",
            "type": "template",
            "template": {
                "name": "order_update",
                "language": {"code": "en_US"},
                "components": [
                    {
                        "type": "body",
                        "parameters": [
                            {"type": "text", "text": "Ada"},
                            {"type": "text", "text": "#1234"},
                        ],
                    }
                ],
            },
        }
    ]


async def test_template_with_named_variables(wa: WhatsAppCloudProvider, graph: FakeService) -> None:
    """A dict of variables becomes named parameters (parameter_name), in the dict's order."""
    content = WhatsAppContent(
        to=ALICE,
        kind="template",
        template_name="order_confirmation",
        template_language="pt_BR",
        template_variables={"customer_name": "Jessica", "order_number": "SKBUP2-4CPIG9"},
    )
    await wa.send_whatsapp(outgoing(content))
    assert graph.bodies()[0]["template"] == {
        "name": "order_confirmation",
        "language": {"code": "pt_BR"},
        "components": [
            {
                "type": "body",
                "parameters": [
                    {"type": "text", "parameter_name": "customer_name", "text": "Jessica"},
                    {"type": "text", "parameter_name": "order_number", "text": "SKBUP2-4CPIG9"},
                ],
            }
        ],
    }


@pytest.mark.parametrize("variables", [None, [], {}])
async def test_template_without_variables_has_no_components(
    wa: WhatsAppCloudProvider, graph: FakeService, variables: Any
) -> None:
    """A template with no variables is sent without a components array."""
    content = WhatsAppContent(
        to=ALICE,
        kind="template",
        template_name="hello_world",
        template_language="en_US",
        template_variables=variables,
    )
    await wa.send_whatsapp(outgoing(content))
    assert graph.bodies()[0]["template"] == {"name": "hello_world", "language": {"code": "en_US"}}


async def test_each_line_uses_its_own_token_and_path(
    wa: WhatsAppCloudProvider, graph: FakeService
) -> None:
    """Two lines send with two bearer tokens to two phone-number-id paths."""
    await wa.send_whatsapp(outgoing(line=PLATFORM))
    await wa.send_whatsapp(outgoing(line=TENANT))
    seen = [(r.url.path, r.headers["Authorization"]) for r in graph.requests]
    assert seen == [
        (f"/v21.0/{PLATFORM.phone_number_id}/messages", f"Bearer {PLATFORM.access_token}"),
        (f"/v21.0/{TENANT.phone_number_id}/messages", f"Bearer {TENANT.access_token}"),
    ]


async def test_api_version_and_base_url_are_configurable(clock: ManualClock) -> None:
    """The path carries the configured Graph version on the configured origin."""
    graph = FakeService(sent_ok)
    provider = WhatsAppCloudProvider(
        graph_base_url="http://127.0.0.1:9999/graph/",
        api_version="v19.0",
        clock=clock,
        transport=graph.transport(),
    )
    async with provider:
        await provider.send_whatsapp(outgoing())
    assert str(graph.requests[0].url) == (
        f"http://127.0.0.1:9999/graph/v19.0/{PLATFORM.phone_number_id}/messages"
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"graph_base_url": "ftp://graph.test"}, "http"),
        ({"graph_base_url": "https://graph.test?x=1"}, "query"),
        ({"graph_base_url": "https://graph.test/#top"}, "fragment"),
        ({"graph_base_url": "https://me:pw@graph.test"}, "credentials"),
        ({"graph_base_url": "graph.test"}, "with a host"),
        ({"api_version": "21.0"}, "v21.0"),
        ({"timeout": 0}, "timeout"),
    ],
)
def test_constructor_refuses_bad_settings(
    clock: ManualClock, kwargs: dict[str, Any], match: str
) -> None:
    """Bad base URLs, versions and timeouts are refused when the provider is built."""
    with pytest.raises(ValueError, match=match):
        WhatsAppCloudProvider(clock=clock, **kwargs)


def test_a_refused_base_url_is_quoted_without_its_password(clock: ManualClock) -> None:
    """The refusal quotes the base URL with its password masked."""
    with pytest.raises(ValueError, match="http") as excinfo:
        WhatsAppCloudProvider(clock=clock, graph_base_url="ftp://me:s3cret@graph.test")
    assert "s3cret" not in str(excinfo.value)
    assert "ftp://me:***@graph.test" in str(excinfo.value)


@pytest.mark.parametrize(
    ("content", "category"),
    [
        (WhatsAppContent(to=ALICE, kind="text"), ErrorCategory.REJECTED),
        (WhatsAppContent(to=ALICE, kind="template", template_name="x"), ErrorCategory.REJECTED),
        (WhatsAppContent(to=ALICE, kind="sticker"), ErrorCategory.UNSUPPORTED),
    ],
)
async def test_unsendable_content_is_refused_without_a_request(
    wa: WhatsAppCloudProvider, graph: FakeService, content: WhatsAppContent, category: ErrorCategory
) -> None:
    """Content Graph cannot take fails permanently and nothing is sent."""
    result = await wa.send_whatsapp(outgoing(content))
    assert result.outcome is Outcome.PERMANENT
    assert result.error_category is category
    assert graph.requests == []


async def test_success_without_message_id_is_transient_unknown(
    wa: WhatsAppCloudProvider, graph: FakeService
) -> None:
    """A 200 that carries no messages[0].id is not Graph's answer: retried."""
    graph.responder = httpx.Response(200, json={"messaging_product": "whatsapp"})
    result = await wa.send_whatsapp(outgoing())
    assert (result.outcome, result.error_category) == (Outcome.TRANSIENT, ErrorCategory.UNKNOWN)


# --------------------------------------------------------------------------- classification

T, P = Outcome.TRANSIENT, Outcome.PERMANENT
# (HTTP status, code, Graph message, details, outcome, category, retry_after)
DOCUMENTED_ERRORS = [
    (400, 130429, "(#130429) Rate limit hit",
     "Cloud API message throughput has been reached.", T, ErrorCategory.RATE_LIMITED, 5.0),
    (400, 131056, "(#131056) (Business Account, Consumer Account) pair rate limit hit",
     "Message failed to send because there were too many messages sent from this phone "
     "number to the same phone number in a short period of time.",
     T, ErrorCategory.RATE_LIMITED, 6.0),
    (500, 131000, "(#131000) Something went wrong",
     "Message failed to send due to an unknown error.", T, ErrorCategory.PROVIDER_OUTAGE, None),
    (400, 131047, "(#131047) Re-engagement message",
     "Message failed to send because more than 24 hours have passed since the customer "
     "last replied to this number.", P, ErrorCategory.TEMPLATE_REQUIRED, None),
    (400, 131026, "(#131026) Message Undeliverable",
     "Unable to deliver message.", P, ErrorCategory.UNDELIVERABLE, None),
    (400, 131049, "(#131049) This message was not delivered to maintain healthy ecosystem "
     "engagement.", "In order to maintain a healthy ecosystem engagement, the message "
     "failed to be delivered.", P, ErrorCategory.UNDELIVERABLE, None),
    (400, 131048, "(#131048) Spam rate limit hit",
     "Message failed to send because there are restrictions on how many messages can be "
     "sent from this phone number.", P, ErrorCategory.POLICY_BLOCKED, None),
    (403, 368, "(#368) Temporarily blocked for policies violations",
     "The WhatsApp Business Account associated with the app has been restricted or "
     "disabled for violating a platform policy.", P, ErrorCategory.POLICY_BLOCKED, None),
    (400, 131050, "(#131050) Unable to deliver the message. This recipient has chosen to "
     "stop receiving marketing messages on WhatsApp from your business",
     "User has stopped marketing messages.", P, ErrorCategory.RECIPIENT_OPTED_OUT, None),
    (401, 190, "Error validating access token: Session has expired on Friday, 02-Jan-26.",
     "Access token has expired.", T, ErrorCategory.AUTH, None),
    (400, 100, "(#100) Invalid parameter",
     "Parameter 'to' is invalid.", P, ErrorCategory.REJECTED, None),
    (400, 131009, "(#131009) Parameter value is not valid",
     "One or more parameter values are invalid.", P, ErrorCategory.REJECTED, None),
    (400, 131008, "(#131008) Required parameter is missing",
     "The request is missing a required parameter.", P, ErrorCategory.REJECTED, None),
    (400, 132000, "(#132000) Number of parameters does not match the expected number of "
     "params", "body: number of localizable_params (1) does not match the expected number "
     "of params (2)", P, ErrorCategory.REJECTED, None),
    (404, 132001, "(#132001) Template name does not exist in the translation",
     "template name (order_update) does not exist in en_US", P, ErrorCategory.REJECTED, None),
    (400, 131051, "(#131051) Unsupported message type",
     "Unsupported message type.", P, ErrorCategory.REJECTED, None),
    (400, 1, "(#1) An unknown error occurred",
     "Invalid request or possible server error.", T, ErrorCategory.PROVIDER_OUTAGE, None),
    (503, 2, "(#2) Service temporarily unavailable",
     "Temporary due to downtime or due to being overloaded.",
     T, ErrorCategory.PROVIDER_OUTAGE, None),
    (400, 133010, "(#133010) Phone number Not Registered",
     "The phone number is not registered on the WhatsApp Business Platform.",
     P, ErrorCategory.REJECTED, None),
    (502, 999999, "(#999999) Undocumented", "Upstream trouble.",
     T, ErrorCategory.PROVIDER_OUTAGE, None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("status", "code", "message", "details", "outcome", "category", "retry_after"),
    DOCUMENTED_ERRORS,
    ids=[str(row[1]) for row in DOCUMENTED_ERRORS],
)
async def test_graph_error_codes_are_classified(
    wa: WhatsAppCloudProvider,
    graph: FakeService,
    status: int,
    code: int,
    message: str,
    details: str,
    outcome: Outcome,
    category: ErrorCategory,
    retry_after: float | None,
) -> None:
    """Each documented Graph error code maps to its outcome, category and wait."""
    graph.responder = graph_error(status, code, message, details)
    result = await wa.send_whatsapp(outgoing())
    assert (result.outcome, result.error_category, result.retry_after) == (
        outcome,
        category,
        retry_after,
    )
    assert result.provider_message_id is None
    assert result.error_message is not None
    assert f"Graph error {code}" in result.error_message
    assert message in result.error_message
    assert PLATFORM.access_token not in result.error_message


async def test_template_required_says_a_template_is_needed(
    wa: WhatsAppCloudProvider, graph: FakeService
) -> None:
    """131047's message tells the caller a template message is needed."""
    graph.responder = graph_error(400, 131047, "(#131047) Re-engagement message", "24 hours")
    result = await wa.send_whatsapp(outgoing())
    assert result.error_message is not None
    assert "template message is needed" in result.error_message


async def test_code_as_string_is_understood(wa: WhatsAppCloudProvider, graph: FakeService) -> None:
    """A Graph code sent as a digit string is classified like the number."""
    graph.responder = httpx.Response(
        400, json={"error": {"message": "(#131050) stopped", "code": "131050"}}
    )
    result = await wa.send_whatsapp(outgoing())
    assert result.error_category is ErrorCategory.RECIPIENT_OPTED_OUT


def test_classify_response_is_the_providers_classification() -> None:
    """The public classify_response gives what a send gets for the same answer, no request."""
    now = datetime(2026, 1, 1, 12, tzinfo=UTC)
    answer = graph_error(400, 131056, "(#131056) pair rate limit hit", "too many")
    result = classify_response(answer, now=now)
    assert (result.outcome, result.error_category, result.retry_after) == (
        Outcome.TRANSIENT,
        ErrorCategory.RATE_LIMITED,
        6.0,
    )
    assert result.error_message is not None
    assert result.error_message.startswith("pair rate limit: wait 6 s")
    assert classify_response(sent_ok_for(ALICE), now=now) == ProviderResult.accepted(WAMID)


async def test_throughput_limit_honours_retry_after(
    wa: WhatsAppCloudProvider, graph: FakeService
) -> None:
    """130429 with a Retry-After header waits that many seconds."""
    graph.responder = graph_error(
        429, 130429, "(#130429) Rate limit hit", "throughput", headers={"Retry-After": "42"}
    )
    result = await wa.send_whatsapp(outgoing())
    assert (result.error_category, result.retry_after) == (ErrorCategory.RATE_LIMITED, 42.0)


async def test_server_error_honours_retry_after(
    wa: WhatsAppCloudProvider, graph: FakeService
) -> None:
    """An HTTP 5xx without a Graph body is a transient outage with the asked-for wait."""
    graph.responder = httpx.Response(503, text="upstream down", headers={"Retry-After": "30"})
    result = await wa.send_whatsapp(outgoing())
    assert (result.outcome, result.error_category, result.retry_after) == (
        Outcome.TRANSIENT,
        ErrorCategory.PROVIDER_OUTAGE,
        30.0,
    )


async def test_plain_4xx_without_graph_body_is_transient_unknown(
    wa: WhatsAppCloudProvider, graph: FakeService
) -> None:
    """A 404 from something that is not Graph (wrong base URL) does not fail the message."""
    graph.responder = httpx.Response(404, text="<html>Not Found</html>")
    result = await wa.send_whatsapp(outgoing())
    assert (result.outcome, result.error_category) == (Outcome.TRANSIENT, ErrorCategory.UNKNOWN)


async def test_token_echoed_by_graph_is_scrubbed(
    wa: WhatsAppCloudProvider, graph: FakeService
) -> None:
    """Even if Graph echoed the access token, the error message never carries it."""
    graph.responder = graph_error(
        401, 190, f"Malformed access token {PLATFORM.access_token}", "Invalid OAuth access token."
    )
    result = await wa.send_whatsapp(outgoing())
    assert result.error_category is ErrorCategory.AUTH
    assert result.error_message is not None
    assert PLATFORM.access_token not in result.error_message
    assert "***" in result.error_message


def test_repr_has_no_token(clock: ManualClock) -> None:
    """The provider's repr names the origin and version only."""
    provider = WhatsAppCloudProvider(clock=clock)
    assert repr(provider) == "WhatsAppCloudProvider('https://graph.facebook.com', 'v21.0')"
    assert "TOKEN" not in repr(outgoing())


# --------------------------------------------------------------------------- pair rate limit


def pair_limited_for(recipient: str) -> Any:
    """Answer 131056 for ``recipient``'s digits, success for anyone else."""

    def responder(request: httpx.Request) -> httpx.Response:
        if json.loads(request.content)["to"] == recipient.removeprefix("+"):
            return graph_error(
                400, 131056, "(#131056) (Business Account, Consumer Account) pair rate limit hit",
                "Too many messages sent from this phone number to the same phone number.",
            )  # fmt: skip
        return sent_ok(request)

    return responder


async def test_pair_rate_limit_holds_the_recipient(
    wa: WhatsAppCloudProvider, graph: FakeService, clock: ManualClock
) -> None:
    """After 131056, sends to that recipient within 6 s make no request; after 6 s they do."""
    graph.responder = pair_limited_for(ALICE)
    first = await wa.send_whatsapp(outgoing(text(ALICE)))
    assert (first.error_category, first.retry_after) == (ErrorCategory.RATE_LIMITED, 6.0)
    assert len(graph.requests) == 1

    clock.advance(2.5)
    held = await wa.send_whatsapp(outgoing(text(ALICE)))
    assert (held.outcome, held.error_category, held.retry_after) == (
        Outcome.TRANSIENT,
        ErrorCategory.RATE_LIMITED,
        3.5,
    )
    assert len(graph.requests) == 1

    other = await wa.send_whatsapp(outgoing(text(BOB)))
    assert other.outcome is Outcome.ACCEPTED
    assert len(graph.requests) == 2

    clock.advance(3.5)
    graph.responder = sent_ok
    again = await wa.send_whatsapp(outgoing(text(ALICE)))
    assert again == ProviderResult.accepted(WAMID)
    assert len(graph.requests) == 3


async def test_pair_hold_is_per_line(
    wa: WhatsAppCloudProvider, graph: FakeService, clock: ManualClock
) -> None:
    """A hold on one business line does not stop another line messaging the same customer."""
    graph.responder = pair_limited_for(ALICE)
    await wa.send_whatsapp(outgoing(text(ALICE), line=PLATFORM))
    graph.responder = sent_ok
    result = await wa.send_whatsapp(outgoing(text(ALICE), line=TENANT))
    assert result.outcome is Outcome.ACCEPTED
    assert len(graph.requests) == 2


async def test_throughput_limit_does_not_hold_the_recipient(
    wa: WhatsAppCloudProvider, graph: FakeService
) -> None:
    """130429 is a line-wide limit: the next send is still attempted."""
    graph.responder = graph_error(400, 130429, "(#130429) Rate limit hit", "throughput")
    await wa.send_whatsapp(outgoing())
    graph.responder = sent_ok
    assert (await wa.send_whatsapp(outgoing())).outcome is Outcome.ACCEPTED
    assert len(graph.requests) == 2


# --------------------------------------------------------------------------- webhook security


def sign(body: bytes, secret: str = APP_SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


BODY = b'{"object":"whatsapp_business_account","entry":[]}'


@pytest.mark.parametrize("header", [sign(BODY), sign(BODY).upper().replace("SHA256=", "sha256=")])
def test_signature_accepted(header: str) -> None:
    """The HMAC-SHA256 of the raw body with the app secret is accepted (hex in any case)."""
    assert verify_signature(BODY, header, APP_SECRET) is None


@pytest.mark.parametrize(
    ("body", "header", "secret"),
    [
        (BODY + b" ", sign(BODY), APP_SECRET),  # tampered body
        (BODY, sign(BODY, "wrong-secret"), APP_SECRET),  # wrong secret
        (BODY, None, APP_SECRET),  # missing header
        (BODY, "", APP_SECRET),  # empty header
        (BODY, sign(BODY).removeprefix("sha256="), APP_SECRET),  # no algorithm prefix
        (BODY, "sha1=" + hashlib.sha1(BODY).hexdigest(), APP_SECRET),  # wrong algorithm
        (BODY, "sha256=not-hex", APP_SECRET),  # malformed digest
        (BODY, sign(BODY)[:-2], APP_SECRET),  # truncated digest
        (BODY, sign(BODY, ""), ""),  # no secret configured
    ],
    ids=["tampered", "wrong-secret", "missing", "empty", "no-prefix", "sha1", "not-hex",
         "truncated", "no-secret"],
)  # fmt: skip
def test_signature_rejected(body: bytes, header: str | None, secret: str) -> None:
    """Anything but the exact signature of the body raises WebhookSignatureError."""
    with pytest.raises(WebhookSignatureError):
        verify_signature(body, header, secret)


HANDSHAKE = {"hub.mode": "subscribe", "hub.verify_token": "s3cret", "hub.challenge": "1158201444"}


def test_handshake_echoes_challenge() -> None:
    """subscribe with the configured token answers the challenge."""
    assert verify_handshake(HANDSHAKE, "s3cret") == "1158201444"


@pytest.mark.parametrize(
    ("params", "token"),
    [
        ({**HANDSHAKE, "hub.verify_token": "guess"}, "s3cret"),
        ({**HANDSHAKE, "hub.mode": "unsubscribe"}, "s3cret"),
        ({k: v for k, v in HANDSHAKE.items() if k != "hub.mode"}, "s3cret"),
        ({k: v for k, v in HANDSHAKE.items() if k != "hub.verify_token"}, "s3cret"),
        ({k: v for k, v in HANDSHAKE.items() if k != "hub.challenge"}, "s3cret"),
        ({**HANDSHAKE, "hub.challenge": ""}, "s3cret"),
        (HANDSHAKE, None),
        ({**HANDSHAKE, "hub.verify_token": ""}, ""),
    ],
    ids=["wrong-token", "wrong-mode", "no-mode", "no-token", "no-challenge", "empty-challenge",
         "unconfigured", "empty-configured"],
)  # fmt: skip
def test_handshake_rejected(params: dict[str, str], token: str | None) -> None:
    """Any other handshake raises WebhookAuthError."""
    with pytest.raises(WebhookAuthError):
        verify_handshake(params, token)


# --------------------------------------------------------------------------- webhook payloads

PHONE_ID = "106540352242922"
DISPLAY = "15550783881"


def envelope(value: dict[str, Any], field: str = "messages") -> dict[str, Any]:
    """Meta's notification envelope around one change value."""
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "102290129340398",
                "changes": [
                    {
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {
                                "display_phone_number": DISPLAY,
                                "phone_number_id": PHONE_ID,
                            },
                            **value,
                        },
                        "field": field,
                    }
                ],
            }
        ],
    }


def status_item(status: str, ts: str, **extra: Any) -> dict[str, Any]:
    item = {"id": WAMID, "status": status, "timestamp": ts, "recipient_id": "2348012345678"}
    item.update(extra)
    return item


def test_parse_status_batch() -> None:
    """sent, delivered, read and failed (with errors) become status updates, in order."""
    conversation = {
        "id": "a75d17ad06104c51166f948319b03c6a",
        "expiration_timestamp": "1750943820",
        "origin": {"type": "utility"},
    }
    pricing = {"billable": True, "pricing_model": "CBP", "category": "utility"}
    failure = {
        "code": 131050,
        "title": "Unable to deliver the message. This recipient has chosen to stop "
        "receiving marketing messages on WhatsApp from your business",
        "message": "Unable to deliver the message. This recipient has chosen to stop "
        "receiving marketing messages on WhatsApp from your business",
        "error_data": {"details": "User has stopped marketing messages."},
        "href": "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/",
    }
    payload = envelope(
        {
            "statuses": [
                status_item("sent", "1750857384", conversation=conversation, pricing=pricing),
                status_item("delivered", "1750857385", pricing=pricing),
                status_item("read", "1750857400"),
                status_item("failed", "1750857401", errors=[failure]),
            ]
        }
    )
    batch = parse_webhook(payload)
    assert batch.inbound == []
    assert [(s.status, s.provider_status) for s in batch.statuses] == [
        (Status.SENT, "sent"),
        (Status.DELIVERED, "delivered"),
        (Status.READ, "read"),
        (Status.FAILED, "failed"),
    ]
    assert batch.statuses[0] == StatusUpdate(
        phone_number_id=PHONE_ID,
        provider_message_id=WAMID,
        status=Status.SENT,
        provider_status="sent",
        recipient_id="2348012345678",
        timestamp=datetime(2025, 6, 25, 13, 16, 24, tzinfo=UTC),
        errors=[],
    )
    assert batch.statuses[3].errors == [
        {
            "code": 131050,
            "title": failure["title"],
            "message": failure["message"],
            "details": "User has stopped marketing messages.",
        }
    ]


def test_parse_inbound_text_with_contact() -> None:
    """An inbound text message carries sender in E.164, body, time and the contact's name."""
    payload = envelope(
        {
            "contacts": [{"profile": {"name": "Kerry Fisher"}, "wa_id": "16315551234"}],
            "messages": [
                {
                    "from": "16315551234",
                    "id": "wamid.ABGGFlCGg0cvAgo-sJQh43L5Pe4W",
                    "timestamp": "1603059201",
                    "text": {"body": "Hello this is an answer"},
                    "type": "text",
                }
            ],
        }
    )
    batch = parse_webhook(payload)
    assert batch.statuses == []
    assert batch.inbound == [
        InboundWhatsApp(
            phone_number_id=PHONE_ID,
            display_phone_number=DISPLAY,
            sender="+16315551234",
            message_id="wamid.ABGGFlCGg0cvAgo-sJQh43L5Pe4W",
            type="text",
            text="Hello this is an answer",
            timestamp=datetime(2020, 10, 18, 22, 13, 21, tzinfo=UTC),
            contact_name="Kerry Fisher",
        )
    ]


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ({"type": "button", "button": {"payload": "STOP", "text": "Stop promotions"}},
         "Stop promotions"),
        ({"type": "interactive", "interactive": {"type": "button_reply",
          "button_reply": {"id": "yes", "title": "Yes, confirm"}}}, "Yes, confirm"),
        ({"type": "interactive", "interactive": {"type": "list_reply",
          "list_reply": {"id": "r2", "title": "Tomorrow", "description": "9-12"}}},
         "Tomorrow"),
        ({"type": "image", "image": {"id": "1479537139650973", "mime_type": "image/jpeg"}},
         None),
    ],
    ids=["button", "button_reply", "list_reply", "image"],
)  # fmt: skip
def test_parse_inbound_other_types(message: dict[str, Any], expected: str | None) -> None:
    """Button and interactive replies give their titles as text; media gives None."""
    item = {"from": "16315551234", "id": "wamid.X", "timestamp": "1603059201", **message}
    [inbound] = parse_webhook(envelope({"messages": [item]})).inbound
    assert (inbound.type, inbound.text, inbound.contact_name) == (message["type"], expected, None)


def test_unknown_statuses_are_skipped() -> None:
    """Statuses other than sent/delivered/read/failed (deleted, warning) are left out."""
    payload = envelope(
        {
            "statuses": [
                status_item("deleted", "1750857384"),
                status_item("warning", "1750857385"),
                status_item("delivered", "1750857386"),
            ]
        }
    )
    assert [s.status for s in parse_webhook(payload).statuses] == [Status.DELIVERED]


def test_other_fields_are_ignored() -> None:
    """Changes for fields other than messages (e.g. account_update) yield nothing."""
    payload = envelope({"statuses": [status_item("sent", "1750857384")]}, field="account_update")
    batch = parse_webhook(payload)
    assert (batch.statuses, batch.inbound) == ([], [])


def test_several_entries_and_lines() -> None:
    """Every entry and change is walked; each update keeps its own phone_number_id."""
    first = envelope({"statuses": [status_item("sent", "1750857384")]})
    second = envelope({"statuses": [status_item("read", "1750857390")]})
    second["entry"][0]["changes"][0]["value"]["metadata"]["phone_number_id"] = "999"
    payload = {"object": "whatsapp_business_account", "entry": first["entry"] + second["entry"]}
    assert [(s.phone_number_id, s.status) for s in parse_webhook(payload).statuses] == [
        (PHONE_ID, Status.SENT),
        ("999", Status.READ),
    ]


def _without_metadata() -> dict[str, Any]:
    payload = envelope({"statuses": [status_item("sent", "1")]})
    del payload["entry"][0]["changes"][0]["value"]["metadata"]
    return payload


@pytest.mark.parametrize(
    "payload",
    [
        [],
        "whatsapp",
        {"object": "page", "entry": []},
        {"object": "whatsapp_business_account"},
        {"object": "whatsapp_business_account", "entry": {}},
        {"object": "whatsapp_business_account", "entry": ["x"]},
        {"object": "whatsapp_business_account", "entry": [{"changes": "x"}]},
        _without_metadata(),
        envelope({"statuses": [{"status": "sent", "timestamp": "1"}]}),
        envelope({"statuses": [status_item("sent", "yesterday")]}),
        envelope({"messages": [{"id": "wamid.X", "timestamp": "1", "type": "text"}]}),
        envelope({"messages": "not a list"}),
    ],
    ids=["list", "string", "wrong-object", "no-entry", "entry-not-list", "entry-not-object",
         "changes-not-list", "no-metadata", "status-without-id", "bad-timestamp",
         "message-without-from", "messages-not-list"],
)  # fmt: skip
def test_malformed_payloads_are_refused(payload: object) -> None:
    """Anything not in Meta's documented shape raises ValidationError."""
    with pytest.raises(ValidationError):
        parse_webhook(payload)


def test_empty_entry_is_an_empty_batch() -> None:
    """A well-formed notification with no entries parses to nothing."""
    batch = parse_webhook({"object": "whatsapp_business_account", "entry": []})
    assert (batch.statuses, batch.inbound) == ([], [])
