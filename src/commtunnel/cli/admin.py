"""Tenant administration: ``orgs``, ``keys``, ``senders`` and ``templates``.

Each command opens storage only (see :func:`~commtunnel.cli._support.run_admin`)
and acts on the organization ``--org`` names (by name or id).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from commtunnel.cli._support import (
    db_option,
    emit_json,
    iso,
    json_option,
    listing,
    org_option,
    report,
    run_admin,
    run_for_org,
)
from commtunnel.client import Commtunnel
from commtunnel.domain.keys import ApiKey, Organization, parse_scopes
from commtunnel.ports import OrgAccess, Sender, Template


def org_json(org: Organization) -> dict[str, Any]:
    """``{"id", "name", "createdAt"}``."""
    return {"id": org.id, "name": org.name, "createdAt": iso(org.created_at)}


def access_json(access: OrgAccess | None) -> dict[str, Any]:
    """``{"ipAllowlist": [CIDR, ...] or None (any address), "rateLimit": None (default) or str}``.

    Returns:
        The organization's access settings as the CLI prints them.
    """
    allowlist = None if access is None else access.ip_allowlist
    return {
        "ipAllowlist": None if allowlist is None else list(allowlist),
        "rateLimit": None if access is None else access.rate_limit,
    }


def _allowlist_text(access: OrgAccess | None) -> str:
    allowlist = None if access is None else access.ip_allowlist
    return "any" if allowlist is None else ",".join(allowlist)


def _rate_limit_text(access: OrgAccess | None) -> str:
    return (access.rate_limit if access is not None else None) or "default"


def key_json(key: ApiKey) -> dict[str, Any]:
    """A key's record as listed: its ``prefix``, never the key itself."""
    return {
        "id": key.id,
        "orgId": key.org_id,
        "name": key.name,
        "prefix": key.display,
        "scopes": sorted(key.scopes),
        "test": key.test,
        "createdAt": iso(key.created_at),
        "revoked": key.revoked_at is not None,
        "revokedAt": iso(key.revoked_at),
    }


def sender_json(sender: Sender) -> dict[str, Any]:
    """``{"id", "orgId", "value", "createdAt"}``."""
    return {
        "id": sender.id,
        "orgId": sender.org_id,
        "value": sender.value,
        "createdAt": iso(sender.created_at),
    }


def template_json(template: Template) -> dict[str, Any]:
    """The whole template, bodies included."""
    return {
        "id": template.id,
        "orgId": template.org_id,
        "name": template.name,
        "subject": template.subject,
        "html": template.html,
        "text": template.text,
        "createdAt": iso(template.created_at),
        "updatedAt": iso(template.updated_at),
    }


# ----------------------------------------------------------------- organizations


@click.group()
def orgs() -> None:
    """Organizations (tenants)."""


@orgs.command("create")
@click.argument("name")
@db_option
@json_option
def orgs_create(name: str, db: str | None, as_json: bool) -> None:
    """Create an organization called NAME."""
    org = run_admin(db, lambda ct: ct.admin.create_org(name))
    report(as_json, org_json(org), f"created organization {org.name} (id {org.id})")


@orgs.command("list")
@db_option
@json_option
def orgs_list(db: str | None, as_json: bool) -> None:
    """List organizations, oldest first, with their IP allowlist and request limit."""

    async def with_access(ct: Commtunnel) -> list[tuple[Organization, OrgAccess | None]]:
        access = await ct.access.list_org_access()
        return [(org, access.get(org.id)) for org in await ct.backend.list_orgs()]

    listing(
        run_admin(db, with_access),
        as_json=as_json,
        to_json=lambda pair: {**org_json(pair[0]), **access_json(pair[1])},
        headers=("ID", "NAME", "CREATED", "IP ALLOWLIST", "RATE LIMIT"),
        row=lambda pair: (
            pair[0].id,
            pair[0].name,
            iso(pair[0].created_at) or "",
            _allowlist_text(pair[1]),
            _rate_limit_text(pair[1]),
        ),
    )


@orgs.command("set")
@org_option
@click.option(
    "--otp-ignores-opt-out",
    type=click.BOOL,
    default=None,
    metavar="true|false",
    help="Whether OTP messages still reach numbers on the SMS opt-out list.",
)
@click.option(
    "--ip-allowlist",
    default=None,
    metavar="CIDR,CIDR|any",
    help="Networks (or addresses) the organization's API keys may call from; "
    "'any' removes the allowlist. Others answer 403 IP_NOT_ALLOWED.",
)
@click.option(
    "--rate-limit",
    default=None,
    metavar="N/UNIT|default",
    help="Requests each of its API keys may make, e.g. 500/minute; "
    "'default' returns to the server's (COMMTUNNEL_RATE_LIMIT).",
)
@db_option
@json_option
def orgs_set(
    org_name: str,
    otp_ignores_opt_out: bool | None,
    ip_allowlist: str | None,
    rate_limit: str | None,
    db: str | None,
    as_json: bool,
) -> None:
    """Change an organization's settings; prints the organization with them."""
    if otp_ignores_opt_out is None and ip_allowlist is None and rate_limit is None:
        raise click.UsageError(
            "nothing to set: give --otp-ignores-opt-out, --ip-allowlist and/or --rate-limit"
        )
    access: dict[str, Any] = {}
    if ip_allowlist is not None:
        any_address = ip_allowlist.strip().lower() == "any"
        access["ip_allowlist"] = None if any_address else ip_allowlist.split(",")
    if rate_limit is not None:
        access["rate_limit"] = None if rate_limit.strip().lower() == "default" else rate_limit

    async def action(ct: Commtunnel, org: Organization) -> tuple[Organization, OrgAccess]:
        # The access settings first: they are the ones that can be refused.
        settings = await ct.access.set_org_access(org.id, **access)
        if otp_ignores_opt_out is not None:
            await ct.sms_service.set_otp_ignores_opt_out(org.id, otp_ignores_opt_out)
        return await ct.admin.get_org(org.id), settings

    org, settings = run_for_org(db, org_name, action)
    state = "true" if org.otp_ignores_opt_out else "false"
    report(
        as_json,
        {**org_json(org), "otpIgnoresOptOut": org.otp_ignores_opt_out, **access_json(settings)},
        f"organization {org.name} (id {org.id}): otp-ignores-opt-out {state}, "
        f"ip-allowlist {_allowlist_text(settings)}, rate-limit {_rate_limit_text(settings)}",
    )


# ----------------------------------------------------------------- API keys


@click.group()
def keys() -> None:
    """API keys (shown once, stored as a hash)."""


def _scopes_callback(_ctx: click.Context, _param: click.Parameter, value: str) -> frozenset[str]:
    try:
        return parse_scopes(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@keys.command("create")
@org_option
@click.option(
    "--scopes",
    required=True,
    callback=_scopes_callback,
    metavar="A,B",
    help="Comma-separated scopes, e.g. send:email,read:email.",
)
@click.option("--test", is_flag=True, help="A ct_test_ sandbox key: its sends reach no provider.")
@click.option("--name", default="", help="A label for people.")
@db_option
@json_option
def keys_create(
    org_name: str, scopes: frozenset[str], test: bool, name: str, db: str | None, as_json: bool
) -> None:
    """Create an API key and print it (the only time it can be seen).

    Without --json the key alone goes to stdout, so KEY=$(commtunnel keys
    create ...) captures it; the rest goes to stderr.
    """
    record, key = run_for_org(
        db, org_name, lambda ct, org: ct.keys.create(org.id, scopes=scopes, test=test, name=name)
    )
    if as_json:
        emit_json(
            {
                "id": record.id,
                "key": key,
                "orgId": record.org_id,
                "name": record.name,
                "scopes": sorted(record.scopes),
                "test": record.test,
                "createdAt": iso(record.created_at),
            }
        )
        return
    kind = "test" if record.test else "live"
    click.echo(
        f"created {kind} key {record.id} with scopes {', '.join(sorted(record.scopes))}; "
        "store it now, it cannot be shown again:",
        err=True,
    )
    click.echo(key)


@keys.command("list")
@org_option
@db_option
@json_option
def keys_list(org_name: str, db: str | None, as_json: bool) -> None:
    """List an organization's keys (their prefixes, never the keys) and their request limits.

    ``rateLimit`` is the key's own limit (null: it has the organization's);
    ``effectiveRateLimit`` and the RATE LIMIT column are the limit it has.
    """

    async def with_limits(
        ct: Commtunnel, org: Organization
    ) -> tuple[list[tuple[ApiKey, str | None]], str]:
        own = await ct.access.key_rate_limits(org.id)
        pairs = [(key, own.get(key.id)) for key in await ct.keys.list(org.id)]
        return pairs, await ct.access.org_rate_limit(org.id)

    pairs, org_limit = run_for_org(db, org_name, with_limits)
    listing(
        pairs,
        as_json=as_json,
        to_json=lambda pair: {
            **key_json(pair[0]),
            "rateLimit": pair[1],
            "effectiveRateLimit": pair[1] or org_limit,
        },
        headers=("ID", "PREFIX", "NAME", "SCOPES", "MODE", "RATE LIMIT", "CREATED", "REVOKED"),
        row=lambda pair: (
            pair[0].id,
            pair[0].display + "…",
            pair[0].name,
            ",".join(sorted(pair[0].scopes)),
            "test" if pair[0].test else "live",
            pair[1] or org_limit,
            iso(pair[0].created_at) or "",
            iso(pair[0].revoked_at) or "-",
        ),
    )


@keys.command("set-limit")
@org_option
@click.argument("key_id")
@click.argument("rate_limit", metavar="LIMIT")
@db_option
@json_option
def keys_set_limit(
    org_name: str, key_id: str, rate_limit: str, db: str | None, as_json: bool
) -> None:
    """Give the key KEY_ID its own request LIMIT (e.g. 1000/minute), or 'default'.

    'default' returns the key to its organization's limit (orgs set
    --rate-limit), else the server's. Effective on the key's next request.
    """
    own = None if rate_limit.strip().lower() == "default" else rate_limit
    effective = run_for_org(
        db, org_name, lambda ct, org: ct.access.set_key_rate_limit(org.id, key_id, own)
    )
    source = "its own" if own is not None else "inherited"
    report(
        as_json,
        {
            "id": key_id,
            "rateLimit": effective if own is not None else None,
            "effectiveRateLimit": effective,
        },
        f"key {key_id}: rate-limit {effective} ({source})",
    )


@keys.command("revoke")
@org_option
@click.argument("key_id")
@db_option
def keys_revoke(org_name: str, key_id: str, db: str | None) -> None:
    """Revoke the key KEY_ID at once (its next request answers 401)."""
    run_for_org(db, org_name, lambda ct, org: ct.keys.revoke(org.id, key_id))
    click.echo(f"revoked key {key_id}")


# ----------------------------------------------------------------- senders


@click.group()
def senders() -> None:
    """Verified senders: whole addresses or whole domains."""


@senders.command("add")
@org_option
@click.argument("address_or_domain")
@db_option
@json_option
def senders_add(org_name: str, address_or_domain: str, db: str | None, as_json: bool) -> None:
    """Verify ADDRESS_OR_DOMAIN (a@example.com, or example.com for any address there)."""
    sender = run_for_org(
        db, org_name, lambda ct, org: ct.admin.add_sender(org.id, address_or_domain)
    )
    report(as_json, sender_json(sender), f"verified sender {sender.value} (id {sender.id})")


@senders.command("list")
@org_option
@db_option
@json_option
def senders_list(org_name: str, db: str | None, as_json: bool) -> None:
    """List an organization's verified senders."""
    listing(
        run_for_org(db, org_name, lambda ct, org: ct.admin.list_senders(org.id)),
        as_json=as_json,
        to_json=sender_json,
        headers=("ID", "SENDER", "CREATED"),
        row=lambda s: (s.id, s.value, iso(s.created_at) or ""),
    )


# ----------------------------------------------------------------- templates


@click.group()
def templates() -> None:
    """Email templates (liquid syntax)."""


_template_file = click.Path(exists=True, dir_okay=False, readable=True, path_type=Path)


@templates.command("add")
@org_option
@click.option("--name", required=True, help="Unique within the organization.")
@click.option("--subject", required=True, help="Subject template, e.g. 'Hi {{ name }}'.")
@click.option(
    "--html", "html_file", type=_template_file, metavar="FILE", help="HTML body template."
)
@click.option(
    "--text", "text_file", type=_template_file, metavar="FILE", help="Text body template."
)
@db_option
@json_option
def templates_add(
    org_name: str,
    name: str,
    subject: str,
    html_file: Path | None,
    text_file: Path | None,
    db: str | None,
    as_json: bool,
) -> None:
    """Store a template from files (--html and/or --text); prints its id."""
    html = html_file.read_text(encoding="utf-8") if html_file else None
    text = text_file.read_text(encoding="utf-8") if text_file else None
    template = run_for_org(
        db,
        org_name,
        lambda ct, org: ct.admin.add_template(
            org.id, name=name, subject=subject, html=html, text=text
        ),
    )
    report(as_json, template_json(template), f"created template {template.name} (id {template.id})")


@templates.command("list")
@org_option
@db_option
@json_option
def templates_list(org_name: str, db: str | None, as_json: bool) -> None:
    """List an organization's templates."""
    listing(
        run_for_org(db, org_name, lambda ct, org: ct.admin.list_templates(org.id)),
        as_json=as_json,
        to_json=template_json,
        headers=("ID", "NAME", "SUBJECT", "CREATED"),
        row=lambda t: (t.id, t.name, t.subject, iso(t.created_at) or ""),
    )
