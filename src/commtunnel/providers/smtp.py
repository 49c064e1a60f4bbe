"""The ``smtp`` / ``smtps`` provider: aiosmtplib over a small pool of reused connections.

``../shared/PERFORMANCE.md`` measured ~600 msg/s with a new connection per
message, ~1,100 with one reused connection and ~3,300 with 8 concurrent
reused ones, so :class:`SmtpProvider` keeps up to ``pool_size`` connections
open and lends each to one send at a time.

URL (parsed by :meth:`SmtpProvider.from_url`)::

    smtp://[user[:password]@]host[:port][?option=value&...]
    smtps://...                       implicit TLS, port 465 by default

=======================  ===============================================================
``starttls=true|false``  upgrade with STARTTLS (required when true; never when false).
                         Absent: upgrade when the server offers it. Port 587 when true.
``tls=true|false``       implicit TLS on ``smtp://`` (same as ``smtps://``).
``timeout=30``           seconds for connecting and for each SMTP reply (0 < t <= 3600).
``pool_size=8``          connections kept open at most (1..64).
``local_hostname=...``   the name sent in EHLO (default: this host's FQDN).
``verify=true|false``    check the server certificate (default true).
=======================  ===============================================================

User name and password are percent-decoded (``smtp://me%40x.com:p%2Fw@host``).
The default port is 25, 587 with ``starttls=true``, 465 with implicit TLS. The
password never appears in logs, ``repr`` or error messages: use
:attr:`SmtpProvider.redacted_url`.

Classification (``../shared/DESIGN.md``, "Provider results"), see :func:`classify`:

==========================================================  ===========================
connection refused, ``OSError``, TLS errors, disconnects    transient PROVIDER_OUTAGE
a greeting other than 220 (even 554): no service right now  transient PROVIDER_OUTAGE
``SMTPTimeoutError`` / ``TimeoutError``                     transient TIMEOUT
``SMTPAuthenticationError`` (535...), or no AUTH offered    transient AUTH
452, or a 4xx saying "too many" / "rate" / "limit"          transient RATE_LIMITED
  (to RCPT: only a 4xx saying so)
a 4xx to RCPT with 4.1.x/4.2.x or "greylist" (mailbox full)  transient RECIPIENT_DEFERRED
other 4xx (421, 450, 451...)                                transient PROVIDER_OUTAGE
5xx refusing a recipient (550, 551, 553)                    permanent INVALID_RECIPIENT
other 5xx (554 on DATA, sender refused...)                  permanent REJECTED
a message that cannot be built (no body, bad address)       permanent REJECTED
anything else                                               transient UNKNOWN
==========================================================  ===========================

AUTH is transient on purpose: the operator can fix the credentials and the
queued messages then go out; nothing accepted is lost.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from collections.abc import Sequence
from urllib.parse import quote, unquote, urlsplit

import aiosmtplib
import anyio
import anyio.lowlevel
import attrs

from commtunnel.domain.delivery import ErrorCategory, ProviderResult
from commtunnel.ports import Clock, OutgoingEmail
from commtunnel.providers import Closing
from commtunnel.providers._http import (
    bool_option,
    check_timeout,
    scrub,
    timeout_option,
    url_host,
    url_options,
    url_port,
)
from commtunnel.providers.mime import build_mime, envelope_recipients, envelope_sender

__all__ = ["SmtpProvider", "SmtpSettings", "classify"]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 30.0
DEFAULT_POOL_SIZE = 8
MAX_POOL_SIZE = 64
MAX_TIMEOUT = 3600.0
# QUIT on close is a courtesy: never wait long for it.
_QUIT_TIMEOUT = 5.0

_OPTIONS = ("starttls", "tls", "timeout", "pool_size", "local_hostname", "verify")

_RATE_WORDS = re.compile(
    r"too many|\brate\b|rate[ -]?limit|\blimit(?:ed|s)?\b|throttl|slow down", re.IGNORECASE
)
_HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})|\[[0-9A-Fa-f:.]+\]")
_INVALID_RECIPIENT_CODES = frozenset({550, 551, 553})


@attrs.frozen(kw_only=True)
class SmtpSettings:
    """Validated connection settings of an :class:`SmtpProvider`.

    Attributes:
        host: server name or IP address.
        port: TCP port.
        username: login name, or None for no AUTH.
        password: login password (never shown in ``repr``).
        use_tls: implicit TLS from the first byte (``smtps``).
        start_tls: True requires STARTTLS, False never upgrades, None upgrades
            when the server offers it.
        timeout: seconds allowed for connecting and for each server reply.
        pool_size: connections kept open at most (>= 1).
        local_hostname: the EHLO name, or None for this host's FQDN.
        verify: whether the server certificate is checked.
    """

    host: str
    port: int
    username: str | None = None
    password: str | None = attrs.field(default=None, repr=False)
    use_tls: bool = False
    start_tls: bool | None = None
    timeout: float = DEFAULT_TIMEOUT
    pool_size: int = DEFAULT_POOL_SIZE
    local_hostname: str | None = None
    verify: bool = True

    @classmethod
    def from_url(cls, url: str) -> SmtpSettings:
        """Parse and validate an ``smtp://`` or ``smtps://`` URL (see the module docstring).

        Args:
            url: the provider URL.

        Returns:
            The settings, with defaults filled in.

        Raises:
            ValueError: an unknown scheme or option, a bad value, or conflicting
                options; the message never contains the password.
        """
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("smtp", "smtps"):
            raise ValueError(f"expected an smtp:// or smtps:// URL, got scheme {scheme!r}")
        if parts.path not in ("", "/"):
            raise ValueError(f"an SMTP URL has no path, got {parts.path!r}")
        if parts.fragment:
            raise ValueError("an SMTP URL has no '#' fragment")
        host = parts.hostname
        if not host:
            raise ValueError("the SMTP URL needs a host (smtp://host:port)")
        port = url_port(parts)
        username = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password is not None else None
        if password is not None and not username:
            raise ValueError("a password was given without a user name")

        options = url_options(parts.query, _OPTIONS)

        start_tls = bool_option(options, "starttls")
        tls = bool_option(options, "tls")
        if scheme == "smtps":
            if tls is False:
                raise ValueError("smtps:// always uses TLS; drop tls=false or use smtp://")
            tls = True
        use_tls = bool(tls)
        if use_tls and start_tls:
            raise ValueError("implicit TLS (smtps:// or tls=true) excludes starttls=true")
        if use_tls:
            start_tls = False  # already encrypted: never try to upgrade again
        if port is None:
            port = 465 if use_tls else 587 if start_tls else 25

        timeout = timeout_option(options, DEFAULT_TIMEOUT)
        check_timeout(timeout, MAX_TIMEOUT)

        pool_size = DEFAULT_POOL_SIZE
        if "pool_size" in options:
            raw = options["pool_size"]
            if not raw.isdigit() or not 1 <= int(raw) <= MAX_POOL_SIZE:
                raise ValueError(
                    f"pool_size must be an integer from 1 to {MAX_POOL_SIZE}, got {raw!r}"
                )
            pool_size = int(raw)

        local_hostname = options.get("local_hostname")
        if local_hostname is not None and not _HOSTNAME.fullmatch(local_hostname):
            raise ValueError(
                f"local_hostname must be a host name or [address literal], got {local_hostname!r}"
            )
        verify = bool_option(options, "verify")

        return cls(
            host=host,
            port=port,
            username=username,
            password=password,
            use_tls=use_tls,
            start_tls=start_tls,
            timeout=timeout,
            pool_size=pool_size,
            local_hostname=local_hostname,
            verify=True if verify is None else verify,
        )

    @property
    def redacted_url(self) -> str:
        """The settings as a URL with the password shown as ``***`` (safe to log)."""
        scheme = "smtps" if self.use_tls else "smtp"
        userinfo = ""
        if self.username:
            userinfo = quote(self.username, safe="")
            userinfo += ":***@" if self.password is not None else "@"
        host = url_host(self.host)
        query = [f"timeout={self.timeout:g}", f"pool_size={self.pool_size}"]
        if self.start_tls is not None and not self.use_tls:
            query.insert(0, f"starttls={str(self.start_tls).lower()}")
        if self.local_hostname:
            query.append(f"local_hostname={self.local_hostname}")
        if not self.verify:
            query.append("verify=false")
        return f"{scheme}://{userinfo}{host}:{self.port}?{'&'.join(query)}"


#: a 4xx reply to RCPT about the mailbox, not the server: 4.1.x / 4.2.x or greylisting.
_MAILBOX_DEFERRAL = re.compile(r"^\s*4\.[12]\.\d{1,3}\b|greylist|graylist", re.IGNORECASE)


def _reply(code: int, message: str) -> str:
    return f"{code} {message}".strip()


def _classify_reply(code: int, message: str, *, recipient: bool) -> ProviderResult:
    """Classify one SMTP reply code (4xx / 5xx) and its text."""
    text = _reply(code, message)
    if 400 <= code < 500:
        if _RATE_WORDS.search(message) or (code == 452 and not recipient):
            return ProviderResult.transient(ErrorCategory.RATE_LIMITED, text)
        if recipient and _MAILBOX_DEFERRAL.search(message):
            # This one mailbox, for now (RFC 3463 §3.3/§3.4: 4.1.x address and
            # 4.2.x mailbox status; greylisting): no other provider would do
            # better, and the provider itself is fine.
            return ProviderResult.transient(ErrorCategory.RECIPIENT_DEFERRED, text)
        return ProviderResult.transient(ErrorCategory.PROVIDER_OUTAGE, text)
    if 500 <= code < 600:
        if recipient and code in _INVALID_RECIPIENT_CODES:
            return ProviderResult.permanent(ErrorCategory.INVALID_RECIPIENT, text)
        return ProviderResult.permanent(ErrorCategory.REJECTED, text)
    return ProviderResult.transient(ErrorCategory.UNKNOWN, f"unexpected reply {text}")


def classify(exc: BaseException) -> ProviderResult:
    """Turn an exception raised while sending over SMTP into a :class:`ProviderResult`.

    Args:
        exc: what aiosmtplib (or the network) raised.

    Returns:
        The classified result; the rules are in the module docstring. The
        server's reply code and text are in ``error_message``.
    """
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        refused = exc.recipients[0] if exc.recipients else None
        if refused is None:
            return ProviderResult.transient(ErrorCategory.UNKNOWN, "all recipients refused")
        result = _classify_reply(refused.code, refused.message, recipient=True)
        return attrs.evolve(
            result, error_message=f"{result.error_message} (recipient {refused.recipient})"[:500]
        )
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        return ProviderResult.transient(ErrorCategory.AUTH, _reply(exc.code, exc.message))
    # Before connect errors: SMTPConnectTimeoutError is both a timeout and a connect error.
    if isinstance(exc, TimeoutError):  # SMTPTimeoutError and asyncio's TimeoutError too
        return ProviderResult.transient(ErrorCategory.TIMEOUT, f"timed out: {exc}".strip())
    if isinstance(exc, aiosmtplib.SMTPConnectResponseError):
        # A greeting other than 220: the server refuses service right now; nothing
        # is wrong with the message, so this is an outage even for a 554 greeting.
        return ProviderResult.transient(
            ErrorCategory.PROVIDER_OUTAGE, f"greeting {_reply(exc.code, exc.message)}"
        )
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return _classify_reply(
            exc.code, exc.message, recipient=isinstance(exc, aiosmtplib.SMTPRecipientRefused)
        )
    if isinstance(exc, OSError):  # refused, reset, DNS, TLS, SMTPServerDisconnected...
        return ProviderResult.transient(
            ErrorCategory.PROVIDER_OUTAGE, f"{type(exc).__name__}: {exc}"
        )
    if isinstance(exc, aiosmtplib.SMTPException) and "AUTH" in exc.message:
        # e.g. "The SMTP AUTH extension is not supported by this server": credentials
        # configured for a server that does not take them is an operator fix.
        return ProviderResult.transient(ErrorCategory.AUTH, exc.message)
    return ProviderResult.transient(ErrorCategory.UNKNOWN, f"{type(exc).__name__}: {exc}")


def _server_went_away(exc: Exception) -> bool:
    """Whether ``exc`` on a reused connection means the server dropped it while idle."""
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return exc.code == 421  # "closing transmission channel", e.g. idle timeout
    return isinstance(exc, aiosmtplib.SMTPServerDisconnected | ConnectionError)


class SmtpProvider(Closing):
    """An :class:`~commtunnel.ports.EmailProvider` over SMTP with a connection pool.

    Connections are opened lazily, at most ``settings.pool_size`` at once;
    other sends wait for one to be returned. A connection is returned to the
    pool after a successful send and closed after any error. A pooled
    connection the server has closed meanwhile is replaced once,
    transparently, before a failure is reported.

    Args:
        settings: validated settings (see :meth:`from_url`).
        clock: the clock (kept for symmetry with other providers).
        tls_context: the SSL context for TLS and STARTTLS; None builds the
            default one (system CAs, hostname checked unless ``verify=false``).

    Attributes:
        name: ``"smtp"``, recorded on every attempt.
        settings: the settings in use.
    """

    name = "smtp"

    def __init__(
        self,
        settings: SmtpSettings,
        *,
        clock: Clock,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._tls_context = tls_context
        self._idle: list[aiosmtplib.SMTP] = []
        # aiosmtplib runs on asyncio only, so an asyncio.Semaphore: ~10x cheaper per send
        # than anyio's, which adds a cancel-shielded checkpoint (one more loop turn).
        self._slots: asyncio.Semaphore | None = None  # made on first use, inside the event loop
        self._open = 0
        self._closed = False

    @classmethod
    def from_url(
        cls, url: str, *, clock: Clock, tls_context: ssl.SSLContext | None = None
    ) -> SmtpProvider:
        """Build the provider from an ``smtp://`` or ``smtps://`` URL.

        Args:
            url: e.g. ``smtp://user:pass@mail.example.com?starttls=true&pool_size=4``.
            clock: the clock to hand to the provider.
            tls_context: optional SSL context (see the class docstring).

        Returns:
            The provider; no connection is opened until the first send.

        Raises:
            ValueError: an invalid URL or option (see :meth:`SmtpSettings.from_url`).
        """
        return cls(SmtpSettings.from_url(url), clock=clock, tls_context=tls_context)

    @property
    def redacted_url(self) -> str:
        """This provider's URL with the password as ``***``, safe to log."""
        return self.settings.redacted_url

    @property
    def open_connections(self) -> int:
        """Connections currently open or opening, pooled or lent out (for metrics and tests)."""
        return self._open

    def __repr__(self) -> str:
        return f"SmtpProvider({self.redacted_url!r})"

    async def send_email(self, email: OutgoingEmail) -> ProviderResult:
        """Send ``email`` over a pooled connection and classify the outcome.

        Args:
            email: the email to deliver.

        Returns:
            Accepted with ``provider_message_id`` = the ``Message-ID`` without
            angle brackets, or a transient/permanent failure (module docstring).
            Never raises for delivery problems.
        """
        if self._closed:
            return ProviderResult.transient(ErrorCategory.UNKNOWN, "the SMTP provider is closed")
        try:
            sender = envelope_sender(email)
            recipients = envelope_recipients(email)
            data = build_mime(email)
        except ValueError as exc:
            return ProviderResult.permanent(ErrorCategory.REJECTED, f"cannot build message: {exc}")
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.settings.pool_size)
        async with self._slots:
            try:
                await self._transaction(sender, recipients, data)
            except Exception as exc:
                result = scrub(classify(exc), self.settings.password)
                logger.debug("SMTP send via %s failed: %s", self.redacted_url, result)
                return result
        return ProviderResult.accepted(email.content.message_id_header.strip().strip("<>"))

    async def _transaction(self, sender: str, recipients: Sequence[str], data: bytes) -> None:
        conn, reused = await self._checkout()
        try:
            await self._sendmail(conn, sender, recipients, data)
            return
        except Exception as exc:
            if not (reused and _server_went_away(exc)):
                raise
            logger.debug("pooled SMTP connection to %s was closed; reconnecting", self.redacted_url)
        await self._sendmail(await self._connect(), sender, recipients, data)

    async def _sendmail(
        self, conn: aiosmtplib.SMTP, sender: str, recipients: Sequence[str], data: bytes
    ) -> None:
        transport = conn.transport  # aiosmtplib forgets it when it closes on an error
        try:
            await conn.sendmail(sender, recipients, data)
        except BaseException:
            self._discard(conn, transport)  # its state is unknown: never lend it again
            raise
        if self._closed:
            self._discard(conn, transport)
        else:
            self._idle.append(conn)

    async def _checkout(self) -> tuple[aiosmtplib.SMTP, bool]:
        """A connection and whether it was reused from the pool."""
        while self._idle:
            conn = self._idle.pop()  # most recently used first: the least likely to be stale
            if conn.is_connected:
                return conn, True
            self._discard(conn, conn.transport)  # the server closed it while idle
        return await self._connect(), False

    async def _connect(self) -> aiosmtplib.SMTP:
        s = self.settings
        conn = aiosmtplib.SMTP(
            hostname=s.host,
            port=s.port,
            username=s.username,
            password=s.password,
            local_hostname=s.local_hostname,
            timeout=s.timeout,
            use_tls=s.use_tls,
            start_tls=s.start_tls,
            validate_certs=s.verify,
            tls_context=self._tls_context,
        )
        self._open += 1
        try:
            await conn.connect()
        except BaseException:
            self._discard(conn, conn.transport)
            raise
        return conn

    def _discard(self, conn: aiosmtplib.SMTP, transport: asyncio.BaseTransport | None) -> None:
        """Close ``conn`` for good and forget it.

        ``transport`` is the transport it used, captured by the caller because
        aiosmtplib drops its own reference when it closes on an error or after QUIT.
        """
        conn.close()  # resets aiosmtplib's state; for TLS it starts a graceful shutdown...
        if isinstance(transport, asyncio.WriteTransport):
            # ...which waits for the peer's close_notify. The session is over either way
            # (after QUIT, or after an error), so abort: the socket is gone one loop
            # iteration later instead of lingering, possibly past the caller's loop.
            transport.abort()
        self._open -= 1

    async def aclose(self) -> None:
        """Say QUIT on every pooled connection and close it.

        Connections lent to sends in flight are closed when those sends end.
        Later sends return a transient ``UNKNOWN`` result.
        """
        self._closed = True
        idle, self._idle = self._idle, []

        async def quit_and_close(conn: aiosmtplib.SMTP) -> None:
            transport = conn.transport  # quit() closes gracefully and forgets it
            try:
                if conn.is_connected:
                    await conn.quit(timeout=min(_QUIT_TIMEOUT, self.settings.timeout))
            except (aiosmtplib.SMTPException, OSError):
                pass  # the server went away first: closing is all that is left
            finally:
                self._discard(conn, transport)

        async with anyio.create_task_group() as tg:
            for conn in idle:
                tg.start_soon(quit_and_close, conn)
        # Aborted transports close their sockets on the next loop iteration (this one
        # included those discarded after errors): let it run before the loop may end.
        await anyio.lowlevel.checkpoint()
