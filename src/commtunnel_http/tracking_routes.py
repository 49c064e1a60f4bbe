"""The email tracking routes: the open pixel and the click redirect. No API key.

Contract: ``../shared/seeds/000_427ee8481191f61a.txt``, "Email tracking".
Tokens, events and bot rules are :class:`~commtunnel.services.tracking.TrackingService`'s;
what is here is HTTP:

* ``GET /v1/track/open?t=`` answers the 1x1 transparent GIF, 200, or 400
  (still the GIF: it is an image request) for an invalid token;
* ``GET /v1/track/click?t=`` answers 302 to the URL inside the signed
  token, never anywhere else, or 400 with the error envelope
  (``INVALID_TRACKING_TOKEN``);
* both send ``Cache-Control: no-store`` so that each open and click reaches
  the server; the redirect also sends ``Referrer-Policy: no-referrer`` so
  the destination never sees the token;
* a HEAD request (link checkers send them) is answered the same way but
  records nothing; a request without ``t`` is a 400 ``VALIDATION_ERROR``.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from commtunnel.client import Commtunnel
from commtunnel.domain.errors import InvalidTrackingTokenError, ValidationError
from commtunnel.domain.tracking import CLICK_PATH, OPEN_PATH, TRANSPARENT_GIF
from commtunnel_http.handlers import caller_address

NO_STORE = {"Cache-Control": "no-store"}


def _token(request: Request) -> str:
    """The ``t`` query parameter.

    Raises:
        ValidationError: ``t`` is absent.
    """
    token = request.query_params.get("t")
    if token is None:
        raise ValidationError.from_fields({"t": "is required"})
    return token


def _client_ip(ct: Commtunnel, request: Request) -> str | None:
    """The opener's address as text (behind trusted proxies, from ``X-Forwarded-For``)."""
    address = caller_address(ct, request)
    return None if address is None else str(address)


def _pixel(status: int) -> Response:
    return Response(TRANSPARENT_GIF, status_code=status, media_type="image/gif", headers=NO_STORE)


class TrackingRoutes:
    """Handlers of ``/v1/track/open`` and ``/v1/track/click``.

    Args:
        ct: the facade (started by the app's lifespan); its ``tracking`` service.
    """

    def __init__(self, ct: Commtunnel) -> None:
        self.ct = ct

    async def open(self, request: Request) -> Response:
        """``GET /v1/track/open?t=`` -> 200 the GIF; 400 the GIF for an invalid token."""
        token = _token(request)
        try:
            await self.ct.tracking.record_open(
                token,
                user_agent=request.headers.get("user-agent"),
                client_ip=_client_ip(self.ct, request),
                probe=request.method == "HEAD",
            )
        except InvalidTrackingTokenError:
            return _pixel(400)
        return _pixel(200)

    async def click(self, request: Request) -> Response:
        """``GET /v1/track/click?t=`` -> 302 to the token's URL.

        Raises:
            InvalidTrackingTokenError: 400 envelope; there is no redirect then.
        """
        click = await self.ct.tracking.record_click(
            _token(request),
            user_agent=request.headers.get("user-agent"),
            client_ip=_client_ip(self.ct, request),
            probe=request.method == "HEAD",
        )
        return RedirectResponse(
            click.url, status_code=302, headers={**NO_STORE, "Referrer-Policy": "no-referrer"}
        )

    def routes(self) -> list[BaseRoute]:
        """The route table (GET; Starlette answers HEAD with the same handlers)."""
        return [
            Route(OPEN_PATH, self.open, methods=["GET"]),
            Route(CLICK_PATH, self.click, methods=["GET"]),
        ]
