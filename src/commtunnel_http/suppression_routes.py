"""The email suppression routes: the list (API key), the ESP events webhook and unsubscribe links.

Every rule (scopes, normalization, expiry, which entry wins, tokens) is
:class:`~commtunnel.services.suppressions.SuppressionService`'s; what is here is HTTP:

* ``GET|POST /v1/public/suppressions``, ``GET|DELETE /v1/public/suppressions/{email}``
  take an API key like every public route;
* ``POST /v1/webhooks/email/events?token=`` carries the organization's email
  events token (``commtunnel suppressions webhook-token``), checked before
  the body is read, as the SMS webhooks do;
* ``/v1/unsubscribe/{token}`` takes no key: the signed token is the
  authority. ``GET`` shows a page with a button and changes nothing (mail
  scanners and link previews fetch links; RFC 8058 §1 says why a GET must not
  unsubscribe); ``POST`` unsubscribes: the one-click request a mail client
  sends (body ``List-Unsubscribe=One-Click``, RFC 8058 §3.2) or the page's
  button. The POST answers 200 at once, never a redirect, whatever its body.
"""

from __future__ import annotations

from html import escape
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from commtunnel.client import Commtunnel
from commtunnel.domain.suppressions import ONE_CLICK, UNSUBSCRIBE_PATH, Suppression
from commtunnel.services.suppressions import ProviderEventsResult
from commtunnel_http.handlers import Handlers, page_params, reject_unknown_fields
from commtunnel_http.wire import Wire

ADD_FIELDS = frozenset({"email", "reason", "expiresAt", "detail"})
EVENTS_PATH = "/v1/webhooks/email/events"

#: The unsubscribe pages load nothing, run nothing and may only post to themselves.
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"
    ),
}
_STYLE = "body{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem}"


def _page(title: str, body: str) -> HTMLResponse:
    """A minimal HTML page (``body`` is HTML the caller escaped)."""
    html = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta name="robots" content="noindex"><title>{escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body><h1>{escape(title)}</h1>{body}</body></html>"
    )
    return HTMLResponse(html, headers=PAGE_HEADERS)


class SuppressionRoutes(Handlers):
    """Handlers of the suppression list API and the email events webhook, bound to one facade.

    Args:
        ct: the facade (its ``suppressions`` service).
        wire: the response shapes (a fresh :class:`~commtunnel_http.wire.Wire` by default).
    """

    def __init__(self, ct: Commtunnel, wire: Wire | None = None) -> None:
        super().__init__(ct, wire)
        self.suppressions = ct.suppressions

    def _entry(self, entry: Suppression) -> dict[str, Any]:
        """An entry as the API shows it (:func:`commtunnel.shapes.make_converter`)."""
        shaped: dict[str, Any] = self.wire.conv.unstructure(entry, Suppression)
        return shaped

    async def list_entries(self, request: Request) -> Response:
        """``GET /v1/public/suppressions?reason=&page=&pageSize=`` -> 200 a page, newest first."""
        principal = await self.principal(request)
        params = request.query_params
        result = await self.suppressions.list_suppressions(
            principal, reason=params.get("reason") or None, **page_params(params)
        )
        return JSONResponse(self.wire.page(result, self._entry))

    async def add(self, request: Request) -> Response:
        """``POST /v1/public/suppressions`` -> 201 when added, 200 when an entry was kept.

        Both answer the entry as stored plus ``created``.
        """
        principal = await self.principal(request)
        payload = await self.json_body(request)
        reject_unknown_fields(payload, ADD_FIELDS)
        entry, created = await self.suppressions.add_suppression(
            principal,
            payload.get("email"),
            reason=payload.get("reason", "MANUAL"),
            expires_at=payload.get("expiresAt"),
            detail=payload.get("detail"),
        )
        return JSONResponse(
            {**self._entry(entry), "created": created}, status_code=201 if created else 200
        )

    async def get(self, request: Request) -> Response:
        """``GET /v1/public/suppressions/{email}`` -> 200 the entry; 404 when not listed."""
        principal = await self.principal(request)
        entry = await self.suppressions.get_suppression(principal, request.path_params["email"])
        return JSONResponse(self._entry(entry))

    async def remove(self, request: Request) -> Response:
        """``DELETE /v1/public/suppressions/{email}`` -> 200 ``{email, suppressed: false}``."""
        principal = await self.principal(request)
        removed = await self.suppressions.remove_suppression(
            principal, request.path_params["email"]
        )
        return JSONResponse({"email": removed.address, "suppressed": False})

    async def events(self, request: Request) -> Response:
        """``POST /v1/webhooks/email/events?token=`` -> 200 what the events changed.

        Raises:
            WebhookAuthError: 401, no token or an unknown one (checked before the body).
        """
        org_id = await self.suppressions.org_for_events_token(request.query_params.get("token"))
        result = await self.suppressions.receive_provider_events(
            org_id, await self.json_body(request)
        )
        return JSONResponse(self.wire.conv.unstructure(result, ProviderEventsResult))

    def routes(self) -> list[BaseRoute]:
        """The route table."""
        return [
            Route("/v1/public/suppressions", self.list_entries, methods=["GET"]),
            Route("/v1/public/suppressions", self.add, methods=["POST"]),
            Route("/v1/public/suppressions/{email}", self.get, methods=["GET"]),
            Route("/v1/public/suppressions/{email}", self.remove, methods=["DELETE"]),
            Route(EVENTS_PATH, self.events, methods=["POST"]),
        ]


class UnsubscribeRoutes:
    """Handlers of ``/v1/unsubscribe/{token}``: the page (GET) and the unsubscribe (POST).

    Args:
        ct: the facade (its ``suppressions`` service).
    """

    def __init__(self, ct: Commtunnel) -> None:
        self.suppressions = ct.suppressions

    async def page(self, request: Request) -> Response:
        """``GET`` -> 200 a page with an Unsubscribe button; nothing is recorded.

        The button POSTs to the same URL.

        Raises:
            InvalidUnsubscribeTokenError: 400 envelope (every failure answers it).
        """
        token = await self.suppressions.read_unsubscribe(request.path_params["token"])
        name, value = ONE_CLICK.split("=", 1)
        form = (
            f"<p>Stop emails to <strong>{escape(token.address)}</strong>?</p>"
            f'<form method="post"><input type="hidden" name="{name}" value="{value}">'
            '<button type="submit">Unsubscribe</button></form>'
        )
        return _page("Unsubscribe", form)

    async def unsubscribe(self, request: Request) -> Response:
        """``POST`` -> 200 a confirmation page (one-click clients ignore it).

        Raises:
            InvalidUnsubscribeTokenError: 400 envelope.
        """
        token, _created = await self.suppressions.unsubscribe(request.path_params["token"])
        return _page(
            "Unsubscribed",
            f"<p><strong>{escape(token.address)}</strong> will receive no more emails "
            "from this sender.</p>",
        )

    def routes(self) -> list[BaseRoute]:
        """The route table (Starlette answers HEAD with the GET handler)."""
        path = UNSUBSCRIBE_PATH + "/{token}"
        return [
            Route(path, self.page, methods=["GET"]),
            Route(path, self.unsubscribe, methods=["POST"]),
        ]
