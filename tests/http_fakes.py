"""Fakes shared by the HTTP provider tests (Twilio, generic SMS, WhatsApp Cloud).

A :class:`FakeService` is the ``httpx.MockTransport`` handler standing in for
the service at the other end: it records every request and answers as told.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

import httpx

from commtunnel.domain.delivery import ErrorCategory
from commtunnel.domain.messages import SmsContent
from commtunnel.ports import OutgoingSms

MESSAGE_ID = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"
CALLBACK = "https://ct.example.com/v1/webhooks/sms/provider"

Handler = Callable[[httpx.Request], httpx.Response]
#: what a FakeService answers: a response, an exception to raise, or a handler.
Responder = httpx.Response | Exception | Handler

#: (what httpx raises, the category it must become): timeouts in every phase,
#: refused, reset and broken connections.
NETWORK_FAILURES = [
    (httpx.ReadTimeout("read timed out"), ErrorCategory.TIMEOUT),
    (httpx.WriteTimeout("write timed out"), ErrorCategory.TIMEOUT),
    (httpx.ConnectTimeout("connect timed out"), ErrorCategory.TIMEOUT),
    (httpx.ConnectError("[Errno 111] Connection refused"), ErrorCategory.PROVIDER_OUTAGE),
    (httpx.ReadError("connection reset by peer"), ErrorCategory.PROVIDER_OUTAGE),
    (httpx.RemoteProtocolError("peer closed connection"), ErrorCategory.PROVIDER_OUTAGE),
]


class FakeService:
    """Records every request and answers with ``responder`` (settable between sends).

    Args:
        responder: an ``httpx.Response`` to return, an exception to raise, or a
            function of the request returning the response.
    """

    def __init__(self, responder: Responder) -> None:
        self.requests: list[httpx.Request] = []
        self.responder = responder

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.responder
        if isinstance(answer, httpx.Response):
            return answer
        if isinstance(answer, Exception):
            raise answer
        return answer(request)

    def transport(self) -> httpx.MockTransport:
        """A transport whose requests this fake answers."""
        return httpx.MockTransport(self)

    def bodies(self) -> list[Any]:
        """The JSON body of each request, in order."""
        return [json.loads(r.content) for r in self.requests]

    def forms(self) -> list[dict[str, str]]:
        """The ``application/x-www-form-urlencoded`` body of each request, in order."""
        return [dict(parse_qsl(r.content.decode())) for r in self.requests]


def outgoing_sms(
    *,
    sender_id: str = "ACME",
    to: str = "+2348012345678",
    body: str = "Your code is 123456",
    send_type: int = 0,
    encoding: str = "GSM7",
    callback: str | None = CALLBACK,
) -> OutgoingSms:
    """An SMS as the dispatch worker hands it to a provider."""
    content = SmsContent(
        sender_id=sender_id, to=to, body=body, send_type=send_type, encoding=encoding
    )
    return OutgoingSms(
        message_id=MESSAGE_ID,
        org_id="org-1",
        content=content,
        created_at=datetime(2026, 1, 1, 12, tzinfo=UTC),
        status_callback_url=callback,
    )


class FakeGraph:
    """A Graph API stand-in: queue answers with :meth:`answer`, read :attr:`requests`."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.answers: list[Callable[[httpx.Request], httpx.Response]] = []
        self.count = 0

    def answer(self, fn: Callable[[httpx.Request], httpx.Response]) -> None:
        """Answer the next request with ``fn(request)``."""
        self.answers.append(fn)

    def error(self, code: int, http_status: int = 400, message: str = "error") -> None:
        """Answer the next request with Graph's error object carrying ``code``."""
        body = {
            "error": {
                "message": message,
                "type": "OAuthException",
                "code": code,
                "error_data": {"messaging_product": "whatsapp", "details": message},
                "fbtrace_id": "Az8or2yhqkZfEZ-_4Qn_Bam",
            }
        }
        self.answer(lambda request: httpx.Response(http_status, json=body))

    def handle(self, request: httpx.Request) -> httpx.Response:
        """The MockTransport handler: a queued answer, else Meta's documented success."""
        self.requests.append(request)
        if self.answers:
            return self.answers.pop(0)(request)
        self.count += 1
        payload = json.loads(request.content)
        return httpx.Response(
            200,
            json={
                "messaging_product": "whatsapp",
                "contacts": [{"input": payload["to"], "wa_id": payload["to"]}],
                "messages": [{"id": f"wamid.HBgL{self.count:04d}"}],
            },
        )

    def sent_json(self, n: int = -1) -> dict[str, Any]:
        """The JSON body of request ``n`` (the last by default)."""
        return json.loads(self.requests[n].content)
