"""Customer webhooks: endpoints, deliveries, attempts, and the pure rules about them.

A customer registers **endpoints** (an https URL, an optional event filter, a
``whsec_`` signing secret). Each timeline event fans out to one **delivery**
per matching enabled endpoint, written in the same transaction as the event;
the webhook worker then makes **attempts** until one answers 2xx, following a
retry schedule like Svix's. Signing follows the Standard Webhooks
specification (https://www.standardwebhooks.com/, "Signature scheme"):
``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` headers.

Nothing here does I/O: DNS resolution and HTTP live in
:mod:`commtunnel.services.webhooks`.
"""

from __future__ import annotations

import base64
import enum
import ipaddress
import random
import secrets
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import attrs

from commtunnel.domain.errors import ValidationError
from commtunnel.domain.messages import Channel, Status, _aware, event_for
from commtunnel.domain.network import IPAddress, parse_address

SECRET_PREFIX = "whsec_"  # noqa: S105 - the prefix, not a secret
SECRET_BYTES = 24
"""Random bytes in a signing secret (192 bits; Standard Webhooks asks for 24 to 64)."""

TEST_EVENT = "webhook.test"
ENDPOINT_DISABLED_EVENT = "endpoint_disabled"

DEFAULT_RETRY_SCHEDULE: tuple[float, ...] = (0, 5, 300, 1800, 7200, 18000, 36000, 36000)
"""Seconds before each attempt, counted from the previous one (Svix's schedule:
immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h)."""

RESPONSE_BODY_LIMIT = 4096
"""Bytes of an endpoint's response body kept in the attempt log."""

RETRY_AFTER_STATUSES = frozenset({429, 502, 504})
"""Answers whose ``Retry-After`` header sets the next attempt's delay."""


JITTER = 0.1
"""Each retry delay is scaled by a random factor in [1 - JITTER, 1 + JITTER]."""

MAX_URL_LENGTH = 2048
MAX_DESCRIPTION_LENGTH = 500

# Events that belong to no status change, per channel, beyond ``<channel>_<status>``.
_EXTRA_EVENTS: dict[Channel, tuple[str, ...]] = {
    Channel.EMAIL: ("opened", "clicked", "complained", "suppressed"),
    Channel.SMS: ("opt_out",),
    Channel.WHATSAPP: ("opt_out", "line_paused", "line_flagged"),
}


def _known_event_types() -> frozenset[str]:
    types = {event_for(channel, status) for channel in Channel for status in Status}
    for channel, suffixes in _EXTRA_EVENTS.items():
        types.update(f"{channel}_{suffix}" for suffix in suffixes)
    types.add(ENDPOINT_DISABLED_EVENT)
    return frozenset(types)


EVENT_TYPES: frozenset[str] = _known_event_types()
"""Every event type an endpoint may subscribe to (``../shared/DESIGN.md``,
"One event vocabulary"). ``webhook.test`` is not among them: a test event
goes to the one endpoint it was sent to, whatever its filter."""


class DeliveryStatus(enum.StrEnum):
    """Where one delivery (an event to an endpoint) stands."""

    PENDING = "PENDING"  # waiting for its next attempt
    SUCCEEDED = "SUCCEEDED"  # an attempt got a 2xx
    FAILED = "FAILED"  # attempts used up, 410 Gone, or the endpoint disabled


@attrs.frozen(kw_only=True)
class WebhookEndpoint:
    """A URL an organization receives events at.

    Attributes:
        id: UUIDv7 string.
        org_id: owning organization.
        url: ``http(s)://`` URL, at most 2048 characters.
        description: free text, at most 500 characters.
        events: the event types it receives, sorted; None for every event.
        enabled: False once disabled (by the customer, a 410 Gone, or
            repeated failure); a disabled endpoint gets no new deliveries.
        secret: the signing secret as stored (see :class:`WebhookStorage`
            in :mod:`commtunnel.ports`: encrypted when the server has a key).
        previous_secret: the secret before the last rotation, stored form;
            it keeps signing until ``previous_secret_expires_at``.
        previous_secret_expires_at: UTC end of the rotation grace period.
        failing_since: UTC time of the first failed attempt since the last
            success (None while healthy); drives the automatic disable.
        disabled_at: UTC time it was disabled, None while enabled.
        disabled_reason: why (``manual``, ``gone``, ``failing``), None while enabled.
        created_at / updated_at: UTC.
    """

    id: str
    org_id: str
    url: str
    description: str = ""
    events: tuple[str, ...] | None = None
    enabled: bool = True
    secret: str = attrs.field(repr=False)
    previous_secret: str | None = attrs.field(default=None, repr=False)
    previous_secret_expires_at: datetime | None = attrs.field(default=None, validator=_aware)
    failing_since: datetime | None = attrs.field(default=None, validator=_aware)
    disabled_at: datetime | None = attrs.field(default=None, validator=_aware)
    disabled_reason: str | None = None
    created_at: datetime = attrs.field(validator=_aware)
    updated_at: datetime = attrs.field(validator=_aware)

    def wants(self, event_type: str) -> bool:
        """Whether an event of ``event_type`` fans out to this endpoint (if enabled)."""
        return self.events is None or event_type in self.events


@attrs.frozen(kw_only=True)
class WebhookDelivery:
    """One event on its way to one endpoint.

    Attributes:
        id: UUIDv7 string (the id the replay route takes).
        endpoint_id: where it goes.
        org_id: owning organization.
        event_id: the timeline event's id: the ``webhook-id`` header and the
            payload's ``id``, identical across retries and replays so a
            receiver can de-duplicate.
        event_type: e.g. ``email_sent`` or ``webhook.test``.
        message_id: the message the event belongs to (None for
            organization-level and test events).
        payload: the JSON body for events that are not in the timeline
            (``webhook.test``); None when the body is built from the event.
        status: :class:`DeliveryStatus`.
        attempt_count: attempts made so far.
        next_attempt_at: UTC time the next attempt is due (None once final).
        replay_of: the delivery this one replays, None for a first delivery.
        last_status_code: HTTP status of the latest attempt (None: no answer).
        last_error: short text of the latest failure.
        created_at / updated_at: UTC.
    """

    id: str
    endpoint_id: str
    org_id: str
    event_id: str
    event_type: str
    message_id: str | None = None
    payload: str | None = None
    status: DeliveryStatus = DeliveryStatus.PENDING
    attempt_count: int = 0
    next_attempt_at: datetime | None = attrs.field(default=None, validator=_aware)
    replay_of: str | None = None
    last_status_code: int | None = None
    last_error: str | None = None
    created_at: datetime = attrs.field(validator=_aware)
    updated_at: datetime = attrs.field(validator=_aware)


@attrs.frozen(kw_only=True)
class WebhookAttempt:
    """One HTTP POST of a delivery.

    Attributes:
        delivery_id: the delivery it belongs to.
        number: 1 for the first attempt of that delivery.
        started_at: UTC start.
        duration_ms: wall time until the answer or the failure, milliseconds.
        status_code: the endpoint's HTTP status, None when none came
            (timeout, connection refused, refused address).
        succeeded: True for a 2xx.
        error: why it failed (``HTTP 500``, ``timeout after 15 s`` ...), None on success.
        response_body: the first :data:`RESPONSE_BODY_LIMIT` bytes of the
            answer, decoded as UTF-8 with replacement.
    """

    delivery_id: str
    number: int
    started_at: datetime = attrs.field(validator=_aware)
    duration_ms: float
    status_code: int | None
    succeeded: bool
    error: str | None = None
    response_body: str = ""


def new_secret() -> str:
    """A fresh signing secret: ``whsec_`` + base64 of 24 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def check_events(events: object) -> tuple[str, ...] | None:
    """The event filter of an endpoint, validated and sorted.

    Args:
        events: None (every event) or a non-empty list of known event types.

    Returns:
        The de-duplicated, sorted types, or None.

    Raises:
        ValidationError: not a list of strings, empty, or naming an unknown type
            (``details["events"]`` lists the unknown ones).
    """
    if events is None:
        return None
    if not isinstance(events, list | tuple) or not all(isinstance(e, str) for e in events):
        raise ValidationError(
            "events must be a list of event types", details={"events": "not a list"}
        )
    if not events:
        raise ValidationError(
            "events must name at least one event type (omit it for every event)",
            details={"events": "empty"},
        )
    unknown = sorted(set(events) - EVENT_TYPES)
    if unknown:
        raise ValidationError(
            f"unknown event type(s): {', '.join(unknown)}",
            details={"events": f"unknown: {', '.join(unknown)}"},
        )
    return tuple(sorted(set(events)))


def check_url_shape(url: object) -> str:
    """A webhook URL's syntax: ``http``/``https``, a host, no credentials, ≤ 2048 characters.

    Where the host points is checked separately (:func:`refused_address`),
    at creation and again before every attempt.

    Raises:
        ValidationError: ``details["url"]`` says what is wrong.
    """
    if not isinstance(url, str) or not url:
        raise ValidationError("url is required", details={"url": "required"})
    if len(url) > MAX_URL_LENGTH:
        raise ValidationError("url is too long", details={"url": f"longer than {MAX_URL_LENGTH}"})
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"}:
        raise ValidationError(
            "url must be http or https", details={"url": "scheme must be http(s)"}
        )
    if not parts.hostname:
        raise ValidationError("url has no host", details={"url": "no host"})
    if parts.username or parts.password:
        raise ValidationError(
            "url must not carry credentials (the signature authenticates the sender)",
            details={"url": "credentials in URL"},
        )
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValidationError("url has an invalid port", details={"url": "bad port"}) from None
    return url


_METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack instance metadata
        "169.254.170.2",  # AWS ECS task metadata
        "100.100.100.200",  # Alibaba Cloud metadata
        "fd00:ec2::254",  # AWS IMDS over IPv6
    )
)


def _ip(address: str) -> IPAddress | None:
    """The address without its IPv6 zone, IPv4-mapped IPv6 as its IPv4; None when not one."""
    return parse_address(address.split("%", 1)[0])


def metadata_address(address: str) -> str | None:
    """``"cloud metadata address ..."`` when ``address`` is one, else None.

    Refused even when the operator allows private addresses: a request there
    can read the machine's cloud credentials.
    """
    ip = _ip(address)
    if ip is not None and ip in _METADATA_ADDRESSES:
        return f"cloud metadata address {ip}"
    return None


def refused_address(address: str) -> str | None:
    """Why a webhook may not be sent to ``address``, or None when it may.

    Refused: loopback, private (RFC 1918, ULA), link-local, site-local,
    multicast, unspecified, reserved, shared (RFC 6598 CGNAT) and cloud
    metadata addresses, i.e. everything that is not globally routable
    (``ipaddress``'s ``is_global``). IPv4-mapped IPv6 is judged as its IPv4,
    and 6to4 (RFC 3056) and Teredo (RFC 4380) addresses by the IPv4
    addresses they carry, since a relay would forward to those.

    Args:
        address: an IPv4 or IPv6 address in text form (as ``getaddrinfo`` gives).

    Returns:
        A short reason (``"loopback address 127.0.0.1"``) or None.
    """
    ip = _ip(address)
    if ip is None:
        return f"not an IP address: {address!r}"
    if (metadata := metadata_address(address)) is not None:
        return metadata
    if isinstance(ip, ipaddress.IPv6Address):
        carried = [ip.sixtofour, *(ip.teredo or ())]
        for inner in carried:
            if inner is not None and (reason := refused_address(str(inner))) is not None:
                return f"{reason} (inside {ip})"
        if ip.is_site_local:
            return f"site-local address {ip}"
    for label, flag in (
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("unspecified", ip.is_unspecified),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
    ):
        if flag:
            return f"{label} address {ip}"
    if not ip.is_global:
        return f"non-public address {ip}"
    return None


def parse_retry_schedule(text: str) -> tuple[float, ...]:
    """``COMMTUNNEL_WEBHOOK_RETRY_SCHEDULE``: seconds separated by commas.

    The first number is the delay before the first attempt and must be 0 (a
    delivery is due when its event happens, as in Svix's schedule); each next
    one is the delay after the previous failure. The number of entries is the
    number of attempts.

    Raises:
        ValueError: empty, not numbers, negative, or a first delay other than 0.
    """
    try:
        delays = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"not a list of seconds: {text!r}") from None
    if not delays:
        raise ValueError("the retry schedule needs at least one delay")
    if any(d < 0 for d in delays):
        raise ValueError(f"negative delay in {text!r}")
    if delays[0] != 0:
        raise ValueError(
            f"the first delay must be 0 (a delivery is due when its event happens): {text!r}"
        )
    return delays


def next_delay(
    schedule: Sequence[float],
    attempts_made: int,
    *,
    retry_after: float | None = None,
    rng: random.Random,
) -> float | None:
    """Seconds until the next attempt after ``attempts_made`` failed ones, or None when done.

    Args:
        schedule: :func:`parse_retry_schedule`'s delays.
        attempts_made: attempts already made (≥ 1).
        retry_after: the endpoint's ``Retry-After`` in seconds, as
            :func:`~commtunnel.domain.delivery.retry_after_seconds` reads it (capped
            at a day): the attempt waits that long when it is longer than the
            schedule's delay.
        rng: jitter source.

    Returns:
        The delay, jittered by ±:data:`JITTER`; None once the schedule is used up.
    """
    if attempts_made >= len(schedule):
        return None
    delay = schedule[attempts_made] * rng.uniform(1 - JITTER, 1 + JITTER)
    if retry_after is not None:
        # Never sooner than the schedule: a proxy's "Retry-After: 0" must not
        # spend every attempt within seconds.
        return max(delay, retry_after)
    return delay


def event_payload(
    *,
    event_id: str,
    event_type: str,
    created_at: str,
    message_id: str | None,
    channel: str | None,
    status: str | None,
    to: str | None,
    details: dict[str, Any],
) -> dict[str, Any]:
    """The JSON body of a webhook for one timeline event.

    Shape: ``{"type", "id", "createdAt", "data": {"messageId", "channel",
    "status", "to", ...details}}``; ``status`` is the message's status as of
    the event (None for events that do not change it, such as ``email_opened``).
    """
    data: dict[str, Any] = {"messageId": message_id, "channel": channel, "status": status}
    if to is not None:
        data["to"] = to
    for key, value in details.items():
        data.setdefault(key, value)
    return {"type": event_type, "id": event_id, "createdAt": created_at, "data": data}


def signature_header(signatures: Iterable[str]) -> str:
    """The ``webhook-signature`` value: each ``v1,<base64>`` separated by a space."""
    return " ".join(signatures)
