"""The ``commtunnel`` command: run the server or a worker, and set up tenants.

::

    commtunnel serve  [--db PATH] [--host H] [--port N] [--email-provider URL] [--no-worker]
    commtunnel worker [--db PATH] [--email-provider URL]
    commtunnel orgs      create NAME | list | set --org NAME [--otp-ignores-opt-out true|false]
                         [--ip-allowlist CIDR,CIDR|any] [--rate-limit N/UNIT|default]
    commtunnel keys      create --org NAME --scopes a,b [--test] [--name N] | list | revoke
                         | set-limit --org NAME KEY_ID N/UNIT|default
    commtunnel senders   add --org NAME ADDRESS_OR_DOMAIN | list
    commtunnel templates add --org NAME --name N --subject S --html FILE [--text FILE] | list
    commtunnel sms token --org NAME [--rotate]
    commtunnel sms sender-ids request --org NAME SENDER_ID [--flow F] [--reason R]
                                | review REQUEST_ID --approve|--reject [--reason R]
                                | list --org NAME [--flow F] | requests [--org NAME] [--status S]
    commtunnel sms opt-outs list --org NAME | add --org NAME PHONE | remove --org NAME PHONE
    commtunnel sms inbound --org NAME
    commtunnel suppressions list --org NAME [--reason R]
                          | add --org NAME EMAIL [--reason R] [--expires-at T] [--detail D]
                          | remove --org NAME EMAIL | webhook-token --org NAME [--rotate]
    commtunnel webhooks create --org NAME URL [--events a,b] [--description D] [--disabled]
                      | list | get ID | update ID [--url U] [--events E|all] [--enable|--disable]
                      | delete ID | rotate-secret ID | test ID | replay DELIVERY_ID
                      | deliveries [--endpoint ID] [--message ID] [--limit N]
    commtunnel purge [--dry-run] [--json]
    commtunnel migrate [--check] [--json]
    commtunnel providers health [--json]
    commtunnel whatsapp line --org NAME [--phone-number-id ID | --clear-phone-number-id]
                                        [--access-token TOKEN | --clear-access-token]

One module a part: :mod:`~commtunnel.cli.server` (serve, worker),
:mod:`~commtunnel.cli.admin` (orgs, keys, senders, templates),
:mod:`~commtunnel.cli.sms`, :mod:`~commtunnel.cli.suppressions`, :mod:`~commtunnel.cli.whatsapp`,
:mod:`~commtunnel.cli.webhooks`, :mod:`~commtunnel.cli.retention` (purge),
:mod:`~commtunnel.cli.database` (migrate); what they share
is in :mod:`~commtunnel.cli._support`.

Settings come from :meth:`Settings.from_env <commtunnel.config.Settings.from_env>`
(defaults <- ``COMMTUNNEL_*`` environment <- these flags). Commands that
create something take ``--json`` and then print the created object as one
JSON object on stdout (camelCase, UTC ISO 8601 timestamps with milliseconds).
A :class:`~commtunnel.domain.errors.CommtunnelError` is printed as
``error: <message> (<CODE>)`` on stderr with exit status 1, and so is a
database that cannot be opened; usage errors and settings that cannot be
used exit with 2 (click's convention). No command prints a traceback for
any of them.

The administration commands never load the configured email, SMS or WhatsApp
provider: they open storage with :class:`~commtunnel.cli._support.NoProvider`,
so a provider URL that cannot be used on this machine does not stop anyone
from creating an organization or a key.

The ``sms`` and ``whatsapp`` commands act as the organization named by
``--org`` with every scope (the operator at the console is trusted), except
the platform actions (reviewing sender-ID requests, listing every
organization's requests), which act as a principal holding only
``platform:admin``.
"""

from __future__ import annotations

import click

from commtunnel.cli.admin import keys, orgs, senders, templates
from commtunnel.cli.database import migrate
from commtunnel.cli.providers import providers
from commtunnel.cli.retention import purge
from commtunnel.cli.server import serve, worker
from commtunnel.cli.sms import sms
from commtunnel.cli.suppressions import suppressions
from commtunnel.cli.webhooks import webhooks
from commtunnel.cli.whatsapp import whatsapp

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="commtunnel")
def main() -> None:
    """Commtunnel: transactional messaging as a library and an HTTP API."""


for _command in (serve, worker, orgs, keys, senders, templates, sms, whatsapp, webhooks, providers):
    main.add_command(_command)
main.add_command(purge)
main.add_command(migrate)
main.add_command(suppressions)
