"""``GET /v1/public/providers/health``: each provider's circuit, error rate and last error.

Any valid API key may read it (it says nothing about any organization's
messages: a breaker counts only provider-wide faults, never a recipient's
refusal). The report is :meth:`Commtunnel.provider_health
<commtunnel.client.Commtunnel.provider_health>`'s.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from commtunnel.shapes import provider_health_json
from commtunnel_http.handlers import Handlers


class ProviderRoutes(Handlers):
    """The provider health route."""

    async def health(self, request: Request) -> Response:
        """``GET /v1/public/providers/health`` -> 200 ``{providers: [...]}``; 401 without a key."""
        await self.principal(request)
        reports = await self.ct.provider_health()
        return JSONResponse(provider_health_json(self.wire.conv, reports))

    def routes(self) -> list[BaseRoute]:
        """The route table."""
        return [Route("/v1/public/providers/health", self.health, methods=["GET"])]
