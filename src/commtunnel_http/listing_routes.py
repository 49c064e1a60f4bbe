"""The listing routes: ``GET /v1/public/messages`` (every channel) and ``GET /v1/public/emails``.

Contract: ``../shared/seeds/004_5b7054fd91e163a8.txt``, "05 · list messages".
Filters, scopes and cursors are :class:`~commtunnel.services.listing.MessageListing`'s;
what is here is HTTP: the query parameters (an empty one counts as absent;
the seed's ``after`` / ``before`` are aliases of ``createdAfter`` /
``createdBefore``), and the answer ``{items, cursor}`` where each item has
its channel's ``GET /{id}`` shape, attempts included, and ``cursor`` is left
out on the last page.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from commtunnel.domain.errors import ValidationError
from commtunnel.domain.messages import Channel
from commtunnel.services.channel import MessageStatus
from commtunnel.services.listing import MessagePage
from commtunnel_http.handlers import Handlers
from commtunnel_http.wire import Wire

#: canonical parameter -> the seed's alias for it.
ALIASES = {"createdAfter": "after", "createdBefore": "before"}


def message_item(wire: Wire, status: MessageStatus) -> dict[str, Any]:
    """One listed message in its channel's ``GET /v1/public/<channel>/{id}`` shape."""
    channel = status.message.channel
    if channel == Channel.EMAIL:
        return wire.email_status(status)
    if channel == Channel.SMS:
        return wire.sms_status(status)
    return wire.whatsapp_status(status)


def page_body(wire: Wire, page: MessagePage) -> dict[str, Any]:
    """``{items: [...], cursor}``; ``cursor`` is absent on the last page (the seed's rule)."""
    body: dict[str, Any] = {"items": [message_item(wire, s) for s in page.items]}
    if page.cursor is not None:
        body["cursor"] = page.cursor
    return body


def listing_params(params: Mapping[str, str], names: tuple[str, ...]) -> dict[str, Any]:
    """The listing's keyword arguments from the query string.

    Args:
        params: the query parameters.
        names: the filters this route takes (wire names), besides ``limit`` and ``cursor``.

    Returns:
        Keyword arguments for the service (absent parameters are left out, so
        its defaults apply); a ``limit`` of decimal digits is an integer,
        anything else is passed on for the service to refuse.

    Raises:
        ValidationError: ``createdAfter`` and ``after`` (or ``createdBefore``
            and ``before``) both given with different values.
    """
    keywords = {
        "channel": "channel",
        "status": "status",
        "createdAfter": "created_after",
        "createdBefore": "created_before",
        "to": "to",
        "cursor": "cursor",
    }
    found: dict[str, Any] = {}
    problems: dict[str, str] = {}
    for name in (*names, "cursor"):
        value = params.get(name) or None
        alias = ALIASES.get(name)
        if alias is not None and (aliased := params.get(alias) or None) is not None:
            if value is not None and value != aliased:
                problems[name] = f"give {name} or its alias {alias}, not both"
            value = aliased
        if value is not None:
            found[keywords[name]] = value
    if problems:
        raise ValidationError.from_fields(problems)
    if raw := params.get("limit"):
        found["limit"] = int(raw) if raw.isascii() and raw.isdigit() else raw
    return found


class ListingRoutes(Handlers):
    """Handlers of the two listings (base: :class:`~commtunnel_http.handlers.Handlers`)."""

    async def list_messages(self, request: Request) -> Response:
        """``GET /v1/public/messages`` -> 200 ``{items, cursor}`` of every channel the key reads.

        Query: ``channel``, ``status``, ``createdAfter``, ``createdBefore``,
        ``to``, ``limit`` (1..100, 20), ``cursor``.
        Refusals: 400 ``VALIDATION_ERROR`` (details per parameter), 401, 403
        ``INSUFFICIENT_SCOPE`` (no read scope, or the ``channel`` asked for).
        """
        principal = await self.principal(request)
        names = ("channel", "status", "createdAfter", "createdBefore", "to")
        page = await self.ct.listing.list_messages(
            principal, **listing_params(request.query_params, names)
        )
        return JSONResponse(page_body(self.wire, page))

    async def list_emails(self, request: Request) -> Response:
        """``GET /v1/public/emails`` -> 200 ``{items, cursor}`` of emails (scope ``read:email``).

        Query: as ``/v1/public/messages`` without ``channel``; ``to`` is an email address.
        """
        principal = await self.principal(request)
        names = ("status", "createdAfter", "createdBefore", "to")
        page = await self.ct.listing.list_emails(
            principal, **listing_params(request.query_params, names)
        )
        return JSONResponse(page_body(self.wire, page))

    def routes(self) -> list[BaseRoute]:
        """The route table (``/v1/public/emails`` is its own path beside ``/emails/{id}``)."""
        return [
            Route("/v1/public/messages", self.list_messages, methods=["GET"]),
            Route("/v1/public/emails", self.list_emails, methods=["GET"]),
        ]
