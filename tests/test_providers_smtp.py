"""The SMTP provider against a real aiosmtpd server on 127.0.0.1.

The server runs in aiosmtpd's Controller thread; :class:`Recorder` is its
handler. It records every envelope with the raw bytes and the peer (one
peer = one TCP connection), and can be told to refuse, hold or drop.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import shutil
import socket
import ssl
import subprocess
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiosmtplib
import anyio
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from commtunnel.domain.delivery import ErrorCategory, Outcome, ProviderResult
from commtunnel.domain.errors import ProviderConfigError
from commtunnel.domain.messages import EmailContent
from commtunnel.ports import EmailProvider, OutgoingEmail
from commtunnel.providers import load_provider
from commtunnel.providers.smtp import SmtpProvider, SmtpSettings, classify
from commtunnel.testing import ManualClock


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# --------------------------------------------------------------------------- helpers


def outgoing(
    *,
    subject: str = "Your receipt",
    text: str | None = "Thanks for your order.\n",
    html: str | None = "<p>Thanks for your <b>order</b>.</p>",
    to: str = "Bob <bob@example.com>",
    from_addr: str = "Shop <shop@example.com>",
) -> OutgoingEmail:
    message_id = str(uuid.uuid4())
    content = EmailContent(
        from_addr=from_addr,
        to=to,
        subject=subject,
        text=text,
        html=html,
        message_id_header=f"<{message_id}@mail.commtunnel.test>",
    )
    return OutgoingEmail(
        message_id=message_id,
        org_id="org-1",
        content=content,
        created_at=datetime(2026, 1, 1, 12, tzinfo=UTC),
    )


def free_port() -> int:
    """A TCP port nothing listens on (bound, read, released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    peer: Any

    def parsed(self) -> EmailMessage:
        msg = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        return msg


@dataclass
class Recorder:
    """aiosmtpd handler: records, and replies as configured (runs in the server thread)."""

    mail_reply: str | None = None
    rcpt_reply: str | None = None
    data_reply: str | None = None
    drop_next_mail: bool = False  # close the connection instead of answering MAIL, once
    messages: list[Received] = field(default_factory=list)
    peers: list[Any] = field(default_factory=list)  # distinct connections that sent MAIL
    quits: int = 0
    servers: list[Any] = field(default_factory=list)
    # Holding DATA: every DATA waits for `release` once `hold` is set.
    hold: bool = False
    in_flight: int = 0
    max_in_flight: int = 0
    hold_target: int = 0
    target_reached: threading.Event = field(default_factory=threading.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if session.peer not in self.peers:
            self.peers.append(session.peer)
        if server not in self.servers:
            self.servers.append(server)
        if self.drop_next_mail:
            self.drop_next_mail = False
            server.transport.close()
            return "421 4.4.2 closing"
        if self.mail_reply:
            return self.mail_reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if self.rcpt_reply:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.hold:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            if self.in_flight >= self.hold_target:
                self.target_reached.set()
            await self.release.wait()
            self.in_flight -= 1
        if self.data_reply:
            return self.data_reply
        self.messages.append(
            Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.content, session.peer)
        )
        return "250 2.0.0 queued"

    async def handle_QUIT(self, server: Any, session: Any, envelope: Any) -> str:
        self.quits += 1
        return "221 Bye"


class FreePortController(Controller):
    """aiosmtpd's Controller listening on a port the OS picks (``port=0``), so no race."""

    def _trigger_server(self) -> None:
        assert self.server is not None
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


@dataclass
class Smtpd:
    controller: FreePortController
    handler: Recorder

    @property
    def port(self) -> int:
        port: int = self.controller.port
        return port

    def url(self, query: str = "", userinfo: str = "", scheme: str = "smtp") -> str:
        base = f"{scheme}://{userinfo}127.0.0.1:{self.port}?local_hostname=localhost"
        return f"{base}&{query}" if query else base

    async def in_server(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` in the server's event loop and wait until it ran."""
        done = threading.Event()

        def run() -> None:
            try:
                fn()
            finally:
                done.set()

        self.controller.loop.call_soon_threadsafe(run)
        assert await anyio.to_thread.run_sync(done.wait, 5)

    async def close_connections(self) -> None:
        """Close every server-side connection, as an idle timeout would."""

        def close_all() -> None:
            for server in self.handler.servers:
                if server.transport is not None:
                    server.transport.close()

        await self.in_server(close_all)

    async def release_held(self) -> None:
        await self.in_server(self.handler.release.set)


@pytest.fixture
def make_smtpd() -> Iterator[Callable[..., Smtpd]]:
    """Start aiosmtpd Controllers (with extra SMTP options) and stop them after the test."""
    started: list[FreePortController] = []

    def start(handler: Recorder | None = None, **kwargs: Any) -> Smtpd:
        handler = handler or Recorder()
        controller = FreePortController(
            handler, hostname="127.0.0.1", port=0, server_hostname="localhost", **kwargs
        )
        controller.start()
        started.append(controller)
        return Smtpd(controller, handler)

    yield start
    for controller in started:
        controller.stop()


@pytest.fixture
def smtpd(make_smtpd: Callable[..., Smtpd]) -> Smtpd:
    return make_smtpd()


@pytest.fixture
async def provider(smtpd: Smtpd) -> AsyncIterator[SmtpProvider]:
    async with SmtpProvider.from_url(smtpd.url("pool_size=2"), clock=ManualClock()) as p:
        yield p


def assert_accepted(result: ProviderResult, email_: OutgoingEmail) -> None:
    assert result.outcome is Outcome.ACCEPTED, result
    assert result.provider_message_id == email_.content.message_id_header.strip("<>")


# --------------------------------------------------------------------------- content


@pytest.mark.anyio
async def test_multipart_message_arrives_with_headers_parts_and_envelope(
    provider: SmtpProvider, smtpd: Smtpd
) -> None:
    """The server receives both MIME parts, the headers, the Message-ID and the bare envelope."""
    email_ = outgoing()
    result = await provider.send_email(email_)
    assert_accepted(result, email_)
    [got] = smtpd.handler.messages
    assert got.mail_from == "shop@example.com"
    assert got.rcpt_tos == ["bob@example.com"]
    msg = got.parsed()
    assert msg["Message-ID"] == email_.content.message_id_header
    assert msg["X-Commtunnel-Message-Id"] == email_.message_id
    assert msg["From"] == "Shop <shop@example.com>"
    assert msg["To"] == "Bob <bob@example.com>"
    assert msg["Subject"] == "Your receipt"
    assert msg.get_content_type() == "multipart/alternative"
    plain, html = msg.iter_parts()
    assert plain.get_content_type() == "text/plain"
    assert plain.get_content().replace("\r\n", "\n") == "Thanks for your order.\n"
    assert html.get_content_type() == "text/html"
    assert "<b>order</b>" in html.get_content()


@pytest.mark.anyio
async def test_text_only_message_arrives_as_text_plain(
    provider: SmtpProvider, smtpd: Smtpd
) -> None:
    """A text-only email arrives as a single text/plain entity."""
    email_ = outgoing(html=None)
    assert_accepted(await provider.send_email(email_), email_)
    msg = smtpd.handler.messages[0].parsed()
    assert msg.get_content_type() == "text/plain"
    assert "Thanks for your order." in msg.get_content()


@pytest.mark.anyio
async def test_html_only_message_arrives_as_text_html(provider: SmtpProvider, smtpd: Smtpd) -> None:
    """An html-only email arrives as a single text/html entity."""
    email_ = outgoing(text=None)
    assert_accepted(await provider.send_email(email_), email_)
    msg = smtpd.handler.messages[0].parsed()
    assert msg.get_content_type() == "text/html"
    assert "<b>order</b>" in msg.get_content()


@pytest.mark.anyio
async def test_non_ascii_subject_and_display_name_round_trip(
    provider: SmtpProvider, smtpd: Smtpd
) -> None:
    """A non-ASCII subject and display names survive the SMTP trip unchanged."""
    email_ = outgoing(
        subject="Grüße aus Köln — 東京 🚀",
        from_addr="Zoë Müller <zoe@example.com>",
        to="Jürgen Groß <juergen@example.org>",
    )
    assert_accepted(await provider.send_email(email_), email_)
    got = smtpd.handler.messages[0]
    assert got.data.isascii()
    msg = got.parsed()
    assert msg["Subject"] == "Grüße aus Köln — 東京 🚀"
    assert msg["From"].addresses[0].display_name == "Zoë Müller"
    assert msg["To"].addresses[0].display_name == "Jürgen Groß"
    assert got.rcpt_tos == ["juergen@example.org"]


@pytest.mark.anyio
async def test_unbuildable_message_is_permanent_rejected_without_connecting(
    provider: SmtpProvider, smtpd: Smtpd
) -> None:
    """A message that cannot be built is a permanent REJECTED and opens no connection."""
    result = await provider.send_email(outgoing(to="jürgen@example.com"))
    assert result.outcome is Outcome.PERMANENT
    assert result.error_category is ErrorCategory.REJECTED
    assert provider.open_connections == 0
    assert smtpd.handler.peers == []


# --------------------------------------------------------------------------- the pool


@pytest.mark.anyio
async def test_twenty_concurrent_sends_use_at_most_pool_size_connections(
    make_smtpd: Callable[..., Smtpd],
) -> None:
    """20 concurrent sends with pool_size=2 all arrive over at most 2 TCP connections."""
    smtpd = make_smtpd()
    emails = [outgoing() for _ in range(20)]
    results: list[ProviderResult] = []
    async with SmtpProvider.from_url(smtpd.url("pool_size=2"), clock=ManualClock()) as provider:

        async def send(e: OutgoingEmail) -> None:
            results.append(await provider.send_email(e))

        async with anyio.create_task_group() as tg:
            for e in emails:
                tg.start_soon(send, e)
        assert provider.open_connections <= 2
    assert [r.outcome for r in results] == [Outcome.ACCEPTED] * 20
    assert 1 <= len(smtpd.handler.peers) <= 2
    received = {m.parsed()["Message-ID"] for m in smtpd.handler.messages}
    assert received == {e.content.message_id_header for e in emails}


@pytest.mark.anyio
async def test_sequential_sends_reuse_one_connection(provider: SmtpProvider, smtpd: Smtpd) -> None:
    """Five sends one after another go over a single pooled connection."""
    for _ in range(5):
        assert (await provider.send_email(outgoing())).outcome is Outcome.ACCEPTED
    assert len(smtpd.handler.peers) == 1
    assert provider.open_connections == 1


@pytest.mark.anyio
async def test_concurrency_is_limited_to_pool_size(make_smtpd: Callable[..., Smtpd]) -> None:
    """With pool_size=2 and 6 sends in flight, only 2 connections open; the rest wait."""
    handler = Recorder(hold=True, hold_target=2)
    smtpd = make_smtpd(handler)
    results: list[ProviderResult] = []
    async with SmtpProvider.from_url(smtpd.url("pool_size=2"), clock=ManualClock()) as provider:

        async def send() -> None:
            results.append(await provider.send_email(outgoing()))

        async with anyio.create_task_group() as tg:
            for _ in range(6):
                tg.start_soon(send)
            assert await anyio.to_thread.run_sync(handler.target_reached.wait, 5)
            await anyio.wait_all_tasks_blocked()
            assert provider.open_connections == 2  # the other 4 sends wait for a connection
            assert handler.in_flight == 2
            await smtpd.release_held()
    assert len(results) == 6
    assert all(r.outcome is Outcome.ACCEPTED for r in results)
    assert handler.max_in_flight == 2
    assert len(handler.peers) == 2


@pytest.mark.anyio
async def test_connection_dropped_while_idle_is_replaced(
    provider: SmtpProvider, smtpd: Smtpd
) -> None:
    """After the server closes an idle pooled connection, the next send still succeeds."""
    assert (await provider.send_email(outgoing())).outcome is Outcome.ACCEPTED
    await smtpd.close_connections()
    email_ = outgoing()
    assert_accepted(await provider.send_email(email_), email_)
    assert len(smtpd.handler.peers) == 2
    assert len(smtpd.handler.messages) == 2
    assert provider.open_connections == 1


@pytest.mark.anyio
async def test_disconnect_on_first_use_of_pooled_connection_is_retried_once(
    provider: SmtpProvider, smtpd: Smtpd
) -> None:
    """A pooled connection that fails at its first command is replaced once, transparently."""
    assert (await provider.send_email(outgoing())).outcome is Outcome.ACCEPTED
    smtpd.handler.drop_next_mail = True  # the server hangs up when the reused conn says MAIL
    email_ = outgoing()
    assert_accepted(await provider.send_email(email_), email_)
    assert len(smtpd.handler.peers) == 2
    assert [m.parsed()["Message-ID"] for m in smtpd.handler.messages][-1] == (
        email_.content.message_id_header
    )


@pytest.mark.anyio
async def test_421_on_a_fresh_connection_is_not_retried(
    provider: SmtpProvider, smtpd: Smtpd
) -> None:
    """On a new connection, 421 is reported as transient PROVIDER_OUTAGE, not retried."""
    smtpd.handler.mail_reply = "421 4.3.2 service shutting down"
    result = await provider.send_email(outgoing())
    assert result.outcome is Outcome.TRANSIENT
    assert result.error_category is ErrorCategory.PROVIDER_OUTAGE
    assert len(smtpd.handler.peers) == 1


@pytest.mark.anyio
async def test_errored_connection_is_discarded(provider: SmtpProvider, smtpd: Smtpd) -> None:
    """After a refused send the connection is closed; the next send opens a fresh one."""
    smtpd.handler.rcpt_reply = "550 5.1.1 no such user"
    assert (await provider.send_email(outgoing())).outcome is Outcome.PERMANENT
    assert provider.open_connections == 0
    smtpd.handler.rcpt_reply = None
    assert (await provider.send_email(outgoing())).outcome is Outcome.ACCEPTED
    assert len(smtpd.handler.peers) == 2


@pytest.mark.anyio
async def test_aclose_quits_pooled_connections_and_later_sends_fail_softly(
    provider: SmtpProvider, smtpd: Smtpd
) -> None:
    """aclose says QUIT on each pooled connection; a send afterwards is a transient result."""
    assert (await provider.send_email(outgoing())).outcome is Outcome.ACCEPTED
    await provider.aclose()
    assert provider.open_connections == 0
    assert smtpd.handler.quits == 1
    result = await provider.send_email(outgoing())
    assert result.outcome is Outcome.TRANSIENT
    assert result.error_category is ErrorCategory.UNKNOWN


# --------------------------------------------------------------------------- failures


@pytest.mark.anyio
async def test_connection_refused_is_transient_outage() -> None:
    """A closed port gives transient PROVIDER_OUTAGE and leaves no connection open."""
    url = f"smtp://127.0.0.1:{free_port()}?local_hostname=localhost&timeout=5"
    async with SmtpProvider.from_url(url, clock=ManualClock()) as provider:
        result = await provider.send_email(outgoing())
        assert provider.open_connections == 0
    assert result.outcome is Outcome.TRANSIENT
    assert result.error_category is ErrorCategory.PROVIDER_OUTAGE


@pytest.mark.anyio
async def test_silent_server_times_out() -> None:
    """A server that accepts but never greets gives transient TIMEOUT after timeout=0.5 s."""
    writers: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await reader.read()  # until the client gives up and closes

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        url = f"smtp://127.0.0.1:{port}?local_hostname=localhost&timeout=0.5"
        async with SmtpProvider.from_url(url, clock=ManualClock()) as provider:
            result = await provider.send_email(outgoing())
    finally:
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()
    assert result.outcome is Outcome.TRANSIENT
    assert result.error_category is ErrorCategory.TIMEOUT


@pytest.mark.parametrize(
    ("stage", "reply", "outcome", "category"),
    [
        ("rcpt", "550 5.1.1 no such user", Outcome.PERMANENT, ErrorCategory.INVALID_RECIPIENT),
        (
            "rcpt",
            "553 5.1.3 bad address syntax",
            Outcome.PERMANENT,
            ErrorCategory.INVALID_RECIPIENT,
        ),
        ("rcpt", "554 5.7.1 relay access denied", Outcome.PERMANENT, ErrorCategory.REJECTED),
        ("rcpt", "451 4.3.0 try later", Outcome.TRANSIENT, ErrorCategory.PROVIDER_OUTAGE),
        ("rcpt", "450 4.2.0 mailbox busy", Outcome.TRANSIENT, ErrorCategory.RECIPIENT_DEFERRED),
        ("rcpt", "452 4.2.2 mailbox full", Outcome.TRANSIENT, ErrorCategory.RECIPIENT_DEFERRED),
        ("rcpt", "451 4.7.1 greylisted", Outcome.TRANSIENT, ErrorCategory.RECIPIENT_DEFERRED),
        ("rcpt", "452 4.5.3 too many recipients", Outcome.TRANSIENT, ErrorCategory.RATE_LIMITED),
        ("mail", "451 try later", Outcome.TRANSIENT, ErrorCategory.PROVIDER_OUTAGE),
        ("mail", "553 5.7.1 sender not allowed", Outcome.PERMANENT, ErrorCategory.REJECTED),
        ("data", "554 5.6.0 rejected", Outcome.PERMANENT, ErrorCategory.REJECTED),
        ("data", "451 4.7.1 rate limit exceeded", Outcome.TRANSIENT, ErrorCategory.RATE_LIMITED),
    ],
)
@pytest.mark.anyio
async def test_server_replies_are_classified(
    provider: SmtpProvider,
    smtpd: Smtpd,
    stage: str,
    reply: str,
    outcome: Outcome,
    category: ErrorCategory,
) -> None:
    """Each SMTP refusal maps to its outcome and category, quoting the server's reply."""
    setattr(smtpd.handler, f"{stage}_reply", reply)
    result = await provider.send_email(outgoing())
    assert (result.outcome, result.error_category) == (outcome, category)
    assert result.error_message is not None
    assert reply in result.error_message
    assert smtpd.handler.messages == []


# --------------------------------------------------------------------------- AUTH


def _authenticator(
    expected: tuple[str, str], seen: list[tuple[str, str]], *, echo: bool = False
) -> Any:
    """An aiosmtpd authenticator; with ``echo`` a refusal quotes the password (a bad server)."""

    def authenticate(
        server: Any, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        assert isinstance(data, LoginPassword)
        got = (data.login.decode(), data.password.decode())
        seen.append(got)
        message = f"535 5.7.8 wrong password {got[1]}" if echo else None
        return AuthResult(success=got == expected, handled=False, message=message)

    return authenticate


@pytest.mark.anyio
async def test_auth_with_url_decoded_credentials_succeeds(make_smtpd: Callable[..., Smtpd]) -> None:
    """The user name and password are percent-decoded from the URL and accepted by the server."""
    seen: list[tuple[str, str]] = []
    creds = ("me@example.com", "p/ss:w@rd%")
    smtpd = make_smtpd(auth_require_tls=False, authenticator=_authenticator(creds, seen))
    url = smtpd.url(userinfo="me%40example.com:p%2Fss%3Aw%40rd%25@")
    async with SmtpProvider.from_url(url, clock=ManualClock()) as provider:
        result = await provider.send_email(outgoing())
    assert result.outcome is Outcome.ACCEPTED
    assert seen == [creds]


@pytest.mark.anyio
async def test_auth_failure_is_transient_auth_without_the_password(
    make_smtpd: Callable[..., Smtpd],
) -> None:
    """Wrong credentials give transient AUTH with the 535 reply, the password masked."""
    seen: list[tuple[str, str]] = []
    authenticator = _authenticator(("u", "right"), seen, echo=True)
    smtpd = make_smtpd(auth_require_tls=False, authenticator=authenticator)
    url = smtpd.url(userinfo="u:wrong-s3cret@")
    async with SmtpProvider.from_url(url, clock=ManualClock()) as provider:
        result = await provider.send_email(outgoing())
    assert result.outcome is Outcome.TRANSIENT
    assert result.error_category is ErrorCategory.AUTH
    assert result.error_message is not None
    assert "535 5.7.8 wrong password ***" in result.error_message  # the server echoed it
    assert "wrong-s3cret" not in result.error_message
    assert seen[0] == ("u", "wrong-s3cret")
    assert smtpd.handler.messages == []


@pytest.mark.anyio
async def test_credentials_for_a_server_without_auth_are_transient_auth(smtpd: Smtpd) -> None:
    """Credentials configured for a server that offers no AUTH give transient AUTH."""
    url = smtpd.url(userinfo="u:pw@")
    async with SmtpProvider.from_url(url, clock=ManualClock()) as provider:
        result = await provider.send_email(outgoing())
    assert result.outcome is Outcome.TRANSIENT
    assert result.error_category is ErrorCategory.AUTH


# --------------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, made with the openssl CLI."""
    openssl = shutil.which("openssl")
    # .ci/run installs openssl when it is missing: the TLS paths must always be tested.
    assert openssl is not None, "the openssl command is required for the TLS tests"
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            *(openssl, "req", "-x509", "-nodes", "-days", "2", "-subj", "/CN=localhost"),
            *("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
            *("-keyout", str(key), "-out", str(cert)),
            *("-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def _server_context(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    return context


@pytest.mark.anyio
async def test_starttls_is_used_when_required(
    make_smtpd: Callable[..., Smtpd], certificate: tuple[Path, Path]
) -> None:
    """starttls=true upgrades the connection before MAIL, verifying the server certificate."""
    handler = Recorder()
    smtpd = make_smtpd(handler, tls_context=_server_context(certificate), require_starttls=True)
    client = ssl.create_default_context(cafile=str(certificate[0]))
    provider = SmtpProvider.from_url(
        smtpd.url("starttls=true"), clock=ManualClock(), tls_context=client
    )
    async with provider:
        result = await provider.send_email(outgoing())
    assert result.outcome is Outcome.ACCEPTED
    assert len(handler.messages) == 1


@pytest.mark.anyio
async def test_untrusted_certificate_is_a_transient_outage(
    make_smtpd: Callable[..., Smtpd], certificate: tuple[Path, Path]
) -> None:
    """A certificate the client does not trust fails the STARTTLS handshake: transient outage."""
    smtpd = make_smtpd(tls_context=_server_context(certificate), require_starttls=True)
    async with SmtpProvider.from_url(smtpd.url("starttls=true"), clock=ManualClock()) as provider:
        result = await provider.send_email(outgoing())
    assert result.outcome is Outcome.TRANSIENT
    assert result.error_category is ErrorCategory.PROVIDER_OUTAGE
    assert result.error_message is not None
    assert "certificate" in result.error_message.lower()


@pytest.mark.anyio
async def test_smtps_uses_implicit_tls(
    make_smtpd: Callable[..., Smtpd], certificate: tuple[Path, Path]
) -> None:
    """smtps:// speaks TLS from the first byte to an implicit-TLS server."""
    handler = Recorder()
    smtpd = make_smtpd(handler, ssl_context=_server_context(certificate))
    client = ssl.create_default_context(cafile=str(certificate[0]))
    url = smtpd.url(scheme="smtps")
    async with SmtpProvider.from_url(url, clock=ManualClock(), tls_context=client) as provider:
        result = await provider.send_email(outgoing())
    assert result.outcome is Outcome.ACCEPTED
    assert len(handler.messages) == 1


# --------------------------------------------------------------------------- URL and config


def test_redacted_url_and_repr_never_show_the_password() -> None:
    """redacted_url, repr(provider) and repr(settings) show *** instead of the password."""
    provider = SmtpProvider.from_url(
        "smtp://alice:hunter2%21@mail.example.com:2525?pool_size=3", clock=ManualClock()
    )
    assert provider.redacted_url == (
        "smtp://alice:***@mail.example.com:2525?timeout=30&pool_size=3"
    )
    for shown in (provider.redacted_url, repr(provider), repr(provider.settings)):
        assert "hunter2" not in shown
    assert provider.settings.password == "hunter2!"


def test_load_provider_errors_never_show_the_password() -> None:
    """An invalid option in a URL with a password is reported without the password."""
    with pytest.raises(ProviderConfigError) as excinfo:
        load_provider("smtp://alice:hunter2@mail.example.com?pool_size=0", clock=ManualClock())
    assert "hunter2" not in str(excinfo.value)
    assert "pool_size" in str(excinfo.value)


@pytest.mark.parametrize(
    ("url", "port", "use_tls", "start_tls"),
    [
        ("smtp://mail.example.com", 25, False, None),
        ("smtp://mail.example.com?starttls=true", 587, False, True),
        ("smtp://mail.example.com?starttls=false", 25, False, False),
        ("smtps://mail.example.com", 465, True, False),
        ("smtp://mail.example.com?tls=true", 465, True, False),
        ("smtp://mail.example.com:2525?starttls=true", 2525, False, True),
    ],
)
def test_from_url_default_ports_and_tls_modes(
    url: str, port: int, use_tls: bool, start_tls: bool | None
) -> None:
    """Ports default to 25, 587 with STARTTLS and 465 with implicit TLS; explicit ports win."""
    settings = SmtpSettings.from_url(url)
    assert (settings.port, settings.use_tls, settings.start_tls) == (port, use_tls, start_tls)


def test_from_url_reads_every_option() -> None:
    """timeout, pool_size, local_hostname and verify are parsed into the settings."""
    settings = SmtpSettings.from_url(
        "smtp://u@h?timeout=2.5&pool_size=4&local_hostname=client.example.com&verify=false"
    )
    assert settings.timeout == 2.5
    assert settings.pool_size == 4
    assert settings.local_hostname == "client.example.com"
    assert settings.verify is False
    assert settings.username == "u"
    assert settings.password is None


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("smtp://h?pool_size=0", "pool_size"),
        ("smtp://h?pool_size=65", "pool_size"),
        ("smtp://h?pool_size=two", "pool_size"),
        ("smtp://h?timeout=0", "timeout"),
        ("smtp://h?timeout=-1", "timeout"),
        ("smtp://h?timeout=nan", "timeout"),
        ("smtp://h?timeout=soon", "timeout"),
        ("smtp://h?starttls=maybe", "starttls"),
        ("smtp://h?verify=perhaps", "verify"),
        ("smtp://h?colour=blue", "unknown option 'colour'"),
        ("smtp://h?pool_size=2&pool_size=3", "twice"),
        ("smtp://h?tls=true&starttls=true", "excludes starttls"),
        ("smtps://h?starttls=true", "excludes starttls"),
        ("smtps://h?tls=false", "always uses TLS"),
        ("smtp://h?local_hostname=bad%20name", "local_hostname"),
        ("smtp://", "needs a host"),
        ("smtp://h:0", "port"),
        ("smtp://h:99999", "port"),
        ("smtp://h:abc", "port"),
        ("smtp://h/path", "no path"),
        ("smtp://h#top", "fragment"),
        ("smtp://:secret@h", "without a user name"),
        ("imap://h", "expected an smtp"),
    ],
)
def test_from_url_rejects_invalid_options(url: str, reason: str) -> None:
    """Each invalid URL or option is a ValueError that names the problem."""
    with pytest.raises(ValueError, match=reason):
        SmtpSettings.from_url(url)


def test_load_provider_returns_smtp_provider_for_smtp_and_smtps() -> None:
    """load_provider finds SmtpProvider for smtp:// and smtps:// through the entry points."""
    plain = load_provider("smtp://mail.example.com?starttls=true", clock=ManualClock())
    tls = load_provider("smtps://mail.example.com", clock=ManualClock())
    assert isinstance(plain, SmtpProvider)
    assert isinstance(tls, SmtpProvider)
    assert isinstance(plain, EmailProvider)
    assert plain.settings.start_tls is True
    assert tls.settings.use_tls is True
    assert plain.open_connections == 0  # nothing is opened before the first send


def test_load_provider_unknown_scheme_raises_provider_config_error() -> None:
    """A URL scheme no installed provider claims raises ProviderConfigError."""
    with pytest.raises(ProviderConfigError, match="nope"):
        load_provider("nope://x", clock=ManualClock())


# --------------------------------------------------------------------------- classify


@pytest.mark.parametrize(
    ("exc", "outcome", "category"),
    [
        (ConnectionRefusedError(111, "refused"), Outcome.TRANSIENT, ErrorCategory.PROVIDER_OUTAGE),
        (
            aiosmtplib.SMTPServerDisconnected("gone"),
            Outcome.TRANSIENT,
            ErrorCategory.PROVIDER_OUTAGE,
        ),
        (aiosmtplib.SMTPConnectError("no"), Outcome.TRANSIENT, ErrorCategory.PROVIDER_OUTAGE),
        (aiosmtplib.SMTPConnectTimeoutError("slow"), Outcome.TRANSIENT, ErrorCategory.TIMEOUT),
        (aiosmtplib.SMTPReadTimeoutError("slow"), Outcome.TRANSIENT, ErrorCategory.TIMEOUT),
        (TimeoutError(), Outcome.TRANSIENT, ErrorCategory.TIMEOUT),
        (
            aiosmtplib.SMTPAuthenticationError(535, "5.7.8 bad credentials"),
            Outcome.TRANSIENT,
            ErrorCategory.AUTH,
        ),
        (
            aiosmtplib.SMTPConnectResponseError(554, "no service for you"),
            Outcome.TRANSIENT,
            ErrorCategory.PROVIDER_OUTAGE,
        ),
        (
            aiosmtplib.SMTPResponseException(421, "4.7.0 too many connections"),
            Outcome.TRANSIENT,
            ErrorCategory.RATE_LIMITED,
        ),
        (
            aiosmtplib.SMTPRecipientRefused(551, "user not local", "a@b.c"),
            Outcome.PERMANENT,
            ErrorCategory.INVALID_RECIPIENT,
        ),
        (
            aiosmtplib.SMTPSenderRefused(550, "sender unknown", "a@b.c"),
            Outcome.PERMANENT,
            ErrorCategory.REJECTED,
        ),
        (aiosmtplib.SMTPDataError(554, "spam"), Outcome.PERMANENT, ErrorCategory.REJECTED),
        (RuntimeError("bug"), Outcome.TRANSIENT, ErrorCategory.UNKNOWN),
    ],
)
def test_classify_maps_exceptions(
    exc: BaseException, outcome: Outcome, category: ErrorCategory
) -> None:
    """classify maps each aiosmtplib/network exception to the documented outcome and category."""
    result = classify(exc)
    assert (result.outcome, result.error_category) == (outcome, category)
    assert result.error_message


def test_classify_quotes_refused_recipient_reply() -> None:
    """A refused recipient's code, text and address are in the error message."""
    exc = aiosmtplib.SMTPRecipientsRefused(
        [aiosmtplib.SMTPRecipientRefused(550, "5.1.1 no such user", "ghost@example.com")]
    )
    result = classify(exc)
    assert result.error_category is ErrorCategory.INVALID_RECIPIENT
    assert result.error_message == "550 5.1.1 no such user (recipient ghost@example.com)"
