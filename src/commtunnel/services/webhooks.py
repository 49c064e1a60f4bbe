"""Customer webhooks: endpoint management and the worker that delivers events.

Every timeline event fans out to a PENDING delivery per matching endpoint in
the transaction that writes the event (see
:class:`~commtunnel.ports.WebhookStorage`), so a crash between the commit and
the POST loses nothing: :class:`WebhookWorker` leases due deliveries, POSTs
them signed per Standard Webhooks, and records each attempt.

Outcomes of one attempt (the issue's contract, after Svix's behaviour):

* 2xx: SUCCEEDED; the endpoint is healthy again.
* 410 Gone: FAILED, and the endpoint is disabled at once.
* 3xx (redirects are not followed), any other status, a timeout or a
  connection error: retried on the schedule (``COMMTUNNEL_WEBHOOK_RETRY_SCHEDULE``)
  with ±10 % jitter; 429/502/504 with ``Retry-After`` wait that long instead.
  Once the schedule is used up the delivery is FAILED. When an endpoint has
  failed without a single success for ``COMMTUNNEL_WEBHOOK_DISABLE_AFTER``
  seconds it is disabled and an ``endpoint_disabled`` event is recorded.

SSRF guard: a URL whose host resolves to a non-public address is refused at
creation, and every attempt checks again (DNS may have changed), unless the
operator allows private addresses.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import random
import socket
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from importlib.metadata import PackageNotFoundError, version
from typing import Any
from urllib.parse import urlsplit

import attrs
import httpx
from standardwebhooks.webhooks import Webhook

from commtunnel.crypto import SecretBox
from commtunnel.domain.errors import (
    ConflictError,
    InternalError,
    NotFoundError,
    ValidationError,
    WebhookUrlNotAllowedError,
)
from commtunnel.domain.events import format_timestamp
from commtunnel.domain.keys import Principal, Scope
from commtunnel.domain.webhooks import (
    DEFAULT_RETRY_SCHEDULE,
    ENDPOINT_DISABLED_EVENT,
    MAX_DESCRIPTION_LENGTH,
    RESPONSE_BODY_LIMIT,
    RETRY_AFTER_STATUSES,
    TEST_EVENT,
    DeliveryStatus,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    check_events,
    check_url_shape,
    event_payload,
    new_secret,
    next_delay,
    parse_retry_after,
    refused_address,
    signature_header,
)
from commtunnel.ids import new_id
from commtunnel.ports import (
    ClaimedDelivery,
    Clock,
    DeliveryCompletion,
    DeliveryPage,
    WebhookStorage,
)
from commtunnel.services.auth import require
from commtunnel.services.channel import check_bool, check_fields, is_int_in
from commtunnel.services.timeline import org_event

log = logging.getLogger("commtunnel.webhooks")

_ENCRYPTED = "enc:"
try:
    USER_AGENT = f"Commtunnel-Webhooks/{version('commtunnel')}"
except PackageNotFoundError:  # running from a source tree that was never installed
    USER_AGENT = "Commtunnel-Webhooks"

Resolve = Callable[[str, int], Awaitable[list[str]]]
"""``(host, port) -> addresses``: how the guard looks a host up (injectable in tests)."""


async def system_resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to, with the system resolver.

    Raises:
        OSError: the name does not resolve.
    """
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


class UrlGuard:
    """Decides whether a webhook may be sent to a URL (the SSRF guard).

    Args:
        allow_private: ``COMMTUNNEL_WEBHOOKS_ALLOW_PRIVATE``: skip the address
            check (the URL's shape is still checked).
        resolve: host lookup (the system resolver by default).
    """

    def __init__(self, *, allow_private: bool = False, resolve: Resolve = system_resolve) -> None:
        self.allow_private = allow_private
        self._resolve = resolve

    async def refusal(self, url: str) -> str | None:
        """Why ``url`` may not be reached now, or None when it may.

        Every address the host resolves to must be public: one private answer
        is enough to refuse (an attacker controls which one a client picks).
        """
        if self.allow_private:
            return None
        parts = urlsplit(url)
        host = (parts.hostname or "").strip("[]")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            addresses = [str(ipaddress.ip_address(host))]  # a literal address needs no lookup
        except ValueError:
            addresses = []
        try:
            addresses = addresses or await self._resolve(host, port)
        except OSError as exc:
            return f"host {host!r} does not resolve ({exc.strerror or exc})"
        if not addresses:
            return f"host {host!r} does not resolve"
        for address in addresses:
            reason = refused_address(address)
            if reason is not None:
                return f"{host} resolves to a {reason}"
        return None

    async def check(self, url: str) -> None:
        """Refuse ``url`` if its host is not public.

        Raises:
            WebhookUrlNotAllowedError: with ``details["url"]`` giving the reason.
        """
        reason = await self.refusal(url)
        if reason is not None:
            raise WebhookUrlNotAllowedError(
                f"Webhook URL refused: {reason}. Webhooks go to public addresses only "
                "(operators may set COMMTUNNEL_WEBHOOKS_ALLOW_PRIVATE=true)",
                details={"url": reason},
            )


@attrs.frozen(kw_only=True)
class EndpointWithSecret:
    """An endpoint and its signing secret in clear (creation and rotation only)."""

    endpoint: WebhookEndpoint
    secret: str


_ENDPOINT_FIELDS = ("url", "events", "description", "enabled")


class WebhookService:
    """Manage an organization's webhook endpoints and read their delivery log.

    Args:
        store: endpoints, deliveries and attempts.
        clock: every "now".
        guard: the SSRF guard for URLs.
        secret_box: encrypts stored signing secrets; None stores them as
            given (set ``COMMTUNNEL_SECRET_KEY`` in production).
        secret_grace: seconds the previous secret keeps signing after a rotation.
    """

    def __init__(
        self,
        store: WebhookStorage,
        clock: Clock,
        *,
        guard: UrlGuard,
        secret_box: SecretBox | None = None,
        secret_grace: float = 86_400.0,
    ) -> None:
        self._store = store
        self._clock = clock
        self._guard = guard
        self._box = secret_box
        self._grace = secret_grace

    # ------------------------------------------------------------------ secrets

    def _seal(self, secret: str) -> str:
        return secret if self._box is None else _ENCRYPTED + self._box.encrypt(secret)

    def _open(self, stored: str) -> str:
        if not stored.startswith(_ENCRYPTED):
            return stored
        if self._box is None:
            raise InternalError(
                "A webhook secret is stored encrypted but COMMTUNNEL_SECRET_KEY is not set"
            )
        return self._box.decrypt(stored.removeprefix(_ENCRYPTED))

    def signing_secrets(self, endpoint: WebhookEndpoint, now: datetime) -> list[str]:
        """The secrets that sign a request to ``endpoint`` at ``now``: the current one,
        and the previous one while its rotation grace period lasts.

        Raises:
            InternalError: a secret cannot be decrypted (the server key changed).
        """
        secrets_ = [self._open(endpoint.secret)]
        expires = endpoint.previous_secret_expires_at
        if endpoint.previous_secret is not None and expires is not None and now < expires:
            secrets_.append(self._open(endpoint.previous_secret))
        return secrets_

    # ------------------------------------------------------------------ endpoints

    async def create(self, principal: Principal, payload: Mapping[str, Any]) -> EndpointWithSecret:
        """Register an endpoint (``POST /v1/public/webhooks``).

        Args:
            payload: ``url`` (required), ``events`` (list of event types; omitted
                or null: every event), ``description``, ``enabled`` (default true).

        Returns:
            The endpoint and its new ``whsec_`` secret, shown this once.

        Raises:
            InsufficientScopeError: the key lacks ``webhooks:manage``.
            ValidationError: unknown fields or bad values (every problem at once).
            WebhookUrlNotAllowedError: the host is not a public address.
        """
        require(principal, Scope.WEBHOOKS_MANAGE)
        values = self._checked(payload, required_url=True)
        await self._guard.check(values["url"])
        now = self._clock.now()
        secret = new_secret()
        endpoint = WebhookEndpoint(
            id=new_id(),
            org_id=principal.org_id,
            url=values["url"],
            description=values.get("description", ""),
            events=values.get("events"),
            enabled=values.get("enabled", True),
            secret=self._seal(secret),
            disabled_at=None if values.get("enabled", True) else now,
            disabled_reason=None if values.get("enabled", True) else "manual",
            created_at=now,
            updated_at=now,
        )
        await self._store.create_endpoint(endpoint)
        return EndpointWithSecret(endpoint=endpoint, secret=secret)

    def _checked(self, payload: Mapping[str, Any], *, required_url: bool) -> dict[str, Any]:
        """The endpoint fields present in ``payload``, each checked."""
        unknown = sorted(set(payload) - set(_ENDPOINT_FIELDS))
        if unknown:
            raise ValidationError.from_fields(dict.fromkeys(unknown, "unknown field"))
        if not required_url and not payload:
            raise ValidationError.from_fields(
                {"url": f"give at least one of {', '.join(_ENDPOINT_FIELDS)}"}
            )
        checks: dict[str, Callable[[], Any]] = {}
        if required_url or "url" in payload:
            checks["url"] = lambda: check_url_shape(payload.get("url"))
        if "events" in payload:
            checks["events"] = lambda: check_events(payload["events"])
        if "description" in payload:
            checks["description"] = lambda: _check_description(payload["description"])
        if "enabled" in payload:
            checks["enabled"] = lambda: check_bool(payload["enabled"], "enabled")
        return dict(zip(checks, check_fields(*checks.values()), strict=True))

    async def list_endpoints(self, principal: Principal) -> list[WebhookEndpoint]:
        """Every endpoint of the organization, oldest first (``GET /v1/public/webhooks``).

        Raises:
            InsufficientScopeError: the key lacks ``webhooks:manage``.
        """
        require(principal, Scope.WEBHOOKS_MANAGE)
        return await self._store.list_endpoints(principal.org_id)

    async def get(self, principal: Principal, endpoint_id: str) -> WebhookEndpoint:
        """One endpoint (``GET /v1/public/webhooks/{id}``), without its secret.

        Raises:
            InsufficientScopeError: the key lacks ``webhooks:manage``.
            NotFoundError: no such endpoint in the organization.
        """
        require(principal, Scope.WEBHOOKS_MANAGE)
        endpoint = await self._store.get_endpoint(principal.org_id, endpoint_id)
        if endpoint is None:
            raise NotFoundError("Webhook endpoint not found", details={"id": endpoint_id})
        return endpoint

    async def update(
        self, principal: Principal, endpoint_id: str, payload: Mapping[str, Any]
    ) -> WebhookEndpoint:
        """Change ``url``, ``events``, ``description`` and/or ``enabled`` (``PATCH``).

        Re-enabling clears the disable reason and the failure streak, so the
        automatic disable starts counting afresh.

        Raises:
            InsufficientScopeError: the key lacks ``webhooks:manage``.
            NotFoundError: no such endpoint.
            ValidationError: no field, unknown fields or bad values.
            WebhookUrlNotAllowedError: a new URL's host is not public.
        """
        endpoint = await self.get(principal, endpoint_id)
        values = self._checked(payload, required_url=False)
        if "url" in values and values["url"] != endpoint.url:
            await self._guard.check(values["url"])
        now = self._clock.now()
        changes: dict[str, Any] = {
            k: v for k, v in values.items() if k in {"url", "events", "description"}
        }
        enabled = values.get("enabled", endpoint.enabled)
        if enabled and not endpoint.enabled:
            changes.update(enabled=True, disabled_at=None, disabled_reason=None, failing_since=None)
        elif not enabled and endpoint.enabled:
            changes.update(enabled=False, disabled_at=now, disabled_reason="manual")
        updated = attrs.evolve(endpoint, updated_at=now, **changes)
        if not await self._store.update_endpoint(updated):
            raise NotFoundError("Webhook endpoint not found", details={"id": endpoint_id})
        return updated

    async def delete(self, principal: Principal, endpoint_id: str) -> None:
        """Delete an endpoint with its delivery log (``DELETE``).

        Raises:
            InsufficientScopeError: the key lacks ``webhooks:manage``.
            NotFoundError: no such endpoint.
        """
        require(principal, Scope.WEBHOOKS_MANAGE)
        if not await self._store.delete_endpoint(principal.org_id, endpoint_id):
            raise NotFoundError("Webhook endpoint not found", details={"id": endpoint_id})

    async def rotate_secret(self, principal: Principal, endpoint_id: str) -> EndpointWithSecret:
        """Give the endpoint a new secret; the old one keeps signing for the grace period.

        During the grace period every request carries two signatures (old and
        new, Standard Webhooks' space-separated ``webhook-signature``), so a
        receiver verifies with either while it switches.

        Returns:
            The endpoint and its new secret, shown this once.

        Raises:
            InsufficientScopeError: the key lacks ``webhooks:manage``.
            NotFoundError: no such endpoint.
        """
        endpoint = await self.get(principal, endpoint_id)
        now = self._clock.now()
        secret = new_secret()
        rotated = attrs.evolve(
            endpoint,
            secret=self._seal(secret),
            previous_secret=endpoint.secret,
            previous_secret_expires_at=now + timedelta(seconds=self._grace),
            updated_at=now,
        )
        if not await self._store.update_endpoint(rotated):
            raise NotFoundError("Webhook endpoint not found", details={"id": endpoint_id})
        return EndpointWithSecret(endpoint=rotated, secret=secret)

    # ------------------------------------------------------------------ delivery log

    async def deliveries(
        self,
        principal: Principal,
        *,
        endpoint_id: str | None = None,
        message_id: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> DeliveryPage:
        """Deliveries newest first with their attempts, by endpoint and/or message.

        Args:
            limit: 1-100 deliveries per page.
            cursor: the previous page's ``next_cursor``.

        Raises:
            InsufficientScopeError: the key lacks ``webhooks:manage``.
            NotFoundError: ``endpoint_id`` names no endpoint of the organization.
            ValidationError: ``limit`` out of range, or a ``cursor`` no page gave.
        """
        require(principal, Scope.WEBHOOKS_MANAGE)
        if not is_int_in(limit, 1, 100):
            raise ValidationError.from_fields({"limit": "must be an integer from 1 to 100"})
        if cursor is not None and not _is_uuid(cursor):
            raise ValidationError.from_fields({"cursor": "not a cursor from a previous page"})
        if endpoint_id is not None:
            await self.get(principal, endpoint_id)
        return await self._store.list_deliveries(
            principal.org_id,
            endpoint_id=endpoint_id,
            message_id=message_id,
            limit=limit,
            before=cursor,
        )

    async def _enabled_endpoint(self, principal: Principal, endpoint_id: str) -> WebhookEndpoint:
        endpoint = await self.get(principal, endpoint_id)
        if not endpoint.enabled:
            raise ConflictError(
                "The endpoint is disabled; enable it (PATCH enabled=true) first",
                details={"id": endpoint_id, "disabledReason": endpoint.disabled_reason},
            )
        return endpoint

    async def replay(self, principal: Principal, delivery_id: str) -> WebhookDelivery:
        """Send a delivery's event to its endpoint again, as a new delivery.

        The replay carries the same event id (``webhook-id``), so a receiver
        that already processed it can recognise the duplicate.

        Raises:
            InsufficientScopeError: the key lacks ``webhooks:manage``.
            NotFoundError: no such delivery (or its endpoint was deleted).
            ConflictError: the endpoint is disabled.
        """
        require(principal, Scope.WEBHOOKS_MANAGE)
        original = await self._store.get_delivery(principal.org_id, delivery_id)
        if original is None:
            raise NotFoundError("Webhook delivery not found", details={"id": delivery_id})
        await self._enabled_endpoint(principal, original.endpoint_id)
        now = self._clock.now()
        replay = attrs.evolve(
            original,
            id=new_id(),
            status=DeliveryStatus.PENDING,
            attempt_count=0,
            next_attempt_at=now,
            replay_of=original.id,
            last_status_code=None,
            last_error=None,
            created_at=now,
            updated_at=now,
        )
        await self._store.add_delivery(replay)
        return replay

    async def send_test(self, principal: Principal, endpoint_id: str) -> WebhookDelivery:
        """Queue a ``webhook.test`` event for one endpoint, whatever its filter.

        Raises:
            InsufficientScopeError: the key lacks ``webhooks:manage``.
            NotFoundError: no such endpoint.
            ConflictError: the endpoint is disabled.
        """
        endpoint = await self._enabled_endpoint(principal, endpoint_id)
        now = self._clock.now()
        event_id = new_id()
        body = {
            "type": TEST_EVENT,
            "id": event_id,
            "createdAt": format_timestamp(now),
            "data": {"endpointId": endpoint.id, "message": "A test event from Commtunnel"},
        }
        delivery = WebhookDelivery(
            id=new_id(),
            endpoint_id=endpoint.id,
            org_id=endpoint.org_id,
            event_id=event_id,
            event_type=TEST_EVENT,
            payload=json.dumps(body, separators=(",", ":")),
            next_attempt_at=now,
            created_at=now,
            updated_at=now,
        )
        await self._store.add_delivery(delivery)
        return delivery


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _check_description(value: Any) -> str:
    if not isinstance(value, str) or len(value) > MAX_DESCRIPTION_LENGTH:
        raise ValidationError.from_fields(
            {"description": f"must be a string of at most {MAX_DESCRIPTION_LENGTH} characters"}
        )
    return value


# --------------------------------------------------------------------------- the worker


@attrs.frozen(kw_only=True)
class _Answer:
    status_code: int | None
    body: str
    error: str | None
    retry_after: str | None = None


class WebhookWorker:
    """Leases due deliveries, POSTs them signed, and records every attempt.

    Args:
        store: where deliveries are claimed and results recorded.
        service: reads signing secrets (and decrypts them).
        clock: every "now" (the ``webhook-timestamp`` too).
        guard: the SSRF guard, checked again before every attempt.
        schedule: seconds before each attempt (see
            :func:`~commtunnel.domain.webhooks.parse_retry_schedule`).
        timeout: seconds one POST may take (connect + answer).
        disable_after: seconds of failure without a success before the
            endpoint is disabled.
        lease_seconds: a claimed delivery's lease (longer than ``timeout``).
        concurrency: POSTs in flight at once.
        transport: an httpx transport (tests); the default opens real connections.
        rng: jitter source (seed it in tests).
    """

    def __init__(
        self,
        store: WebhookStorage,
        service: WebhookService,
        clock: Clock,
        *,
        guard: UrlGuard,
        schedule: tuple[float, ...] = DEFAULT_RETRY_SCHEDULE,
        timeout: float = 15.0,
        disable_after: float = 5 * 86_400.0,
        lease_seconds: float = 60.0,
        concurrency: int = 16,
        transport: httpx.AsyncBaseTransport | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if timeout >= lease_seconds:
            raise ValueError("the webhook timeout must be shorter than the lease")
        self._store = store
        self._service = service
        self._clock = clock
        self._guard = guard
        self._schedule = schedule
        self._timeout = timeout
        self._disable_after = timedelta(seconds=disable_after)
        self._lease_seconds = lease_seconds
        self._concurrency = concurrency
        self._rng = rng or random.Random()
        self._http = httpx.AsyncClient(
            transport=transport,
            follow_redirects=False,
            timeout=httpx.Timeout(timeout),
            headers={"user-agent": USER_AGENT},
            trust_env=False,  # a proxy from the environment would bypass the SSRF guard
        )
        self._wake = asyncio.Event()

    async def aclose(self) -> None:
        """Close the HTTP connection pool."""
        await self._http.aclose()

    def notify(self) -> None:
        """Wake :meth:`run` now (new deliveries were written in this process)."""
        self._wake.set()

    # ------------------------------------------------------------------ one attempt

    def _body(self, claimed: ClaimedDelivery) -> str | None:
        delivery, event = claimed.delivery, claimed.event
        if delivery.payload is not None:
            return delivery.payload
        if event is None:
            return None
        channel = event.channel
        body = event_payload(
            event_id=event.id,
            event_type=event.type,
            created_at=format_timestamp(event.created_at),
            message_id=event.message_id,
            channel=None if channel is None else str(channel),
            status=None if event.status is None else str(event.status),
            to=claimed.recipient,
            details=event.details,
        )
        return json.dumps(body, separators=(",", ":"))

    def _headers(self, claimed: ClaimedDelivery, body: str, now: datetime) -> dict[str, str]:
        """Standard Webhooks headers: the id, the Unix timestamp, one signature per secret."""
        msg_id = claimed.delivery.event_id
        timestamp = now.astimezone(UTC)
        signatures = [
            Webhook(secret).sign(msg_id, timestamp, body)
            for secret in self._service.signing_secrets(claimed.endpoint, now)
        ]
        return {
            "content-type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(timestamp.timestamp())),
            "webhook-signature": signature_header(signatures),
        }

    async def _post(self, url: str, body: str, headers: dict[str, str]) -> _Answer:
        """POST and read at most :data:`RESPONSE_BODY_LIMIT` bytes of the answer."""
        try:
            async with asyncio.timeout(self._timeout):
                async with self._http.stream(
                    "POST", url, content=body.encode("utf-8"), headers=headers
                ) as response:
                    kept = bytearray()
                    async for chunk in response.aiter_raw():
                        kept += chunk
                        if len(kept) >= RESPONSE_BODY_LIMIT:
                            break
                    text = bytes(kept[:RESPONSE_BODY_LIMIT]).decode("utf-8", "replace")
                    code = response.status_code
                    error = None if 200 <= code < 300 else f"HTTP {code}"
                    return _Answer(
                        status_code=code,
                        body=text,
                        error=error,
                        retry_after=response.headers.get("retry-after"),
                    )
        except (TimeoutError, httpx.TimeoutException):
            return _Answer(status_code=None, body="", error=f"timeout after {self._timeout:g} s")
        except httpx.HTTPError as exc:
            return _Answer(status_code=None, body="", error=f"{type(exc).__name__}: {exc}"[:500])

    async def attempt(self, claimed: ClaimedDelivery) -> DeliveryCompletion:
        """Make one attempt of a claimed delivery and decide what follows (not yet recorded)."""
        endpoint = claimed.endpoint
        started = self._clock.now()
        t0 = self._clock.monotonic()
        body = self._body(claimed)
        answer: _Answer
        final_reason: str | None = None
        if not endpoint.enabled:
            final_reason = "endpoint disabled"
        elif body is None:
            final_reason = "the event no longer exists"
        if final_reason is not None:
            answer = _Answer(status_code=None, body="", error=final_reason)
        else:
            assert body is not None
            refused = await self._guard.refusal(endpoint.url)
            if refused is not None:
                answer = _Answer(status_code=None, body="", error=f"refused: {refused}")
            else:
                answer = await self._post(endpoint.url, body, self._headers(claimed, body, started))
        attempt = WebhookAttempt(
            delivery_id=claimed.delivery.id,
            number=claimed.delivery.attempt_count + 1,
            started_at=started,
            duration_ms=round((self._clock.monotonic() - t0) * 1000, 3),
            status_code=answer.status_code,
            succeeded=answer.error is None,
            error=answer.error,
            response_body=answer.body,
        )
        if final_reason is not None:
            return DeliveryCompletion(
                claimed=claimed,
                attempt=attempt,
                status=DeliveryStatus.FAILED,
                last_error=final_reason,
                endpoint_failing_since=endpoint.failing_since,
            )
        return self._decide(claimed, attempt, answer)

    def _decide(
        self, claimed: ClaimedDelivery, attempt: WebhookAttempt, answer: _Answer
    ) -> DeliveryCompletion:
        endpoint, now = claimed.endpoint, attempt.started_at
        if attempt.succeeded:
            return DeliveryCompletion(
                claimed=claimed, attempt=attempt, status=DeliveryStatus.SUCCEEDED
            )
        failing_since = endpoint.failing_since or now
        if answer.status_code == 410:
            return self._disable(claimed, attempt, failing_since, "gone")
        if now - failing_since >= self._disable_after:
            return self._disable(claimed, attempt, failing_since, "failing")
        retry_after = None
        if answer.status_code in RETRY_AFTER_STATUSES:
            retry_after = parse_retry_after(answer.retry_after, now)
        delay = next_delay(self._schedule, attempt.number, retry_after=retry_after, rng=self._rng)
        if delay is None:
            return DeliveryCompletion(
                claimed=claimed,
                attempt=attempt,
                status=DeliveryStatus.FAILED,
                last_error=answer.error,
                endpoint_failing_since=failing_since,
            )
        return DeliveryCompletion(
            claimed=claimed,
            attempt=attempt,
            status=DeliveryStatus.PENDING,
            next_attempt_at=now + timedelta(seconds=delay),
            last_error=answer.error,
            endpoint_failing_since=failing_since,
        )

    def _disable(
        self,
        claimed: ClaimedDelivery,
        attempt: WebhookAttempt,
        failing_since: datetime,
        reason: str,
    ) -> DeliveryCompletion:
        endpoint = claimed.endpoint
        event = org_event(
            endpoint.org_id,
            ENDPOINT_DISABLED_EVENT,
            at=attempt.started_at,
            details={
                "endpointId": endpoint.id,
                "url": endpoint.url,
                "reason": reason,
                "failingSince": format_timestamp(failing_since),
                "lastError": attempt.error,
            },
        )
        return DeliveryCompletion(
            claimed=claimed,
            attempt=attempt,
            status=DeliveryStatus.FAILED,
            last_error=attempt.error,
            endpoint_failing_since=failing_since,
            disable_endpoint=reason,
            disabled_event=event,
        )

    async def process(self, claimed: ClaimedDelivery) -> bool:
        """Attempt one claimed delivery and record the result; False if the lease was lost."""
        try:
            completion = await self.attempt(claimed)
        except Exception as exc:  # e.g. a secret that no longer decrypts: retried later
            log.exception("webhook delivery %s could not be attempted", claimed.delivery.id)
            completion = self._decide(
                claimed,
                WebhookAttempt(
                    delivery_id=claimed.delivery.id,
                    number=claimed.delivery.attempt_count + 1,
                    started_at=self._clock.now(),
                    duration_ms=0.0,
                    status_code=None,
                    succeeded=False,
                    error=f"{type(exc).__name__}: {getattr(exc, 'message', exc)}"[:500],
                ),
                _Answer(status_code=None, body="", error="internal error"),
            )
        recorded = await self._store.complete_delivery(completion)
        if not recorded:
            log.warning("lease lost for webhook delivery %s", claimed.delivery.id)
        return recorded

    # ------------------------------------------------------------------ loops

    async def run_once(self) -> int:
        """Claim one batch of due deliveries and attempt them concurrently; returns how many."""
        claimed = await self._store.claim_deliveries(
            now=self._clock.now(), limit=self._concurrency, lease_seconds=self._lease_seconds
        )
        if claimed:
            await asyncio.gather(*(self.process(c) for c in claimed))
        return len(claimed)

    async def run_until_idle(self, *, max_batches: int = 10_000) -> int:
        """Attempt batches until nothing is due at the clock's current time; returns the total."""
        total = 0
        for _ in range(max_batches):
            done = await self.run_once()
            if done == 0:
                break
            total += done
        return total

    async def run(self, stop: asyncio.Event, *, poll_interval: float = 0.5) -> None:
        """Deliver until ``stop`` is set.

        Sleeps until the earliest due delivery, at most ``poll_interval``
        seconds (deliveries written by other processes are found by polling),
        or until :meth:`notify`.
        """
        while not stop.is_set():
            try:
                done = await self.run_once()
            except Exception:  # the database may be briefly unavailable
                log.exception("webhook delivery batch failed; retrying")
                done = 0
            if done:
                continue
            wait = poll_interval
            try:
                due = await self._store.next_delivery_at()
            except Exception:
                due = None
            if due is not None:
                wait = min(wait, max(0.0, (due - self._clock.now()).total_seconds()))
            self._wake.clear()
            stopper = asyncio.ensure_future(stop.wait())
            waker = asyncio.ensure_future(self._wake.wait())
            await asyncio.wait({stopper, waker}, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            waker.cancel()
