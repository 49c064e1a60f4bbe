"""``commtunnel webhooks``: an organization's webhook endpoints and their delivery log.

The same operations as ``/v1/public/webhooks``, through the same service,
acting as the ``--org`` organization; ``--json`` prints the API's shapes.
The signing secret is printed only by ``create`` and ``rotate-secret``.
"""

from __future__ import annotations

from typing import Any

import click

from commtunnel.cli._support import (
    acting_for,
    converter,
    db_option,
    iso,
    json_option,
    listing,
    org_option,
    record_json,
    report,
    run_for_org,
)
from commtunnel.domain.webhooks import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from commtunnel.services.webhooks import MAX_DELIVERY_PAGE
from commtunnel.shapes import delivery_json, endpoint_with_secret_json


@click.group(short_help="Customer webhook endpoints and deliveries.")
def webhooks() -> None:
    """Webhook endpoints (URL, event filter, signing secret) and their delivery log."""


def _events(value: str | None) -> list[str] | None:
    """``--events a,b`` as a list; ``all`` (or nothing) means every event."""
    if value is None or value.strip().lower() == "all":
        return None
    return [part.strip() for part in value.split(",") if part.strip()]


def _endpoint_json(endpoint: WebhookEndpoint) -> dict[str, Any]:
    """The endpoint as the API shows it (never its secret)."""
    return record_json(endpoint, WebhookEndpoint)


def _endpoint_row(e: WebhookEndpoint) -> tuple[str, ...]:
    return (
        e.id,
        "enabled" if e.enabled else f"disabled ({e.disabled_reason})",
        ",".join(e.events) if e.events is not None else "all",
        e.url,
    )


_ENDPOINT_HEADERS = ("ID", "STATE", "EVENTS", "URL")


@webhooks.command("create")
@org_option
@click.argument("url")
@click.option("--events", default=None, help="Event types, comma-separated (default: all).")
@click.option("--description", default=None, help="Free text shown with the endpoint.")
@click.option("--disabled", is_flag=True, help="Create it disabled.")
@db_option
@json_option
def create(
    org_name: str,
    url: str,
    events: str | None,
    description: str | None,
    disabled: bool,
    db: str | None,
    as_json: bool,
) -> None:
    """Register URL; prints the whsec_ signing secret (shown this once)."""
    payload: dict[str, Any] = {"url": url, "events": _events(events)}
    if description is not None:
        payload["description"] = description
    if disabled:
        payload["enabled"] = False
    created = run_for_org(
        db, org_name, lambda ct, org: ct.webhooks.create(acting_for(org), payload)
    )
    report(
        as_json,
        endpoint_with_secret_json(converter(), created),
        f"{created.endpoint.id}\nsecret: {created.secret}  (shown once: store it now)",
    )


@webhooks.command("list")
@org_option
@db_option
@json_option
def list_(org_name: str, db: str | None, as_json: bool) -> None:
    """List the organization's endpoints, oldest first."""
    listing(
        run_for_org(db, org_name, lambda ct, org: ct.webhooks.list_endpoints(acting_for(org))),
        as_json=as_json,
        to_json=_endpoint_json,
        headers=_ENDPOINT_HEADERS,
        row=_endpoint_row,
    )


@webhooks.command("get")
@org_option
@click.argument("endpoint_id")
@db_option
@json_option
def get(org_name: str, endpoint_id: str, db: str | None, as_json: bool) -> None:
    """Show one endpoint (without its secret)."""
    endpoint = run_for_org(
        db, org_name, lambda ct, org: ct.webhooks.get(acting_for(org), endpoint_id)
    )
    report(as_json, _endpoint_json(endpoint), "  ".join(_endpoint_row(endpoint)))


@webhooks.command("update")
@org_option
@click.argument("endpoint_id")
@click.option("--url", default=None, help="A new URL.")
@click.option("--events", default=None, help="Event types, comma-separated, or 'all'.")
@click.option("--description", default=None, help="New description.")
@click.option("--enable/--disable", "enabled", default=None, help="Turn it on or off.")
@db_option
@json_option
def update(
    org_name: str,
    endpoint_id: str,
    url: str | None,
    events: str | None,
    description: str | None,
    enabled: bool | None,
    db: str | None,
    as_json: bool,
) -> None:
    """Change an endpoint; only the options given change."""
    payload: dict[str, Any] = {}
    if url is not None:
        payload["url"] = url
    if events is not None:
        payload["events"] = _events(events)
    if description is not None:
        payload["description"] = description
    if enabled is not None:
        payload["enabled"] = enabled
    if not payload:
        raise click.UsageError(
            "give at least one of --url, --events, --description, --enable/--disable"
        )
    endpoint = run_for_org(
        db, org_name, lambda ct, org: ct.webhooks.update(acting_for(org), endpoint_id, payload)
    )
    report(as_json, _endpoint_json(endpoint), "  ".join(_endpoint_row(endpoint)))


@webhooks.command("delete")
@org_option
@click.argument("endpoint_id")
@db_option
@json_option
def delete(org_name: str, endpoint_id: str, db: str | None, as_json: bool) -> None:
    """Delete an endpoint and its delivery log."""
    run_for_org(db, org_name, lambda ct, org: ct.webhooks.delete(acting_for(org), endpoint_id))
    report(as_json, {"id": endpoint_id, "deleted": True}, f"deleted {endpoint_id}")


@webhooks.command("rotate-secret")
@org_option
@click.argument("endpoint_id")
@db_option
@json_option
def rotate_secret(org_name: str, endpoint_id: str, db: str | None, as_json: bool) -> None:
    """Give the endpoint a new secret; the old one keeps signing for the grace period."""
    rotated = run_for_org(
        db, org_name, lambda ct, org: ct.webhooks.rotate_secret(acting_for(org), endpoint_id)
    )
    until = iso(rotated.endpoint.previous_secret_expires_at)
    report(
        as_json,
        endpoint_with_secret_json(converter(), rotated),
        f"secret: {rotated.secret}  (the previous secret also signs until {until})",
    )


def _delivery_row(item: tuple[WebhookDelivery, list[WebhookAttempt]]) -> tuple[str, ...]:
    delivery, attempts = item
    last = attempts[-1] if attempts else None
    outcome = "-" if last is None else (str(last.status_code) if last.status_code else "-")
    return (
        delivery.id,
        delivery.event_type,
        str(delivery.status),
        str(delivery.attempt_count),
        outcome,
        iso(delivery.next_attempt_at) or "-",
        delivery.last_error or "",
    )


@webhooks.command("deliveries")
@org_option
@click.option("--endpoint", "endpoint_id", default=None, help="One endpoint's deliveries.")
@click.option("--message", "message_id", default=None, help="One message's deliveries.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, MAX_DELIVERY_PAGE))
@db_option
@json_option
def deliveries(
    org_name: str,
    endpoint_id: str | None,
    message_id: str | None,
    limit: int,
    db: str | None,
    as_json: bool,
) -> None:
    """The latest deliveries, newest first, with their attempts (in --json)."""
    page = run_for_org(
        db,
        org_name,
        lambda ct, org: ct.webhooks.deliveries(
            acting_for(org), endpoint_id=endpoint_id, message_id=message_id, limit=limit
        ),
    )
    listing(
        page.items,
        as_json=as_json,
        to_json=lambda item: delivery_json(converter(), *item),
        headers=("ID", "EVENT", "STATUS", "ATTEMPTS", "LAST", "NEXT", "ERROR"),
        row=_delivery_row,
    )


@webhooks.command("replay")
@org_option
@click.argument("delivery_id")
@db_option
@json_option
def replay(org_name: str, delivery_id: str, db: str | None, as_json: bool) -> None:
    """Send a delivery's event again (a new delivery; the worker sends it)."""
    delivery = run_for_org(
        db, org_name, lambda ct, org: ct.webhooks.replay(acting_for(org), delivery_id)
    )
    report(as_json, delivery_json(converter(), delivery), f"queued replay {delivery.id}")


@webhooks.command("test")
@org_option
@click.argument("endpoint_id")
@db_option
@json_option
def test(org_name: str, endpoint_id: str, db: str | None, as_json: bool) -> None:
    """Queue a webhook.test event for the endpoint (the worker sends it)."""
    delivery = run_for_org(
        db, org_name, lambda ct, org: ct.webhooks.send_test(acting_for(org), endpoint_id)
    )
    report(as_json, delivery_json(converter(), delivery), f"queued test event {delivery.event_id}")
