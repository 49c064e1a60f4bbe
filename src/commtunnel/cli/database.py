"""``commtunnel migrate``: bring the database's schema to this version, or check whether it is."""

from __future__ import annotations

import sys

import click

from commtunnel.backends import pending_migrations, stored_schema_version
from commtunnel.backends.schema import LATEST_VERSION, refuse_newer
from commtunnel.cli._support import db_option, report, run, run_admin, settings_from
from commtunnel.client import Commtunnel


@click.command(short_help="Apply pending schema migrations (or --check for them).")
@db_option
@click.option(
    "--check",
    is_flag=True,
    help="Change nothing; exit 1 when migrations are pending (for deploy pipelines).",
)
@click.option("--json", "as_json", is_flag=True, help="Print {version, latest, pending} as JSON.")
def migrate(db: str | None, check: bool, as_json: bool) -> None:
    """Apply every pending migration, once, whatever else is starting at the same time.

    ``serve`` and ``worker`` do the same when they start; run this first in a
    deployment so that no process starts on a schema it must change. On
    PostgreSQL, migrations run under an advisory lock, so concurrent starts
    migrate once. A database written by a newer Commtunnel is refused (exit 1).
    """
    settings = settings_from(db=db)
    if check:

        async def read() -> int:
            return refuse_newer(stored_schema_version(settings.db))

        version = run(read)
    else:

        async def action(ct: Commtunnel) -> int:
            return await ct.backend.read_schema_version()  # open() has migrated it

        version = run_admin(db, action)
    pending = len(pending_migrations(settings.db, version))
    report(
        as_json,
        {"version": version, "latest": LATEST_VERSION, "pending": pending},
        f"schema version {version} of {LATEST_VERSION}"
        + (f" ({pending} pending)" if pending else " (up to date)"),
    )
    if check and pending:
        sys.exit(1)
