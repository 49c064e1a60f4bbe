"""The webhook sender on httpx, with the SSRF guard (:class:`~commtunnel.ports.WebhookSender`).

Each POST resolves the URL's host once, refuses the request when any
address is not allowed (:func:`~commtunnel.domain.webhooks.refused_address`),
and connects to the first checked address: the URL's host is replaced by
that IP while the ``Host`` header and, for https, the TLS server name (SNI,
which is also the name the certificate is verified against) stay the
original host. A resolver that answers differently between a check and the
connection (DNS rebinding) therefore cannot steer a request to a private
address. Redirects are never followed and proxies from the environment are
ignored (either would bypass the guard).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Mapping
from importlib.metadata import PackageNotFoundError, version
from urllib.parse import urlsplit, urlunsplit

import httpx

from commtunnel.domain.webhooks import RESPONSE_BODY_LIMIT, metadata_address, refused_address
from commtunnel.ports import WebhookAnswer
from commtunnel.providers import Closing

try:
    USER_AGENT = f"Commtunnel-Webhooks/{version('commtunnel')}"
except PackageNotFoundError:  # a source tree that was never installed
    USER_AGENT = "Commtunnel-Webhooks"


class _Unresolved(Exception):
    """The URL's host has no address (the message says which host, and why)."""


Resolve = Callable[[str, int], Awaitable[list[str]]]
"""``(host, port) -> addresses``: how a host is looked up (injectable in tests)."""


async def system_resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to, with the system resolver, in its order.

    Raises:
        OSError: the name does not resolve.
    """
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class HttpWebhookSender(Closing):
    """POSTs webhooks with httpx to checked, pinned addresses.

    Args:
        allow_private: ``COMMTUNNEL_WEBHOOKS_ALLOW_PRIVATE``: loopback and
            private addresses are allowed (cloud metadata addresses never are).
        timeout: seconds one request may take, name lookup included.
        user_agent: the ``User-Agent`` header.
        resolve: host lookup (the system resolver by default).
        transport: an httpx transport (tests); the default opens real connections.
    """

    def __init__(
        self,
        *,
        allow_private: bool = False,
        timeout: float = 15.0,
        user_agent: str = USER_AGENT,
        resolve: Resolve = system_resolve,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.allow_private = allow_private
        self._timeout = timeout
        self._resolve = resolve
        self._http = httpx.AsyncClient(
            transport=transport,
            follow_redirects=False,
            timeout=httpx.Timeout(timeout),
            headers={"user-agent": user_agent, "accept-encoding": "identity"},
            trust_env=False,
        )

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    def _refused(self, address: str) -> str | None:
        if self.allow_private:
            return metadata_address(address)
        return refused_address(address)

    async def _addresses(self, url: str) -> tuple[list[str], str | None]:
        """(the host's addresses, None) or ([], why they may not be reached).

        Raises:
            _Unresolved: the host does not resolve (its message is the reason).
        """
        parts = urlsplit(url)
        host = (parts.hostname or "").strip("[]")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            return [], "invalid port"
        try:
            addresses = [str(ipaddress.ip_address(host))]  # a literal needs no lookup
        except ValueError:
            try:
                addresses = await self._resolve(host, port)
            except OSError as exc:
                raise _Unresolved(
                    f"host {host!r} does not resolve ({exc.strerror or exc})"
                ) from None
        if not addresses:
            raise _Unresolved(f"host {host!r} does not resolve")
        # One refused answer is enough: a client may pick any of them.
        for address in addresses:
            reason = self._refused(address)
            if reason is not None:
                return [], f"{host} resolves to a {reason}"
        return addresses, None

    async def check_url(self, url: str) -> str | None:
        """Why ``url`` may not be sent to now, or None when it may (within the timeout).

        With private addresses allowed, a host that does not resolve yet is
        accepted (it may be set up later; each attempt checks again).
        """
        try:
            async with asyncio.timeout(self._timeout):
                return (await self._addresses(url))[1]
        except _Unresolved as unresolved:
            return None if self.allow_private else str(unresolved)
        except TimeoutError:
            return f"looking up the host took over {self._timeout:g} s"

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> WebhookAnswer:
        """Resolve, check, connect to the checked address, POST, read ≤ 4 KiB of the answer."""
        if self._http.is_closed:  # after aclose(): an answer, like the providers, not a raise
            return WebhookAnswer(status_code=None, error="the webhook sender is closed")
        try:
            async with asyncio.timeout(self._timeout):
                try:
                    addresses, reason = await self._addresses(url)
                except _Unresolved as unresolved:
                    reason = str(unresolved)
                if reason is not None:
                    return WebhookAnswer(status_code=None, error=f"refused: {reason}")
                return await self._send(url, addresses[0], body, headers)
        except (TimeoutError, httpx.TimeoutException):
            return WebhookAnswer(status_code=None, error=f"timeout after {self._timeout:g} s")
        except httpx.HTTPError as exc:
            return WebhookAnswer(status_code=None, error=f"{type(exc).__name__}: {exc}"[:500])

    async def _send(
        self, url: str, address: str, body: bytes, headers: Mapping[str, str]
    ) -> WebhookAnswer:
        parts = urlsplit(url)
        host = parts.hostname or ""
        pinned = f"[{address}]" if ":" in address else address
        if parts.port is not None:
            pinned = f"{pinned}:{parts.port}"
        target = urlunsplit(parts._replace(netloc=pinned))
        extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
        request = self._http.build_request(
            "POST",
            target,
            content=body,
            headers={**headers, "host": parts.netloc},
            extensions=extensions,
        )
        response = await self._http.send(request, stream=True)
        try:
            kept = bytearray()
            async for chunk in response.aiter_bytes():  # decoded, should a server compress
                kept += chunk
                if len(kept) >= RESPONSE_BODY_LIMIT:
                    break
        finally:
            await response.aclose()
        code = response.status_code
        return WebhookAnswer(
            status_code=code,
            body=bytes(kept[:RESPONSE_BODY_LIMIT]).decode("utf-8", "replace"),
            error=None if 200 <= code < 300 else f"HTTP {code}",
            retry_after=response.headers.get("retry-after"),
        )
