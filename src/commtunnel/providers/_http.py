"""What the providers share: the HTTP plumbing of ``twilio``, ``sms+https`` and
``whatsapp_cloud``, and a few helpers the ``smtp`` provider uses too.

Each provider keeps its own translation (payload, endpoint, classification
table); this module holds what does not depend on the service at the other end:

* :class:`HttpProvider`, the base class owning the lazily made ``httpx.AsyncClient``
  and posting with the provider's timeout; :class:`ConfiguredHttpProvider` adds the
  constructor, ``from_url``, ``redacted_url`` and ``repr`` of a provider configured
  by one settings object parsed from its URL;
* :func:`header` and :func:`json_or_none` for reading answers (``Retry-After`` is
  :func:`commtunnel.domain.delivery.retry_after_seconds`)
  and callbacks;
* :func:`answer_text` and :func:`classify_other_status` for the part of an answer's
  classification every HTTP provider shares, :func:`classify_exception` for what
  httpx raises, and :func:`scrub` so that no result carries a secret;
* :func:`url_options`, :func:`bool_option`, :func:`timeout_option`,
  :func:`check_timeout`, :func:`url_port`, :func:`url_host` and
  :func:`check_http_url` for provider URLs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Generic, Protocol, Self, TypeVar
from urllib.parse import SplitResult, parse_qsl, urlsplit

import attrs
import httpx

from commtunnel.domain.delivery import (  # the header rule is the domain's; re-exported here
    ErrorCategory,
    ProviderResult,
)
from commtunnel.ports import Clock
from commtunnel.providers import Closing, redact_url

#: the longest timeout an HTTP provider takes, seconds.
MAX_TIMEOUT = 300.0
USER_AGENT = "commtunnel"


# --------------------------------------------------------------------------- answers


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


def answer_text(response: httpx.Response, words: str | None = None, *, label: str = "") -> str:
    """What an error answer says, for ``error_message``.

    Args:
        response: the HTTP response (its body read).
        words: the service's own words, read from its error body; None quotes
            the first 200 characters of the body instead.
        label: put after the status, e.g. ``Twilio error 21211``; empty for none.

    Returns:
        ``HTTP <status>[ <label>]: <words>``, without the colon when there are no words.
    """
    head = f"HTTP {response.status_code} {label}".rstrip()
    if words is None:
        words = response.text.strip()[:200]
    return f"{head}: {words}" if words else head


def classify_other_status(
    status: int, text: str, *, retry_after: float | None, service_error: bool
) -> ProviderResult:
    """The last rows of every HTTP provider's table, for an answer its own rules left open.

    Args:
        status: the HTTP status code (not 2xx).
        text: the error message, e.g. from :func:`answer_text`.
        retry_after: seconds from the ``Retry-After`` header, or None.
        service_error: whether the body is the service's own error format, i.e.
            the service itself answered (not a proxy or a wrong URL).

    Returns:
        5xx: transient ``PROVIDER_OUTAGE`` with ``retry_after``. A 4xx carrying the
        service's error: permanent ``REJECTED``. Anything else (a 4xx from
        something else, 1xx, 3xx) says nothing against the message, so retrying is
        the safe side: transient ``UNKNOWN``.
    """
    if 500 <= status < 600:
        return ProviderResult.transient(
            ErrorCategory.PROVIDER_OUTAGE, text, retry_after=retry_after
        )
    if 400 <= status < 500 and service_error:
        return ProviderResult.permanent(ErrorCategory.REJECTED, text)
    return ProviderResult.transient(ErrorCategory.UNKNOWN, f"unexpected answer: {text}")


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


def url_port(parts: SplitResult) -> int | None:
    """The port a split provider URL names, or None when it names none.

    Raises:
        ValueError: not a number from 1 to 65535.
    """
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        raise ValueError("the port must be a number from 1 to 65535")
    return port


def url_host(hostname: str) -> str:
    """``hostname`` as written in a URL: an IPv6 address in brackets (RFC 3986 §3.2.2)."""
    return f"[{hostname}]" if ":" in hostname else hostname


def check_http_url(url: str, name: str) -> None:
    """Refuse an API origin or endpoint that is not ``http(s)://host[:port][/path]``.

    Args:
        url: the URL to check.
        name: what it is, to start the message with (``base_url``, ``the endpoint``).

    Raises:
        ValueError: another scheme or no host (the URL is quoted with its
            password masked), or credentials, a query or a fragment.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{name} must be an http(s) URL with a host, got {redact_url(url)!r}")
    if parts.username is not None or parts.query or parts.fragment:
        raise ValueError(f"{name} takes no credentials, query or fragment")


# --------------------------------------------------------------------------- base classes


class HttpProvider(Closing):
    """The HTTP client of a provider: made on the first send, reused (keep-alive) until closed.

    Requests go through :meth:`_post`, which gives each one the provider's
    timeout, so an injected client behaves the same as the one made here.

    Args:
        timeout: seconds for connecting and for each read and write, of every
            request (and of the client this makes).
        http_client: a client to use instead of making one (tests, shared
            pools); the caller owns it, so :meth:`aclose` leaves it open.
        transport: a transport for the client this makes (e.g.
            ``httpx.MockTransport`` in tests). Not together with ``http_client``.
        headers: default headers of the client this makes, besides ``User-Agent``.

    Raises:
        TypeError: both ``http_client`` and ``transport``.

    Attributes:
        timeout: the ``timeout`` given, seconds.
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
        self.timeout = timeout
        self._client = http_client
        self._owns_client = http_client is None
        self._transport = transport
        self._client_headers = {"User-Agent": USER_AGENT, **(headers or {})}
        self._closed = False

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                transport=self._transport,
                timeout=self.timeout,
                follow_redirects=False,
                headers=self._client_headers,
            )
        return self._client

    async def _post(
        self, url: str, *, secret: str | None, **request: Any
    ) -> httpx.Response | ProviderResult:
        """POST with this provider's timeout; what httpx raises comes back classified.

        Args:
            url: the endpoint.
            secret: the credential the request carries, kept out of a failure's message.
            **request: ``httpx.AsyncClient.post`` arguments (``json``, ``data``,
                ``headers``, ``auth``), except ``timeout``.

        Returns:
            The response (any status), or the :func:`classify_exception` result of
            the exception raised (timeouts, connection errors...), with ``secret`` scrubbed.
        """
        try:
            return await self._http().post(url, timeout=self.timeout, **request)
        except Exception as exc:
            return scrub(classify_exception(exc), secret)

    async def aclose(self) -> None:
        """Close the HTTP client this provider made (an injected one stays open).

        Safe to call twice. Later sends return a transient ``UNKNOWN`` result.
        """
        self._closed = True
        client, self._client = self._client, None
        if client is not None and self._owns_client:
            await client.aclose()


class HttpSettings(Protocol):
    """What :class:`ConfiguredHttpProvider` reads of a provider's settings."""

    @property
    def timeout(self) -> float:
        """Seconds for connecting and for each read and write."""
        ...

    @property
    def redacted_url(self) -> str:
        """The settings as a provider URL with the secret shown as ``***``."""
        ...


SettingsT = TypeVar("SettingsT", bound=HttpSettings)


class ConfiguredHttpProvider(HttpProvider, Generic[SettingsT]):
    """An :class:`HttpProvider` configured by one validated settings object.

    A subclass parses and validates its URL in :meth:`parse_settings` and gets
    the constructor, :meth:`from_url`, :attr:`redacted_url` and a ``repr``
    that shows no secret.

    Args:
        settings: validated settings (see :meth:`from_url`); their ``timeout``
            applies to every request.
        clock: where "now" comes from (for ``Retry-After`` dates).
        http_client: a client to use instead of making one (tests, shared
            pools); the caller owns it, so :meth:`aclose` leaves it open.
        transport: a transport for the client this provider makes (e.g.
            ``httpx.MockTransport`` in tests). Not together with ``http_client``.

    Raises:
        TypeError: both ``http_client`` and ``transport``.

    Attributes:
        settings: the settings in use.
    """

    def __init__(
        self,
        settings: SettingsT,
        *,
        clock: Clock,
        http_client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(timeout=settings.timeout, http_client=http_client, transport=transport)
        self.settings = settings
        self._clock = clock

    @classmethod
    def parse_settings(cls, url: str) -> SettingsT:
        """Parse and validate this provider's URL (the subclass's module docstring).

        Raises:
            ValueError: an invalid URL or option; the message never contains a secret.
        """
        raise NotImplementedError

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        clock: Clock,
        http_client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> Self:
        """Build the provider from its URL (options in the subclass's module docstring).

        Args:
            url: the provider URL, e.g. ``twilio://AC...:TOKEN@?from=%2B15005550006``.
            clock: the clock to hand to the provider.
            http_client: optional client (see the class docstring).
            transport: optional transport (see the class docstring).

        Returns:
            The provider; nothing is connected until the first send.

        Raises:
            ValueError: an invalid URL or option (see :meth:`parse_settings`).
            TypeError: both ``http_client`` and ``transport``.
        """
        return cls(
            cls.parse_settings(url), clock=clock, http_client=http_client, transport=transport
        )

    @property
    def redacted_url(self) -> str:
        """This provider's URL with its secret as ``***``, safe to log."""
        return self.settings.redacted_url

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.redacted_url!r})"
