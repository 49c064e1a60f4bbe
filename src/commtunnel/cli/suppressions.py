"""``commtunnel suppressions``: the email suppression list and the email events webhook token.

The commands act as the ``--org`` organization with every scope (the
operator at the console is trusted); what they add is recorded with origin
``cli``.
"""

from __future__ import annotations

import functools
from typing import Any

import click

from commtunnel.cli._support import (
    acting_for,
    all_pages,
    db_option,
    iso,
    json_option,
    listing,
    org_option,
    record_json,
    report,
    run_for_org,
    show_webhook_token,
)
from commtunnel.client import Commtunnel
from commtunnel.domain.keys import Organization
from commtunnel.domain.suppressions import Suppression, SuppressionReason

_REASON = click.Choice([r.value for r in SuppressionReason], case_sensitive=False)


def suppression_json(entry: Suppression) -> dict[str, Any]:
    """An entry as ``GET /v1/public/suppressions`` shows it: email, reason, origin, times ..."""
    return record_json(entry, Suppression)


@click.group(short_help="Email suppression list: list, add, remove; webhook token.")
def suppressions() -> None:
    """The organization's email suppression list (addresses that receive nothing).

    Sends to a listed address are refused with EMAIL_RECIPIENT_SUPPRESSED.
    Hard bounces, complaints and unsubscribe links add addresses by themselves.
    """


@suppressions.command("list")
@org_option
@click.option("--reason", type=_REASON, default=None, help="Only entries with this reason.")
@db_option
@json_option
def suppressions_list(org_name: str, reason: str | None, db: str | None, as_json: bool) -> None:
    """List the active entries, newest first (expired ones are left out)."""
    wanted = None if reason is None else reason.upper()

    async def action(ct: Commtunnel, org: Organization) -> list[Suppression]:
        fetch = functools.partial(ct.suppressions.list_suppressions, reason=wanted)
        return await all_pages(fetch, acting_for(org))

    listing(
        run_for_org(db, org_name, action),
        as_json=as_json,
        to_json=suppression_json,
        headers=("EMAIL", "REASON", "ORIGIN", "CREATED", "EXPIRES"),
        row=lambda s: (
            s.address,
            s.reason,
            s.origin,
            iso(s.created_at) or "",
            iso(s.expires_at) or "never",
        ),
    )


@suppressions.command("add")
@org_option
@click.argument("email")
@click.option(
    "--reason", type=_REASON, default="MANUAL", show_default=True, help="Why it is listed."
)
@click.option(
    "--expires-at",
    default=None,
    metavar="ISO8601",
    help="When it stops blocking, with a timezone (2026-12-31T00:00:00Z).  [default: never]",
)
@click.option("--detail", default=None, help="A note (at most 500 characters).")
@db_option
@json_option
def suppressions_add(
    org_name: str,
    email: str,
    reason: str,
    expires_at: str | None,
    detail: str | None,
    db: str | None,
    as_json: bool,
) -> None:
    """Put EMAIL on the suppression list."""
    entry, created = run_for_org(
        db,
        org_name,
        lambda ct, org: ct.suppressions.add_suppression(
            acting_for(org), email, reason=reason.upper(), expires_at=expires_at, detail=detail
        ),
    )
    report(
        as_json,
        {**suppression_json(entry), "created": created},
        f"suppressed {entry.address} ({entry.reason})"
        + ("" if created else " (already on the list; kept as it was)"),
    )


@suppressions.command("remove")
@org_option
@click.argument("email")
@db_option
@json_option
def suppressions_remove(org_name: str, email: str, db: str | None, as_json: bool) -> None:
    """Take EMAIL off the suppression list (NOT_FOUND when it is not on it)."""
    removed = run_for_org(
        db, org_name, lambda ct, org: ct.suppressions.remove_suppression(acting_for(org), email)
    )
    report(
        as_json,
        {"email": removed.address, "suppressed": False},
        f"removed {removed.address} ({removed.reason}) from the suppression list",
    )


@suppressions.command("webhook-token", short_help="Print (or --rotate) the email events token.")
@org_option
@click.option("--rotate", is_flag=True, help="Replace the token (the old one stops working).")
@db_option
@json_option
def suppressions_webhook_token(org_name: str, rotate: bool, db: str | None, as_json: bool) -> None:
    """Print the token of the organization's email events webhook, created on first use.

    Give your ESP the URL printed on stderr for bounce and complaint reports.
    Without --json the token alone goes to stdout.
    """

    async def action(ct: Commtunnel, org: Organization) -> tuple[str, str]:
        return await ct.suppressions.events_token(org.id, rotate=rotate), ct.settings.base_url

    token, base = run_for_org(db, org_name, action)
    show_webhook_token(
        token,
        "email events token",
        [f"{base}/v1/webhooks/email/events"],
        rotated=rotate,
        as_json=as_json,
    )
