"""``commtunnel whatsapp``: each organization's WhatsApp Cloud line."""

from __future__ import annotations

import sys
from typing import Any

import click

from commtunnel.cli._support import (
    acting_for,
    db_option,
    emit_json,
    json_option,
    org_option,
    record_json,
    run_for_org,
)
from commtunnel.client import Commtunnel
from commtunnel.domain.keys import Organization
from commtunnel.services.whatsapp import LineInfo


@click.group(short_help="WhatsApp Cloud: the organization's line.")
def whatsapp() -> None:
    """The WhatsApp Cloud channel: each organization's line (phone number id, access token)."""


#: ``--access-token -``: read the token from stdin.
_FROM_STDIN = "-"


def line_json(info: LineInfo) -> dict[str, Any]:
    """The line as the HTTP API shows it (``GET /v1/account/whatsapp-cloud-line``)."""
    return record_json(info, LineInfo)


@whatsapp.command("line", short_help="Show or change the organization's line.")
@org_option
@click.option(
    "--phone-number-id", default=None, metavar="ID", help="Meta's id of the organization's line."
)
@click.option(
    "--clear-phone-number-id", is_flag=True, help="Send from the platform default line again."
)
@click.option(
    "--access-token",
    default=None,
    metavar="TOKEN",
    help="The line's Graph access token, stored encrypted (needs COMMTUNNEL_SECRET_KEY); "
    "'-' reads it from stdin, keeping it out of the shell history.",
)
@click.option(
    "--clear-access-token", is_flag=True, help="Use the platform default access token again."
)
@db_option
@json_option
def whatsapp_line(
    org_name: str,
    phone_number_id: str | None,
    clear_phone_number_id: bool,
    access_token: str | None,
    clear_access_token: bool,
    db: str | None,
    as_json: bool,
) -> None:
    """Show the organization's WhatsApp Cloud line, or change it with the flags.

    Without a change flag the line is shown. The access token is never
    printed: only whether the organization has one of its own.
    """
    if phone_number_id is not None and clear_phone_number_id:
        raise click.UsageError("give --phone-number-id or --clear-phone-number-id, not both")
    if access_token is not None and clear_access_token:
        raise click.UsageError("give --access-token or --clear-access-token, not both")
    if access_token == _FROM_STDIN:
        access_token = sys.stdin.read().strip()
    # The service takes the HTTP route's payload: a field present with None clears it.
    changes: dict[str, str | None] = {}
    if phone_number_id is not None or clear_phone_number_id:
        changes["whatsappPhoneNumberId"] = phone_number_id
    if access_token is not None or clear_access_token:
        changes["whatsappAccessToken"] = access_token

    async def action(ct: Commtunnel, org: Organization) -> LineInfo:
        if changes:
            return await ct.whatsapp_service.update_line(acting_for(org), changes)
        return await ct.whatsapp_service.get_line(acting_for(org))

    info = run_for_org(db, org_name, action)
    if as_json:
        emit_json(line_json(info))
        return
    if info.uses_platform_default:
        line = "the platform default line" + (
            "" if info.platform_line_configured else " (not configured)"
        )
    else:
        line = f"phone number id {info.whatsapp_phone_number_id}"
    token = "its own" if info.has_own_access_token else "the platform's"
    click.echo(f"organization {org_name}: {line}, {token} access token, state {info.state}")
