"""The ``commtunnel`` command: run the server or a worker, and set up tenants.

::

    commtunnel serve  [--db PATH] [--host H] [--port N] [--email-provider URL] [--no-worker]
    commtunnel worker [--db PATH] [--email-provider URL]
    commtunnel orgs      create NAME | list | set --org NAME --otp-ignores-opt-out true|false
    commtunnel keys      create --org NAME --scopes a,b [--test] [--name N] | list | revoke
    commtunnel senders   add --org NAME ADDRESS_OR_DOMAIN | list
    commtunnel templates add --org NAME --name N --subject S --html FILE [--text FILE] | list
    commtunnel sms token --org NAME [--rotate]
    commtunnel sms sender-ids request --org NAME SENDER_ID [--flow F] [--reason R]
                                | review REQUEST_ID --approve|--reject [--reason R]
                                | list --org NAME [--flow F] | requests [--org NAME] [--status S]
    commtunnel sms opt-outs list --org NAME | add --org NAME PHONE | remove --org NAME PHONE
    commtunnel sms inbound --org NAME
    commtunnel whatsapp line --org NAME [--phone-number-id ID | --clear-phone-number-id]
                                        [--access-token TOKEN | --clear-access-token]

Settings come from :meth:`Settings.from_env <commtunnel.config.Settings.from_env>`
(defaults <- ``COMMTUNNEL_*`` environment <- these flags). Commands that
create something take ``--json`` and then print the created object as one
JSON object on stdout (camelCase, UTC ISO 8601 timestamps with milliseconds).
A :class:`~commtunnel.domain.errors.CommtunnelError` is printed as
``error: <message> (<CODE>)`` on stderr with exit status 1; usage errors exit
with 2 (click's convention). No command prints a traceback for either.

The administration commands never load the configured email, SMS or WhatsApp
provider: they open storage with :class:`_NoProvider`, so a provider URL that
cannot be used on this machine does not stop anyone from creating an
organization or a key.

The ``sms`` and ``whatsapp`` commands act as the organization named by
``--org`` with every scope (the operator at the console is trusted), except
the platform actions (reviewing sender-ID requests, listing every
organization's requests), which act as a principal holding only
``platform:admin``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import signal
import sqlite3
import sys
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn, TypeVar
from urllib.parse import quote

import click

from commtunnel.client import Commtunnel
from commtunnel.config import Settings
from commtunnel.domain.delivery import ErrorCategory, ProviderResult
from commtunnel.domain.errors import CommtunnelError, NotFoundError
from commtunnel.domain.keys import ALL_SCOPES, ApiKey, Organization, Principal, Scope, parse_scopes
from commtunnel.ports import (
    DeliveryReceipt,
    InboundMessage,
    OptOut,
    OutgoingEmail,
    OutgoingSms,
    OutgoingWhatsApp,
    Sender,
    SenderIdRequest,
    Template,
)
from commtunnel.providers import redact_url
from commtunnel.services.whatsapp import LineInfo

T = TypeVar("T")

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


# --------------------------------------------------------------------------- plumbing


class _NoProvider:
    """The provider of administration commands (every channel): they never deliver anything."""

    name = "none"

    async def send_email(self, email: OutgoingEmail) -> ProviderResult:
        """Refuse: administration commands run no worker, so this is never reached."""
        return ProviderResult.permanent(ErrorCategory.REJECTED, "no provider in admin commands")

    async def send_sms(self, sms: OutgoingSms) -> ProviderResult:
        """Refuse: administration commands run no worker, so this is never reached."""
        return ProviderResult.permanent(ErrorCategory.REJECTED, "no provider in admin commands")

    async def send_whatsapp(self, message: OutgoingWhatsApp) -> ProviderResult:
        """Refuse: administration commands run no worker, so this is never reached."""
        return ProviderResult.permanent(ErrorCategory.REJECTED, "no provider in admin commands")

    def parse_status_callback(
        self, *, url: str, headers: Mapping[str, str], body: bytes
    ) -> list[DeliveryReceipt]:
        """Refuse: administration commands receive no callbacks."""
        raise NotFoundError("No provider status callbacks in admin commands")

    async def aclose(self) -> None:
        """Nothing to close."""


def _iso(value: datetime | None) -> str | None:
    """Wire timestamp: UTC, ISO 8601 with milliseconds and ``Z``."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _fail(message: str, code: str | None = None, details: dict[str, Any] | None = None) -> NoReturn:
    """Print ``error: message (CODE)`` (and any details) on stderr and exit with status 1."""
    suffix = f" ({code})" if code else ""
    click.echo(f"error: {message}{suffix}", err=True)
    for field, reason in (details or {}).items():
        if str(reason) not in message:  # "No organization 'x'" needs no "org: x" below it
            click.echo(f"  {field}: {reason}", err=True)
    raise click.exceptions.Exit(1)


def _run(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run one command's coroutine on a fresh event loop, turning known errors into exit 1."""
    try:
        return asyncio.run(main())
    except CommtunnelError as exc:
        _fail(exc.message, exc.code, exc.details)
    except sqlite3.Error as exc:
        _fail(f"database: {exc}")
    except OSError as exc:
        _fail(str(exc))


def _settings(**overrides: Any) -> Settings:
    """Settings from the environment with the flags given (None means "not given")."""
    try:
        return Settings.from_env(**overrides)
    except ValueError as exc:  # a COMMTUNNEL_* variable that does not parse
        raise click.UsageError(f"invalid configuration: {exc}") from None


def _admin(db: str | None, action: Callable[[Commtunnel], Awaitable[T]]) -> T:
    """Open storage only (no email or SMS provider), run ``action``, close."""
    settings = _settings(db=db)

    async def main() -> T:
        none = _NoProvider()
        try:
            ct = Commtunnel.open(
                settings=settings, email_provider=none, sms_provider=none, whatsapp_provider=none
            )
        except ValueError as exc:  # e.g. a COMMTUNNEL_SECRET_KEY too short to be a key
            raise click.UsageError(f"invalid configuration: {exc}") from None
        # Storage only: ct.start() would also create the in-process "default"
        # organization, a side effect no administration command asked for.
        await ct.backend.open()
        try:
            return await action(ct)
        finally:
            await ct.aclose()

    return _run(main)


def _emit_json(value: Any) -> None:
    click.echo(json.dumps(value, ensure_ascii=False))


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Print rows as aligned columns (or a note when there are none)."""
    if not rows:
        click.echo("(none)")
        return
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    for line in (headers, *rows):
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())


def _org_json(org: Organization) -> dict[str, Any]:
    return {"id": org.id, "name": org.name, "createdAt": _iso(org.created_at)}


def _key_json(key: ApiKey) -> dict[str, Any]:
    return {
        "id": key.id,
        "orgId": key.org_id,
        "name": key.name,
        "prefix": key.display,
        "scopes": sorted(key.scopes),
        "test": key.test,
        "createdAt": _iso(key.created_at),
        "revoked": key.revoked_at is not None,
        "revokedAt": _iso(key.revoked_at),
    }


def _sender_json(sender: Sender) -> dict[str, Any]:
    return {
        "id": sender.id,
        "orgId": sender.org_id,
        "value": sender.value,
        "createdAt": _iso(sender.created_at),
    }


def _template_json(template: Template) -> dict[str, Any]:
    return {
        "id": template.id,
        "orgId": template.org_id,
        "name": template.name,
        "subject": template.subject,
        "html": template.html,
        "text": template.text,
        "createdAt": _iso(template.created_at),
        "updatedAt": _iso(template.updated_at),
    }


def _request_json(request: SenderIdRequest) -> dict[str, Any]:
    return {
        "id": request.id,
        "organizationId": request.org_id,
        "senderId": request.sender_id,
        "flow": request.flow,
        "status": request.status,
        "reason": request.reason,
        "reviewReason": request.review_reason,
        "reviewedBy": request.reviewed_by,
        "reviewedAt": _iso(request.reviewed_at),
        "createdAt": _iso(request.created_at),
    }


def _opt_out_json(opt_out: OptOut) -> dict[str, Any]:
    return {"phone": opt_out.phone, "source": opt_out.source, "createdAt": _iso(opt_out.created_at)}


def _inbound_json(inbound: InboundMessage) -> dict[str, Any]:
    return {
        "id": inbound.id,
        "organizationId": inbound.org_id,
        "from": inbound.sender,
        "to": inbound.recipient,
        "body": inbound.body,
        "keyword": inbound.keyword,
        "createdAt": _iso(inbound.created_at),
    }


def _acting_for(org: Organization) -> Principal:
    """The organization's principal at the console: every scope, no API key."""
    return Principal(org_id=org.id, scopes=ALL_SCOPES)


# Review and cross-organization listings are platform actions: the principal
# carries only platform:admin, so nothing else can be done in its name. Its
# organization is never read by those actions.
_PLATFORM = Principal(org_id="platform", scopes=frozenset({Scope.PLATFORM_ADMIN.value}))

# Listings ask the service page by page (it caps a page at 100) and print everything.
_PAGE_SIZE = 100


async def _all_pages(fetch: Callable[[int], Awaitable[Any]]) -> list[Any]:
    """Every item of a paged listing (``fetch(page)`` returns a :class:`Page`)."""
    items: list[Any] = []
    page = 1
    while True:
        result = await fetch(page)
        items.extend(result.items)
        if not result.items or len(items) >= result.total:
            return items
        page += 1


def _scopes_callback(_ctx: click.Context, _param: click.Parameter, value: str) -> frozenset[str]:
    try:
        return parse_scopes(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


db_option = click.option(
    "--db",
    metavar="PATH",
    default=None,
    help="SQLite database file.  [default: $COMMTUNNEL_DB or ./commtunnel.db]",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
org_option = click.option(
    "--org", "org_name", required=True, metavar="NAME", help="Organization name or id."
)
provider_option = click.option(
    "--email-provider",
    metavar="URL",
    default=None,
    help="Email provider URL, e.g. smtp://user:pass@host:587?starttls=true  "
    "[default: $COMMTUNNEL_EMAIL_PROVIDER or outbox://./outbox]",
)
log_level_option = click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default="warning",
    show_default=True,
    help="Logging threshold.",
)


# --------------------------------------------------------------------------- commands


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="commtunnel")
def main() -> None:
    """Commtunnel: transactional messaging as a library and an HTTP API."""


@main.command(short_help="Serve the HTTP API (and the dispatch worker).")
@db_option
@click.option("--host", default=None, help="Interface to listen on.  [default: 127.0.0.1]")
@click.option(
    "--port", type=int, default=None, help="TCP port (0 picks a free one).  [default: 8025]"
)
@provider_option
@click.option("--no-worker", is_flag=True, help="Do not run the dispatch worker in this process.")
@log_level_option
@click.option(
    "--access-log/--no-access-log", default=False, show_default=True, help="Log each request."
)
def serve(
    db: str | None,
    host: str | None,
    port: int | None,
    email_provider: str | None,
    no_worker: bool,
    log_level: str,
    access_log: bool,
) -> None:
    """Serve the HTTP API (with the dispatch worker unless --no-worker)."""
    # This command is the composition root of the server process, and the one
    # place where the core crosses the boundary "commtunnel never imports
    # commtunnel_http, Starlette or uvicorn" (DESIGN.md). It does so lazily,
    # here, so that importing commtunnel (or running any other command) never
    # loads a web framework, and the core installs without the [http] extra.
    try:
        import uvicorn

        from commtunnel_http import create_app
    except ImportError as exc:
        _fail(
            f"'commtunnel serve' needs Starlette and uvicorn ({exc.name or exc} is missing): "
            "pip install 'commtunnel[http]'"
        )
    settings = _settings(
        db=db,
        host=host,
        port=port,
        email_provider=email_provider,
        embedded_worker=False if no_worker else None,
    )
    _configure_logging(log_level)
    try:
        ct = Commtunnel.open(settings=settings)
    except CommtunnelError as exc:
        _fail(exc.message, exc.code, exc.details)
    app = create_app(ct, run_worker=settings.embedded_worker)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http="httptools" if importlib.util.find_spec("httptools") else "h11",
        log_level=log_level.lower(),
        access_log=access_log,
        lifespan="on",
    )
    where = f"db {settings.db_path}, email {redact_url(settings.email_provider)}, " + (
        "embedded worker" if settings.embedded_worker else "no worker"
    )

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[Any] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.started:  # bound: report the real port (--port 0 picks one)
                bound = self.servers[0].sockets[0].getsockname()[1] if self.servers else port
                click.echo(f"commtunnel listening on http://{settings.host}:{bound} ({where})")

    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal
    # against the handler it found installed. Installing a quiet one first makes
    # a requested stop end with status 0 instead of a KeyboardInterrupt or -15.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _ignore_signal)
    Server(config).run()


def _ignore_signal(_signum: int, _frame: FrameType | None) -> None:
    """Signal handler that does nothing (uvicorn has already shut down)."""


@main.command()
@db_option
@provider_option
@log_level_option
def worker(db: str | None, email_provider: str | None, log_level: str) -> None:
    """Run the dispatch worker until SIGINT/SIGTERM.

    The first signal stops claiming new jobs and lets attempts in flight
    finish (each is bounded by COMMTUNNEL_SEND_TIMEOUT); a second one stops at
    once, and jobs still leased are claimed again when their lease expires.
    """
    settings = _settings(db=db, email_provider=email_provider)
    _configure_logging(log_level)

    async def main() -> None:
        ct = Commtunnel.open(settings=settings)
        stop = asyncio.Event()
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()

        def on_signal() -> None:
            if stop.is_set() and task is not None:
                task.cancel()
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        async with ct:
            click.echo(
                f"commtunnel worker running (db {settings.db_path}, "
                f"email {redact_url(settings.email_provider)})"
            )
            try:
                await ct.run_worker(stop)
            except asyncio.CancelledError:
                click.echo("worker stopped without waiting for attempts in flight", err=True)
                raise click.exceptions.Exit(1) from None
        click.echo("worker stopped")

    _run(main)


# ----------------------------------------------------------------- organizations


@main.group()
def orgs() -> None:
    """Organizations (tenants)."""


@orgs.command("create")
@click.argument("name")
@db_option
@json_option
def orgs_create(name: str, db: str | None, as_json: bool) -> None:
    """Create an organization called NAME."""
    org = _admin(db, lambda ct: ct.admin.create_org(name))
    if as_json:
        _emit_json(_org_json(org))
    else:
        click.echo(f"created organization {org.name} (id {org.id})")


@orgs.command("list")
@db_option
@json_option
def orgs_list(db: str | None, as_json: bool) -> None:
    """List organizations, oldest first."""
    found = _admin(db, lambda ct: ct.backend.list_orgs())
    if as_json:
        _emit_json([_org_json(o) for o in found])
    else:
        _table(("ID", "NAME", "CREATED"), [(o.id, o.name, _iso(o.created_at) or "") for o in found])


@orgs.command("set")
@org_option
@click.option(
    "--otp-ignores-opt-out",
    type=click.BOOL,
    default=None,
    metavar="true|false",
    help="Whether OTP messages still reach numbers on the SMS opt-out list.",
)
@db_option
@json_option
def orgs_set(
    org_name: str, otp_ignores_opt_out: bool | None, db: str | None, as_json: bool
) -> None:
    """Change an organization's settings; prints the organization with them."""
    if otp_ignores_opt_out is None:
        raise click.UsageError("nothing to set: give --otp-ignores-opt-out true|false")
    value = otp_ignores_opt_out

    async def action(ct: Commtunnel) -> Organization:
        org = await ct.admin.get_org(org_name)
        if not await ct.sms_store.set_otp_ignores_opt_out(org.id, value):
            raise NotFoundError(f"No organization '{org_name}'", details={"org": org_name})
        return await ct.admin.get_org(org.id)

    org = _admin(db, action)
    if as_json:
        _emit_json({**_org_json(org), "otpIgnoresOptOut": org.otp_ignores_opt_out})
    else:
        state = "true" if org.otp_ignores_opt_out else "false"
        click.echo(f"organization {org.name} (id {org.id}): otp-ignores-opt-out {state}")


# ----------------------------------------------------------------- API keys


@main.group()
def keys() -> None:
    """API keys (shown once, stored as a hash)."""


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

    async def action(ct: Commtunnel) -> tuple[ApiKey, str]:
        org = await ct.admin.get_org(org_name)
        return await ct.keys.create(org.id, scopes=scopes, test=test, name=name)

    record, key = _admin(db, action)
    if as_json:
        _emit_json(
            {
                "id": record.id,
                "key": key,
                "orgId": record.org_id,
                "name": record.name,
                "scopes": sorted(record.scopes),
                "test": record.test,
                "createdAt": _iso(record.created_at),
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
    """List an organization's keys (their prefixes, never the keys)."""

    async def action(ct: Commtunnel) -> list[ApiKey]:
        org = await ct.admin.get_org(org_name)
        return await ct.keys.list(org.id)

    found = _admin(db, action)
    if as_json:
        _emit_json([_key_json(k) for k in found])
        return
    _table(
        ("ID", "PREFIX", "NAME", "SCOPES", "MODE", "CREATED", "REVOKED"),
        [
            (
                k.id,
                k.display + "…",
                k.name,
                ",".join(sorted(k.scopes)),
                "test" if k.test else "live",
                _iso(k.created_at) or "",
                _iso(k.revoked_at) or "-",
            )
            for k in found
        ],
    )


@keys.command("revoke")
@org_option
@click.argument("key_id")
@db_option
def keys_revoke(org_name: str, key_id: str, db: str | None) -> None:
    """Revoke the key KEY_ID at once (its next request answers 401)."""

    async def action(ct: Commtunnel) -> None:
        org = await ct.admin.get_org(org_name)
        await ct.keys.revoke(org.id, key_id)

    _admin(db, action)
    click.echo(f"revoked key {key_id}")


# ----------------------------------------------------------------- senders


@main.group()
def senders() -> None:
    """Verified senders: whole addresses or whole domains."""


@senders.command("add")
@org_option
@click.argument("address_or_domain")
@db_option
@json_option
def senders_add(org_name: str, address_or_domain: str, db: str | None, as_json: bool) -> None:
    """Verify ADDRESS_OR_DOMAIN (a@example.com, or example.com for any address there)."""

    async def action(ct: Commtunnel) -> Sender:
        org = await ct.admin.get_org(org_name)
        return await ct.admin.add_sender(org.id, address_or_domain)

    sender = _admin(db, action)
    if as_json:
        _emit_json(_sender_json(sender))
    else:
        click.echo(f"verified sender {sender.value} (id {sender.id})")


@senders.command("list")
@org_option
@db_option
@json_option
def senders_list(org_name: str, db: str | None, as_json: bool) -> None:
    """List an organization's verified senders."""

    async def action(ct: Commtunnel) -> list[Sender]:
        org = await ct.admin.get_org(org_name)
        return await ct.admin.list_senders(org.id)

    found = _admin(db, action)
    if as_json:
        _emit_json([_sender_json(s) for s in found])
    else:
        _table(
            ("ID", "SENDER", "CREATED"), [(s.id, s.value, _iso(s.created_at) or "") for s in found]
        )


# ----------------------------------------------------------------- templates


@main.group()
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

    async def action(ct: Commtunnel) -> Template:
        org = await ct.admin.get_org(org_name)
        return await ct.admin.add_template(org.id, name=name, subject=subject, html=html, text=text)

    template = _admin(db, action)
    if as_json:
        _emit_json(_template_json(template))
    else:
        click.echo(f"created template {template.name} (id {template.id})")


@templates.command("list")
@org_option
@db_option
@json_option
def templates_list(org_name: str, db: str | None, as_json: bool) -> None:
    """List an organization's templates."""

    async def action(ct: Commtunnel) -> list[Template]:
        org = await ct.admin.get_org(org_name)
        return await ct.admin.list_templates(org.id)

    found = _admin(db, action)
    if as_json:
        _emit_json([_template_json(t) for t in found])
    else:
        _table(
            ("ID", "NAME", "SUBJECT", "CREATED"),
            [(t.id, t.name, t.subject, _iso(t.created_at) or "") for t in found],
        )


# ----------------------------------------------------------------- SMS


@main.group(short_help="SMS: webhook token, sender IDs, opt-outs, inbound.")
def sms() -> None:
    """The SMS channel: webhook token, sender IDs and OTP brands, opt-outs, inbound messages."""


_WEBHOOK_ROUTES = ("inbound", "dlr", "inbound-opt-out")


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

    async def action(ct: Commtunnel) -> tuple[str, str]:
        org = await ct.admin.get_org(org_name)
        token = await ct.sms_service.token(org.id, rotate=rotate)
        s = ct.settings
        base = s.public_url.rstrip("/") if s.public_url else f"http://{s.host}:{s.port}"
        return token, base

    token, base = _admin(db, action)
    if as_json:
        _emit_json({"token": token})
        return
    click.echo(f"{'new ' if rotate else ''}SMS webhook token; it guards:", err=True)
    for route in _WEBHOOK_ROUTES:
        click.echo(f"  POST {base}/v1/webhooks/sms/{route}?token={quote(token, safe='')}", err=True)
    click.echo(token)


# ------------------------------------------------------------- SMS sender IDs


@sms.group("sender-ids", short_help="Request, review and list sender IDs.")
def sms_sender_ids() -> None:
    """Sender IDs (flow STANDARD) and OTP brand names (flow OTP): request, review, list."""


_FLOW = click.Choice(("STANDARD", "OTP"), case_sensitive=False)
_REQUEST_STATUS = click.Choice(("PENDING", "APPROVED", "REJECTED"), case_sensitive=False)


def _requests_table(found: Sequence[SenderIdRequest], org_names: dict[str, str]) -> None:
    _table(
        ("ID", "ORG", "SENDER ID", "FLOW", "STATUS", "CREATED"),
        [
            (
                r.id,
                org_names.get(r.org_id, r.org_id),
                r.sender_id,
                r.flow,
                r.status,
                _iso(r.created_at) or "",
            )
            for r in found
        ],
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

    async def action(ct: Commtunnel) -> SenderIdRequest:
        org = await ct.admin.get_org(org_name)
        return await ct.sms_service.request_sender_id(
            _acting_for(org), sender_id=sender_id, flow=flow.upper(), reason=reason
        )

    request = _admin(db, action)
    if as_json:
        _emit_json(_request_json(request))
    else:
        click.echo(
            f"requested {request.flow} sender ID {request.sender_id} (request id {request.id}, "
            f"{request.status})"
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

    request = _admin(
        db,
        lambda ct: ct.sms_service.review_sender_id(
            _PLATFORM, request_id, decision=chosen, reason=reason
        ),
    )
    if as_json:
        _emit_json(_request_json(request))
    else:
        click.echo(
            f"{request.status.lower()} {request.flow} sender ID {request.sender_id} "
            f"(request id {request.id})"
        )


@sms_sender_ids.command("list")
@org_option
@click.option("--flow", type=_FLOW, default=None, help="Only this flow.  [default: both]")
@db_option
@json_option
def sender_ids_list(org_name: str, flow: str | None, db: str | None, as_json: bool) -> None:
    """List the organization's approved sender IDs and OTP brands."""

    async def action(ct: Commtunnel) -> tuple[list[SenderIdRequest], dict[str, str]]:
        org = await ct.admin.get_org(org_name)
        found = await ct.sms_service.list_sender_ids(
            _acting_for(org), flow=None if flow is None else flow.upper()
        )
        return found, {org.id: org.name}

    found, names = _admin(db, action)
    if as_json:
        _emit_json([_request_json(r) for r in found])
    else:
        _requests_table(found, names)


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
                _PLATFORM, status=wanted, all_orgs=True
            )
        else:
            org = await ct.admin.get_org(org_name)
            found = await ct.sms_service.list_sender_id_requests(_acting_for(org), status=wanted)
        return found, names

    found, names = _admin(db, action)
    if as_json:
        _emit_json([_request_json(r) for r in found])
    else:
        _requests_table(found, names)


# ------------------------------------------------------------- SMS opt-outs


@sms.group("opt-outs", short_help="List, add and remove opted-out numbers.")
def sms_opt_outs() -> None:
    """The organization's SMS opt-out list (numbers that receive nothing)."""


@sms_opt_outs.command("list")
@org_option
@db_option
@json_option
def opt_outs_list(org_name: str, db: str | None, as_json: bool) -> None:
    """List the numbers on the organization's opt-out list, newest first."""

    async def action(ct: Commtunnel) -> list[OptOut]:
        principal = _acting_for(await ct.admin.get_org(org_name))
        return await _all_pages(
            lambda page: ct.sms_service.list_opt_outs(principal, page=page, page_size=_PAGE_SIZE)
        )

    found = _admin(db, action)
    if as_json:
        _emit_json([_opt_out_json(o) for o in found])
    else:
        _table(
            ("PHONE", "SOURCE", "CREATED"),
            [(o.phone, o.source, _iso(o.created_at) or "") for o in found],
        )


@sms_opt_outs.command("add")
@org_option
@click.argument("phone")
@db_option
@json_option
def opt_outs_add(org_name: str, phone: str, db: str | None, as_json: bool) -> None:
    """Put PHONE (E.164, e.g. +14155550123) on the opt-out list."""

    async def action(ct: Commtunnel) -> tuple[str, bool]:
        org = await ct.admin.get_org(org_name)
        return await ct.sms_service.add_opt_out(_acting_for(org), phone)

    e164, created = _admin(db, action)
    if as_json:
        _emit_json({"phone": e164, "optedOut": True, "created": created})
    else:
        click.echo(f"opted out {e164}" + ("" if created else " (already on the list)"))


@sms_opt_outs.command("remove")
@org_option
@click.argument("phone")
@db_option
@json_option
def opt_outs_remove(org_name: str, phone: str, db: str | None, as_json: bool) -> None:
    """Take PHONE off the opt-out list (NOT_FOUND when it is not on it)."""

    async def action(ct: Commtunnel) -> str:
        org = await ct.admin.get_org(org_name)
        return await ct.sms_service.remove_opt_out(_acting_for(org), phone)

    e164 = _admin(db, action)
    if as_json:
        _emit_json({"phone": e164, "optedOut": False})
    else:
        click.echo(f"opted in {e164} again")


# ------------------------------------------------------------- SMS inbound


@sms.command("inbound", short_help="List received (MO) messages.")
@org_option
@db_option
@json_option
def sms_inbound(org_name: str, db: str | None, as_json: bool) -> None:
    """List the inbound (MO) messages the organization received, newest first."""

    async def action(ct: Commtunnel) -> list[InboundMessage]:
        principal = _acting_for(await ct.admin.get_org(org_name))
        return await _all_pages(
            lambda page: ct.sms_service.list_inbound(principal, page=page, page_size=_PAGE_SIZE)
        )

    found = _admin(db, action)
    if as_json:
        _emit_json([_inbound_json(m) for m in found])
    else:
        _table(
            ("ID", "FROM", "TO", "KEYWORD", "RECEIVED", "BODY"),
            [
                (
                    m.id,
                    m.sender,
                    m.recipient,
                    m.keyword or "-",
                    _iso(m.created_at) or "",
                    " ".join(m.body.split())[:60],
                )
                for m in found
            ],
        )


# ----------------------------------------------------------------- WhatsApp


@main.group(short_help="WhatsApp Cloud: the organization's line.")
def whatsapp() -> None:
    """The WhatsApp Cloud channel: each organization's line (phone number id, access token)."""


#: ``--access-token -``: read the token from stdin.
_FROM_STDIN = "-"


def _line_json(info: LineInfo) -> dict[str, Any]:
    """The line as the HTTP API shows it (``GET /v1/account/whatsapp-cloud-line``)."""
    return {
        "whatsappPhoneNumberId": info.whatsapp_phone_number_id,
        "usesPlatformDefault": info.uses_platform_default,
        "platformLineConfigured": info.platform_line_configured,
        "hasOwnAccessToken": info.has_own_access_token,
        "state": info.state,
    }


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
    changes: dict[str, str | None] = {}
    if phone_number_id is not None or clear_phone_number_id:
        changes["whatsappPhoneNumberId"] = phone_number_id
    if access_token is not None or clear_access_token:
        changes["whatsappAccessToken"] = access_token

    async def action(ct: Commtunnel) -> LineInfo:
        principal = _acting_for(await ct.admin.get_org(org_name))
        if changes:
            return await ct.whatsapp_service.update_line(principal, changes)
        return await ct.whatsapp_service.get_line(principal)

    info = _admin(db, action)
    if as_json:
        _emit_json(_line_json(info))
        return
    if info.uses_platform_default:
        line = "the platform default line" + (
            "" if info.platform_line_configured else " (not configured)"
        )
    else:
        line = f"phone number id {info.whatsapp_phone_number_id}"
    token = "its own" if info.has_own_access_token else "the platform's"
    click.echo(f"organization {org_name}: {line}, {token} access token, state {info.state}")
