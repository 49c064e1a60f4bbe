"""What the providers share: the HTTP plumbing of ``twilio``, ``sms+https`` and
``whatsapp_cloud``, and a few helpers the ``smtp`` provider uses too.

Each provider keeps its own translation (payload, endpoint, classification
table); this module holds what does not depend on the service at the other end:

* :class:`HttpProvider`, the base class owning the lazily made ``httpx.AsyncClient``;
* :func:`retry_after_seconds`, :func:`header` and :func:`json_or_none` for reading answers
  and callbacks;
* :func:`classify_exception` for what httpx raises, and :func:`scrub` so that no
  result carries a secret;
* :func:`url_options`, :func:`bool_option`, :func:`timeout_option` and
  :func:`check_timeout` for provider URLs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qsl

import attrs
import httpx

from commtunnel.domain.delivery import ErrorCategory, ProviderResult

#: the longest ``Retry-After`` honoured, seconds (a larger one is capped).
MAX_RETRY_AFTER = 86400.0
#: the longest timeout an HTTP provider takes, seconds.
MAX_TIMEOUT = 300.0
USER_AGENT = "commtunnel"


# --------------------------------------------------------------------------- answers


def retry_after_seconds(value: str | None, *, now: datetime) -> float | None:
    """Read a ``Retry-After`` header (RFC 9110 §10.2.3).

    Args:
        value: the header: delay seconds (``"120"``) or an HTTP date; None if absent.
        now: the current UTC time (from the clock), for HTTP dates.

    Returns:
        Seconds to wait (0 to :data:`MAX_RETRY_AFTER`), or None when absent or unreadable.
    """
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = (parsedate_to_datetime(value) - now).total_seconds()
        except (TypeError, ValueError):
            return None
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def header(headers: Mapping[str, str], name: str) -> str | None:
    """A header's value, looked up case-insensitively in any mapping.

    Args:
        headers: the request's headers (any mapping, any case).
        name: the header, e.g. ``X-Signature``.

    Returns:
        The value, or None when absent.
    """
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    for key, candidate in headers.items():
        if key.lower() == lowered:
            return candidate
    return None


def json_or_none(response: httpx.Response) -> Any:
    """The response's JSON body, or None when it is not JSON."""
    try:
        return response.json()
    except ValueError:
        return None


# --------------------------------------------------------------------------- results


def classify_exception(exc: BaseException) -> ProviderResult:
    """Turn an exception raised while calling an HTTP provider into a :class:`ProviderResult`.

    Args:
        exc: what httpx (or the network) raised.

    Returns:
        Transient ``TIMEOUT`` for httpx timeouts, ``PROVIDER_OUTAGE`` for other
        transport errors (refused, DNS, reset, protocol) and ``OSError``, else ``UNKNOWN``.
    """
    described = f"{type(exc).__name__}: {exc}".rstrip(": ")
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return ProviderResult.transient(ErrorCategory.TIMEOUT, f"timed out ({described})")
    if isinstance(exc, httpx.TransportError | OSError):
        return ProviderResult.transient(ErrorCategory.PROVIDER_OUTAGE, described)
    return ProviderResult.transient(ErrorCategory.UNKNOWN, described)


def scrub(result: ProviderResult, secret: str | None) -> ProviderResult:
    """Belt and braces: ``result`` with ``secret`` shown as ``***`` in its error message.

    Args:
        result: a classified result; its message may echo a server or library.
        secret: the token or password the provider sends, or None.

    Returns:
        ``result`` itself when the message does not contain the secret.
    """
    message = result.error_message
    if not secret or not message or secret not in message:
        return result
    return attrs.evolve(result, error_message=message.replace(secret, "***"))


# --------------------------------------------------------------------------- provider URLs


def url_options(query: str, known: tuple[str, ...]) -> dict[str, str]:
    """A provider URL's query as options, each known and given once.

    Args:
        query: the URL's query string, e.g. ``from=%2B1500&timeout=5``.
        known: the option names the provider takes.

    Returns:
        Option name -> percent-decoded value (blank values kept).

    Raises:
        ValueError: an unknown option, or one given twice.
    """
    options: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in known:
            raise ValueError(f"unknown option {key!r} (known: {', '.join(known)})")
        if key in options:
            raise ValueError(f"option {key!r} is given twice")
        options[key] = value
    return options


def timeout_option(options: Mapping[str, str], default: float) -> float:
    """The ``timeout`` option in seconds, or ``default`` when absent (range unchecked).

    Raises:
        ValueError: not a number.
    """
    if "timeout" not in options:
        return default
    try:
        return float(options["timeout"])
    except ValueError:
        raise ValueError(
            f"timeout must be a number of seconds, got {options['timeout']!r}"
        ) from None


_BOOLS = {"true": True, "1": True, "yes": True, "on": True}
_BOOLS.update({"false": False, "0": False, "no": False, "off": False})


def bool_option(options: Mapping[str, str], key: str) -> bool | None:
    """A true/false option (``true 1 yes on`` / ``false 0 no off``, any case); None when absent.

    Raises:
        ValueError: another value.
    """
    if key not in options:
        return None
    try:
        return _BOOLS[options[key].lower()]
    except KeyError:
        raise ValueError(f"{key} must be true or false, got {options[key]!r}") from None


def check_timeout(timeout: float, maximum: float = MAX_TIMEOUT) -> None:
    """Refuse a timeout that is not finite, positive and at most ``maximum`` seconds.

    Raises:
        ValueError: out of range.
    """
    if not (math.isfinite(timeout) and 0 < timeout <= maximum):
        raise ValueError(f"timeout must be > 0 and <= {maximum:g} seconds")


# --------------------------------------------------------------------------- base class


class HttpProvider:
    """The HTTP client of a provider: made on the first send, reused (keep-alive) until closed.

    Each request should still carry the provider's timeout, so an injected
    client behaves the same.

    Args:
        timeout: seconds for connecting and for each read and write, for the
            client this makes.
        http_client: a client to use instead of making one (tests, shared
            pools); the caller owns it, so :meth:`aclose` leaves it open.
        transport: a transport for the client this makes (e.g.
            ``httpx.MockTransport`` in tests). Not together with ``http_client``.
        headers: default headers of the client this makes, besides ``User-Agent``.

    Raises:
        TypeError: both ``http_client`` and ``transport``.
    """

    def __init__(
        self,
        *,
        timeout: float,
        http_client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if http_client is not None and transport is not None:
            raise TypeError("give http_client or transport, not both")
        self._client = http_client
        self._owns_client = http_client is None
        self._transport = transport
        self._client_timeout = timeout
        self._client_headers = {"User-Agent": USER_AGENT, **(headers or {})}
        self._closed = False

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                transport=self._transport,
                timeout=self._client_timeout,
                follow_redirects=False,
                headers=self._client_headers,
            )
        return self._client

    async def aclose(self) -> None:
        """Close the HTTP client this provider made (an injected one stays open).

        Safe to call twice. Later sends return a transient ``UNKNOWN`` result.
        """
        self._closed = True
        client, self._client = self._client, None
        if client is not None and self._owns_client:
            await client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
