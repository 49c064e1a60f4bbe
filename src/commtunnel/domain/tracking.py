"""Open and click tracking: the pure rules (signed tokens, bot classification, counts).

An email sent with ``tracking: true`` is rewritten at delivery time (the
stored message keeps its original HTML) by
:func:`commtunnel.domain.tracking_html.rewrite_html`: its links point at
``{base}/v1/track/click?t=...`` and a 1x1 transparent GIF at
``{base}/v1/track/open?t=...`` closes the body. The plain-text part is never touched.

Tokens are ``itsdangerous`` URL-safe signed JSON (HMAC-SHA256), one salt per
kind so that an open token is never accepted as a click token and the other
way round. They carry no expiry: a link in an email must keep working.

Bot classification (:func:`classify_client`) flags requests that are not a
person reading or clicking. Sources for each rule:

* Apple Mail Privacy Protection prefetches every remote image through
  Apple's proxies as soon as mail arrives, whether or not it is read
  (Apple's support article "Use Mail Privacy Protection"; SocketLabs,
  "Identifying Apple MPP opens in Notification API events"). Those loads
  come from Apple's own ``17.0.0.0/8`` (registered to Apple Inc. in ARIN's
  whois) with the bare user agent ``Mozilla/5.0``, which no real browser
  sends. MPP shares iCloud Private Relay's infrastructure (Word to the Wise,
  "Apple MPP reporting and geolocation", 2021), whose egress partners'
  addresses are not in 17/8: such loads are caught by the user agent only.
* Link-checking and security scanners follow every link before (or
  instead of) the recipient: Barracuda, Mimecast, Proofpoint URL Defense,
  Microsoft Defender for Office 365 Safe Links and Office's link "existence
  discovery" (Microsoft Learn, "Safe Links in Microsoft Defender for Office
  365"; supabase/auth#1214 and MicahParks/magiclinksdev#2 for magic links
  consumed by these scanners).
* Crawlers and preview fetchers name themselves (``...bot``, ``crawler``,
  ``spider``, ``Preview`` as in ``BingPreview``), headless browsers too
  (``HeadlessChrome``, ``PhantomJS``), and HTTP libraries send their own
  name (``curl/``, ``python-requests``). A request without a user agent is
  never a mail client.

No rule is certain: a scanner posing as a browser counts as a person, and
a phone model ending in "bot" counts as a bot. ``events`` in the stats and
the ``includeBots`` view count every hit, and each event keeps its user
agent (not the address) so that hits can be judged again later.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Any, Final, Literal, TypeVar
from urllib.parse import urlsplit

import attrs

from commtunnel.domain import signed
from commtunnel.domain.errors import InvalidTrackingTokenError
from commtunnel.domain.network import parse_address

#: Where the HTTP adapter serves the pixel and the click redirect (the links point there).
OPEN_PATH: Final = "/v1/track/open"
CLICK_PATH: Final = "/v1/track/click"

EMAIL_OPENED: Final = "email_opened"
EMAIL_CLICKED: Final = "email_clicked"

#: The pixel: a 43-byte transparent 1x1 GIF89a (one-colour table, transparent index 0).
TRANSPARENT_GIF: Final = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff"
    b"!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)

#: Characters of a token accepted at most: a click token holds its URL, and
#: URLs in mail stay far below this (browsers cap whole URLs near 2,000-32,000).
MAX_TOKEN_CHARS: Final = 16_384
#: Characters of a user agent kept in an event (real ones are under 500).
MAX_USER_AGENT_CHARS: Final = 512

Kind = Literal["open", "click"]
_T = TypeVar("_T")


@attrs.frozen(kw_only=True)
class EngagementCounts:
    """Opens and clicks in a stats window.

    Attributes:
        opens: ``email_opened`` events.
        unique_opens: distinct messages with at least one of them.
        clicks: ``email_clicked`` events.
        unique_clicks: distinct messages with at least one of them.
    """

    opens: int = 0
    unique_opens: int = 0
    clicks: int = 0
    unique_clicks: int = 0


# ---------------------------------------------------------------------------- tokens

_SALTS: Final[dict[Kind, str]] = {
    "open": "commtunnel.tracking.open.v1",
    "click": "commtunnel.tracking.click.v1",
}


def _is_text(value: object) -> bool:
    return isinstance(value, str) and value != ""


@attrs.frozen(kw_only=True)
class OpenToken:
    """What an open pixel's token carries.

    Attributes:
        org_id: the message's organization.
        message_id: the message (UUIDv7 string).
    """

    org_id: str
    message_id: str

    def payload(self) -> dict[str, Any]:
        """The signed JSON: ``{"o": org id, "m": message id}`` (short keys: it is in a URL)."""
        return {"o": self.org_id, "m": self.message_id}

    @classmethod
    def from_payload(cls, payload: object) -> OpenToken:
        """The token a verified payload describes.

        Raises:
            ValueError: the payload is not the shape :meth:`payload` makes.
        """
        if not isinstance(payload, dict) or set(payload) != {"o", "m"}:
            raise ValueError("not an open-token payload")
        if not (_is_text(payload["o"]) and _is_text(payload["m"])):
            raise ValueError("open-token ids must be non-empty strings")
        return cls(org_id=payload["o"], message_id=payload["m"])


@attrs.frozen(kw_only=True)
class ClickToken:
    """What a rewritten link's token carries.

    Attributes:
        org_id: the message's organization.
        message_id: the message (UUIDv7 string).
        link_index: the link's position among the tracked links of the HTML
            part, from 0, in document order.
        url: where the click redirects: the link's ``href`` as the HTML
            parser decoded it (entities resolved, surrounding spaces removed).
    """

    org_id: str
    message_id: str
    link_index: int
    url: str

    def payload(self) -> dict[str, Any]:
        """The signed JSON: ``{"o", "m", "i": link index, "u": url}``."""
        return {"o": self.org_id, "m": self.message_id, "i": self.link_index, "u": self.url}

    @classmethod
    def from_payload(cls, payload: object) -> ClickToken:
        """The token a verified payload describes.

        Raises:
            ValueError: the payload is not the shape :meth:`payload` makes, or
                its URL is not an absolute http(s) URL.
        """
        if not isinstance(payload, dict) or set(payload) != {"o", "m", "i", "u"}:
            raise ValueError("not a click-token payload")
        index, url = payload["i"], payload["u"]
        if not (_is_text(payload["o"]) and _is_text(payload["m"])):
            raise ValueError("click-token ids must be non-empty strings")
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise ValueError("link index must be a non-negative integer")
        if not isinstance(url, str) or link_target(url) != url:
            raise ValueError("click target must be an absolute http(s) URL")
        return cls(org_id=payload["o"], message_id=payload["m"], link_index=index, url=url)


class ClickTokenTooLongError(ValueError):
    """A link's URL is too long for a click token that :meth:`TokenSigner.read_click` accepts.

    :func:`rewrite_html` leaves such a link as written (untracked).
    """


class TokenSigner:
    """Signs and verifies both kinds of tracking token with one key.

    Args:
        key: at least 32 random bytes (the service derives them with HKDF).

    Raises:
        ValueError: ``key`` is shorter than 32 bytes.
    """

    def __init__(self, key: bytes) -> None:
        self._serializers = {
            kind: signed.serializer(key, salt, what="a tracking key")
            for kind, salt in _SALTS.items()
        }

    def sign_open(self, token: OpenToken) -> str:
        """The URL-safe token for an open pixel (about 130 characters)."""
        return str(self._serializers["open"].dumps(token.payload()))

    def sign_click(self, token: ClickToken) -> str:
        """The URL-safe token for a link (grows with the URL; compressed when that helps).

        Raises:
            ClickTokenTooLongError: the token would be over
                :data:`MAX_TOKEN_CHARS`, so that :meth:`read_click` would refuse
                it (a URL that does not compress, of some 15,000 characters or more).
        """
        value = str(self._serializers["click"].dumps(token.payload()))
        if len(value) > MAX_TOKEN_CHARS:
            raise ClickTokenTooLongError(
                f"a click token for a {len(token.url)}-character URL would be "
                f"{len(value)} characters, over {MAX_TOKEN_CHARS}"
            )
        return value

    def _read(self, kind: Kind, value: str, parse: Callable[[object], _T]) -> _T:
        """Verify a ``kind`` token and ``parse`` its payload; every failure is one refusal."""
        return signed.verify(
            self._serializers[kind],
            value,
            parse,
            max_chars=MAX_TOKEN_CHARS,
            invalid=InvalidTrackingTokenError(f"The {kind} tracking token is invalid"),
        )

    def read_open(self, value: str) -> OpenToken:
        """Verify an open token.

        Raises:
            InvalidTrackingTokenError: tampered, truncated, signed with another
                key, a click token, or a payload of the wrong shape.
        """
        return self._read("open", value, OpenToken.from_payload)

    def read_click(self, value: str) -> ClickToken:
        """Verify a click token.

        Raises:
            InvalidTrackingTokenError: tampered, truncated, signed with another
                key, an open token, or a payload of the wrong shape.
        """
        return self._read("click", value, ClickToken.from_payload)


# ---------------------------------------------------------------------------- links

TRACKED_SCHEMES: Final = frozenset({"http", "https"})

# What a browser removes from an href before parsing it (WHATWG URL standard:
# leading/trailing C0 controls and spaces, then every tab and newline).
_URL_STRIP: Final = "".join(chr(c) for c in range(0x21))
_URL_DROP: Final = str.maketrans("", "", "\t\n\r")


def link_target(href: str | None) -> str | None:
    """The URL a link with this ``href`` opens, if it is one tracking rewrites.

    Args:
        href: the attribute's value as the HTML parser decoded it (entities resolved).

    Returns:
        The absolute ``http``/``https`` URL (surrounding spaces, tabs and
        newlines removed, as a browser does), or None for ``mailto:``,
        ``tel:``, ``#anchors``, relative and scheme-relative links, other
        schemes and URLs that do not parse.
    """
    if href is None:
        return None
    url = href.strip(_URL_STRIP).translate(_URL_DROP)
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unbalanced IPv6 bracket
        return None
    if parts.scheme.lower() not in TRACKED_SCHEMES or not parts.hostname:
        return None
    return url


# ---------------------------------------------------------------------------- bots

#: Apple's 17.0.0.0/8: the source of Mail Privacy Protection's image prefetches.
APPLE_NETWORK: Final = ipaddress.ip_network("17.0.0.0/8")
#: The user agent of Apple's MPP proxy (and of no real browser).
APPLE_PROXY_USER_AGENT: Final = "Mozilla/5.0"

#: Lower-case substrings naming a security scanner or link checker.
SCANNER_MARKERS: Final = (
    "barracuda",
    "mimecast",
    "proofpoint",
    "safelinks",
    "safe links",
    "ms-office",  # Office's link "existence discovery" ahead of the browser
    "existence discovery",
    "headlesschrome",
    "phantomjs",
    "slimerjs",
    "curl/",
    "wget/",
    "python-requests",
    "python-urllib",
    "python-httpx",
    "aiohttp",
    "go-http-client",
    "okhttp",
    "libwww-perl",
    "apache-httpclient",
    "java/",
    "node-fetch",
)
#: Lower-case substrings of self-declared crawlers and preview fetchers.
CRAWLER_WORDS: Final = ("crawler", "spider", "preview", "scanner")


def _words(user_agent: str) -> list[str]:
    """The user agent's letter-digit runs, lower case (``Googlebot/2.1`` -> googlebot, 2, 1)."""
    return re.findall(r"[a-z0-9]+", user_agent.lower())


def _is_apple(ip: str | None) -> bool:
    address = parse_address(ip) if ip else None  # an IPv4-mapped address as its IPv4 one
    return address is not None and address in APPLE_NETWORK


def classify_client(kind: Kind, user_agent: str | None, ip: str | None) -> str | None:
    """Why a tracking request looks automated, or None for a person.

    Args:
        kind: ``open`` (the pixel) or ``click`` (a link).
        user_agent: the ``User-Agent`` header, None when absent.
        ip: the client's address as the server sees it (behind a proxy, run
            uvicorn with ``--proxy-headers`` so that it is the real client).

    Returns:
        ``empty-user-agent``, ``apple-mpp`` (opens from Apple's network or
        its proxy user agent), ``scanner`` (a named security scanner,
        headless browser or HTTP library) or ``crawler`` (bot, crawler,
        spider, preview); None when no rule matches.
    """
    agent = (user_agent or "").strip()
    if not agent:
        return "empty-user-agent"
    if agent == APPLE_PROXY_USER_AGENT or (kind == "open" and _is_apple(ip)):
        # MPP prefetches images, never links; a click from Apple's network
        # is an Apple employee clicking, so 17/8 alone only flags opens.
        return "apple-mpp"
    lowered = agent.lower()
    if any(marker in lowered for marker in SCANNER_MARKERS):
        return "scanner"
    words = _words(agent)
    if any(w.endswith("bot") for w in words) or any(
        marker in w for w in words for marker in CRAWLER_WORDS
    ):
        return "crawler"
    return None
