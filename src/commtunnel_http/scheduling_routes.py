"""Batch sends and cancels: ``/emails/batch``, ``/emails/{id}/cancel``, ``/sms/{id}/cancel``.

Scheduled sends need no route of their own: ``scheduledAt`` is a field of
``POST /v1/public/emails/send`` and ``POST /v1/public/sms/send``. Every rule
(scopes, items, idempotency, which statuses may be cancelled) lives in the
services (:mod:`commtunnel.services.email_batch`,
:meth:`commtunnel.services.channel.ChannelMessages.cancel`); what is here is
HTTP: the body, the idempotency header and the status codes of success.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from commtunnel.services.email_batch import batch_request_from_wire
from commtunnel_http.handlers import Handlers, send_answer


class SchedulingRoutes(Handlers):
    """Handlers of batch sends and cancels, bound to one facade (see the module docstring)."""

    async def email_batch(self, request: Request) -> Response:
        """``POST /v1/public/emails/batch`` -> 200 ``{id, data, accepted, rejected, duplicate}``.

        200 for every well-formed batch, whatever its items' outcomes (each
        item carries its own result, as Postmark's batch answers); a replay
        answers 200 too, ``duplicate: true`` and ``Idempotent-Replayed: true``.
        Refusals of the whole batch: the envelope (400, 401, 403, 409, 413, 422).
        """
        principal, batch = await self.send_request(request, batch_request_from_wire)
        result = await self.ct.emails.send_batch(principal, batch)
        return send_answer(self.wire.batch_result(result), replayed=result.duplicate, status=200)

    async def email_cancel(self, request: Request) -> Response:
        """``POST /v1/public/emails/{id}/cancel`` -> 200 the email (CANCELED); 404; 409."""
        principal = await self.principal(request)
        status = await self.ct.emails.cancel(principal, request.path_params["id"])
        return JSONResponse(self.wire.email_status(status))

    async def sms_cancel(self, request: Request) -> Response:
        """``POST /v1/public/sms/{id}/cancel`` -> 200 the SMS (CANCELED); 404; 409."""
        principal = await self.principal(request)
        status = await self.ct.sms_service.cancel(principal, request.path_params["id"])
        return JSONResponse(self.wire.sms_status(status))

    def routes(self) -> list[BaseRoute]:
        """The route table (``/emails/batch`` is a POST; ``/emails/{id}`` only answers GET)."""
        return [
            Route("/v1/public/emails/batch", self.email_batch, methods=["POST"]),
            Route("/v1/public/emails/{id}/cancel", self.email_cancel, methods=["POST"]),
            Route("/v1/public/sms/{id}/cancel", self.sms_cancel, methods=["POST"]),
        ]
