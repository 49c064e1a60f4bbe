"""The facades: :class:`Commtunnel` (async) and :class:`SyncCommtunnel` (plain synchronous code).

``Commtunnel`` is the composition root: it receives storage, provider and
clock (or builds them from :class:`~commtunnel.config.Settings`), wires the
services, and exposes ``ct.email`` bound to one organization for in-process
use. The HTTP adapter uses the same object, with a principal per request.

    async with Commtunnel.open(db="app.db", org="acme") as ct:
        await ct.admin.add_sender(ct.org.id, "example.com")
        result = await ct.email.send(from_="hi@example.com", to="a@b.com",
                                     subject="Hi", text="Hello")
        await ct.run_worker_until_idle()
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from contextlib import AbstractContextManager
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Concatenate, Generic, ParamSpec, Self, TypeVar

from anyio.from_thread import BlockingPortal, start_blocking_portal

from commtunnel.backends import make_backend
from commtunnel.backends.sqlite import SqliteBackend
from commtunnel.backends.sqlite_access import SqliteAccessStore
from commtunnel.backends.sqlite_listing import SqliteListingStore
from commtunnel.backends.sqlite_retention import SqliteRetentionStore
from commtunnel.backends.sqlite_routing import SqliteRoutingStore
from commtunnel.backends.sqlite_scheduling import SqliteSchedulingStore
from commtunnel.backends.sqlite_sms import SqliteSmsStore
from commtunnel.backends.sqlite_suppressions import SqliteSuppressionStore
from commtunnel.backends.sqlite_webhooks import SqliteWebhookStore
from commtunnel.backends.sqlite_whatsapp import SqliteWhatsAppStore
from commtunnel.clock import SystemClock
from commtunnel.config import Settings
from commtunnel.crypto import SecretBox
from commtunnel.domain.circuit import ProviderHealth
from commtunnel.domain.delivery import ProviderResult
from commtunnel.domain.errors import ProviderConfigError
from commtunnel.domain.events import TimelineEvent
from commtunnel.domain.keys import ALL_SCOPES, Organization, Principal
from commtunnel.domain.messages import EmailContent, Message
from commtunnel.ports import Clock, EmailProvider, PurgeCounts, SmsProvider, WhatsAppProvider
from commtunnel.providers import load_named_providers, redact_url
from commtunnel.providers.webhook_http import HttpWebhookSender
from commtunnel.services.access import AccessService
from commtunnel.services.admin import AdminService
from commtunnel.services.auth import KeyService
from commtunnel.services.dispatch import Dispatcher
from commtunnel.services.email import (
    EmailSendRequest,
    EmailService,
    EmailStats,
    EmailStatus,
    Rendered,
    SendResult,
)
from commtunnel.services.email_batch import BatchRequest, BatchResult
from commtunnel.services.listing import DEFAULT_LIMIT, MessageListing, MessagePage
from commtunnel.services.ratelimit import RateLimiter
from commtunnel.services.retention import Purger
from commtunnel.services.routing import ProviderRoute
from commtunnel.services.sms import (
    OtpSendRequest,
    OtpSendResult,
    Page,
    SmsSendRequest,
    SmsSendResult,
    SmsService,
    SmsStatus,
)
from commtunnel.services.suppressions import SuppressionService
from commtunnel.services.templates import TemplateRenderer
from commtunnel.services.tracking import TrackingService
from commtunnel.services.webhook_worker import WebhookWorker
from commtunnel.services.webhooks import WebhookService
from commtunnel.services.whatsapp import WhatsAppService, parse_line_map

log = logging.getLogger("commtunnel.worker")

T = TypeVar("T")
C = TypeVar("C")
P = ParamSpec("P")


class EmailClient:
    """The email channel for one principal (in process: the facade's organization).

    Every method has the HTTP route's meaning and raises the same errors
    (see :class:`~commtunnel.services.email.EmailService`).
    """

    def __init__(
        self,
        service: EmailService,
        principal: Principal,
        listing: MessageListing | None = None,
    ) -> None:
        self._service = service
        self.principal = principal
        self._listing = listing

    async def send(
        self,
        *,
        from_: str,
        to: str,
        subject: str | None = None,
        html: str | None = None,
        text: str | None = None,
        template_id: str | None = None,
        variables: dict[str, Any] | None = None,
        tracking: bool = False,
        unsubscribe: bool = False,
        sandbox_mode: bool = False,
        scheduled_at: datetime | str | None = None,
        idempotency_key: str | None = None,
    ) -> SendResult:
        """Queue an email (``from_`` because ``from`` is a Python keyword).

        ``scheduled_at`` (an aware datetime or an ISO 8601 string with a
        timezone, in the future, within ``schedule_horizon``) holds it as
        SCHEDULED until then.

        ``unsubscribe`` adds ``List-Unsubscribe`` / ``List-Unsubscribe-Post``
        headers with a signed one-click link (RFC 2369, RFC 8058).

        Returns:
            :class:`SendResult` with the message (status QUEUED) and ``duplicate``
            (True: an idempotent replay of ``idempotency_key``, nothing queued).

        Raises:
            ValidationError, SenderNotVerifiedError, EmailRecipientSuppressedError,
            IdempotencyKeyReusedError, IdempotencyKeyInUseError: see
            :meth:`~commtunnel.services.email.EmailService.send`.
        """
        request = EmailSendRequest(
            from_addr=from_,
            to=to,
            subject=subject,
            html=html,
            text=text,
            template_id=template_id,
            variables=variables,
            tracking=tracking,
            unsubscribe=unsubscribe,
            sandbox_mode=sandbox_mode,
            scheduled_at=scheduled_at,
            idempotency_key=idempotency_key,
        )
        return await self._service.send(self.principal, request)

    async def send_batch(
        self, messages: list[dict[str, Any]], *, idempotency_key: str | None = None
    ) -> BatchResult:
        """Queue up to ``batch_max_messages`` emails, each checked alone, accepted together.

        Args:
            messages: send requests in wire spelling, as ``POST
                /v1/public/emails/batch`` takes them (``{"from": ..., "to": ...,
                "subject": ..., "text": ..., "scheduledAt": ...}``), without
                ``idempotencyKey``.
            idempotency_key: one key for the whole batch.

        Returns:
            :class:`~commtunnel.services.email_batch.BatchResult`: per item the
            message or the error (code, message, details), and the batch id.

        Raises:
            ValidationError, IdempotencyKeyReusedError, IdempotencyKeyInUseError:
            see :meth:`~commtunnel.services.email.EmailService.send_batch`.
        """
        request = BatchRequest(messages=messages, idempotency_key=idempotency_key)
        return await self._service.send_batch(self.principal, request)

    async def cancel(self, message_id: str) -> EmailStatus:
        """Cancel a SCHEDULED or QUEUED email (never sent); returns it, CANCELED.

        Raises:
            NotFoundError: no such email in this organization.
            MessageNotCancelableError: any other status (``details.status``).
        """
        return await self._service.cancel(self.principal, message_id)

    async def preview(
        self,
        *,
        subject: str | None = None,
        html: str | None = None,
        text: str | None = None,
        template_id: str | None = None,
        variables: dict[str, Any] | None = None,
        tracking: bool = False,
    ) -> Rendered:
        """Render subject and bodies (``variables`` into a template) without queuing.

        ``tracking`` asks whether a send with it would be tracked
        (:attr:`Rendered.tracking`: only with an HTML part).

        Raises:
            ValidationError: nothing to render, an unknown template, a render error.
        """
        return await self._service.preview(
            self.principal,
            subject=subject,
            html=html,
            text=text,
            template_id=template_id,
            variables=variables,
            tracking=tracking,
        )

    async def get(self, message_id: str) -> EmailStatus:
        """Status, content and attempts of one email.

        Raises:
            NotFoundError: no such email in this organization.
        """
        return await self._service.get(self.principal, message_id)

    async def timeline(self, message_id: str, *, limit: int = 100) -> list[TimelineEvent]:
        """Events of one email, oldest first, at most ``limit`` (1..1000).

        Raises:
            ValidationError: ``limit`` out of range.
            NotFoundError: no such email in this organization.
        """
        return await self._service.timeline(self.principal, message_id, limit=limit)

    async def stats(
        self, *, start: datetime, end: datetime, include_bots: bool = False
    ) -> EmailStats:
        """Counts by status and event type, opens and clicks, for the window ``[start, end)``.

        Args:
            include_bots: count opens and clicks marked ``isBot`` too.

        Raises:
            ValidationError: naive datetimes, ``end`` not after ``start``, over 366 days.
        """
        return await self._service.stats(
            self.principal, start=start, end=end, include_bots=include_bots
        )

    async def list(
        self,
        *,
        status: str | None = None,
        created_after: datetime | str | None = None,
        created_before: datetime | str | None = None,
        to: str | None = None,
        limit: int = DEFAULT_LIMIT,
        cursor: str | None = None,
    ) -> MessagePage:
        """Emails of the organization, newest first, a page at a time (``GET /v1/public/emails``).

        Returns:
            :class:`~commtunnel.services.listing.MessagePage`: items with their
            attempts, and the ``cursor`` of the next page (None on the last).

        Raises:
            ValidationError: see :meth:`~commtunnel.services.listing.MessageListing.list_emails`.
            RuntimeError: this client was built without the listing service.
        """
        if self._listing is None:
            raise RuntimeError("EmailClient has no listing service")
        return await self._listing.list_emails(
            self.principal,
            status=status,
            created_after=created_after,
            created_before=created_before,
            to=to,
            limit=limit,
            cursor=cursor,
        )


class SmsClient:
    """The SMS channel for one principal (in process: the facade's organization).

    Every method has the HTTP route's meaning and raises the same errors
    (see :class:`~commtunnel.services.sms.SmsService`).
    """

    def __init__(self, service: SmsService, principal: Principal) -> None:
        self._service = service
        self.principal = principal

    async def send(
        self,
        *,
        to: str,
        sender_id: str,
        body: str,
        send_type: int = 0,
        sandbox_mode: bool = False,
        scheduled_at: datetime | str | None = None,
        idempotency_key: str | None = None,
    ) -> SmsSendResult:
        """Queue an SMS; ``to`` in E.164, ``send_type`` 0 normal / 1 flash / 2 unicode.

        ``scheduled_at`` (an aware datetime or an ISO 8601 string with a
        timezone) holds it as SCHEDULED until then.

        Returns:
            :class:`SmsSendResult`: the message (QUEUED), its segments and
            encoding, and ``duplicate`` for an idempotent replay.

        Raises:
            ValidationError, SmsSenderIdNotApprovedError, SmsRecipientOptedOutError,
            IdempotencyKeyReusedError, IdempotencyKeyInUseError: see
            :meth:`~commtunnel.services.sms.SmsService.send`.
        """
        request = SmsSendRequest(
            to=to,
            sender_id=sender_id,
            body=body,
            send_type=send_type,
            sandbox_mode=sandbox_mode,
            scheduled_at=scheduled_at,
            idempotency_key=idempotency_key,
        )
        return await self._service.send(self.principal, request)

    async def send_otp(
        self,
        *,
        to: str,
        brand_name: str,
        otp_code: str,
        purpose: str | None = None,
        sandbox_mode: bool = False,
        idempotency_key: str | None = None,
    ) -> OtpSendResult:
        """Queue a one-time passcode (``otp_code`` a string of 4-8 digits).

        Raises:
            ValidationError, SmsBrandNotApprovedError, SmsRecipientOptedOutError,
            OtpCooldownError, IdempotencyKeyReusedError, IdempotencyKeyInUseError:
            see :meth:`~commtunnel.services.sms.SmsService.send_otp`.
        """
        request = OtpSendRequest(
            to=to,
            brand_name=brand_name,
            otp_code=otp_code,
            purpose=purpose,
            sandbox_mode=sandbox_mode,
            idempotency_key=idempotency_key,
        )
        return await self._service.send_otp(self.principal, request)

    async def get(self, message_id: str) -> SmsStatus:
        """Status, content and attempts of one SMS.

        Raises:
            NotFoundError: no such SMS in this organization.
        """
        return await self._service.get(self.principal, message_id)

    async def timeline(self, message_id: str, *, limit: int = 100) -> list[TimelineEvent]:
        """Events of one SMS, oldest first, at most ``limit`` (1..1000).

        Raises:
            ValidationError: ``limit`` out of range.
            NotFoundError: no such SMS in this organization.
        """
        return await self._service.timeline(self.principal, message_id, limit=limit)

    async def retry(self, message_id: str) -> Message:
        """Re-queue a FAILED SMS; returns the message, QUEUED again.

        Raises:
            NotFoundError: no such SMS in this organization.
            MessageNotRetryableError: the SMS is not FAILED (``details.status``).
        """
        return await self._service.retry(self.principal, message_id)

    async def cancel(self, message_id: str) -> SmsStatus:
        """Cancel a SCHEDULED or QUEUED SMS (never sent); returns it, CANCELED.

        Raises:
            NotFoundError: no such SMS in this organization.
            MessageNotCancelableError: any other status (``details.status``).
        """
        return await self._service.cancel(self.principal, message_id)

    async def list(
        self,
        *,
        flow: str | None = None,
        status: str | None = None,
        query: str | None = None,
        page: int = 1,
        page_size: int = 20,
    ) -> Page:
        """SMS of the organization, newest first (filters as ``GET /v1/sms``).

        Returns:
            :class:`Page` of :class:`Message` (``page`` from 1, ``page_size`` 1..100).

        Raises:
            ValidationError: an unknown ``flow`` or ``status``, a page out of range.
        """
        return await self._service.list_messages(
            self.principal, flow=flow, status=status, query=query, page=page, page_size=page_size
        )


def _default_whatsapp(settings: Settings, clock: Clock) -> WhatsAppProvider | None:
    """The Graph provider the settings describe, when the channel is enabled."""
    if not settings.whatsapp_enabled:
        return None
    from commtunnel.providers.whatsapp import WhatsAppCloudProvider

    return WhatsAppCloudProvider(
        graph_base_url=settings.whatsapp_graph_base_url,
        api_version=settings.whatsapp_graph_api_version,
        clock=clock,
    )


def _route(channel: str, provider: Any, settings: Settings) -> ProviderRoute[Any]:
    """``provider`` when it is a route already; else a route, with the settings' circuit
    breaker, of ``provider``'s (name, provider) pairs (a list) or of that one provider,
    named after it."""
    if isinstance(provider, ProviderRoute):
        return provider
    named = provider if isinstance(provider, list) else [(provider.name, provider)]
    return ProviderRoute(
        channel,
        named,
        failure_threshold=settings.breaker_failures,
        cooldown=settings.breaker_cooldown,
    )


def _same(a: object, b: object) -> bool:
    """Whether two provider references are one object: one provider may serve two channels.

    (A function because mypy holds an ``EmailProvider`` and an ``SmsProvider``
    never to be the same object, and would refuse a bare ``is``.)
    """
    return a is b


class Commtunnel:
    """The async facade and composition root.

    Args:
        backend: storage + queue (the SQLite backend by default).
        email_provider: the email channel's provider, or a
            :class:`~commtunnel.services.routing.ProviderRoute` of several in
            failover order.
        clock: every "now" (``SystemClock`` by default; ``ManualClock`` in tests).
        sms_provider: the SMS channel's provider or route (None: SMS attempts
            fail as UNSUPPORTED).
        whatsapp_provider: the WhatsApp channel's provider (None: the channel
            sends nothing; :meth:`open` builds the Graph one when enabled).
        settings: limits, retry policy, worker tuning.
        org: the organization ``ct.email`` acts for in process (created if missing).
        rng: jitter source for the worker's backoff (seed it in tests).
        rate_limiter: counts API-key requests (by default in memory, or in
            Redis when ``settings.redis_url`` is set; tests pass their own).

    Use :meth:`open` to build one from settings; ``async with`` starts and
    closes it.
    """

    def __init__(
        self,
        *,
        backend: SqliteBackend,
        email_provider: EmailProvider | ProviderRoute[EmailProvider],
        clock: Clock,
        settings: Settings,
        org: str = "default",
        rng: random.Random | None = None,
        sms_provider: SmsProvider | ProviderRoute[SmsProvider] | None = None,
        whatsapp_provider: WhatsAppProvider | None = None,
        rate_limiter: RateLimiter | None = None,
    ) -> None:
        self.backend = backend
        self.whatsapp_provider = whatsapp_provider
        #: the email providers in failover order; ``email_provider`` is the first.
        self.email_route: ProviderRoute[EmailProvider] = _route("email", email_provider, settings)
        #: the SMS providers in failover order (None: no SMS provider).
        self.sms_route: ProviderRoute[SmsProvider] | None = (
            None if sms_provider is None else _route("sms", sms_provider, settings)
        )
        self.routing_store = SqliteRoutingStore(backend)
        self.clock = clock
        self.settings = settings
        self._org_name = org
        self._rng = rng
        self.renderer = TemplateRenderer()
        self.keys = KeyService(backend, clock)
        #: API-key requests' IP allowlist and request limit (``commtunnel.services.access``).
        self.access = AccessService(
            SqliteAccessStore(backend),
            rate_limiter or RateLimiter(settings.redis_url),
            default_rate_limit=settings.rate_limit,
            trusted_proxies=settings.trusted_proxies,
        )
        self.admin = AdminService(backend, clock, self.renderer)
        self.sms_store = SqliteSmsStore(backend)
        self.suppression_store = SqliteSuppressionStore(backend)
        self.suppressions = SuppressionService(
            self.suppression_store,
            backend,
            self.sms_store,  # applies the BOUNCED move an ESP reports
            clock,
            base_url=settings.base_url,
            secret_key=settings.secret_key,
        )
        self.scheduling_store = SqliteSchedulingStore(backend)
        self.emails = EmailService(
            backend,
            clock,
            self.renderer,
            idempotency_retention=settings.idempotency_retention,
            scheduling_store=self.scheduling_store,
            schedule_horizon=settings.schedule_horizon,
            batch_max_messages=settings.batch_max_messages,
            recipient_check=self.suppressions.check,
        )
        self.tracking = TrackingService(
            backend, clock, base_url=settings.base_url, secret_key=settings.secret_key
        )
        self.sms_service = SmsService(
            backend,
            self.sms_store,
            clock,
            default_sender_id=settings.sms_default_sender_id,
            otp_cooldown=settings.otp_cooldown,
            idempotency_retention=settings.idempotency_retention,
            help_text=settings.sms_help_text,
            stop_text=settings.sms_stop_text,
            start_text=settings.sms_start_text,
            scheduling_store=self.scheduling_store,
            schedule_horizon=settings.schedule_horizon,
        )
        self.whatsapp_store = SqliteWhatsAppStore(backend)
        self.whatsapp_service = WhatsAppService(
            backend,
            self.sms_store,
            self.whatsapp_store,
            clock,
            enabled=settings.whatsapp_enabled,
            platform_phone_number_id=settings.whatsapp_phone_number_id,
            platform_access_token=settings.whatsapp_access_token,
            line_map=parse_line_map(settings.whatsapp_line_map),
            secret_box=SecretBox(settings.secret_key) if settings.secret_key else None,
            idempotency_retention=settings.idempotency_retention,
            lease_seconds=settings.lease_seconds,
            dispatcher=lambda: self.dispatcher,
        )
        self.webhook_store = SqliteWebhookStore(backend)
        self.webhook_sender = HttpWebhookSender(
            allow_private=settings.webhooks_allow_private, timeout=settings.webhook_timeout
        )
        self.webhooks = WebhookService(
            self.webhook_store,
            clock,
            sender=self.webhook_sender,
            secret_box=SecretBox(settings.secret_key) if settings.secret_key else None,
            secret_grace=settings.webhook_secret_grace,
        )
        self.listing = MessageListing(SqliteListingStore(backend))
        self.purger = Purger(
            SqliteRetentionStore(backend),
            clock,
            retention=settings.retention,
            idempotency_retention=settings.idempotency_retention,
            batch=settings.purge_batch,
        )
        self._org: Organization | None = None
        self._dispatcher: Dispatcher | None = None
        self._webhook_worker: WebhookWorker | None = None

    @classmethod
    def open(
        cls,
        *,
        db: str | Path | None = None,
        email_provider: str | EmailProvider | None = None,
        clock: Clock | None = None,
        settings: Settings | None = None,
        org: str = "default",
        rng: random.Random | None = None,
        sms_provider: str | SmsProvider | None = None,
        whatsapp_provider: WhatsAppProvider | None = None,
        rate_limiter: RateLimiter | None = None,
    ) -> Commtunnel:
        """Build a facade from settings (environment by default), not yet started.

        Args:
            db: a SQLite path or a ``postgresql://`` URL; overrides ``settings.db``.
            email_provider: a provider URL or an instance; overrides the settings'
                list (``COMMTUNNEL_EMAIL_PROVIDERS``, else ``COMMTUNNEL_EMAIL_PROVIDER``).
            sms_provider: a provider URL or an instance; overrides the settings' list.
            whatsapp_provider: an instance (tests: one on a fake Graph); by default
                a WhatsApp Cloud provider on ``WHATSAPP_GRAPH_BASE_URL`` when the
                channel is enabled.
            clock: defaults to the system clock.
            settings: defaults to ``Settings.from_env()``.
            org: the in-process organization name.
            rng: backoff jitter source.
            rate_limiter: counts API-key requests (default: from ``settings.redis_url``).

        Raises:
            ProviderConfigError: a provider URL names no installed provider, two
                providers share a name, or an SMS provider cannot send SMS.
            ValueError: ``rate_limit`` or ``trusted_proxies`` does not parse.
        """
        settings = settings or Settings.from_env()
        clock = clock or SystemClock()
        location = str(db) if db is not None else settings.db
        email: EmailProvider | ProviderRoute[EmailProvider]
        if email_provider is None or isinstance(email_provider, str):
            urls = settings.email_provider_urls if email_provider is None else [email_provider]
            email = _route("email", load_named_providers(urls, clock=clock), settings)
        else:
            email = email_provider
        sms: SmsProvider | ProviderRoute[SmsProvider]
        if sms_provider is None or isinstance(sms_provider, str):
            urls = settings.sms_provider_urls if sms_provider is None else [sms_provider]
            named = load_named_providers(urls, clock=clock)
            for (name, provider), url in zip(named, urls, strict=True):
                if not isinstance(provider, SmsProvider):
                    raise ProviderConfigError(
                        f"The provider {name} ({redact_url(url)}) cannot send SMS"
                    )
            sms = _route("sms", named, settings)
        else:
            sms = sms_provider
        return cls(
            backend=make_backend(location, clock=clock, pool_size=settings.db_pool_size),
            email_provider=email,
            clock=clock,
            settings=settings,
            org=org,
            rng=rng,
            sms_provider=sms,
            whatsapp_provider=whatsapp_provider or _default_whatsapp(settings, clock),
            rate_limiter=rate_limiter,
        )

    @property
    def email_provider(self) -> EmailProvider:
        """The first email provider; assigning one makes it the channel's only provider."""
        return self.email_route.primary

    @email_provider.setter
    def email_provider(self, provider: EmailProvider) -> None:
        self.email_route = _route("email", provider, self.settings)

    @property
    def sms_provider(self) -> SmsProvider | None:
        """The first SMS provider; assigning one makes it the channel's only provider."""
        return None if self.sms_route is None else self.sms_route.primary

    @sms_provider.setter
    def sms_provider(self, provider: SmsProvider | None) -> None:
        self.sms_route = None if provider is None else _route("sms", provider, self.settings)

    @property
    def _routes(self) -> list[ProviderRoute[Any]]:
        """The email route, then the SMS route when there is one."""
        return [self.email_route] + ([] if self.sms_route is None else [self.sms_route])

    async def start(self) -> Self:
        """Open storage (migrating it) and ensure the in-process organization exists."""
        await self.backend.open()
        self._org = await self.admin.ensure_org(self._org_name)
        return self

    async def aclose(self) -> None:
        """Close the providers and storage (pending writes are committed first)."""
        try:
            await self.webhook_sender.aclose()
            await self.access.limiter.aclose()
            closed: list[object] = []  # one provider may serve both channels (the outbox)
            for route in self._routes:
                for routed in route.routes:
                    if not any(_same(routed.provider, done) for done in closed):
                        closed.append(routed.provider)
                        await routed.provider.aclose()
            if self.whatsapp_provider is not None:
                await self.whatsapp_provider.aclose()
        finally:
            await self.backend.aclose()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def org(self) -> Organization:
        """The organization ``ct.email`` acts for."""
        if self._org is None:
            raise RuntimeError("Commtunnel is not started; use 'async with' or await start()")
        return self._org

    @property
    def email(self) -> EmailClient:
        """The email channel, acting for :attr:`org` with every scope."""
        return EmailClient(self.emails, self._in_process_principal, self.listing)

    @property
    def sms(self) -> SmsClient:
        """The SMS channel, acting for :attr:`org` with every scope."""
        return SmsClient(self.sms_service, self._in_process_principal)

    @property
    def _in_process_principal(self) -> Principal:
        return Principal(org_id=self.org.id, scopes=ALL_SCOPES)

    def email_for(self, principal: Principal) -> EmailClient:
        """The email channel acting for ``principal`` (what the HTTP adapter uses)."""
        return EmailClient(self.emails, principal, self.listing)

    async def authenticate(self, token: str | None) -> Principal:
        """The principal for a bearer API key (raises ``UnauthorizedError``)."""
        return await self.keys.authenticate(token)

    @property
    def dispatcher(self) -> Dispatcher:
        """The dispatch worker for this facade (created on first use)."""
        if self._dispatcher is None:
            s = self.settings
            self._dispatcher = Dispatcher(
                self.backend,
                self.email_route,
                self.clock,
                policy=s.retry_policy,
                lease_seconds=s.lease_seconds,
                send_timeout=s.send_timeout,
                concurrency=s.worker_concurrency,
                rng=self._rng,
                sms_provider=self.sms_route,
                routing=self.routing_store,
                sms_status_callback_url=(
                    None if s.public_url is None else f"{s.base_url}/v1/webhooks/sms/provider"
                ),
                whatsapp_provider=self.whatsapp_provider,
                whatsapp_line=self.whatsapp_service.line_for_message,
                after_attempt=self._after_attempt,
                prepare_email=self._prepare_email,
                check_email=self.suppressions.held,
                check_sms=self.sms_service.held,
            )
        return self._dispatcher

    async def provider_health(self) -> list[ProviderHealth]:
        """Each provider's circuit state, recent error rate and last error.

        The providers configured here come first, email then SMS, in failover
        order: as this process's worker sees them when it has made calls, else
        as the last worker to report on them stored it, else with no report
        (``reported_by`` None, state CLOSED). Providers that only other
        workers know follow, as stored.

        Returns:
            One :class:`~commtunnel.domain.circuit.ProviderHealth` per provider.
        """
        now = self.clock.now()
        reports = await self.routing_store.list_provider_health()
        stored = {(h.channel, h.provider): h for h in reports}
        worker = None if self._dispatcher is None else self._dispatcher.worker_id
        report: list[ProviderHealth] = []
        for route in self._routes:
            live = worker is not None and route.used
            for health in route.health(now, worker=worker if live else None):
                key = (health.channel, health.provider)
                report.append(health if live else stored.get(key, health))
                stored.pop(key, None)
        return report + list(stored.values())

    async def _after_attempt(self, message: Message, result: ProviderResult) -> None:
        """Consequences of a failed attempt beyond the message itself."""
        if message.whatsapp is not None:
            await self.whatsapp_service.after_attempt(message, result)
        elif message.sms is not None:
            await self.sms_service.after_attempt(message, result)
        elif message.email is not None:
            await self.suppressions.after_attempt(message, result)  # a hard bounce

    async def _prepare_email(self, message: Message) -> EmailContent:
        """The content an email provider gets: tracking rewrites, then the unsubscribe link."""
        content = await self.tracking.prepare_email(message)
        return await self.suppressions.prepare_email(message, content)

    async def run_worker_until_idle(self) -> int:
        """Deliver everything due at the clock's current time; returns jobs processed.

        Retries scheduled later stay queued: move a manual clock and call again.
        """
        return await self.dispatcher.run_until_idle()

    async def run_worker(self, stop: asyncio.Event) -> None:
        """Run the dispatch worker, the webhook worker and the purge until ``stop`` is set.

        The purge (:class:`~commtunnel.services.retention.Purger`) runs at once
        and then every ``settings.purge_interval`` seconds.
        """
        # Not a TaskGroup: a second cancellation (the CLI's second SIGTERM) must
        # reach the dispatcher's wait for attempts in flight, and a TaskGroup
        # passes only the first one on to its tasks.
        webhooks = asyncio.create_task(self.webhook_worker.run(stop), name="commtunnel-webhooks")
        purge = asyncio.create_task(
            self.purger.run(stop, interval=self.settings.purge_interval), name="commtunnel-purge"
        )
        try:
            await self.dispatcher.run(stop)
        except BaseException:
            webhooks.cancel()
            purge.cancel()
            raise
        finally:
            outcomes = await asyncio.gather(webhooks, purge, return_exceptions=True)
            for name, outcome in zip(("webhook worker", "purge"), outcomes, strict=True):
                if isinstance(outcome, Exception):
                    log.error("the %s stopped", name, exc_info=outcome)

    async def purge_until_done(self, *, dry_run: bool = False) -> PurgeCounts:
        """Delete what is past its retention at the clock's now (what the worker does).

        Args:
            dry_run: count what would be deleted, delete nothing.

        Returns:
            Rows deleted (or deletable) per table.
        """
        now = self.clock.now()
        if dry_run:
            return await self.purger.count(now)
        return await self.purger.purge_once(now)

    @property
    def webhook_worker(self) -> WebhookWorker:
        """The worker delivering customer webhooks (created on first use)."""
        if self._webhook_worker is None:
            s = self.settings
            self._webhook_worker = WebhookWorker(
                self.webhook_store,
                self.webhooks,
                self.clock,
                sender=self.webhook_sender,
                schedule=s.webhook_retry_schedule,
                disable_after=s.webhook_disable_after,
                lease_seconds=max(s.lease_seconds, s.webhook_timeout + 5),
                concurrency=s.worker_concurrency,
                rng=self._rng,
            )
        return self._webhook_worker

    def notify_webhooks(self) -> None:
        """Wake the webhook worker of this process (new deliveries are due now)."""
        if self._webhook_worker is not None:
            self._webhook_worker.notify()

    async def run_webhooks_until_idle(self) -> int:
        """Attempt every webhook delivery due at the clock's current time; returns how many.

        Retries scheduled later stay pending: move a manual clock and call again.
        """
        return await self.webhook_worker.run_until_idle()


class _Blocking(Generic[C]):
    """Base of the blocking twins: an async client and the portal its calls block on."""

    def __init__(self, portal: BlockingPortal, client: C) -> None:
        self._portal = portal
        self._client = client


def _blocking(
    method: Callable[Concatenate[C, P], Awaitable[T]],
) -> Callable[Concatenate[_Blocking[C], P], T]:
    """The blocking twin of an async client method: same arguments, result and docstring."""

    @functools.wraps(method)
    def call(self: _Blocking[C], /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._portal.call(functools.partial(method, self._client, *args, **kwargs))

    return call


class _SyncEmailClient(_Blocking[EmailClient]):
    """Blocking twin of :class:`EmailClient` (same methods, same arguments)."""

    send = _blocking(EmailClient.send)
    send_batch = _blocking(EmailClient.send_batch)
    cancel = _blocking(EmailClient.cancel)
    preview = _blocking(EmailClient.preview)
    get = _blocking(EmailClient.get)
    timeline = _blocking(EmailClient.timeline)
    stats = _blocking(EmailClient.stats)
    list = _blocking(EmailClient.list)


class _SyncSmsClient(_Blocking[SmsClient]):
    """Blocking twin of :class:`SmsClient` (same methods, same arguments)."""

    send = _blocking(SmsClient.send)
    send_otp = _blocking(SmsClient.send_otp)
    get = _blocking(SmsClient.get)
    timeline = _blocking(SmsClient.timeline)
    retry = _blocking(SmsClient.retry)
    cancel = _blocking(SmsClient.cancel)
    list = _blocking(SmsClient.list)


class SyncCommtunnel(AbstractContextManager["SyncCommtunnel"]):
    """The facade for synchronous code (a Flask view, a script).

    It runs a :class:`Commtunnel` on an event loop in a background thread and
    blocks on each call. With ``background_worker=True`` that loop also runs
    the dispatch worker, so accepted mail is delivered while the app runs.

    Args:
        background_worker: deliver in the background thread.
        **open_kwargs: passed to :meth:`Commtunnel.open`.
    """

    def __init__(self, *, background_worker: bool = False, **open_kwargs: Any) -> None:
        self._portal_cm = start_blocking_portal("asyncio")
        self._portal = self._portal_cm.__enter__()
        try:
            self.ct: Commtunnel = self._portal.call(self._start, open_kwargs)
        except BaseException:
            self._portal_cm.__exit__(None, None, None)
            raise
        self._stop = asyncio.Event()  # set in the loop thread by close()
        self._worker: Future[None] | None = None
        if background_worker:
            self._worker = self._portal.start_task_soon(self.ct.run_worker, self._stop)
        self.email = _SyncEmailClient(self._portal, self.ct.email)
        self.sms = _SyncSmsClient(self._portal, self.ct.sms)

    @staticmethod
    async def _start(open_kwargs: dict[str, Any]) -> Commtunnel:
        return await Commtunnel.open(**open_kwargs).start()

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run a coroutine function of the async facade and block for its result.

        Example: ``sc.call(sc.ct.admin.add_sender, sc.ct.org.id, "example.com")``.
        """
        return self._portal.call(fn, *args)

    def run_worker_until_idle(self) -> int:
        """Deliver everything due now; returns jobs processed."""
        return self._portal.call(self.ct.run_worker_until_idle)

    def close(self) -> None:
        """Stop the background worker (if any), close the facade and the loop thread.

        Raises:
            TimeoutError: the background worker did not stop within 30 seconds.
        """
        try:
            if self._worker is not None:
                self._portal.call(self._stop.set)
                self._worker.result(timeout=30)
            self._portal.call(self.ct.aclose)
        finally:
            self._portal_cm.__exit__(None, None, None)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
