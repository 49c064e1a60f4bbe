"""The public routes: parse the request, call the email service, serialize.

Contract: ``../shared/seeds/000_427ee8481191f61a.txt``, "Email (public API)".
Every rule about messages (scopes, fields, senders, idempotency) lives in
:class:`~commtunnel.services.email.EmailService`; what is here is HTTP:
the bearer token, the JSON body and its size limit, query parameters, and
the status codes of success.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from commtunnel.client import Commtunnel
from commtunnel.domain.errors import (
    InvalidJsonError,
    PayloadTooLargeError,
    UnauthorizedError,
    ValidationError,
)
from commtunnel.domain.keys import Principal
from commtunnel.services.email import MAX_TIMELINE_LIMIT, request_from_wire
from commtunnel_http.openapi import openapi_document
from commtunnel_http.wire import Wire

IDEMPOTENCY_HEADER = "x-idempotency-key"
PREVIEW_FIELDS = frozenset({"subject", "html", "text", "templateId", "variables", "tracking"})


def bearer_token(request: Request) -> str | None:
    """The key from ``Authorization: Bearer <key>``; None when the header is absent.

    Raises:
        UnauthorizedError: the header is there but is not a bearer token.
    """
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise UnauthorizedError("Malformed Authorization header: expected 'Bearer <key>'")
    return token.strip()


def _too_large(limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"Request body exceeds {limit} bytes", details={"limitBytes": limit}
    )


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused as soon as it is known to exceed ``limit`` bytes.

    A declared ``Content-Length`` over the limit is refused before reading;
    a chunked body is read chunk by chunk and refused at the chunk that
    crosses the limit, so no more than one chunk past it is ever read.

    Raises:
        PayloadTooLargeError: with ``details.limitBytes``.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    # Straight from ASGI receive: Request.stream() adds an async generator per request.
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# One decoder for every request (json.loads with options builds one per call).
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def parse_json_object(body: bytes, content_type: str | None) -> dict[str, Any]:
    """Decode a JSON object body.

    A missing ``Content-Type`` is accepted (JSON is the only format); a
    present one must be ``application/json`` or ``*/*+json``.

    Raises:
        InvalidJsonError: wrong content type, not UTF-8, not JSON, or not an object.
    """
    if content_type is not None:
        media = content_type.partition(";")[0].strip().lower()
        if media != "application/json" and not media.endswith("+json"):
            raise InvalidJsonError(
                "Content-Type must be application/json", details={"contentType": media}
            )
    try:
        payload = _DECODER.decode(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InvalidJsonError(
            "Request body is not valid JSON", details={"reason": str(exc)}
        ) from None
    if not isinstance(payload, dict):
        raise InvalidJsonError(
            "Request body must be a JSON object", details={"type": type(payload).__name__}
        )
    return payload


def _parse_datetime(params: dict[str, str], name: str, problems: dict[str, str]) -> datetime | None:
    raw = params.get(name)
    if raw is None or raw == "":
        problems[name] = "is required (ISO 8601 date-time with timezone)"
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        problems[name] = "must be an ISO 8601 date-time with timezone, e.g. 2026-06-03T12:00:00Z"
        return None
    if value.tzinfo is None:
        problems[name] = "must include a timezone (e.g. Z or +02:00)"
        return None
    return value


def parse_limit(raw: str | None, *, maximum: int = MAX_TIMELINE_LIMIT) -> int:
    """A timeline's ``?limit=`` (100 when absent); the service checks the range.

    Raises:
        ValidationError: ``limit`` is not a plain decimal integer.
    """
    if raw is None:
        return 100
    if not (raw.isascii() and raw.isdigit()):  # int() would take " 5", "+5", non-ASCII digits
        raise ValidationError.from_fields({"limit": f"must be an integer from 1 to {maximum}"})
    return int(raw)


class EmailRoutes:
    """Handlers of the public email API, bound to one facade.

    Args:
        ct: the facade (started by the app's lifespan): services, storage, settings.
    """

    def __init__(self, ct: Commtunnel) -> None:
        self.ct = ct
        self.wire = Wire()
        self._openapi = json.dumps(openapi_document(), separators=(",", ":")).encode()

    async def _principal(self, request: Request) -> Principal:
        return await self.ct.authenticate(bearer_token(request))

    async def _json_body(self, request: Request) -> dict[str, Any]:
        body = await read_body(request, self.ct.settings.max_body_bytes)
        return parse_json_object(body, request.headers.get("content-type"))

    async def send(self, request: Request) -> Response:
        """``POST /v1/public/emails/send`` -> 202 (a replay too, with ``Idempotent-Replayed``)."""
        principal = await self._principal(request)
        payload = await self._json_body(request)
        send_request = request_from_wire(
            payload, header_key=request.headers.get(IDEMPOTENCY_HEADER)
        )
        result = await self.ct.emails.send(principal, send_request)
        headers = {"Idempotent-Replayed": "true"} if result.duplicate else None
        return JSONResponse(self.wire.send_result(result), status_code=202, headers=headers)

    async def preview(self, request: Request) -> Response:
        """``POST /v1/public/emails/preview`` -> 200 rendered parts."""
        principal = await self._principal(request)
        payload = await self._json_body(request)
        problems = dict.fromkeys(sorted(set(payload) - PREVIEW_FIELDS), "unknown field")
        tracking = payload.get("tracking", False)
        if not isinstance(tracking, bool):
            problems["tracking"] = "must be a boolean"
        if problems:
            raise ValidationError.from_fields(problems)
        rendered = await self.ct.emails.preview(
            principal,
            subject=payload.get("subject"),
            html=payload.get("html"),
            text=payload.get("text"),
            template_id=payload.get("templateId"),
            variables=payload.get("variables"),
        )
        return JSONResponse(self.wire.preview(rendered, tracking=tracking))

    async def stats(self, request: Request) -> Response:
        """``GET /v1/public/emails/stats?start=&end=`` -> 200 counts."""
        principal = await self._principal(request)
        params = dict(request.query_params)
        problems: dict[str, str] = {}
        start = _parse_datetime(params, "start", problems)
        end = _parse_datetime(params, "end", problems)
        if start is None or end is None:
            raise ValidationError.from_fields(problems)
        stats = await self.ct.emails.stats(principal, start=start, end=end)
        return JSONResponse(self.wire.stats(stats))

    async def get(self, request: Request) -> Response:
        """``GET /v1/public/emails/{id}`` -> 200 status, content, attempts."""
        principal = await self._principal(request)
        status = await self.ct.emails.get(principal, request.path_params["id"])
        return JSONResponse(self.wire.email_status(status))

    async def timeline(self, request: Request) -> Response:
        """``GET /v1/public/emails/{id}/timeline?limit=`` -> 200 events, oldest first."""
        principal = await self._principal(request)
        limit = parse_limit(request.query_params.get("limit"))
        message_id = request.path_params["id"]
        events = await self.ct.emails.timeline(principal, message_id, limit=limit)
        return JSONResponse(self.wire.timeline(message_id, events))

    async def openapi(self, request: Request) -> Response:
        """``GET /v1/public/openapi.json`` (no auth) -> the OpenAPI 3.0.3 document."""
        return Response(self._openapi, media_type="application/json")

    async def healthz(self, request: Request) -> Response:
        """``GET /healthz`` (no auth) -> 200 with the schema version and pending jobs."""
        backend = self.ct.backend
        return JSONResponse(
            {
                "status": "ok",
                "schemaVersion": backend.schema_version(),
                "pendingJobs": await backend.pending_job_count(),
            }
        )

    def routes(self) -> list[BaseRoute]:
        """The route table. ``/emails/stats`` precedes ``/emails/{id}``, which would match it."""
        return [
            Route("/v1/public/emails/send", self.send, methods=["POST"]),
            Route("/v1/public/emails/preview", self.preview, methods=["POST"]),
            Route("/v1/public/emails/stats", self.stats, methods=["GET"]),
            Route("/v1/public/emails/{id}", self.get, methods=["GET"]),
            Route("/v1/public/emails/{id}/timeline", self.timeline, methods=["GET"]),
            Route("/v1/public/openapi.json", self.openapi, methods=["GET"]),
            Route("/healthz", self.healthz, methods=["GET"]),
        ]
