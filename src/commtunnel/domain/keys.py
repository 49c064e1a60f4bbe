"""API keys and scopes: format, hashing, scope rules (pure; randomness is injected).

A key looks like ``ct_live_<43 url-safe characters>`` or ``ct_test_…``. Only the
SHA-256 of the whole key is stored: keys carry 256 bits of entropy, so a fast
hash is enough (a slow password hash protects low-entropy secrets, not these).
``ct_test_`` keys are sandbox keys: what they send is never handed to a provider.
"""

from __future__ import annotations

import enum
import hashlib
from datetime import datetime

import attrs

from commtunnel.domain.messages import _aware

LIVE_PREFIX = "ct_live_"
TEST_PREFIX = "ct_test_"
#: characters of the key shown in listings (prefix plus a few), never enough to use it.
DISPLAY_CHARS = 12


class Scope(enum.StrEnum):
    """A permission an API key can carry."""

    SEND_EMAIL = "send:email"
    READ_EMAIL = "read:email"
    SEND_SMS = "send:sms"
    READ_SMS = "read:sms"
    SEND_WHATSAPP = "send:whatsapp"
    READ_WHATSAPP = "read:whatsapp"
    SENDER_IDS_REQUEST = "sender_ids:request"  # request SMS sender IDs / OTP brands
    PLATFORM_ADMIN = "platform:admin"  # review sender-ID requests (operators only)
    OPT_OUTS_MANAGE = "opt_outs:manage"  # change the SMS opt-out and email suppression lists
    ACCOUNT_MANAGE = "account:manage"  # organization settings such as the WhatsApp line
    WEBHOOKS_MANAGE = "webhooks:manage"  # customer webhook endpoints and their delivery log


ALL_SCOPES: frozenset[str] = frozenset(s.value for s in Scope)


def parse_scopes(raw: str | list[str]) -> frozenset[str]:
    """Parse scopes from ``"send:email,read:email"`` (or space-separated) or a list.

    Raises:
        ValueError: naming the unknown scopes, or when none is given.
    """
    items = raw.replace(",", " ").split() if isinstance(raw, str) else list(raw)
    unknown = sorted(set(items) - ALL_SCOPES)
    if unknown:
        raise ValueError(f"unknown scope(s): {', '.join(unknown)}; known: {sorted(ALL_SCOPES)}")
    if not items:
        raise ValueError("at least one scope is required")
    return frozenset(items)


def hash_key(key: str) -> str:
    """SHA-256 hex digest of the full key string (what storage keeps)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def format_key(secret: str, *, test: bool) -> str:
    """Build a key from a random URL-safe secret (``secrets.token_urlsafe(32)``)."""
    return (TEST_PREFIX if test else LIVE_PREFIX) + secret


def looks_like_key(token: str) -> bool:
    """Cheap shape check before touching storage."""
    return token.startswith((LIVE_PREFIX, TEST_PREFIX)) and 20 <= len(token) <= 200


@attrs.frozen(kw_only=True)
class ApiKey:
    """A stored API key (never the key itself).

    Attributes:
        id: UUIDv7 string.
        org_id: owning organization.
        name: a label for people.
        key_hash: :func:`hash_key` of the key.
        display: the first :data:`DISPLAY_CHARS` characters, for listings.
        scopes: granted scopes.
        test: True for ``ct_test_`` keys.
        created_at: UTC.
        revoked_at: UTC time of revocation, None while active.
    """

    id: str
    org_id: str
    name: str
    key_hash: str
    display: str
    scopes: frozenset[str]
    test: bool
    created_at: datetime = attrs.field(validator=_aware)
    revoked_at: datetime | None = attrs.field(default=None, validator=_aware)


@attrs.frozen(kw_only=True)
class Principal:
    """Who is calling: an organization, through a key (or in-process, with all scopes).

    Attributes:
        org_id: the organization every read and write is scoped to.
        scopes: what the caller may do.
        sandbox: True when calls come from a ``ct_test_`` key.
        api_key_id: the key used, None for in-process callers.
    """

    org_id: str
    scopes: frozenset[str]
    sandbox: bool = False
    api_key_id: str | None = None

    def has(self, scope: str) -> bool:
        """Whether the principal carries ``scope``."""
        return scope in self.scopes


@attrs.frozen(kw_only=True)
class Organization:
    """A tenant. Every record belongs to exactly one.

    Attributes:
        otp_ignores_opt_out: when True, OTP messages are sent to numbers on the
            SMS opt-out list (a one-time code the user asked for is not
            marketing); False by default, so opted-out numbers get nothing.
    """

    id: str
    name: str
    created_at: datetime = attrs.field(validator=_aware)
    otp_ignores_opt_out: bool = False
