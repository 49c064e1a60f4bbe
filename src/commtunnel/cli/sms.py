"""``commtunnel sms``: webhook token, sender IDs and OTP brands, opt-outs, inbound messages.

The commands act as the ``--org`` organization with every scope, except the
platform actions (reviewing a request, listing every organization's
requests), which act as :data:`~commtunnel.cli._support.PLATFORM`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import click

from commtunnel.cli._support import (
    PLATFORM,
    acting_for,
    all_pages,
    db_option,
    iso,
    json_option,
    listing,
    org_option,
    record_json,
    report,
    run_admin,
    run_for_org,
    show_webhook_token,
)
from commtunnel.client import Commtunnel
from commtunnel.domain.keys import Organization
from commtunnel.ports import InboundMessage, OptOut, SenderIdRequest


def request_json(request: SenderIdRequest) -> dict[str, Any]:
    """A sender-ID request as the API shows it, plus ``reviewedBy`` (the operator sees who)."""
    return {**record_json(request, SenderIdRequest), "reviewedBy": request.reviewed_by}


def opt_out_json(opt_out: OptOut) -> dict[str, Any]:
    """``{"phone" (E.164), "source", "createdAt"}``, as the API shows it."""
    return record_json(opt_out, OptOut)


def inbound_json(inbound: InboundMessage) -> dict[str, Any]:
    """An MO message as ``GET /v1/public/sms/inbound`` shows it, plus its ``organizationId``."""
    return {**record_json(inbound, InboundMessage), "organizationId": inbound.org_id}


@click.group(short_help="SMS: webhook token, sender IDs, opt-outs, inbound.")
def sms() -> None:
    """The SMS channel: webhook token, sender IDs and OTP brands, opt-outs, inbound messages."""


#: The webhooks one organization's token guards, under ``/v1/webhooks/sms/``.
WEBHOOK_ROUTES = ("inbound", "dlr", "inbound-opt-out")


@sms.command("token", short_help="Print (or --rotate) the webhook token.")
@org_option
@click.option("--rotate", is_flag=True, help="Replace the token (the old one stops working).")
@db_option
@json_option
def sms_token(org_name: str, rotate: bool, db: str | None, as_json: bool) -> None:
    """Print the organization's SMS webhook token, created on first use.

    The one token guards the organization's inbound (MO), delivery-receipt
    and inbound-opt-out webhooks. Without --json the token alone goes to
    stdout and the URLs it guards to stderr (base: $COMMTUNNEL_PUBLIC_URL, or
    this machine's host and port).
    """

    async def action(ct: Commtunnel, org: Organization) -> tuple[str, str]:
        return await ct.sms_service.token(org.id, rotate=rotate), ct.settings.base_url

    token, base = run_for_org(db, org_name, action)
    urls = [f"{base}/v1/webhooks/sms/{route}" for route in WEBHOOK_ROUTES]
    show_webhook_token(token, "SMS webhook token", urls, rotated=rotate, as_json=as_json)


# ------------------------------------------------------------- sender IDs


@sms.group("sender-ids", short_help="Request, review and list sender IDs.")
def sms_sender_ids() -> None:
    """Sender IDs (flow STANDARD) and OTP brand names (flow OTP): request, review, list."""


_FLOW = click.Choice(("STANDARD", "OTP"), case_sensitive=False)
_REQUEST_STATUS = click.Choice(("PENDING", "APPROVED", "REJECTED"), case_sensitive=False)


def _requests_listing(
    found: list[SenderIdRequest], org_names: Mapping[str, str], as_json: bool
) -> None:
    """Requests as JSON, or a table naming each one's organization (its id when unknown)."""
    listing(
        found,
        as_json=as_json,
        to_json=request_json,
        headers=("ID", "ORG", "SENDER ID", "FLOW", "STATUS", "CREATED"),
        row=lambda r: (
            r.id,
            org_names.get(r.org_id, r.org_id),
            r.sender_id,
            r.flow,
            r.status,
            iso(r.created_at) or "",
        ),
    )


@sms_sender_ids.command("request")
@org_option
@click.argument("sender_id")
@click.option("--flow", type=_FLOW, default="STANDARD", show_default=True, help="What it is for.")
@click.option("--reason", default=None, help="Why the organization needs it (for the reviewer).")
@db_option
@json_option
def sender_ids_request(
    org_name: str, sender_id: str, flow: str, reason: str | None, db: str | None, as_json: bool
) -> None:
    """Ask the platform to approve SENDER_ID (or, with --flow OTP, a brand name)."""
    request = run_for_org(
        db,
        org_name,
        lambda ct, org: ct.sms_service.request_sender_id(
            acting_for(org), sender_id=sender_id, flow=flow.upper(), reason=reason
        ),
    )
    report(
        as_json,
        request_json(request),
        f"requested {request.flow} sender ID {request.sender_id} (request id {request.id}, "
        f"{request.status})",
    )


@sms_sender_ids.command("review")
@click.argument("request_id")
@click.option("--approve", "decision", flag_value="approve", help="Approve the request.")
@click.option("--reject", "decision", flag_value="reject", help="Reject the request.")
@click.option("--reason", default=None, help="A note for the organization.")
@db_option
@json_option
def sender_ids_review(
    request_id: str, decision: str | None, reason: str | None, db: str | None, as_json: bool
) -> None:
    """Approve or reject the pending request REQUEST_ID (a platform operator's action)."""
    if decision is None:
        raise click.UsageError("give --approve or --reject")
    chosen = decision
    request = run_admin(
        db,
        lambda ct: ct.sms_service.review_sender_id(
            PLATFORM, request_id, decision=chosen, reason=reason
        ),
    )
    report(
        as_json,
        request_json(request),
        f"{request.status.lower()} {request.flow} sender ID {request.sender_id} "
        f"(request id {request.id})",
    )


@sms_sender_ids.command("list")
@org_option
@click.option("--flow", type=_FLOW, default=None, help="Only this flow.  [default: both]")
@db_option
@json_option
def sender_ids_list(org_name: str, flow: str | None, db: str | None, as_json: bool) -> None:
    """List the organization's approved sender IDs and OTP brands."""

    async def action(
        ct: Commtunnel, org: Organization
    ) -> tuple[list[SenderIdRequest], dict[str, str]]:
        found = await ct.sms_service.list_sender_ids(
            acting_for(org), flow=None if flow is None else flow.upper()
        )
        return found, {org.id: org.name}

    _requests_listing(*run_for_org(db, org_name, action), as_json)


@sms_sender_ids.command("requests")
@click.option(
    "--org", "org_name", default=None, metavar="NAME", help="Only this organization's requests."
)
@click.option("--status", type=_REQUEST_STATUS, default=None, help="Only requests in this state.")
@db_option
@json_option
def sender_ids_requests(
    org_name: str | None, status: str | None, db: str | None, as_json: bool
) -> None:
    """List sender-ID requests of one organization, or of every one (oldest first)."""
    wanted = None if status is None else status.upper()

    async def action(ct: Commtunnel) -> tuple[list[SenderIdRequest], dict[str, str]]:
        names = {o.id: o.name for o in await ct.backend.list_orgs()}
        if org_name is None:
            found = await ct.sms_service.list_sender_id_requests(
                PLATFORM, status=wanted, all_orgs=True
            )
        else:
            org = await ct.admin.get_org(org_name)
            found = await ct.sms_service.list_sender_id_requests(acting_for(org), status=wanted)
        return found, names

    _requests_listing(*run_admin(db, action), as_json)


# ------------------------------------------------------------- opt-outs


@sms.group("opt-outs", short_help="List, add and remove opted-out numbers.")
def sms_opt_outs() -> None:
    """The organization's SMS opt-out list (numbers that receive nothing)."""


@sms_opt_outs.command("list")
@org_option
@db_option
@json_option
def opt_outs_list(org_name: str, db: str | None, as_json: bool) -> None:
    """List the numbers on the organization's opt-out list, newest first."""
    listing(
        run_for_org(
            db, org_name, lambda ct, org: all_pages(ct.sms_service.list_opt_outs, acting_for(org))
        ),
        as_json=as_json,
        to_json=opt_out_json,
        headers=("PHONE", "SOURCE", "CREATED"),
        row=lambda o: (o.phone, o.source, iso(o.created_at) or ""),
    )


@sms_opt_outs.command("add")
@org_option
@click.argument("phone")
@db_option
@json_option
def opt_outs_add(org_name: str, phone: str, db: str | None, as_json: bool) -> None:
    """Put PHONE (E.164, e.g. +14155550123) on the opt-out list."""
    e164, created = run_for_org(
        db, org_name, lambda ct, org: ct.sms_service.add_opt_out(acting_for(org), phone)
    )
    report(
        as_json,
        {"phone": e164, "optedOut": True, "created": created},
        f"opted out {e164}" + ("" if created else " (already on the list)"),
    )


@sms_opt_outs.command("remove")
@org_option
@click.argument("phone")
@db_option
@json_option
def opt_outs_remove(org_name: str, phone: str, db: str | None, as_json: bool) -> None:
    """Take PHONE off the opt-out list (NOT_FOUND when it is not on it)."""
    e164 = run_for_org(
        db, org_name, lambda ct, org: ct.sms_service.remove_opt_out(acting_for(org), phone)
    )
    report(as_json, {"phone": e164, "optedOut": False}, f"opted in {e164} again")


# ------------------------------------------------------------- inbound


@sms.command("inbound", short_help="List received (MO) messages.")
@org_option
@db_option
@json_option
def sms_inbound(org_name: str, db: str | None, as_json: bool) -> None:
    """List the inbound (MO) messages the organization received, newest first."""
    listing(
        run_for_org(
            db, org_name, lambda ct, org: all_pages(ct.sms_service.list_inbound, acting_for(org))
        ),
        as_json=as_json,
        to_json=inbound_json,
        headers=("ID", "FROM", "TO", "KEYWORD", "RECEIVED", "BODY"),
        row=lambda m: (
            m.id,
            m.sender,
            m.recipient,
            m.keyword or "-",
            iso(m.created_at) or "",
            " ".join(m.body.split())[:60],
        ),
    )
