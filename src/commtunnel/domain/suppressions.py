"""The email suppression list: reasons, records, unsubscribe tokens and provider events (pure).

An organization's **suppression list** holds the addresses its email must no
longer reach. A send to a listed address is refused before anything is
stored (403 ``EMAIL_RECIPIENT_SUPPRESSED``, sandbox sends included, so that a
test run behaves like the real thing). An address gets there four ways
(:class:`SuppressionReason`):

* ``HARD_BOUNCE``: a provider refused the recipient for good (an SMTP 5xx
  such as ``550 5.1.1`` on ``RCPT TO``, classified ``INVALID_RECIPIENT``) or
  an ESP reported a hard bounce on the email events webhook;
* ``COMPLAINT``: an ESP reported a spam complaint (feedback loop);
* ``UNSUBSCRIBE``: the recipient used the ``List-Unsubscribe`` link
  (RFC 2369) or its one-click POST (RFC 8058);
* ``MANUAL``: the organization added it (API or CLI).

Addresses are kept normalized (:func:`normalize_address`): the addr-spec of
``Name <addr>``, lower-cased as a whole. RFC 5321 §2.4 lets a server treat
local parts case-sensitively, but practically none do, and a list keyed on
the exact case could be bypassed by ``Bob@`` for ``bob@``.

An entry may carry an expiry: once it has passed the entry no longer
blocks, is left out of listings and reads, and a new entry replaces it
(:func:`supersedes`).

Unsubscribe links carry an ``itsdangerous`` URL-safe signed token
(HMAC-SHA256, its own salt and key, see :class:`UnsubscribeSigner`) naming
the organization, the address and the message. The address travels in the
token (signed, not encrypted) so that a link keeps working after the
message itself is purged by retention.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

import attrs

from commtunnel.domain import signed
from commtunnel.domain.email import parse_mailbox
from commtunnel.domain.errors import InvalidUnsubscribeTokenError, ValidationError
from commtunnel.domain.messages import _aware

#: The organization-level event recorded when an address is added to (``suppressed:
#: true``) or taken off (``suppressed: false``) the list; like ``sms_opt_out``.
EMAIL_SUPPRESSED: Final = "email_suppressed"
#: The message event recorded when an ESP reports a spam complaint about it.
EMAIL_COMPLAINED: Final = "email_complained"

#: Where the HTTP adapter serves the unsubscribe page and its one-click POST.
UNSUBSCRIBE_PATH: Final = "/v1/unsubscribe"

#: RFC 2369 §3.2 / RFC 8058 §3.1 header names, and the one-click POST body (RFC 8058 §3.1).
LIST_UNSUBSCRIBE: Final = "List-Unsubscribe"
LIST_UNSUBSCRIBE_POST: Final = "List-Unsubscribe-Post"
ONE_CLICK: Final = "List-Unsubscribe=One-Click"

#: Characters of a provider's diagnostic kept in ``detail``.
MAX_DETAIL_CHARS: Final = 500
#: Characters of an origin label (``api``, ``smtp``, ``webhook`` ...).
MAX_ORIGIN_CHARS: Final = 64
#: Characters of an unsubscribe token accepted at most (real ones are ~150-400).
MAX_TOKEN_CHARS: Final = 4096
#: Events one call of the email events webhook may carry.
MAX_PROVIDER_EVENTS: Final = 100


class SuppressionReason(enum.StrEnum):
    """Why an address is on the list (wire spelling: upper case)."""

    HARD_BOUNCE = "HARD_BOUNCE"
    COMPLAINT = "COMPLAINT"
    MANUAL = "MANUAL"
    UNSUBSCRIBE = "UNSUBSCRIBE"


class Origin(enum.StrEnum):
    """Who put an address on the list (stored as text; other labels may appear)."""

    API = "api"  # POST /v1/public/suppressions
    CLI = "cli"  # commtunnel suppressions add
    PROVIDER = "provider"  # a provider's permanent refusal of the recipient, while sending
    WEBHOOK = "webhook"  # the email events webhook (an ESP's bounce or complaint report)
    UNSUBSCRIBE = "unsubscribe"  # the List-Unsubscribe link or its one-click POST


@attrs.frozen(kw_only=True)
class Suppression:
    """One entry of an organization's suppression list.

    Attributes:
        org_id: the organization.
        address: the normalized address (:func:`normalize_address`).
        reason: why it is listed.
        origin: who listed it (an :class:`Origin` value).
        created_at: UTC time it was listed.
        expires_at: UTC time it stops blocking; None for never.
        message_id: the message that caused it (a bounce, a complaint, an
            unsubscribe link), if any.
        detail: free text: the provider's diagnostic (at most
            :data:`MAX_DETAIL_CHARS` characters), a note.
    """

    org_id: str
    address: str
    reason: SuppressionReason
    origin: str
    created_at: datetime = attrs.field(validator=_aware)
    expires_at: datetime | None = attrs.field(default=None, validator=_aware)
    message_id: str | None = None
    detail: str | None = None

    def active_at(self, now: datetime) -> bool:
        """Whether the entry blocks sends at ``now`` (no expiry, or one still ahead)."""
        return self.expires_at is None or self.expires_at > now


def normalize_address(value: str) -> str:
    """The list's key for an address: the addr-spec of ``addr`` / ``Name <addr>``, lower case.

    Raises:
        ValueError: not a single valid address (reason fit for ``details``).
    """
    _name, addr = parse_mailbox(value)
    return addr.lower()


def supersedes(new: Suppression, old: Suppression, now: datetime) -> bool:
    """Whether ``new`` replaces the stored ``old`` entry for the same address.

    An entry that no longer blocks (expired at ``now``) is always replaced.
    An active one is replaced only by an entry that blocks longer: a
    temporary entry by a permanent one or by one expiring later. Otherwise
    the first entry (its reason, origin and time) is kept: a hard bounce
    after an unsubscribe changes nothing.
    """
    if not old.active_at(now):
        return True
    if old.expires_at is None:
        return False
    return new.expires_at is None or new.expires_at > old.expires_at


def clip(text: str | None, limit: int = MAX_DETAIL_CHARS) -> str | None:
    """``text`` without surrounding space and cut to ``limit`` characters; None when empty."""
    if text is None:
        return None
    text = text.strip()
    return text[:limit] or None


# ---------------------------------------------------------------------------- unsubscribe


@attrs.frozen(kw_only=True)
class UnsubscribeToken:
    """What an unsubscribe link's token carries.

    Attributes:
        org_id: the sending organization.
        address: the normalized recipient address.
        message_id: the message the link was sent in.
    """

    org_id: str
    address: str
    message_id: str

    def payload(self) -> dict[str, Any]:
        """The signed JSON: ``{"o": org id, "a": address, "m": message id}``."""
        return {"o": self.org_id, "a": self.address, "m": self.message_id}

    @classmethod
    def from_payload(cls, payload: object) -> UnsubscribeToken:
        """The token a verified payload describes.

        Raises:
            ValueError: the payload is not the shape :meth:`payload` makes.
        """
        if not isinstance(payload, dict) or set(payload) != {"o", "a", "m"}:
            raise ValueError("not an unsubscribe-token payload")
        values = (payload["o"], payload["a"], payload["m"])
        if not all(isinstance(v, str) and v for v in values):
            raise ValueError("unsubscribe-token fields must be non-empty strings")
        return cls(org_id=payload["o"], address=payload["a"], message_id=payload["m"])


_UNSUBSCRIBE_SALT: Final = "commtunnel.unsubscribe.v1"


class UnsubscribeSigner:
    """Signs and verifies unsubscribe tokens (``itsdangerous``, HMAC-SHA256, no expiry).

    A link in an email must keep working, so tokens do not expire; the salt
    differs from the tracking tokens', so neither kind is accepted as the other.

    Args:
        key: at least 32 random bytes (the service derives them with HKDF).

    Raises:
        ValueError: ``key`` is shorter than 32 bytes.
    """

    def __init__(self, key: bytes) -> None:
        self._serializer = signed.serializer(key, _UNSUBSCRIBE_SALT, what="an unsubscribe key")

    def sign(self, token: UnsubscribeToken) -> str:
        """The URL-safe token (about 150 characters plus the address)."""
        return str(self._serializer.dumps(token.payload()))

    def read(self, value: str) -> UnsubscribeToken:
        """Verify a token.

        Raises:
            InvalidUnsubscribeTokenError: empty, too long, tampered with,
                truncated, signed with another key or salt, or of the wrong shape.
        """
        return signed.verify(
            self._serializer,
            value,
            UnsubscribeToken.from_payload,
            max_chars=MAX_TOKEN_CHARS,
            invalid=InvalidUnsubscribeTokenError("The unsubscribe link is invalid"),
        )


def list_unsubscribe_headers(url: str) -> list[tuple[str, str]]:
    """The header fields offering ``url`` as the one-click unsubscribe link.

    ``List-Unsubscribe: <url>`` (RFC 2369 §3.2: the URL in angle brackets)
    and ``List-Unsubscribe-Post: List-Unsubscribe=One-Click`` (RFC 8058
    §3.1). RFC 8058 wants an ``https`` URL and a DKIM signature covering both
    fields; Commtunnel does not sign DKIM (the relay or ESP must), and the
    URL is ``https`` when ``COMMTUNNEL_PUBLIC_URL`` is.

    Raises:
        ValueError: ``url`` contains a line break, space or angle bracket.
    """
    if any(ch in url for ch in "\r\n\x00 <>"):
        raise ValueError("unsubscribe URL must not contain spaces, line breaks or '<>'")
    return [(LIST_UNSUBSCRIBE, f"<{url}>"), (LIST_UNSUBSCRIBE_POST, ONE_CLICK)]


# ---------------------------------------------------------------------------- provider events


class ProviderEventType(enum.StrEnum):
    """What an ESP reports on the email events webhook."""

    BOUNCE = "bounce"
    COMPLAINT = "complaint"


@attrs.frozen(kw_only=True)
class ProviderEvent:
    """One checked event of the email events webhook.

    Attributes:
        type: bounce or complaint.
        message_id: the message it is about, as the ESP gave it (ours, or the
            ``Message-ID`` header we set), None when only ``email`` was given.
        address: the normalized recipient, None when only ``messageId`` was given.
        hard: for a bounce, whether it is permanent (``bounceType: hard``).
        diagnostic: the ESP's diagnostic text, cut to :data:`MAX_DETAIL_CHARS`.
    """

    type: ProviderEventType
    message_id: str | None
    address: str | None
    hard: bool
    diagnostic: str | None


_EVENT_FIELDS: Final = frozenset({"type", "messageId", "email", "bounceType", "diagnostic"})


def _event_problems(index: int, raw: object) -> tuple[dict[str, str], ProviderEvent | None]:
    """(problems keyed ``events[i].field``, the event when there are none)."""
    at = f"events[{index}]"
    if not isinstance(raw, Mapping):
        return {at: "must be an object"}, None
    problems = {f"{at}.{k}": "unknown field" for k in sorted(set(raw) - _EVENT_FIELDS)}
    kind = raw.get("type")
    if kind not in tuple(ProviderEventType):
        problems[f"{at}.type"] = "must be bounce or complaint"
    bounce_type = raw.get("bounceType", "hard")
    if bounce_type not in ("hard", "soft"):
        problems[f"{at}.bounceType"] = "must be hard or soft"
    message_id, address, diagnostic = raw.get("messageId"), raw.get("email"), raw.get("diagnostic")
    if message_id is not None and (not isinstance(message_id, str) or not message_id.strip()):
        problems[f"{at}.messageId"] = "must be a non-empty string"
    if diagnostic is not None and not isinstance(diagnostic, str):
        problems[f"{at}.diagnostic"] = "must be a string"
    normalized = None
    if address is not None and not isinstance(address, str):
        problems[f"{at}.email"] = "must be a string"
    elif address is not None:
        try:
            normalized = normalize_address(address)
        except ValueError as exc:
            problems[f"{at}.email"] = str(exc)
    if message_id is None and address is None:
        problems[f"{at}.email"] = "give email and/or messageId"
    if problems:
        return problems, None
    event = ProviderEvent(
        type=ProviderEventType(str(kind)),
        message_id=None if message_id is None else message_id.strip(),
        address=normalized,
        hard=bounce_type == "hard",
        diagnostic=clip(diagnostic),
    )
    return {}, event


def parse_provider_events(payload: Mapping[str, Any]) -> list[ProviderEvent]:
    """The events of an email events webhook body ``{"events": [...]}``.

    Each event is ``{"type": "bounce"|"complaint", "messageId"?, "email"?,
    "bounceType"?: "hard"|"soft" (default hard), "diagnostic"?}`` with at
    least one of ``messageId`` and ``email``.

    Raises:
        ValidationError: ``events`` missing, empty, not a list or over
            :data:`MAX_PROVIDER_EVENTS`, or any event invalid (every problem
            at once, keyed ``events[i].field``); nothing is applied then.
    """
    unknown = sorted(set(payload) - {"events"})
    if unknown:
        raise ValidationError.from_fields(dict.fromkeys(unknown, "unknown field"))
    raw = payload.get("events")
    if not isinstance(raw, list) or not raw:
        raise ValidationError.from_fields({"events": "must be a non-empty list"})
    if len(raw) > MAX_PROVIDER_EVENTS:
        raise ValidationError.from_fields(
            {"events": f"must hold at most {MAX_PROVIDER_EVENTS} events"}
        )
    problems: dict[str, str] = {}
    events: list[ProviderEvent] = []
    for index, item in enumerate(raw):
        found, event = _event_problems(index, item)
        problems.update(found)
        if event is not None:
            events.append(event)
    if problems:
        raise ValidationError.from_fields(problems)
    return events


def message_id_of(reference: str) -> str:
    """Our message id in a reference an ESP echoes back.

    ``01...`` stays as it is; a ``Message-ID`` header value ``<01...@example.com>``
    (with or without angle brackets) gives its local part, which is our id
    (``EmailService`` sets ``<id@sender domain>``).
    """
    text = reference.strip().removeprefix("<").removesuffix(">")
    return text.split("@", 1)[0] if "@" in text else text
