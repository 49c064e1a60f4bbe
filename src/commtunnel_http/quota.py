"""Rate-limit headers on every answer to an API-key request, refused or not.

:meth:`~commtunnel_http.handlers.Handlers.principal` leaves the key's
:class:`~commtunnel.services.ratelimit.Quota` in the ASGI scope under
:data:`SCOPE_KEY`; :class:`QuotaHeadersMiddleware` adds, when the response
starts (a 2xx, a 4xx and the 429 itself alike):

* ``RateLimit-Limit``: requests allowed per window;
* ``RateLimit-Remaining``: requests left now;
* ``RateLimit-Reset``: seconds until the window frees a request;
* ``RateLimit-Policy``: ``100;w=60`` (limit; window in seconds).

These are the fields of the IETF draft "RateLimit header fields for HTTP"
(draft-ietf-httpapi-ratelimit-headers-06), as GitHub and others send them.
A 429 also carries ``Retry-After`` (seconds, RFC 9110 10.2.3), set with the
error envelope (:mod:`commtunnel_http.errors`).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from commtunnel.services.ratelimit import Quota

#: where the handler leaves the request's quota (an ASGI scope key).
SCOPE_KEY = "commtunnel.quota"


def quota_headers(quota: Quota) -> list[tuple[bytes, bytes]]:
    """The ``RateLimit-*`` header fields of ``quota`` (raw ASGI headers)."""
    return [
        (b"ratelimit-limit", str(quota.limit).encode()),
        (b"ratelimit-remaining", str(quota.remaining).encode()),
        (b"ratelimit-reset", str(quota.reset).encode()),
        (b"ratelimit-policy", f"{quota.limit};w={quota.window}".encode()),
    ]


class QuotaHeadersMiddleware:
    """Pure ASGI middleware: the ``RateLimit-*`` headers when the request counted against a key.

    Args:
        app: the wrapped ASGI app.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_quota(message: Message) -> None:
            if message["type"] == "http.response.start":
                quota: Quota | None = scope.get(SCOPE_KEY)
                if quota is not None:
                    message["headers"] = [*message.get("headers", ()), *quota_headers(quota)]
            await send(message)

        await self.app(scope, receive, send_with_quota)
