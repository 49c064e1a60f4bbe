"""The SMS routes that take an API key: send, OTP, read, retry, listings, sender IDs, opt-outs.

Contract: ``../shared/seeds/000_427ee8481191f61a.txt`` ("SMS (public API)")
and ``../shared/seeds/001_fc3b71c01ecf9734.txt`` (sender-ID requests and
review, listing filters). Every rule (scopes, numbers, sender IDs, opt-outs,
cooldowns, idempotency) lives in :class:`~commtunnel.services.sms.SmsService`;
what is here is HTTP, done as the email routes do it: the bearer key, the
JSON body and its limit, query parameters, path parameters and the status
codes of success. The token- and signature-guarded webhooks are in
:mod:`commtunnel_http.sms_webhooks`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from commtunnel.client import Commtunnel
from commtunnel.domain.errors import ValidationError
from commtunnel.domain.keys import Principal
from commtunnel.services.sms import (
    MAX_PAGE_SIZE,
    MAX_TIMELINE_LIMIT,
    otp_request_from_wire,
    send_request_from_wire,
)
from commtunnel_http.routes import (
    IDEMPOTENCY_HEADER,
    bearer_token,
    parse_json_object,
    parse_limit,
    read_body,
)
from commtunnel_http.wire import Wire

#: ``pageSize`` when the query has none: 20 for messages (as the service), 50 for the rest.
MESSAGES_PAGE_SIZE = 20
LIST_PAGE_SIZE = 50
SENDER_ID_REQUEST_FIELDS = frozenset({"senderId", "flow", "reason"})
REVIEW_FIELDS = frozenset({"decision", "reason"})
OPT_OUT_FIELDS = frozenset({"phone"})


def reject_unknown_fields(payload: Mapping[str, Any], allowed: frozenset[str]) -> None:
    """Refuse a body with fields the route does not know (a typo must not pass silently).

    Raises:
        ValidationError: each unknown field -> ``unknown field``.
    """
    unknown = sorted(set(payload) - allowed)
    if unknown:
        raise ValidationError.from_fields(dict.fromkeys(unknown, "unknown field"))


def _int_param(
    params: Mapping[str, str], name: str, default: int, reason: str, problems: dict[str, str]
) -> int:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    if not (raw.isascii() and raw.isdigit()):  # int() would take " 5", "+5", non-ASCII digits
        problems[name] = reason
        return default
    return int(raw)


def page_params(params: Mapping[str, str], *, default_size: int) -> tuple[int, int]:
    """``?page=&pageSize=`` as integers (the service checks the ranges).

    Raises:
        ValidationError: ``page`` or ``pageSize`` is not a plain decimal integer.
    """
    problems: dict[str, str] = {}
    page = _int_param(params, "page", 1, "must be an integer >= 1", problems)
    size = _int_param(
        params,
        "pageSize",
        default_size,
        f"must be an integer from 1 to {MAX_PAGE_SIZE}",
        problems,
    )
    if problems:
        raise ValidationError.from_fields(problems)
    return page, size


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


class SmsRoutes:
    """Handlers of the SMS API that authenticate with an API key, bound to one facade.

    Args:
        ct: the facade (started by the app's lifespan).
        wire: the response shapes (a fresh :class:`~commtunnel_http.wire.Wire` by default).
    """

    def __init__(self, ct: Commtunnel, wire: Wire | None = None) -> None:
        self.ct = ct
        self.sms = ct.sms_service
        self.wire = wire or Wire()

    async def _principal(self, request: Request) -> Principal:
        return await self.ct.authenticate(bearer_token(request))

    async def _json_body(self, request: Request) -> dict[str, Any]:
        body = await read_body(request, self.ct.settings.max_body_bytes)
        return parse_json_object(body, request.headers.get("content-type"))

    # ------------------------------------------------------------------ messages

    async def send(self, request: Request) -> Response:
        """``POST /v1/public/sms/send`` -> 202 (a replay too, with ``Idempotent-Replayed``)."""
        principal = await self._principal(request)
        payload = await self._json_body(request)
        send_request = send_request_from_wire(
            payload, header_key=request.headers.get(IDEMPOTENCY_HEADER)
        )
        result = await self.sms.send(principal, send_request)
        headers = {"Idempotent-Replayed": "true"} if result.duplicate else None
        return JSONResponse(self.wire.sms_send_result(result), status_code=202, headers=headers)

    async def send_otp(self, request: Request) -> Response:
        """``POST /v1/public/sms/otp/send`` -> 202; 429 ``OTP_COOLDOWN`` with ``Retry-After``."""
        principal = await self._principal(request)
        payload = await self._json_body(request)
        otp_request = otp_request_from_wire(
            payload, header_key=request.headers.get(IDEMPOTENCY_HEADER)
        )
        result = await self.sms.send_otp(principal, otp_request)
        headers = {"Idempotent-Replayed": "true"} if result.duplicate else None
        return JSONResponse(self.wire.otp_send_result(result), status_code=202, headers=headers)

    async def get(self, request: Request) -> Response:
        """``GET /v1/public/sms/{id}`` -> 200 status, content, attempts."""
        principal = await self._principal(request)
        status = await self.sms.get(principal, request.path_params["id"])
        return JSONResponse(self.wire.sms_status(status))

    async def timeline(self, request: Request) -> Response:
        """``GET /v1/public/sms/{id}/timeline?limit=`` -> 200 events, oldest first."""
        principal = await self._principal(request)
        limit = parse_limit(request.query_params.get("limit"), maximum=MAX_TIMELINE_LIMIT)
        message_id = request.path_params["id"]
        events = await self.sms.timeline(principal, message_id, limit=limit)
        return JSONResponse(self.wire.timeline(message_id, events))

    async def retry(self, request: Request) -> Response:
        """``POST /v1/public/sms/{id}/retry`` -> 202 ``{id, status}``; 409 unless FAILED."""
        principal = await self._principal(request)
        message = await self.sms.retry(principal, request.path_params["id"])
        body = {"id": message.id, "status": self.wire.conv.unstructure(message.status)}
        return JSONResponse(body, status_code=202)

    async def list_messages(self, request: Request) -> Response:
        """``GET /v1/sms?flow=&status=&query=&page=&pageSize=`` -> 200 a page, newest first."""
        principal = await self._principal(request)
        params = request.query_params
        page, size = page_params(params, default_size=MESSAGES_PAGE_SIZE)
        result = await self.sms.list_messages(
            principal,
            flow=_filter(params, "flow"),
            status=_filter(params, "status"),
            query=_filter(params, "query"),
            page=page,
            page_size=size,
        )
        return JSONResponse(self.wire.page(result, self.wire.sms_message))

    async def list_inbound(self, request: Request) -> Response:
        """``GET /v1/public/sms/inbound?page=&pageSize=`` -> 200 received MO messages."""
        principal = await self._principal(request)
        page, size = page_params(request.query_params, default_size=LIST_PAGE_SIZE)
        result = await self.sms.list_inbound(principal, page=page, page_size=size)
        return JSONResponse(self.wire.page(result, self.wire.inbound))

    # ------------------------------------------------------------------ sender IDs

    async def request_sender_id(self, request: Request) -> Response:
        """``POST /v1/sms/sender-id-requests`` -> 201 the PENDING request."""
        principal = await self._principal(request)
        payload = await self._json_body(request)
        reject_unknown_fields(payload, SENDER_ID_REQUEST_FIELDS)
        created = await self.sms.request_sender_id(
            principal,
            sender_id=payload.get("senderId"),
            flow=payload.get("flow"),
            reason=payload.get("reason"),
        )
        return JSONResponse(self.wire.sender_id_request(created), status_code=201)

    async def list_sender_id_requests(self, request: Request) -> Response:
        """``GET /v1/sms/sender-id-requests?status=&all=`` -> 200 ``{data}``, oldest first."""
        principal = await self._principal(request)
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
        principal = await self._principal(request)
        payload = await self._json_body(request)
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
        principal = await self._principal(request)
        approved = await self.sms.list_sender_ids(
            principal, flow=_filter(request.query_params, "flow")
        )
        return JSONResponse({"data": [self.wire.approved_sender_id(r) for r in approved]})

    # ------------------------------------------------------------------ opt-outs

    async def list_opt_outs(self, request: Request) -> Response:
        """``GET /v1/public/sms/opt-outs?page=&pageSize=`` -> 200 a page, newest first."""
        principal = await self._principal(request)
        page, size = page_params(request.query_params, default_size=LIST_PAGE_SIZE)
        result = await self.sms.list_opt_outs(principal, page=page, page_size=size)
        return JSONResponse(self.wire.page(result, self.wire.opt_out))

    async def add_opt_out(self, request: Request) -> Response:
        """``POST /v1/public/sms/opt-outs`` -> 201 when added, 200 when already listed."""
        principal = await self._principal(request)
        payload = await self._json_body(request)
        reject_unknown_fields(payload, OPT_OUT_FIELDS)
        phone, created = await self.sms.add_opt_out(principal, payload.get("phone"))
        return JSONResponse(
            {"phone": phone, "optedOut": True, "created": created},
            status_code=201 if created else 200,
        )

    async def remove_opt_out(self, request: Request) -> Response:
        """``DELETE /v1/public/sms/opt-outs/{e164}`` -> 200; 404 when the number is not listed."""
        principal = await self._principal(request)
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
