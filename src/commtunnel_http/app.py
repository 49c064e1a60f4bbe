"""The app factory: a Starlette app over a :class:`~commtunnel.client.Commtunnel`.

    ct = Commtunnel.open(settings=Settings.from_env())
    app = create_app(ct)            # uvicorn runs it; the lifespan starts ct

The caller builds the facade; the app's lifespan starts it (storage open,
migrated) and closes it, and runs the dispatch worker in the same event
loop when asked to (``settings.embedded_worker`` by default).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware

from commtunnel.client import Commtunnel
from commtunnel.domain.errors import CommtunnelError
from commtunnel_http.errors import RequestIdMiddleware, handle_exception
from commtunnel_http.listing_routes import ListingRoutes
from commtunnel_http.provider_routes import ProviderRoutes
from commtunnel_http.quota import QuotaHeadersMiddleware
from commtunnel_http.routes import EmailRoutes
from commtunnel_http.scheduling_routes import SchedulingRoutes
from commtunnel_http.sms_routes import SmsRoutes
from commtunnel_http.sms_webhooks import SmsWebhookRoutes
from commtunnel_http.suppression_routes import SuppressionRoutes, UnsubscribeRoutes
from commtunnel_http.tracking_routes import TrackingRoutes
from commtunnel_http.webhook_routes import WebhookRoutes
from commtunnel_http.whatsapp_routes import WhatsAppRoutes
from commtunnel_http.wire import Wire

log = logging.getLogger("commtunnel.http")


def _log_worker_exit(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the embedded worker stopped", exc_info=task.exception())


def create_app(ct: Commtunnel, *, run_worker: bool | None = None) -> Starlette:
    """Build the HTTP app serving the public API over ``ct``.

    Args:
        ct: the facade, not necessarily started (the lifespan starts it).
        run_worker: run the dispatch worker inside the server process;
            defaults to ``ct.settings.embedded_worker``.

    Returns:
        The Starlette app: routes of :class:`~commtunnel_http.routes.EmailRoutes`,
        :class:`~commtunnel_http.sms_routes.SmsRoutes`,
        :class:`~commtunnel_http.sms_webhooks.SmsWebhookRoutes`,
        :class:`~commtunnel_http.whatsapp_routes.WhatsAppRoutes`,
        :class:`~commtunnel_http.webhook_routes.WebhookRoutes` and
        :class:`~commtunnel_http.tracking_routes.TrackingRoutes` (and the
        suppression list, email events and unsubscribe routes of
        :mod:`~commtunnel_http.suppression_routes`), ``X-Request-Id``
        on every response, one error envelope for every failure.
    """
    embedded = ct.settings.embedded_worker if run_worker is None else run_worker

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await ct.start()
        stop = asyncio.Event()
        worker: asyncio.Task[None] | None = None
        try:
            if embedded:
                worker = asyncio.create_task(ct.run_worker(stop), name="commtunnel-worker")
                worker.add_done_callback(_log_worker_exit)
            yield
        finally:
            stop.set()
            if worker is not None:
                await asyncio.gather(worker, return_exceptions=True)  # logged by the callback
            await ct.aclose()

    wire = Wire()
    routes = [
        *EmailRoutes(ct, wire).routes(),
        *SchedulingRoutes(ct, wire).routes(),
        *ListingRoutes(ct, wire).routes(),
        *SmsRoutes(ct, wire).routes(),
        *SmsWebhookRoutes(ct, wire).routes(),
        *WhatsAppRoutes(ct, wire).routes(),
        *WebhookRoutes(ct, wire).routes(),
        *TrackingRoutes(ct).routes(),
        *SuppressionRoutes(ct, wire).routes(),
        *UnsubscribeRoutes(ct).routes(),
        *ProviderRoutes(ct, wire).routes(),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(RequestIdMiddleware), Middleware(QuotaHeadersMiddleware)],
        exception_handlers={HTTPException: handle_exception, CommtunnelError: handle_exception},
        lifespan=lifespan,
    )
    # An API answers a stray trailing slash with a 404 envelope, not a redirect.
    app.router.redirect_slashes = False
    return app
