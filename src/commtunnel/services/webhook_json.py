"""The JSON shapes of webhook endpoints, deliveries and attempts (camelCase, UTC timestamps).

One place for them, used by the HTTP routes and by the CLI's ``--json`` output.
"""

from __future__ import annotations

from typing import Any

from commtunnel.domain.events import format_timestamp
from commtunnel.domain.webhooks import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from commtunnel.ports import DeliveryPage
from commtunnel.services.webhooks import EndpointWithSecret


def _ts(value: Any) -> str | None:
    return None if value is None else format_timestamp(value)


def endpoint_wire(endpoint: WebhookEndpoint) -> dict[str, Any]:
    """An endpoint as the API shows it (never its secret)."""
    return {
        "id": endpoint.id,
        "url": endpoint.url,
        "description": endpoint.description,
        "events": None if endpoint.events is None else list(endpoint.events),
        "enabled": endpoint.enabled,
        "disabledAt": _ts(endpoint.disabled_at),
        "disabledReason": endpoint.disabled_reason,
        "failingSince": _ts(endpoint.failing_since),
        "secretRotatedUntil": _ts(endpoint.previous_secret_expires_at),
        "createdAt": _ts(endpoint.created_at),
        "updatedAt": _ts(endpoint.updated_at),
    }


def endpoint_with_secret_wire(created: EndpointWithSecret) -> dict[str, Any]:
    """An endpoint with its ``whsec_`` secret: the answer to creation and rotation only."""
    return {**endpoint_wire(created.endpoint), "secret": created.secret}


def attempt_wire(attempt: WebhookAttempt) -> dict[str, Any]:
    """One attempt of the delivery log."""
    return {
        "number": attempt.number,
        "timestamp": _ts(attempt.started_at),
        "durationMs": attempt.duration_ms,
        "statusCode": attempt.status_code,
        "succeeded": attempt.succeeded,
        "error": attempt.error,
        "responseBody": attempt.response_body,
    }


def delivery_wire(
    delivery: WebhookDelivery, attempts: list[WebhookAttempt] | None = None
) -> dict[str, Any]:
    """One delivery, with its attempts when given."""
    body: dict[str, Any] = {
        "id": delivery.id,
        "endpointId": delivery.endpoint_id,
        "eventId": delivery.event_id,
        "eventType": delivery.event_type,
        "messageId": delivery.message_id,
        "status": str(delivery.status),
        "attemptCount": delivery.attempt_count,
        "nextAttemptAt": _ts(delivery.next_attempt_at),
        "replayOf": delivery.replay_of,
        "lastStatusCode": delivery.last_status_code,
        "lastError": delivery.last_error,
        "createdAt": _ts(delivery.created_at),
        "updatedAt": _ts(delivery.updated_at),
    }
    if attempts is not None:
        body["attempts"] = [attempt_wire(a) for a in attempts]
    return body


def delivery_page_wire(page: DeliveryPage) -> dict[str, Any]:
    """``{data: [...], nextCursor}``; ``nextCursor`` is absent on the last page."""
    body: dict[str, Any] = {"data": [delivery_wire(d, a) for d, a in page.items]}
    if page.next_cursor is not None:
        body["nextCursor"] = page.next_cursor
    return body
