"""Customer webhooks: an organization's endpoints, their secrets and their delivery log.

Every timeline event fans out to a PENDING delivery per matching endpoint in
the transaction that writes the event (see
:class:`~commtunnel.ports.WebhookStorage`);
:class:`~commtunnel.services.webhook_worker.WebhookWorker` delivers them.
Endpoint URLs pass the sender's SSRF guard
(:meth:`~commtunnel.ports.WebhookSender.check_url`) when set, and again
before every attempt.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

import attrs

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
    MAX_DESCRIPTION_LENGTH,
    TEST_EVENT,
    DeliveryStatus,
    WebhookDelivery,
    WebhookEndpoint,
    check_events,
    check_url_shape,
    new_secret,
)
from commtunnel.ids import new_id
from commtunnel.ports import Clock, DeliveryPage, WebhookSender, WebhookStorage
from commtunnel.services.auth import require
from commtunnel.services.channel import check_bool, check_fields, is_int_in

_ENCRYPTED = "enc:"

#: The most deliveries one page of the delivery log holds.
MAX_DELIVERY_PAGE = 100


@attrs.frozen(kw_only=True)
class EndpointWithSecret:
    """An endpoint and its signing secret in clear (creation and rotation only)."""

    endpoint: WebhookEndpoint
    secret: str = attrs.field(repr=False)


_ENDPOINT_FIELDS = ("url", "events", "description", "enabled")


class WebhookService:
    """Manage an organization's webhook endpoints and read their delivery log.

    Args:
        store: endpoints, deliveries and attempts.
        clock: every "now".
        sender: checks URLs (the SSRF guard) before they are stored.
        secret_box: encrypts stored signing secrets; None stores them as
            given (set ``COMMTUNNEL_SECRET_KEY`` in production).
        secret_grace: seconds the previous secret keeps signing after a rotation.
    """

    def __init__(
        self,
        store: WebhookStorage,
        clock: Clock,
        *,
        sender: WebhookSender,
        secret_box: SecretBox | None = None,
        secret_grace: float = 86_400.0,
    ) -> None:
        self._store = store
        self._clock = clock
        self._sender = sender
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

    async def _check_url(self, url: str) -> None:
        """Refuse ``url`` when its host is not an address webhooks may reach.

        Raises:
            WebhookUrlNotAllowedError: with ``details["url"]`` giving the reason.
        """
        reason = await self._sender.check_url(url)
        if reason is not None:
            raise WebhookUrlNotAllowedError(
                f"Webhook URL refused: {reason}. Webhooks go to public addresses only "
                "(operators may set COMMTUNNEL_WEBHOOKS_ALLOW_PRIVATE=true)",
                details={"url": reason},
            )

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
        await self._check_url(values["url"])
        now = self._clock.now()
        secret = new_secret()
        enabled = values.get("enabled", True)
        endpoint = WebhookEndpoint(
            id=new_id(),
            org_id=principal.org_id,
            url=values["url"],
            description=values.get("description", ""),
            events=values.get("events"),
            enabled=enabled,
            secret=self._seal(secret),
            disabled_at=None if enabled else now,
            disabled_reason=None if enabled else "manual",
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
            raise _endpoint_not_found(endpoint_id)
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
            await self._check_url(values["url"])
        changes: dict[str, Any] = {
            k: v for k, v in values.items() if k in {"url", "events", "description"}
        }
        enabled = values.get("enabled", endpoint.enabled)
        if enabled and not endpoint.enabled:
            changes.update(enabled=True, disabled_at=None, disabled_reason=None, failing_since=None)
        elif not enabled and endpoint.enabled:
            changes.update(enabled=False, disabled_at=self._clock.now(), disabled_reason="manual")
        # Only the fields asked for are written: a rotation or a disable by the
        # worker that lands meanwhile is kept.
        updated = await self._store.update_endpoint(
            principal.org_id, endpoint_id, changes, self._clock.now()
        )
        if updated is None:
            raise _endpoint_not_found(endpoint_id)
        return updated

    async def delete(self, principal: Principal, endpoint_id: str) -> None:
        """Delete an endpoint with its delivery log (``DELETE``).

        Raises:
            InsufficientScopeError: the key lacks ``webhooks:manage``.
            NotFoundError: no such endpoint.
        """
        require(principal, Scope.WEBHOOKS_MANAGE)
        if not await self._store.delete_endpoint(principal.org_id, endpoint_id):
            raise _endpoint_not_found(endpoint_id)

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
        require(principal, Scope.WEBHOOKS_MANAGE)
        now = self._clock.now()
        secret = new_secret()
        rotated = await self._store.rotate_secret(
            principal.org_id,
            endpoint_id,
            secret=self._seal(secret),
            previous_until=now + timedelta(seconds=self._grace),
            at=now,
        )
        if rotated is None:
            raise _endpoint_not_found(endpoint_id)
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
        if not is_int_in(limit, 1, MAX_DELIVERY_PAGE):
            raise ValidationError.from_fields(
                {"limit": f"must be an integer from 1 to {MAX_DELIVERY_PAGE}"}
            )
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


def _endpoint_not_found(endpoint_id: str) -> NotFoundError:
    return NotFoundError("Webhook endpoint not found", details={"id": endpoint_id})


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
