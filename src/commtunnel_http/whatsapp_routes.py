"""The WhatsApp Cloud routes: send, read, retry, the tenant line, and Meta's webhook.

Contract: ``../shared/seeds/000_427ee8481191f61a.txt`` ("WhatsApp Cloud
(public API)", "Meta WhatsApp webhook") and ``../shared/seeds/001_fc3b71c01ecf9734.txt``
(the tenant line). Every rule (scopes, numbers, templates, lines, idempotency,
the synchronous hand-off to Graph, signatures, status ordering) lives in
:class:`~commtunnel.services.whatsapp.WhatsAppService`; what is here is HTTP,
done as the SMS routes do it.

Authentication differs by route:

* ``/v1/public/whatsapp/...`` and ``/v1/account/whatsapp-cloud-line`` take an
  API key (``send:whatsapp``, ``read:whatsapp``, ``account:manage``);
* ``GET /v1/webhooks/whatsapp`` is Meta's subscription check, guarded by
  ``hub.verify_token`` (``WHATSAPP_VERIFY_TOKEN``) and refused with 403, as
  Meta's verification expects, not 401;
* ``POST /v1/webhooks/whatsapp`` is signed by Meta: ``X-Hub-Signature-256`` is
  checked against the raw body with ``WHATSAPP_APP_SECRET`` before anything
  is parsed.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from commtunnel.client import Commtunnel
from commtunnel.domain.whatsapp import SIGNATURE_HEADER
from commtunnel.services.whatsapp import send_request_from_wire
from commtunnel_http.handlers import Handlers, limit_param, send_answer
from commtunnel_http.wire import Wire

LINE_PATH = "/v1/account/whatsapp-cloud-line"
WEBHOOK_PATH = "/v1/webhooks/whatsapp"


class WhatsAppRoutes(Handlers):
    """Handlers of the WhatsApp API and of Meta's webhook, bound to one facade.

    Args:
        ct: the facade (started by the app's lifespan).
        wire: the response shapes (a fresh :class:`~commtunnel_http.wire.Wire` by default).
    """

    def __init__(self, ct: Commtunnel, wire: Wire | None = None) -> None:
        super().__init__(ct, wire)
        self.whatsapp = ct.whatsapp_service

    # ------------------------------------------------------------------ messages

    async def send(self, request: Request) -> Response:
        """``POST /v1/public/whatsapp/send`` -> 201 ``{id, status, duplicate, providerMessageId}``.

        The message is handed to Graph before the answer, so 201 means SENT
        (201 Created); a replay answers 200 (nothing created), ``duplicate: true``
        and ``Idempotent-Replayed: true``. A Graph failure answers the envelope:
        502 ``WHATSAPP_PROVIDER_ERROR`` (transient, the worker retries) or 422
        ``WHATSAPP_SEND_REJECTED``.
        """
        principal, send_request = await self.send_request(request, send_request_from_wire)
        result = await self.whatsapp.send(principal, send_request)
        return send_answer(
            self.wire.whatsapp_send_result(result),
            replayed=result.duplicate,
            status=200 if result.duplicate else 201,
        )

    async def get(self, request: Request) -> Response:
        """``GET /v1/public/whatsapp/{id}`` -> 200 status, content, attempts; else 404."""
        principal = await self.principal(request)
        status = await self.whatsapp.get(principal, request.path_params["id"])
        return JSONResponse(self.wire.whatsapp_status(status))

    async def timeline(self, request: Request) -> Response:
        """``GET /v1/public/whatsapp/{id}/timeline?limit=`` -> 200 ``{id, events}``, oldest first.

        400 for a ``limit`` outside 1..1000; 404 if the message is not the caller's.
        """
        principal = await self.principal(request)
        message_id = request.path_params["id"]
        events = await self.whatsapp.timeline(
            principal, message_id, **limit_param(request.query_params)
        )
        return JSONResponse(self.wire.timeline(message_id, events))

    async def retry(self, request: Request) -> Response:
        """``POST /v1/public/whatsapp/{id}/retry`` -> 200 ``{id, status, providerMessageId}``.

        The message is re-sent before the answer; 409 unless it was FAILED, and
        Graph failures answer as for :meth:`send`.
        """
        principal = await self.principal(request)
        result = await self.whatsapp.retry(principal, request.path_params["id"])
        return JSONResponse(self.wire.whatsapp_retry_result(result), status_code=200)

    # ------------------------------------------------------------------ the tenant line

    async def get_line(self, request: Request) -> Response:
        """``GET /v1/account/whatsapp-cloud-line`` -> 200 the line settings (never the token)."""
        principal = await self.principal(request)
        info = await self.whatsapp.get_line(principal)
        return JSONResponse(self.wire.whatsapp_line(info))

    async def update_line(self, request: Request) -> Response:
        """``PATCH /v1/account/whatsapp-cloud-line`` -> 200 the line settings after the change."""
        principal = await self.principal(request)
        info = await self.whatsapp.update_line(principal, await self.json_body(request))
        return JSONResponse(self.wire.whatsapp_line(info))

    # ------------------------------------------------------------------ Meta's webhook

    async def handshake(self, request: Request) -> Response:
        """``GET /v1/webhooks/whatsapp?hub.mode=&hub.verify_token=&hub.challenge=``.

        Returns:
            200 ``text/plain`` with the challenge, else 403 (the envelope).
        """
        challenge = self.whatsapp.handshake(
            request.query_params, self.ct.settings.whatsapp_verify_token
        )
        return PlainTextResponse(challenge)

    async def receive(self, request: Request) -> Response:
        """``POST /v1/webhooks/whatsapp`` (signed) -> 200 what the delivery changed.

        The answer is ``{statusesApplied, statusesIgnored, inboundStored}``.
        The signature covers the exact bytes received, so the raw body is
        handed to the service before any decoding: 413 over the body limit,
        401 ``INVALID_WEBHOOK_SIGNATURE``, then 400 for a body that is not a
        WhatsApp Business webhook.
        """
        body = await self.body(request)
        result = await self.whatsapp.receive_webhook(
            body, request.headers.get(SIGNATURE_HEADER), self.ct.settings.whatsapp_app_secret
        )
        return JSONResponse(self.wire.whatsapp_webhook_result(result))

    def routes(self) -> list[BaseRoute]:
        """The route table: ``/whatsapp/send`` precedes ``/whatsapp/{id}``, which matches it."""
        return [
            Route("/v1/public/whatsapp/send", self.send, methods=["POST"]),
            Route("/v1/public/whatsapp/{id}", self.get, methods=["GET"]),
            Route("/v1/public/whatsapp/{id}/timeline", self.timeline, methods=["GET"]),
            Route("/v1/public/whatsapp/{id}/retry", self.retry, methods=["POST"]),
            Route(LINE_PATH, self.get_line, methods=["GET"]),
            Route(LINE_PATH, self.update_line, methods=["PATCH"]),
            Route(WEBHOOK_PATH, self.handshake, methods=["GET"]),
            Route(WEBHOOK_PATH, self.receive, methods=["POST"]),
        ]
