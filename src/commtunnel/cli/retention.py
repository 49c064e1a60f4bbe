"""``commtunnel purge``: delete what is past its retention now (as the worker does)."""

from __future__ import annotations

import attrs
import click

from commtunnel.cli._support import db_option, json_option, record_json, report, run_admin
from commtunnel.client import Commtunnel
from commtunnel.ports import PurgeCounts


def counts_json(counts: PurgeCounts, *, dry_run: bool) -> dict[str, object]:
    """``{dryRun, messages, events, webhookDeliveries, ...}``: rows deleted (or, dry,
    deletable) per table, camelCased as on the wire."""
    return {"dryRun": dry_run, **record_json(counts, PurgeCounts)}


def counts_text(counts: PurgeCounts, *, dry_run: bool) -> str:
    """One line: ``purged 3 messages, 12 events, ...`` (``would purge`` for a dry run)."""
    verb = "would purge" if dry_run else "purged"
    parts = [f"{value} {name.replace('_', ' ')}" for name, value in attrs.asdict(counts).items()]
    return f"{verb} {', '.join(parts)}"


@click.command(short_help="Delete records past their retention now.")
@db_option
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
@json_option
def purge(db: str | None, dry_run: bool, as_json: bool) -> None:
    """Delete messages, events and attempts older than COMMTUNNEL_RETENTION (90 days).

    Messages that still have a job (scheduled, queued, being retried) are
    kept. Expired idempotency keys and old email batch answers, inbound
    messages and webhook deliveries go too. The worker does the same every
    COMMTUNNEL_PURGE_INTERVAL seconds; this runs it once, in batches of
    COMMTUNNEL_PURGE_BATCH.
    """

    async def action(ct: Commtunnel) -> PurgeCounts:
        return await ct.purge_until_done(dry_run=dry_run)

    counts = run_admin(db, action)
    report(as_json, counts_json(counts, dry_run=dry_run), counts_text(counts, dry_run=dry_run))
