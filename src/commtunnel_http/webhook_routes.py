"""Customer webhook routes: endpoints, secret rotation, the delivery log, replay, test events.

Contract: issue 5 and ``../shared/seeds/000_427ee8481191f61a.txt`` ("Webhooks").
Every rule (scope ``webhooks:manage``, URL checks and the SSRF guard, event
filters, rotation grace) lives in :class:`~commtunnel.services.webhooks.WebhookService`;
this module reads HTTP and shapes the answers. The signing secret appears in
an answer only at creation and rotation.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from commtunnel.client import Commtunnel
from commtunnel.domain.webhooks import WebhookEndpoint
from commtunnel.services.webhooks import MAX_DELIVERY_PAGE
from commtunnel.shapes import delivery_json, delivery_page_json, endpoint_with_secret_json
from commtunnel_http.handlers import Handlers, limit_param
from commtunnel_http.wire import Wire


def _page_query(request: Request) -> dict[str, Any]:
    """``?limit=&cursor=`` as keyword arguments; the service checks the range and the cursor."""
    args: dict[str, Any] = dict(limit_param(request.query_params, maximum=MAX_DELIVERY_PAGE))
    if cursor := request.query_params.get("cursor"):
        args["cursor"] = cursor
    return args


class WebhookRoutes(Handlers):
    """Handlers of ``/v1/public/webhooks``, bound to one facade.

    Args:
        ct: the facade (started by the app's lifespan).
        wire: the shared response shapes.
    """

    def __init__(self, ct: Commtunnel, wire: Wire | None = None) -> None:
        super().__init__(ct, wire)
        self.webhooks = ct.webhooks

    def _endpoint(self, endpoint: WebhookEndpoint) -> dict[str, Any]:
        """An endpoint as the API shows it, never with its secret."""
        shaped: dict[str, Any] = self.wire.conv.unstructure(endpoint, WebhookEndpoint)
        return shaped

    async def create(self, request: Request) -> Response:
        """``POST /v1/public/webhooks`` -> 201 the endpoint with its ``secret`` (shown once)."""
        principal = await self.principal(request)
        created = await self.webhooks.create(principal, await self.json_body(request))
        return JSONResponse(endpoint_with_secret_json(self.wire.conv, created), status_code=201)

    async def list_endpoints(self, request: Request) -> Response:
        """``GET /v1/public/webhooks`` -> 200 ``{data}``, oldest first, without secrets."""
        principal = await self.principal(request)
        endpoints = await self.webhooks.list_endpoints(principal)
        return JSONResponse({"data": [self._endpoint(e) for e in endpoints]})

    async def get(self, request: Request) -> Response:
        """``GET /v1/public/webhooks/{id}`` -> 200 the endpoint; 404 if absent."""
        principal = await self.principal(request)
        endpoint = await self.webhooks.get(principal, request.path_params["id"])
        return JSONResponse(self._endpoint(endpoint))

    async def update(self, request: Request) -> Response:
        """``PATCH /v1/public/webhooks/{id}`` -> 200 the changed endpoint."""
        principal = await self.principal(request)
        payload = await self.json_body(request)
        endpoint = await self.webhooks.update(principal, request.path_params["id"], payload)
        return JSONResponse(self._endpoint(endpoint))

    async def delete(self, request: Request) -> Response:
        """``DELETE /v1/public/webhooks/{id}`` -> 200 ``{id, deleted: true}``."""
        principal = await self.principal(request)
        endpoint_id = request.path_params["id"]
        await self.webhooks.delete(principal, endpoint_id)
        return JSONResponse({"id": endpoint_id, "deleted": True})

    async def rotate_secret(self, request: Request) -> Response:
        """``POST /v1/public/webhooks/{id}/rotate-secret`` -> 200 with the new ``secret``."""
        principal = await self.principal(request)
        rotated = await self.webhooks.rotate_secret(principal, request.path_params["id"])
        return JSONResponse(endpoint_with_secret_json(self.wire.conv, rotated))

    async def endpoint_deliveries(self, request: Request) -> Response:
        """``GET /v1/public/webhooks/{id}/deliveries?limit=&cursor=`` -> 200 a page, newest first.

        Each delivery carries its attempts.
        """
        principal = await self.principal(request)
        page = await self.webhooks.deliveries(
            principal, endpoint_id=request.path_params["id"], **_page_query(request)
        )
        return JSONResponse(delivery_page_json(self.wire.conv, page))

    async def deliveries(self, request: Request) -> Response:
        """``GET /v1/public/webhooks/deliveries?messageId=&limit=&cursor=`` -> 200 a page.

        Every endpoint's deliveries, or one message's with ``messageId``.
        """
        principal = await self.principal(request)
        page = await self.webhooks.deliveries(
            principal,
            message_id=request.query_params.get("messageId") or None,
            **_page_query(request),
        )
        return JSONResponse(delivery_page_json(self.wire.conv, page))

    async def replay(self, request: Request) -> Response:
        """``POST /v1/public/webhooks/deliveries/{deliveryId}/replay`` -> 202 the new delivery."""
        principal = await self.principal(request)
        replay = await self.webhooks.replay(principal, request.path_params["deliveryId"])
        self.ct.notify_webhooks()
        return JSONResponse(delivery_json(self.wire.conv, replay), status_code=202)

    async def send_test(self, request: Request) -> Response:
        """``POST /v1/public/webhooks/{id}/test`` -> 202 the ``webhook.test`` delivery."""
        principal = await self.principal(request)
        delivery = await self.webhooks.send_test(principal, request.path_params["id"])
        self.ct.notify_webhooks()
        return JSONResponse(delivery_json(self.wire.conv, delivery), status_code=202)

    def routes(self) -> list[BaseRoute]:
        """The route table: ``/webhooks/deliveries`` precedes ``/webhooks/{id}``."""
        base = "/v1/public/webhooks"
        return [
            Route(base, self.create, methods=["POST"]),
            Route(base, self.list_endpoints, methods=["GET"]),
            Route(f"{base}/deliveries", self.deliveries, methods=["GET"]),
            Route(f"{base}/deliveries/{{deliveryId}}/replay", self.replay, methods=["POST"]),
            Route(f"{base}/{{id}}", self.get, methods=["GET"]),
            Route(f"{base}/{{id}}", self.update, methods=["PATCH"]),
            Route(f"{base}/{{id}}", self.delete, methods=["DELETE"]),
            Route(f"{base}/{{id}}/rotate-secret", self.rotate_secret, methods=["POST"]),
            Route(f"{base}/{{id}}/deliveries", self.endpoint_deliveries, methods=["GET"]),
            Route(f"{base}/{{id}}/test", self.send_test, methods=["POST"]),
        ]
