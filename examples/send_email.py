"""Send an email in process, no server: once with the async facade, once with the sync one.

Run it from a checkout with the package installed (``./dev`` sets that up)::

    .venv/bin/python examples/send_email.py

Everything goes to a temporary directory: the SQLite database and the
``outbox`` provider's ``.eml`` files (one per message, open them in any mail
client). Pass a directory as the first argument to keep them instead.
In an app you would point ``db`` at a real file and ``email_provider`` at
``smtp://user:pass@host:587?starttls=true`` (or set ``COMMTUNNEL_EMAIL_PROVIDER``).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from commtunnel import Commtunnel, SyncCommtunnel


async def send_async(workdir: Path) -> None:
    """The async facade: what an asyncio app (FastAPI, Starlette, a worker) uses."""
    outbox = workdir / "outbox"
    async with Commtunnel.open(
        db=workdir / "app.db", email_provider=f"outbox://{outbox}", org="acme"
    ) as ct:
        # Only verified senders may send: a whole domain, or one address.
        await ct.admin.add_sender(ct.org.id, "example.com")
        result = await ct.email.send(
            from_="Acme <hello@example.com>",
            to="someone@example.net",
            subject="Welcome to Acme",
            html="<p>Hello from <b>Commtunnel</b></p>",
            text="Hello from Commtunnel",
            idempotency_key="welcome-someone",  # a retry with this key sends nothing twice
        )
        message_id = result.message.id
        print(
            f"async: accepted {message_id} (status {result.message.status}, "
            f"duplicate {result.duplicate})"
        )
        # A server runs the worker in the background; a script can run it to idle.
        await ct.run_worker_until_idle()
        status = await ct.email.get(message_id)
        print(f"async: final status {status.message.status}")
        events = await ct.email.timeline(message_id)
        print("async: timeline " + " -> ".join(event.type for event in events))
        print(f"async: eml {outbox / (message_id + '.eml')}")


def send_sync(workdir: Path) -> None:
    """The sync facade: what a Flask or Django view uses (it runs a loop in a thread)."""
    outbox = workdir / "outbox"
    sc = SyncCommtunnel(db=workdir / "app.db", email_provider=f"outbox://{outbox}", org="acme")
    try:
        sc.call(sc.ct.admin.add_sender, sc.ct.org.id, "example.com")  # already there: no-op
        result = sc.email.send(
            from_="hello@example.com",
            to="someone-else@example.net",
            subject="Your receipt",
            text="Thanks for your order.",
        )
        message_id = result.message.id
        print(f"sync: accepted {message_id} (status {result.message.status})")
        sc.run_worker_until_idle()
        print(f"sync: final status {sc.email.get(message_id).message.status}")
        print(f"sync: eml {outbox / (message_id + '.eml')}")
    finally:
        sc.close()


def main() -> None:
    """Run both examples in ``argv[1]`` or a temporary directory."""
    if len(sys.argv) > 1:
        workdir = Path(sys.argv[1]).absolute()
        workdir.mkdir(parents=True, exist_ok=True)
        asyncio.run(send_async(workdir))
        send_sync(workdir)
        return
    with tempfile.TemporaryDirectory(prefix="commtunnel-example-") as tmp:
        asyncio.run(send_async(Path(tmp)))
        send_sync(Path(tmp))
        print(f"(everything above lived in {tmp}, removed now; pass a directory to keep it)")


if __name__ == "__main__":
    main()
