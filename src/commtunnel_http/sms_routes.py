"""The SMS routes that take an API key: send, OTP, read, retry, listings, sender IDs, opt-outs.

Contract: ``../shared/seeds/000_427ee8481191f61a.txt`` ("SMS (public API)")
and ``../shared/seeds/001_fc3b71c01ecf9734.txt`` (sender-ID requests and
review, listing filters). Every rule (scopes, numbers, sender IDs, opt-outs,
cooldowns, idempotency, paging ranges and defaults) lives in
:class:`~commtunnel.services.sms.SmsService`; what is here is HTTP, read with
:mod:`commtunnel_http.handlers`: the bearer key, the JSON body, query and
path parameters, and the status codes of success. The token- and
signature-guarded webhooks are in :mod:`commtunnel_http.sms_webhooks`.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from commtunnel.client import Commtunnel
from commtunnel.domain.errors import ValidationError
from commtunnel.services.sms import otp_request_from_wire, send_request_from_wire
from commtunnel_http.handlers import (
    Handlers,
    limit_param,
    page_params,
    reject_unknown_fields,
    send_answer,
)
from commtunnel_http.wire import Wire

SENDER_ID_REQUEST_FIELDS = frozenset({"senderId", "flow", "reason"})
REVIEW_FIELDS = frozenset({"decision", "reason"})
OPT_OUT_FIELDS = frozenset({"phone"})


def _filter(params: Mapping[str, str], name: str) -> str | None:
    """A filter parameter; absent or empty means "no filter"."""
    return params.get(name) or None


def phone_from_path(raw: str) -> str:
    """The ``{e164}`` path segment as the caller meant it.

    ``%2B2348012345678`` and a literal ``+2348012345678`` both arrive as
    ``+...`` (ASGI paths are percent-decoded, and ``+`` means plus in a path);
    ``2348012345678`` (digits only) and `` 2348012345678`` (a ``+`` some
    client turned into a space) get their ``+`` back. Validation is the service's.
    """
    text = raw.strip()
    if text.isascii() and text.isdigit():
        return "+" + text
    return text


class SmsRoutes(Handlers):
    """Handlers of the SMS API that authenticate with an API key, bound to one facade.

    Args:
        ct: the facade (started by the app's lifespan).
        wire: the response shapes (a fresh :class:`~commtunnel_http.wire.Wire` by default).
    """

    def __init__(self, ct: Commtunnel, wire: Wire | None = None) -> None:
        super().__init__(ct, wire)
        self.sms = ct.sms_service

    # ------------------------------------------------------------------ messages

    async def send(self, request: Request) -> Response:
        """``POST /v1/public/sms/send`` -> 202 ``{id, senderId, status, createdAt, ...}``.

        A replay answers 202 too, ``duplicate: true`` and ``Idempotent-Replayed: true``.
        """
        principal, send_request = await self.send_request(request, send_request_from_wire)
        result = await self.sms.send(principal, send_request)
        return send_answer(self.wire.sms_send_result(result), replayed=result.duplicate, status=202)

    async def send_otp(self, request: Request) -> Response:
        """``POST /v1/public/sms/otp/send`` -> 202; 429 ``OTP_COOLDOWN`` with ``Retry-After``.

        A replay answers 202 too, ``duplicate: true`` and ``Idempotent-Replayed: true``.
        """
        principal, otp_request = await self.send_request(request, otp_request_from_wire)
        result = await self.sms.send_otp(principal, otp_request)
        return send_answer(self.wire.otp_send_result(result), replayed=result.duplicate, status=202)

    async def get(self, request: Request) -> Response:
        """``GET /v1/public/sms/{id}`` -> 200 status, content, attempts; else 404."""
        principal = await self.principal(request)
        status = await self.sms.get(principal, request.path_params["id"])
        return JSONResponse(self.wire.sms_status(status))

    async def timeline(self, request: Request) -> Response:
        """``GET /v1/public/sms/{id}/timeline?limit=`` -> 200 ``{id, events}``, oldest first."""
        principal = await self.principal(request)
        message_id = request.path_params["id"]
        events = await self.sms.timeline(principal, message_id, **limit_param(request.query_params))
        return JSONResponse(self.wire.timeline(message_id, events))

    async def retry(self, request: Request) -> Response:
        """``POST /v1/public/sms/{id}/retry`` -> 202 ``{id, status}``; 409 unless FAILED."""
        principal = await self.principal(request)
        message = await self.sms.retry(principal, request.path_params["id"])
        return JSONResponse(self.wire.sms_retry_result(message), status_code=202)

    async def list_messages(self, request: Request) -> Response:
        """``GET /v1/sms?flow=&status=&query=&page=&pageSize=`` -> 200 a page, newest first."""
        principal = await self.principal(request)
        params = request.query_params
        result = await self.sms.list_messages(
            principal,
            flow=_filter(params, "flow"),
            status=_filter(params, "status"),
            query=_filter(params, "query"),
            **page_params(params),
        )
        return JSONResponse(self.wire.page(result, self.wire.sms_message))

    async def list_inbound(self, request: Request) -> Response:
        """``GET /v1/public/sms/inbound?page=&pageSize=`` -> 200 received MO messages."""
        principal = await self.principal(request)
        result = await self.sms.list_inbound(principal, **page_params(request.query_params))
        return JSONResponse(self.wire.page(result, self.wire.inbound))

    # ------------------------------------------------------------------ sender IDs

    async def request_sender_id(self, request: Request) -> Response:
        """``POST /v1/sms/sender-id-requests`` -> 201 the PENDING request."""
        principal = await self.principal(request)
        payload = await self.json_body(request)
        reject_unknown_fields(payload, SENDER_ID_REQUEST_FIELDS)
        created = await self.sms.request_sender_id(
            principal,
            sender_id=payload.get("senderId"),
            flow=payload.get("flow"),
            reason=payload.get("reason"),
        )
        return JSONResponse(self.wire.sender_id_request(created), status_code=201)

    async def list_sender_id_requests(self, request: Request) -> Response:
        """``GET /v1/sms/sender-id-requests?status=&all=`` -> 200 ``{data}``, oldest first.

        Raises:
            ValidationError: ``all`` is neither ``true`` nor ``false``.
        """
        principal = await self.principal(request)
        params = request.query_params
        raw_all = params.get("all", "false")
        if raw_all not in ("true", "false"):
            raise ValidationError.from_fields({"all": "must be true or false"})
        requests = await self.sms.list_sender_id_requests(
            principal, status=_filter(params, "status"), all_orgs=raw_all == "true"
        )
        return JSONResponse({"data": [self.wire.sender_id_request(r) for r in requests]})

    async def review_sender_id(self, request: Request) -> Response:
        """``POST /v1/sms/sender-id-requests/{requestId}/review`` -> 200 the reviewed request."""
        principal = await self.principal(request)
        payload = await self.json_body(request)
        reject_unknown_fields(payload, REVIEW_FIELDS)
        reviewed = await self.sms.review_sender_id(
            principal,
            request.path_params["requestId"],
            decision=payload.get("decision"),
            reason=payload.get("reason"),
        )
        return JSONResponse(self.wire.sender_id_request(reviewed))

    async def list_sender_ids(self, request: Request) -> Response:
        """``GET /v1/sms/sender-ids?flow=`` -> 200 ``{data}``: the approved sender IDs."""
        principal = await self.principal(request)
        approved = await self.sms.list_sender_ids(
            principal, flow=_filter(request.query_params, "flow")
        )
        return JSONResponse({"data": [self.wire.approved_sender_id(r) for r in approved]})

    # ------------------------------------------------------------------ opt-outs

    async def list_opt_outs(self, request: Request) -> Response:
        """``GET /v1/public/sms/opt-outs?page=&pageSize=`` -> 200 a page, newest first."""
        principal = await self.principal(request)
        result = await self.sms.list_opt_outs(principal, **page_params(request.query_params))
        return JSONResponse(self.wire.page(result, self.wire.opt_out))

    async def add_opt_out(self, request: Request) -> Response:
        """``POST /v1/public/sms/opt-outs`` -> 201 when added, 200 when already listed.

        Both answer ``{phone, optedOut: true, created}``.
        """
        principal = await self.principal(request)
        payload = await self.json_body(request)
        reject_unknown_fields(payload, OPT_OUT_FIELDS)
        phone, created = await self.sms.add_opt_out(principal, payload.get("phone"))
        return JSONResponse(
            {"phone": phone, "optedOut": True, "created": created},
            status_code=201 if created else 200,
        )

    async def remove_opt_out(self, request: Request) -> Response:
        """``DELETE /v1/public/sms/opt-outs/{e164}`` -> 200 ``{phone, optedOut: false}``.

        404 when the number is not listed; 400 when it is not E.164.
        """
        principal = await self.principal(request)
        phone = phone_from_path(request.path_params["e164"])
        removed = await self.sms.remove_opt_out(principal, phone)
        return JSONResponse({"phone": removed, "optedOut": False})

    def routes(self) -> list[BaseRoute]:
        """The route table: fixed ``/sms/...`` paths precede ``/sms/{id}``, which matches them."""
        return [
            Route("/v1/public/sms/send", self.send, methods=["POST"]),
            Route("/v1/public/sms/otp/send", self.send_otp, methods=["POST"]),
            Route("/v1/public/sms/inbound", self.list_inbound, methods=["GET"]),
            Route("/v1/public/sms/opt-outs", self.list_opt_outs, methods=["GET"]),
            Route("/v1/public/sms/opt-outs", self.add_opt_out, methods=["POST"]),
            Route("/v1/public/sms/opt-outs/{e164}", self.remove_opt_out, methods=["DELETE"]),
            Route("/v1/public/sms/{id}", self.get, methods=["GET"]),
            Route("/v1/public/sms/{id}/timeline", self.timeline, methods=["GET"]),
            Route("/v1/public/sms/{id}/retry", self.retry, methods=["POST"]),
            Route("/v1/sms", self.list_messages, methods=["GET"]),
            Route("/v1/sms/sender-id-requests", self.request_sender_id, methods=["POST"]),
            Route("/v1/sms/sender-id-requests", self.list_sender_id_requests, methods=["GET"]),
            Route(
                "/v1/sms/sender-id-requests/{requestId}/review",
                self.review_sender_id,
                methods=["POST"],
            ),
            Route("/v1/sms/sender-ids", self.list_sender_ids, methods=["GET"]),
        ]
