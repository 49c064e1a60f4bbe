"""End to end, with real processes: ``commtunnel serve`` over HTTP to SMTP, and crash recovery.

Every wait here is bounded (see ``processes.py``), every process is killed
and every SMTP server stopped by fixtures, whatever the test's outcome.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

import pg
from commtunnel import Commtunnel, Settings
from commtunnel.domain.messages import Status
from commtunnel.testing import ManualClock, MockProvider
from processes import (
    STARTUP_SECONDS,
    Spawned,
    clean_env,
    cli,
    free_port,
    serve,
    stop_cleanly,
    wait_until,
)

pytestmark = pytest.mark.slow

ISO_MS_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


# --------------------------------------------------------------------------- SMTP servers


class RecordingHandler:
    """An aiosmtpd handler that keeps every message it is given and answers 250."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Record the message (parsed) and its envelope."""
        assert isinstance(envelope.content, bytes)
        parsed = message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        self.messages.append(parsed)
        self.envelopes.append((str(envelope.mail_from), list(envelope.rcpt_tos)))
        return "250 OK"


class StallingHandler:
    """An aiosmtpd handler whose DATA never answers: the provider call hangs mid-send."""

    def __init__(self) -> None:
        self.data_started = threading.Event()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Signal that a message arrived, then never reply (until the server stops)."""
        self.data_started.set()
        await asyncio.sleep(3600)
        return "451 never reached"


@pytest.fixture
def smtp_server() -> Iterator[Callable[[Any], int]]:
    """Start aiosmtpd servers on free loopback ports; every one is stopped afterwards."""
    controllers: list[Controller] = []

    def start(handler: Any) -> int:
        port = free_port()
        controller = Controller(handler, hostname="127.0.0.1", port=port)
        controller.start()
        controllers.append(controller)
        return port

    yield start
    for controller in controllers:
        controller.stop()


def stalled_worker(
    spawn: Callable[..., Spawned],
    db: Path,
    smtp_server: Callable[[Any], int],
    *,
    send_timeout: str,
) -> Spawned:
    """A `commtunnel worker` stuck in SMTP DATA on a server that never answers.

    Its lease is 30 s and ``send_timeout`` (seconds) bounds the attempt; the
    SMTP client itself would wait 60 s. Returns once DATA has started.
    """
    stall = StallingHandler()
    port = smtp_server(stall)
    worker = spawn(
        "worker", "--db", str(db), "--email-provider", f"smtp://127.0.0.1:{port}?timeout=60",
        env=clean_env(COMMTUNNEL_LEASE_SECONDS="30", COMMTUNNEL_SEND_TIMEOUT=send_timeout),
    )  # fmt: skip
    assert stall.data_started.wait(STARTUP_SECONDS), worker.stderr_text()
    return worker


# --------------------------------------------------------------------------- serve


def test_serve_sends_over_http_to_smtp_and_stops_on_sigterm(
    tmp_path: Path,
    smtp_server: Callable[[Any], int],
    spawn: Callable[..., Spawned],
) -> None:
    """A real HTTP send through `commtunnel serve` reaches an SMTP server, once, as sent.

    Set up with the CLI, send with httpx, poll until SENT; the SMTP server got
    one multipart/alternative message whose Message-ID is the API's
    ``messageId``; the timeline is queued -> processing -> sent; SIGTERM ends
    the server with status 0.
    """
    db = pg.fresh_db(tmp_path / "ct.db")
    sink = RecordingHandler()
    smtp_port = smtp_server(sink)
    cli(db, "orgs", "create", "acme")
    created = cli(
        db, "keys", "create", "--org", "acme", "--scopes", "send:email,read:email", "--json"
    )
    key = json.loads(created)["key"]
    cli(db, "senders", "add", "--org", "acme", "example.com")

    server, base = serve(spawn, db, "--email-provider", f"smtp://127.0.0.1:{smtp_port}")
    with httpx.Client(base_url=base, timeout=5.0) as http:
        auth = {"Authorization": f"Bearer {key}"}
        sent = http.post(
            "/v1/public/emails/send",
            headers={**auth, "x-idempotency-key": "e2e-1"},
            json={
                "from": "Acme <app@example.com>",
                "to": "bob@example.net",
                "subject": "End to end",
                "html": "<p>Hello <b>Bob</b></p>",
                "text": "Hello Bob",
            },
        )
        assert sent.status_code == 202, sent.text
        accepted = sent.json()
        assert accepted["status"] == "QUEUED"
        assert accepted["duplicate"] is False
        message_id = accepted["id"]

        status: dict[str, Any] = {}

        def is_sent() -> bool:
            nonlocal status
            response = http.get(f"/v1/public/emails/{message_id}", headers=auth)
            assert response.status_code == 200, response.text
            status = response.json()
            assert status["status"] in {"QUEUED", "PROCESSING", "SENT"}, status
            return bool(status["status"] == "SENT")

        wait_until(is_sent, 10, "status SENT")

        assert len(sink.messages) == 1
        mail = sink.messages[0]
        assert mail["Subject"] == "End to end"
        assert mail["From"] == "Acme <app@example.com>"
        assert mail["To"] == "bob@example.net"
        assert mail["Message-ID"] == status["messageId"]
        assert mail.get_content_type() == "multipart/alternative"
        parts = {part.get_content_type(): part for part in mail.iter_parts()}
        assert set(parts) == {"text/plain", "text/html"}
        assert isinstance(parts["text/plain"], EmailMessage)
        assert isinstance(parts["text/html"], EmailMessage)
        assert parts["text/plain"].get_content().strip() == "Hello Bob"
        assert "<b>Bob</b>" in parts["text/html"].get_content()
        assert sink.envelopes == [("app@example.com", ["bob@example.net"])]

        timeline = http.get(f"/v1/public/emails/{message_id}/timeline", headers=auth)
        assert timeline.status_code == 200
        events = timeline.json()["events"]
        assert [e["type"] for e in events] == ["email_queued", "email_processing", "email_sent"]
        assert all(ISO_MS_Z.match(e["createdAt"]) for e in events)
        assert [e["createdAt"] for e in events] == sorted(e["createdAt"] for e in events)

    stop_cleanly(server)
    assert server.stdout_text().startswith(f"commtunnel listening on {base} ")


# --------------------------------------------------------------------------- crash recovery


async def accept_one_email(db: Path) -> str:
    """Queue one email in process (org "default", sender verified); return its id."""
    async with Commtunnel.open(db=db, email_provider=MockProvider(), settings=Settings()) as ct:
        await ct.admin.add_sender(ct.org.id, "example.com")
        result = await ct.email.send(
            from_="app@example.com",
            to="carol@example.net",
            subject="Survives a crash",
            html="<p>still here</p>",
            text="still here",
        )
        return result.message.id


async def read_state(db: Path, message_id: str) -> tuple[Status, list[str], int]:
    """Status, timeline event types and leased job count of one message."""
    async with Commtunnel.open(db=db, email_provider=MockProvider(), settings=Settings()) as ct:
        status = await ct.email.get(message_id)
        events = await ct.email.timeline(message_id)
        return status.message.status, [e.type for e in events], await ct.backend.leased_job_count()


async def recover(db: Path, message_id: str, smtp_port: int) -> dict[str, Any]:
    """Run a worker past the dead worker's lease; return what the database then says."""
    clock = ManualClock(start=datetime.now(UTC) + timedelta(seconds=31))
    settings = Settings(lease_seconds=30, send_timeout=20, embedded_worker=False)
    async with Commtunnel.open(
        db=db, email_provider=f"smtp://127.0.0.1:{smtp_port}", clock=clock, settings=settings
    ) as ct:
        processed = await ct.run_worker_until_idle()
        status = await ct.email.get(message_id)
        return {
            "processed": processed,
            "status": status.message.status,
            "header": status.message.email.message_id_header if status.message.email else None,
            "events": await ct.email.timeline(message_id),
            "leased": await ct.backend.leased_job_count(),
        }


def test_worker_killed_mid_send_is_recovered_after_its_lease(
    tmp_path: Path,
    smtp_server: Callable[[Any], int],
    spawn: Callable[..., Spawned],
) -> None:
    """A worker SIGKILLed mid-send leaves a lease; once it expires the email is sent once more.

    The first worker hangs in SMTP DATA and is killed: the message stays
    PROCESSING with one leased job. A worker whose clock is past the lease
    claims it again (email_processing with leaseExpired), delivers it to a
    working SMTP server with the same Message-ID, and releases the job.
    """
    db = pg.fresh_db(tmp_path / "ct.db")
    message_id = asyncio.run(accept_one_email(db))

    worker = stalled_worker(spawn, db, smtp_server, send_timeout="20")
    worker.kill()
    assert worker.wait(timeout=10) == -signal.SIGKILL

    status, _, leased = asyncio.run(read_state(db, message_id))
    assert (status, leased) == (Status.PROCESSING, 1)

    sink = RecordingHandler()
    result = asyncio.run(recover(db, message_id, smtp_server(sink)))
    assert result["processed"] == 1
    assert result["status"] == Status.SENT
    assert result["leased"] == 0
    assert [m["Message-ID"] for m in sink.messages] == [result["header"]]
    events = result["events"]
    assert [e.type for e in events] == [
        "email_queued",
        "email_processing",
        "email_processing",
        "email_sent",
    ]
    assert "leaseExpired" not in events[1].details
    assert events[2].details["leaseExpired"] is True


# --------------------------------------------------------------------------- worker


def test_worker_delivers_and_stops_on_sigterm(
    tmp_path: Path,
    smtp_server: Callable[[Any], int],
    spawn: Callable[..., Spawned],
) -> None:
    """`commtunnel worker` delivers what another process accepted, and SIGTERM ends it with 0."""
    db = pg.fresh_db(tmp_path / "ct.db")
    message_id = asyncio.run(accept_one_email(db))
    sink = RecordingHandler()
    port = smtp_server(sink)
    worker = spawn("worker", "--db", str(db), "--email-provider", f"smtp://127.0.0.1:{port}")
    wait_until(lambda: len(sink.messages) == 1, STARTUP_SECONDS, "the SMTP sink to get a message")
    stop_cleanly(worker)
    assert worker.stdout_text().splitlines()[-1] == "worker stopped"
    status, types, leased = asyncio.run(read_state(db, message_id))
    assert status == Status.SENT
    assert types == ["email_queued", "email_processing", "email_sent"]
    assert leased == 0


def test_worker_sigterm_lets_the_attempt_in_flight_finish(
    tmp_path: Path,
    smtp_server: Callable[[Any], int],
    spawn: Callable[..., Spawned],
) -> None:
    """SIGTERM mid-send waits for the attempt (here: its send timeout) and records it."""
    db = pg.fresh_db(tmp_path / "ct.db")
    message_id = asyncio.run(accept_one_email(db))
    worker = stalled_worker(spawn, db, smtp_server, send_timeout="1.5")
    stop_cleanly(worker)
    status, types, leased = asyncio.run(read_state(db, message_id))
    assert status == Status.RETRYING
    assert types == ["email_queued", "email_processing", "email_retrying"]
    assert leased == 0


def test_worker_second_sigterm_stops_at_once(
    tmp_path: Path,
    smtp_server: Callable[[Any], int],
    spawn: Callable[..., Spawned],
) -> None:
    """A second SIGTERM abandons the attempt in flight: exit 1, said on stderr, job still leased."""
    db = pg.fresh_db(tmp_path / "ct.db")
    message_id = asyncio.run(accept_one_email(db))
    worker = stalled_worker(spawn, db, smtp_server, send_timeout="20")

    def stopped_after_another_sigterm() -> bool:
        # the first SIGTERM waits for the attempt (20 s send timeout); signals
        # sent before the worker handled the previous one merge, so repeat
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            return False
        return True

    wait_until(stopped_after_another_sigterm, 10, "the worker to stop on a second SIGTERM")
    assert worker.returncode == 1, worker.stderr_text()
    assert "worker stopped without waiting for attempts in flight" in worker.stderr_text()
    assert "Traceback" not in worker.stderr_text()
    status, types, leased = asyncio.run(read_state(db, message_id))
    assert (status, types, leased) == (
        Status.PROCESSING,
        ["email_queued", "email_processing"],
        1,
    )
