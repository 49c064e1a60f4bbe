"""The email routes, the OpenAPI document and the health check.

Contract: ``../shared/seeds/000_427ee8481191f61a.txt``, "Email (public API)".
Every rule about messages (scopes, fields, senders, idempotency) lives in
:class:`~commtunnel.services.email.EmailService`; what is here is HTTP:
the request readers of :mod:`commtunnel_http.handlers`, the stats window's
query parameters, and the status codes of success.
"""

from __future__ import annotations

import json
from datetime import datetime

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from commtunnel.client import Commtunnel
from commtunnel.domain.errors import ValidationError
from commtunnel.domain.events import parse_timestamp
from commtunnel.services.email import request_from_wire
from commtunnel_http.handlers import Handlers, limit_param, send_answer
from commtunnel_http.openapi import openapi_document
from commtunnel_http.wire import Wire

#: the fields ``POST /emails/preview`` takes.
PREVIEW_FIELDS = frozenset({"subject", "html", "text", "templateId", "variables", "tracking"})


def _parse_datetime(params: dict[str, str], name: str, problems: dict[str, str]) -> datetime | None:
    """A required ISO 8601 query parameter (``parse_timestamp``); a refusal goes in ``problems``."""
    raw = params.get(name)
    if raw is None or raw == "":
        problems[name] = "is required (ISO 8601 date-time with timezone)"
        return None
    try:
        return parse_timestamp(raw, name)
    except ValidationError as exc:
        problems.update(exc.details)
        return None


class EmailRoutes(Handlers):
    """Handlers of the public email API, ``/v1/public/openapi.json`` and ``/healthz``.

    Args:
        ct: the facade (started by the app's lifespan): services, storage, settings.
        wire: the response shapes (a fresh :class:`~commtunnel_http.wire.Wire` by default).
    """

    def __init__(self, ct: Commtunnel, wire: Wire | None = None) -> None:
        super().__init__(ct, wire)
        self._openapi = json.dumps(openapi_document(), separators=(",", ":")).encode()

    async def send(self, request: Request) -> Response:
        """``POST /v1/public/emails/send`` -> 202 ``{id, status, createdAt, duplicate}``.

        A replay answers 202 too, ``duplicate: true`` and ``Idempotent-Replayed: true``.
        Refusals: the envelope (400, 401, 403, 409, 413, 422; see the OpenAPI document).
        """
        principal, send_request = await self.send_request(request, request_from_wire)
        result = await self.ct.emails.send(principal, send_request)
        return send_answer(self.wire.send_result(result), replayed=result.duplicate, status=202)

    async def preview(self, request: Request) -> Response:
        """``POST /v1/public/emails/preview`` -> 200 the rendered parts and an estimated size.

        ``trackingEnabled`` is true when ``tracking`` is asked for and there is
        an HTML part; the HTML shown is as stored (links and pixel are
        rewritten at delivery).

        Raises:
            ValidationError: what ``EmailService.preview`` refuses, unknown
                fields among them, in one 400.
        """
        principal = await self.principal(request)
        payload = await self.json_body(request)
        rendered = await self.ct.emails.preview(
            principal,
            subject=payload.get("subject"),
            html=payload.get("html"),
            text=payload.get("text"),
            template_id=payload.get("templateId"),
            variables=payload.get("variables"),
            tracking=payload.get("tracking", False),
            unknown_fields=set(payload) - PREVIEW_FIELDS,
        )
        return JSONResponse(self.wire.preview(rendered))

    async def stats(self, request: Request) -> Response:
        """``GET /v1/public/emails/stats?start=&end=&includeBots=`` -> 200 counts for the window.

        The answer is ``{start, end, total, byStatus, events, opens, uniqueOpens,
        clicks, uniqueClicks, includeBots}``; ``includeBots`` (``true`` or
        ``false``, the default) adds opens and clicks marked ``isBot``.

        Raises:
            ValidationError: ``start``/``end`` missing, not ISO 8601 or without a
                timezone, ``includeBots`` neither true nor false (each named); the
                service refuses a reversed or too long window.
        """
        principal = await self.principal(request)
        params = dict(request.query_params)
        problems: dict[str, str] = {}
        start = _parse_datetime(params, "start", problems)
        end = _parse_datetime(params, "end", problems)
        include_bots = params.get("includeBots", "false")
        if include_bots not in ("true", "false"):
            problems["includeBots"] = "must be true or false"
        if start is None or end is None or problems:
            raise ValidationError.from_fields(problems)
        stats = await self.ct.emails.stats(
            principal, start=start, end=end, include_bots=include_bots == "true"
        )
        return JSONResponse(self.wire.stats(stats))

    async def get(self, request: Request) -> Response:
        """``GET /v1/public/emails/{id}`` -> 200 status, content, attempts; else 404."""
        principal = await self.principal(request)
        status = await self.ct.emails.get(principal, request.path_params["id"])
        return JSONResponse(self.wire.email_status(status))

    async def timeline(self, request: Request) -> Response:
        """``GET /v1/public/emails/{id}/timeline?limit=`` -> 200 ``{id, events}``, oldest first."""
        principal = await self.principal(request)
        message_id = request.path_params["id"]
        events = await self.ct.emails.timeline(
            principal, message_id, **limit_param(request.query_params)
        )
        return JSONResponse(self.wire.timeline(message_id, events))

    async def openapi(self, request: Request) -> Response:
        """``GET /v1/public/openapi.json`` (no auth) -> the OpenAPI 3.0.3 document."""
        return Response(self._openapi, media_type="application/json")

    async def healthz(self, request: Request) -> Response:
        """``GET /healthz`` (no auth) -> 200 ``{status: "ok", schemaVersion, pendingJobs}``.

        Both are read from the database, so a database that cannot be reached
        answers 503 ``STORAGE_UNAVAILABLE``.
        """
        backend = self.ct.backend
        return JSONResponse(
            {
                "status": "ok",
                "schemaVersion": await backend.read_schema_version(),
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
