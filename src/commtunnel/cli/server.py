"""The long-running commands: ``serve`` (HTTP API, embedded worker) and ``worker``."""

from __future__ import annotations

import asyncio
import importlib.util
import signal
from types import FrameType
from typing import Any

import click

from commtunnel.cli._support import (
    configure_logging,
    db_option,
    fail,
    log_level_option,
    open_facade,
    provider_option,
    run,
    settings_from,
)
from commtunnel.config import Settings
from commtunnel.providers import redact_url


@click.command(short_help="Serve the HTTP API (and the dispatch worker).")
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
        fail(
            f"'commtunnel serve' needs Starlette and uvicorn ({exc.name or exc} is missing): "
            "pip install 'commtunnel[http]'"
        )
    settings = settings_from(
        db=db,
        host=host,
        port=port,
        email_provider=email_provider,
        email_providers=email_provider,  # the flag wins over COMMTUNNEL_EMAIL_PROVIDERS too
        embedded_worker=False if no_worker else None,
    )
    configure_logging(log_level)
    ct = open_facade(settings)
    _warn_unshared(settings)
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
        # The app reads X-Forwarded-For itself, believing only
        # COMMTUNNEL_TRUSTED_PROXIES (commtunnel.domain.network). uvicorn's own
        # rewrite would trust any peer on 127.0.0.1 and bypass that setting.
        proxy_headers=False,
    )
    where = f"db {settings.db_display}, email {_providers(settings)}, " + (
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


def _providers(settings: Settings) -> str:
    """The email providers for the startup line, in order, passwords masked."""
    return ", ".join(redact_url(url) for url in settings.email_provider_urls)


def _warn_unshared(settings: Settings) -> None:
    """Print :attr:`Settings.unshared_state_warning` on stderr, if there is one."""
    warning = settings.unshared_state_warning
    if warning is not None:
        click.echo(f"warning: {warning}", err=True)


def _ignore_signal(_signum: int, _frame: FrameType | None) -> None:
    """Signal handler that does nothing (uvicorn has already shut down)."""


@click.command()
@db_option
@provider_option
@log_level_option
def worker(db: str | None, email_provider: str | None, log_level: str) -> None:
    """Run the dispatch worker until SIGINT/SIGTERM.

    The first signal stops claiming new jobs and lets attempts in flight
    finish (each is bounded by COMMTUNNEL_SEND_TIMEOUT); a second one stops at
    once with exit status 1, and jobs still leased are claimed again when
    their lease expires.
    """
    settings = settings_from(db=db, email_provider=email_provider, email_providers=email_provider)
    configure_logging(log_level)

    async def main() -> None:
        ct = open_facade(settings)
        _warn_unshared(settings)
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
            where = f"db {settings.db_display}, email {_providers(settings)}"
            click.echo(f"commtunnel worker running ({where})")
            try:
                await ct.run_worker(stop)
            except asyncio.CancelledError:
                click.echo("worker stopped without waiting for attempts in flight", err=True)
                raise click.exceptions.Exit(1) from None
        click.echo("worker stopped")

    run(main)
