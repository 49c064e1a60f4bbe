"""What every route class shares: reading an HTTP request and answering a send.

Everything here is HTTP and nothing else (``../shared/DESIGN.md``: "No
business rule lives here"): the bearer key, the body and its size limit,
the JSON object, query integers, the idempotency header and the
``Idempotent-Replayed`` answer. Ranges, defaults and every other rule are
the services'; a query parameter that is absent is not passed on, so the
service's own default applies.

:class:`Handlers` is the base of the route classes
(:class:`~commtunnel_http.routes.EmailRoutes`,
:class:`~commtunnel_http.sms_routes.SmsRoutes`,
:class:`~commtunnel_http.sms_webhooks.SmsWebhookRoutes`,
:class:`~commtunnel_http.whatsapp_routes.WhatsAppRoutes`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, TypedDict, TypeVar

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse

from commtunnel.client import Commtunnel
from commtunnel.domain.errors import (
    InvalidJsonError,
    PayloadTooLargeError,
    UnauthorizedError,
    ValidationError,
)
from commtunnel.domain.keys import Principal
from commtunnel.domain.network import IPAddress
from commtunnel.services.channel import MAX_TIMELINE_LIMIT
from commtunnel.services.sms import MAX_PAGE_SIZE
from commtunnel_http.quota import SCOPE_KEY as QUOTA_SCOPE_KEY
from commtunnel_http.wire import Wire

IDEMPOTENCY_HEADER = "x-idempotency-key"
REPLAYED_HEADER = "Idempotent-Replayed"

T = TypeVar("T")


# --------------------------------------------------------------------------- the key


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


def caller_address(ct: Commtunnel, request: Request) -> IPAddress | None:
    """The caller's IP address: the TCP peer, or behind a trusted proxy its ``X-Forwarded-For``.

    ``COMMTUNNEL_TRUSTED_PROXIES`` decides which peers' header is believed
    (:func:`commtunnel.domain.network.client_address`); the server itself
    never rewrites the peer (``commtunnel serve`` runs uvicorn without proxy
    headers).

    Returns:
        The address, None when the peer is unknown or no address.
    """
    peer = request.client.host if request.client is not None else None
    return ct.access.client_address(peer, request.headers.getlist("x-forwarded-for"))


# --------------------------------------------------------------------------- the body


def _too_large(limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"Request body exceeds {limit} bytes", details={"limitBytes": limit}
    )


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused as soon as it is known to exceed ``limit`` bytes.

    A declared ``Content-Length`` over the limit is refused before reading;
    a chunked body is read chunk by chunk and refused at the chunk that
    crosses the limit, so no more than one chunk past it is ever read.

    Args:
        request: the request whose body is read (once).
        limit: the most bytes accepted (``settings.max_body_bytes``).

    Raises:
        PayloadTooLargeError: 413 with ``details.limitBytes``.
        ClientDisconnect: the client went away mid-body (nobody is left to answer).
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

    Returns:
        The decoded object (``NaN`` and ``Infinity`` are not JSON and are refused).

    Raises:
        InvalidJsonError: 400 for a wrong content type (``details.contentType``),
            a body that is not UTF-8 or not JSON (``details.reason``), or JSON
            that is not an object (``details.type``).
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


def reject_unknown_fields(payload: Mapping[str, Any], allowed: frozenset[str]) -> None:
    """Refuse a body with fields the route does not know (a typo must not pass silently).

    Raises:
        ValidationError: 400, each unknown field -> ``"unknown field"``.
    """
    unknown = sorted(set(payload) - allowed)
    if unknown:
        raise ValidationError.from_fields(dict.fromkeys(unknown, "unknown field"))


# --------------------------------------------------------------------------- query integers


def _decimal(raw: str) -> int | None:
    # int() would also take " 5", "+5", "1_0" and non-ASCII digits.
    return int(raw) if raw.isascii() and raw.isdigit() else None


class Limit(TypedDict, total=False):
    """``?limit=`` as the timeline methods' keyword argument (absent: the service's default)."""

    limit: int


class Paging(TypedDict, total=False):
    """``?page=&pageSize=`` as the listing methods' keyword arguments (absent: the defaults)."""

    page: int
    page_size: int


def limit_param(params: Mapping[str, str], *, maximum: int = MAX_TIMELINE_LIMIT) -> Limit:
    """``?limit=`` as an integer; the service checks the range (1..``maximum``).

    Args:
        maximum: the largest limit the service takes, for the message
            (a timeline's 1000 by default; 100 for webhook deliveries).

    Returns:
        ``{"limit": n}``, or ``{}`` when the parameter is absent.

    Raises:
        ValidationError: 400 ``details.limit``: present (even empty) and not a
            plain decimal integer.
    """
    raw = params.get("limit")
    if raw is None:
        return {}
    limit = _decimal(raw)
    if limit is None:
        raise ValidationError.from_fields({"limit": f"must be an integer from 1 to {maximum}"})
    return {"limit": limit}


def page_params(params: Mapping[str, str]) -> Paging:
    """``?page=&pageSize=`` as integers; the service checks the ranges and has the defaults.

    An empty value counts as absent.

    Returns:
        ``page`` and ``page_size`` for the parameters given.

    Raises:
        ValidationError: 400 naming ``page`` and/or ``pageSize``: not a plain
            decimal integer (with the service's wording of the range).
    """
    paging: Paging = {}
    problems: dict[str, str] = {}
    if raw := params.get("page"):
        if (page := _decimal(raw)) is None:
            problems["page"] = "must be an integer >= 1"
        else:
            paging["page"] = page
    if raw := params.get("pageSize"):
        if (size := _decimal(raw)) is None:
            problems["pageSize"] = f"must be an integer from 1 to {MAX_PAGE_SIZE}"
        else:
            paging["page_size"] = size
    if problems:
        raise ValidationError.from_fields(problems)
    return paging


# --------------------------------------------------------------------------- answers


def send_answer(body: dict[str, Any], *, replayed: bool, status: int) -> JSONResponse:
    """A send's JSON answer; an idempotent replay also carries ``Idempotent-Replayed: true``."""
    headers = {REPLAYED_HEADER: "true"} if replayed else None
    return JSONResponse(body, status_code=status, headers=headers)


class Handlers:
    """The base of the route classes: the facade, the response shapes, the request readers.

    Args:
        ct: the facade (started by the app's lifespan): services, settings.
        wire: the response shapes (a fresh :class:`~commtunnel_http.wire.Wire` by default).
    """

    def __init__(self, ct: Commtunnel, wire: Wire | None = None) -> None:
        self.ct = ct
        self.wire = wire or Wire()

    async def principal(self, request: Request) -> Principal:
        """The caller behind the bearer key, admitted by its organization's access rules.

        After the key: the caller's address must be in the organization's IP
        allowlist (``X-Forwarded-For`` believed only from trusted proxies),
        then the request counts against the key's limit; the quota is left in
        the scope for the ``RateLimit-*`` headers (:mod:`commtunnel_http.quota`).

        Raises:
            UnauthorizedError: 401, no key or a malformed, unknown or revoked one.
            IpNotAllowedError: 403 ``IP_NOT_ALLOWED`` (``details.ip``).
            RateLimitedError: 429 ``RATE_LIMITED`` (``Retry-After``, ``retryAfter``).
        """
        principal = await self.ct.authenticate(bearer_token(request))
        quota = await self.ct.access.check(principal, caller_address(self.ct, request))
        if quota is not None:
            request.scope[QUOTA_SCOPE_KEY] = quota
            quota.enforce()
        return principal

    async def body(self, request: Request) -> bytes:
        """The raw body, within ``settings.max_body_bytes`` (else 413, see :func:`read_body`)."""
        return await read_body(request, self.ct.settings.max_body_bytes)

    async def json_body(self, request: Request) -> dict[str, Any]:
        """The body as a JSON object (413 or 400 ``INVALID_JSON`` otherwise)."""
        return parse_json_object(await self.body(request), request.headers.get("content-type"))

    async def send_request(
        self, request: Request, from_wire: Callable[..., T]
    ) -> tuple[Principal, T]:
        """The caller and the send request built from the JSON body and ``x-idempotency-key``.

        The key is checked before the body is read.

        Args:
            request: a send route's request.
            from_wire: the service module's ``*_from_wire(payload, header_key=...)``.

        Raises:
            UnauthorizedError, PayloadTooLargeError, InvalidJsonError: as above.
            ValidationError: what ``from_wire`` refuses (unknown fields, keys that differ).
        """
        principal = await self.principal(request)
        payload = await self.json_body(request)
        return principal, from_wire(payload, header_key=request.headers.get(IDEMPOTENCY_HEADER))
