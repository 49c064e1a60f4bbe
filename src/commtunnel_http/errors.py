"""One error envelope for every failure, and the request id on every response.

Every failure, from every route, answers::

    {"error": "human message", "code": "STABLE_CODE", "requestId": "...", "details": {...}}

(``../shared/DESIGN.md``, "Errors"; ``details`` is ``{}`` when there is
nothing to add). Three sources feed it:

* :class:`~commtunnel.domain.errors.CommtunnelError` raised by a route or a
  service: its own ``code``, ``http_status`` and ``details``;
* Starlette's :class:`~starlette.exceptions.HTTPException` (unknown route:
  404 ``NOT_FOUND``; wrong method: 405 ``METHOD_NOT_ALLOWED``);
* anything else: 500 ``INTERNAL_ERROR`` with a generic message, logged here
  with its traceback, never shown to the caller.

The first two are answered by Starlette's exception middleware (handlers
registered by the app factory); the third reaches :class:`RequestIdMiddleware`,
a pure ASGI middleware (``BaseHTTPMiddleware`` costs a task and a stream per
request), which also stamps ``X-Request-Id`` on every response.
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from commtunnel.domain import errors as codes
from commtunnel.domain.errors import CommtunnelError, RateLimitedError, UnauthorizedError

log = logging.getLogger("commtunnel.http")

REQUEST_ID_HEADER = "X-Request-Id"
#: where the middleware leaves the request id for handlers (an ASGI scope key).
SCOPE_KEY = "commtunnel.request_id"
_INCOMING_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
_HEADER_NAME = b"x-request-id"
_RESPONSE_HEADER = REQUEST_ID_HEADER.lower().encode("latin-1")

#: Starlette's own HTTP errors -> our stable codes (anything else 4xx keeps a generic one).
_HTTP_CODES: dict[int, str] = {
    400: codes.VALIDATION_ERROR,
    401: codes.UNAUTHORIZED,
    404: codes.NOT_FOUND,
    405: codes.METHOD_NOT_ALLOWED,
    413: codes.PAYLOAD_TOO_LARGE,
    429: codes.RATE_LIMITED,
}
_INTERNAL_MESSAGE = "Internal server error; quote the request id when reporting it"


def request_id_from(scope: Scope) -> str:
    """The caller's ``X-Request-Id`` if it is sane (1-128 of ``[A-Za-z0-9._-]``), else a new one.

    Returns:
        The incoming id, or a fresh uuid4 hex (32 characters).
    """
    for name, value in scope.get("headers", ()):
        if name == _HEADER_NAME:
            text: str = value.decode("latin-1")
            if _INCOMING_ID.fullmatch(text):
                return text
            break
    return uuid.uuid4().hex


def envelope(
    message: str,
    code: str,
    request_id: str,
    *,
    status: int,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    retry_after: int | None = None,
) -> JSONResponse:
    """The error response: the envelope as JSON with ``status``.

    Returns:
        ``{"error": message, "code": code, "requestId": request_id, "details": details or {}}``
        with ``status`` and ``headers``; a 429 also echoes its ``Retry-After``
        seconds as a top-level ``retryAfter`` (the reference's "07 · rate limits").
    """
    body: dict[str, Any] = {
        "error": message,
        "code": code,
        "requestId": request_id,
        "details": details or {},
    }
    if retry_after is not None:
        body["retryAfter"] = retry_after
    return JSONResponse(body, status_code=status, headers=headers)


def error_response(exc: Exception, request_id: str) -> JSONResponse:
    """Translate any exception into the envelope.

    Args:
        exc: what a route, the router or a service raised.
        request_id: the id of the failing request.

    Returns:
        A JSON response; 500 with a generic message for unexpected exceptions
        (which are logged here, traceback included).
    """
    if isinstance(exc, CommtunnelError):
        headers: dict[str, str] = {}
        retry_after: int | None = None
        if isinstance(exc, UnauthorizedError):
            headers["WWW-Authenticate"] = "Bearer"
        elif isinstance(exc, RateLimitedError):
            retry_after = exc.retry_after
            headers["Retry-After"] = str(retry_after)
        if exc.http_status >= 500:
            log.error("request %s failed: %r", request_id, exc)
        return envelope(
            exc.message,
            exc.code,
            request_id,
            status=exc.http_status,
            details=exc.details,
            headers=headers,
            retry_after=retry_after,
        )
    if isinstance(exc, HTTPException) and exc.status_code < 500:
        code = _HTTP_CODES.get(exc.status_code, f"HTTP_{exc.status_code}")
        return envelope(
            exc.detail, code, request_id, status=exc.status_code, headers=dict(exc.headers or {})
        )
    log.error("request %s failed", request_id, exc_info=exc)
    return envelope(_INTERNAL_MESSAGE, codes.INTERNAL_ERROR, request_id, status=500)


def request_id(request: Request) -> str:
    """The id :class:`RequestIdMiddleware` gave the request (else one read as it would)."""
    given: str | None = request.scope.get(SCOPE_KEY)
    return given or request_id_from(request.scope)


async def handle_exception(request: Request, exc: Exception) -> Response:
    """Exception handler for ``HTTPException`` and ``CommtunnelError``: the envelope."""
    return error_response(exc, request_id(request))


class RequestIdMiddleware:
    """Pure ASGI middleware: ``X-Request-Id`` on every response, 500 envelope for crashes.

    Args:
        app: the wrapped ASGI app (Starlette's exception middleware and router).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(scope)
        scope[SCOPE_KEY] = request_id
        id_header = (_RESPONSE_HEADER, request_id.encode("latin-1"))
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", ()), id_header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except ClientDisconnect:
            return  # nobody is left to answer
        except Exception as exc:
            if started:  # too late for an envelope; let the server drop the connection
                log.error("request %s failed after the response started", request_id)
                raise
            await error_response(exc, request_id)(scope, receive, send_with_id)
