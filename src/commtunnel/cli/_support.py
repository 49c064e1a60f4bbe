"""What every ``commtunnel`` command shares: opening the facade, errors, output, options.

A command body is: parse flags -> :func:`run_admin` / :func:`run_for_org` an
``action`` on a facade -> :func:`report` or :func:`listing` the result.
Errors leave through :func:`fail` (exit 1) or :class:`click.UsageError`
(exit 2), never as a traceback.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from datetime import datetime
from typing import Any, NoReturn, TypeVar
from urllib.parse import quote

import cattrs
import click
import psycopg

from commtunnel.client import Commtunnel
from commtunnel.config import Settings
from commtunnel.domain.delivery import ErrorCategory, ProviderResult
from commtunnel.domain.errors import CommtunnelError, NotFoundError
from commtunnel.domain.events import format_timestamp
from commtunnel.domain.keys import ALL_SCOPES, Organization, Principal, Scope
from commtunnel.ports import DeliveryReceipt, OutgoingEmail, OutgoingSms, OutgoingWhatsApp
from commtunnel.services.sms import Page
from commtunnel.shapes import make_converter

T = TypeVar("T")
Item = TypeVar("Item")

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")

# --------------------------------------------------------------------------- errors


def fail(
    message: str, code: str | None = None, details: Mapping[str, Any] | None = None
) -> NoReturn:
    """Print ``error: message (CODE)`` (and any details) on stderr and exit with status 1."""
    suffix = f" ({code})" if code else ""
    click.echo(f"error: {message}{suffix}", err=True)
    for field, reason in (details or {}).items():
        if str(reason) not in message:  # "No organization 'x'" needs no "org: x" below it
            click.echo(f"  {field}: {reason}", err=True)
    raise click.exceptions.Exit(1)


def run(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run one command's coroutine on a fresh event loop, turning known errors into exit 1.

    A :class:`CommtunnelError` prints its message, code and details; a SQLite
    or PostgreSQL error (an unreadable file, a server that refuses) and an
    ``OSError`` print their text.
    """
    try:
        return asyncio.run(main())
    except CommtunnelError as exc:
        fail(exc.message, exc.code, exc.details)
    except (sqlite3.Error, psycopg.Error) as exc:
        fail(f"database: {exc}")
    except OSError as exc:
        fail(str(exc))


def _bad_configuration(exc: ValueError) -> click.UsageError:
    return click.UsageError(f"invalid configuration: {exc}")


# --------------------------------------------------------------------------- the facade


def settings_from(**flags: Any) -> Settings:
    """Settings from the environment with the flags given (None means "not given").

    Raises:
        click.UsageError: a ``COMMTUNNEL_*`` variable that does not parse (exit 2).
    """
    try:
        return Settings.from_env(**flags)
    except ValueError as exc:
        raise _bad_configuration(exc) from None


def open_facade(settings: Settings, **providers: Any) -> Commtunnel:
    """:meth:`Commtunnel.open` on ``settings`` (``providers``: instances overriding them).

    Raises:
        click.UsageError: a setting that parsed but cannot be used, e.g. a
            ``WHATSAPP_LINE_MAP`` that is no map (exit 2).
        click.exceptions.Exit: a :class:`CommtunnelError`, e.g. a provider URL
            no installed plugin handles, printed by :func:`fail` (exit 1).
    """
    try:
        return Commtunnel.open(settings=settings, **providers)
    except CommtunnelError as exc:
        fail(exc.message, exc.code, exc.details)
    except ValueError as exc:
        raise _bad_configuration(exc) from None


class NoProvider:
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


def run_admin(db: str | None, action: Callable[[Commtunnel], Awaitable[T]]) -> T:
    """Open storage only (no provider is loaded), run ``action``, close; its result.

    Errors as :func:`settings_from`, :func:`open_facade` and :func:`run`.
    """
    settings = settings_from(db=db)

    async def main() -> T:
        none = NoProvider()
        ct = open_facade(settings, email_provider=none, sms_provider=none, whatsapp_provider=none)
        # Storage only: ct.start() would also create the in-process "default"
        # organization, a side effect no administration command asked for.
        await ct.backend.open()
        try:
            return await action(ct)
        finally:
            await ct.aclose()

    return run(main)


def run_for_org(
    db: str | None, org_name: str, action: Callable[[Commtunnel, Organization], Awaitable[T]]
) -> T:
    """:func:`run_admin` with the ``--org`` organization (a name or an id) looked up first.

    An unknown organization exits 1 with ``NOT_FOUND``.
    """

    async def with_org(ct: Commtunnel) -> T:
        return await action(ct, await ct.admin.get_org(org_name))

    return run_admin(db, with_org)


def acting_for(org: Organization) -> Principal:
    """The organization's principal at the console: every scope, no API key.

    Services record such a principal's actions as done by ``cli``.
    """
    return Principal(org_id=org.id, scopes=ALL_SCOPES)


#: Review and cross-organization listings are platform actions: the principal
#: carries only platform:admin, so nothing else can be done in its name. Its
#: organization is never read by those actions.
PLATFORM = Principal(org_id="platform", scopes=frozenset({Scope.PLATFORM_ADMIN.value}))

#: Listings ask the service page by page (it caps a page at 100) and print everything.
PAGE_SIZE = 100


async def all_pages(fetch: Callable[..., Awaitable[Page]], principal: Principal) -> list[Any]:
    """Every item of a paged listing: ``fetch(principal, page=n, page_size=PAGE_SIZE)``, n = 1.."""
    items: list[Any] = []
    for page in itertools.count(1):
        result = await fetch(principal, page=page, page_size=PAGE_SIZE)
        items.extend(result.items)
        if not result.items or len(items) >= result.total:
            break
    return items


# --------------------------------------------------------------------------- output


def iso(value: datetime | None) -> str | None:
    """Wire timestamp: UTC, ISO 8601 with milliseconds and ``Z`` (None stays None)."""
    return None if value is None else format_timestamp(value)


@functools.cache
def converter() -> cattrs.Converter:
    """The API's converter (:func:`commtunnel.shapes.make_converter`), made once per process."""
    return make_converter()


def record_json(record: Any, cls: type[Any]) -> dict[str, Any]:
    """``record`` in the shape the HTTP API gives ``cls`` records."""
    shaped: dict[str, Any] = converter().unstructure(record, cls)
    return shaped


def emit_json(value: Any) -> None:
    """Print ``value`` as one line of JSON on stdout (non-ASCII kept as is)."""
    click.echo(json.dumps(value, ensure_ascii=False))


def report(as_json: bool, json_value: Any, text: str) -> None:
    """Print ``json_value`` as JSON (``--json``) or else the sentence ``text`` on stdout."""
    if as_json:
        emit_json(json_value)
    else:
        click.echo(text)


def show_webhook_token(
    token: str, label: str, urls: Sequence[str], *, rotated: bool, as_json: bool
) -> None:
    """Print an inbound webhook token: ``{"token"}`` as JSON, or else the token alone on stdout.

    Without ``--json`` the ``POST <url>?token=`` lines it guards go to stderr
    (so ``TOKEN=$(commtunnel ...)`` captures the token only).

    Args:
        token: the organization's token.
        label: what it is, for people (``SMS webhook token``).
        urls: the webhook URLs it guards, without the query.
        rotated: it was just replaced (the line says ``new``).
        as_json: ``--json``.
    """
    if as_json:
        emit_json({"token": token})
        return
    click.echo(f"{'new ' if rotated else ''}{label}; it guards:", err=True)
    for url in urls:
        click.echo(f"  POST {url}?token={quote(token, safe='')}", err=True)
    click.echo(token)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Print rows as aligned columns (or ``(none)`` when there are none)."""
    if not rows:
        click.echo("(none)")
        return
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    for line in (headers, *rows):
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())


def listing(
    items: Sequence[Item],
    *,
    as_json: bool,
    to_json: Callable[[Item], dict[str, Any]],
    headers: Sequence[str],
    row: Callable[[Item], Sequence[str]],
) -> None:
    """Print ``items`` as a JSON array of ``to_json(item)`` (``--json``) or as a table."""
    if as_json:
        emit_json([to_json(item) for item in items])
    else:
        table(headers, [row(item) for item in items])


def configure_logging(level: str) -> None:
    """Log to stderr from ``level`` (one of :data:`LOG_LEVELS`) up, with timestamps."""
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


# --------------------------------------------------------------------------- options

db_option = click.option(
    "--db",
    metavar="PATH",
    default=None,
    help="SQLite file or postgresql:// URL.  [default: $COMMTUNNEL_DB or ./commtunnel.db]",
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
