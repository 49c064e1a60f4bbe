"""``commtunnel providers health``: each provider's circuit, error rate and last error.

The configured providers (``COMMTUNNEL_EMAIL_PROVIDERS`` /
``COMMTUNNEL_SMS_PROVIDERS``, or the singular settings) are loaded, which
connects to nothing, and shown beside what the workers last stored about
them (:meth:`Commtunnel.provider_health <commtunnel.client.Commtunnel.provider_health>`).
"""

from __future__ import annotations

import click

from commtunnel.cli._support import (
    converter,
    db_option,
    emit_json,
    iso,
    json_option,
    open_facade,
    run,
    settings_from,
    table,
)
from commtunnel.domain.circuit import ProviderHealth
from commtunnel.shapes import provider_health_json


@click.group(short_help="Email and SMS providers: health.")
def providers() -> None:
    """Email and SMS providers in failover order, and their health."""


@providers.command("health", short_help="Circuit state, recent error rate and last error.")
@db_option
@json_option
def providers_health(db: str | None, as_json: bool) -> None:
    """Show each provider's circuit (CLOSED, OPEN, HALF_OPEN), calls and faults in the last
    5 minutes, and its last provider fault, as the workers reported them."""
    settings = settings_from(db=db)

    async def main() -> list[ProviderHealth]:
        ct = open_facade(settings, whatsapp_provider=None)
        await ct.backend.open()
        try:
            return await ct.provider_health()
        finally:
            await ct.aclose()

    reports = run(main)
    if as_json:
        emit_json(provider_health_json(converter(), reports))
        return
    table(
        ["CHANNEL", "PROVIDER", "STATE", "CALLS", "FAULTS", "LAST ERROR", "REPORTED"],
        [
            [
                r.channel,
                r.provider,
                str(r.state),
                str(r.calls),
                str(r.failures),
                "-" if r.last_error is None else f"{r.last_error_category}: {r.last_error}"[:60],
                "never" if r.updated_at is None else f"{iso(r.updated_at)} by {r.reported_by}",
            ]
            for r in reports
        ],
    )
