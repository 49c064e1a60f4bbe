"""The ``twilio`` SMS provider: Twilio's Programmable Messaging REST API over httpx.

Sends with "Create a Message resource"
(https://www.twilio.com/docs/messaging/api/message-resource#create-a-message-resource)::

    POST {base_url}/2010-04-01/Accounts/{AccountSid}/Messages.json
    Authorization: Basic base64(AccountSid:AuthToken)
    Content-Type: application/x-www-form-urlencoded

    To=+2348012345678&From=ACME&Body=...&StatusCallback=https://.../v1/webhooks/sms/provider

and answers ``201`` with the Message resource, whose ``sid`` (``SM...``) becomes
the provider message id. Delivery receipts arrive as signed status callbacks,
parsed by :meth:`TwilioProvider.parse_status_callback`.

URL (parsed by :meth:`TwilioProvider.from_url`)::

    twilio://ACCOUNT_SID:AUTH_TOKEN@?from=%2B15005550006
    twilio://ACCOUNT_SID:AUTH_TOKEN@?messaging_service_sid=MG...

=====================================  ===================================================
``from=...``                           fallback sender: an E.164 number, short code or
                                       alphanumeric sender ID of the account. Write ``+``
                                       as ``%2B`` (a bare ``+`` means a space in a query).
``messaging_service_sid=MG...``        a Messaging Service (``MG`` + 32 hex digits), sent
                                       as ``MessagingServiceSid``. ``from`` and/or this
                                       is required.
``base_url=https://api.twilio.com``    the API origin (a proxy, or a fake in tests).
``timeout=10``                         seconds for connecting and for each read/write
                                       (0 < t <= 300).
``use_sender_id=true|false``           send the message's own sender ID (default true;
                                       see below). False always uses the configured sender.
=====================================  ===================================================

The account SID (``AC`` + 32 hex digits) is the user name and the auth token
the password of the URL, both percent-decoded; the token never appears in
``repr``, logs or error messages (:attr:`TwilioProvider.redacted_url`).

**Which sender.** Twilio sends from ``From`` (a number, short code or
alphanumeric sender ID, which Twilio accepts in many countries:
https://support.twilio.com/hc/en-us/articles/223181348) or from a Messaging
Service's sender pool (``MessagingServiceSid``). The message's ``sender_id`` (the sender
ID Commtunnel approved for the organization) is sent as ``From`` when it has
the shape of one: ``+`` and/or 3 to 15 digits, or 1 to 11 characters of
letters, digits, spaces and ``+ - _ &`` with at least one letter. Otherwise,
or with ``use_sender_id=false`` (e.g. for US traffic, where alphanumeric
sender IDs are not supported), the configured ``from`` is sent. A configured
``messaging_service_sid`` is always sent along; Twilio then requires ``From``
to be in that service's sender pool.

**Not supported by Twilio**, sent as a normal SMS instead: flash messages
(``send_type`` 1, class 0) and forced UCS-2 (``send_type`` 2; Twilio picks the
encoding from the body itself).

**At least once.** Twilio's message API takes no idempotency key, so a send
retried after a timeout (Twilio may have accepted the first) can deliver twice.

Classification (``../shared/DESIGN.md``, "Provider results"), see
:func:`classify_response` and :func:`classify_exception`; Twilio's error body
is ``{"code": 21211, "message": "...", "more_info": "...", "status": 400}``
(https://www.twilio.com/docs/usage/twilios-response, codes at
https://www.twilio.com/docs/api/errors):

=================================================================  ===========================
201/200 with a ``sid``                                             accepted(sid)
21211 invalid To, 21614 To not SMS-capable, 21612 To unreachable   permanent INVALID_RECIPIENT
21610 recipient replied STOP ("unsubscribed recipient")            permanent RECIPIENT_OPTED_OUT
21408 destination not permitted, 21606 / 21659 From not allowed    permanent REJECTED
20003 / 20005 (credentials, inactive account), HTTP 401 or 403     transient AUTH
HTTP 429 or 20429                                                  transient RATE_LIMITED
HTTP 5xx                                                           transient PROVIDER_OUTAGE
any other 4xx with a Twilio error body                             permanent REJECTED
a 4xx without one, 1xx/3xx, a 2xx without ``sid``: not Twilio's    transient UNKNOWN
httpx timeouts (connect, read, write, pool)                        transient TIMEOUT
connection refused, DNS, reset, protocol errors                    transient PROVIDER_OUTAGE
=================================================================  ===========================

AUTH is transient as in the SMTP provider: the operator can fix the
credentials (or reactivate the account) and the queued messages then go out;
nothing accepted is lost. A ``Retry-After`` header (seconds or an HTTP date)
becomes ``retry_after`` in seconds.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit, urlunsplit

import httpx

from commtunnel.domain.delivery import ErrorCategory, ProviderResult, retry_after_seconds
from commtunnel.domain.errors import ValidationError, WebhookSignatureError
from commtunnel.domain.messages import Status
from commtunnel.ports import DeliveryReceipt, OutgoingSms
from commtunnel.providers._http import (
    ConfiguredHttpProvider,
    answer_text,
    bool_option,
    check_http_url,
    check_timeout,
    classify_exception,
    classify_other_status,
    header,
    json_or_none,
    scrub,
    timeout_option,
    url_host,
    url_options,
)

__all__ = [
    "DEFAULT_BASE_URL",
    "TwilioProvider",
    "TwilioSettings",
    "classify_exception",
    "classify_response",
    "compute_signature",
    "is_valid_sender",
    "retry_after_seconds",
]

DEFAULT_BASE_URL = "https://api.twilio.com"
DEFAULT_TIMEOUT = 10.0
SIGNATURE_HEADER = "X-Twilio-Signature"

_OPTIONS = ("from", "messaging_service_sid", "base_url", "timeout", "use_sender_id")
_ACCOUNT_SID = re.compile(r"AC[0-9a-fA-F]{32}")
_SERVICE_SID = re.compile(r"MG[0-9a-fA-F]{32}")
_NUMERIC_SENDER = re.compile(r"\+?[0-9]{3,15}")
# Twilio's alphanumeric sender IDs: up to 11 of A-Z a-z 0-9 space + - _ &, at least one
# letter (https://support.twilio.com/hc/en-us/articles/223181348). Spaces only inside.
_ALPHA_SENDER = re.compile(
    r"(?=.*[A-Za-z])[A-Za-z0-9+\-_&](?:[A-Za-z0-9 +\-_&]{0,9}[A-Za-z0-9+\-_&])?"
)
_MAX_CALLBACK_FIELDS = 200

_INVALID_RECIPIENT_CODES = frozenset({21211, 21612, 21614})
_UNSUBSCRIBED_CODE = 21610
_SENDER_NOT_ALLOWED_CODES = frozenset({21408, 21606, 21659})
_AUTH_CODES = frozenset({20003, 20005})
_RATE_LIMIT_CODE = 20429

# MessageStatus values (https://www.twilio.com/docs/messaging/api/message-resource#message-status-values)
_FINAL_STATUSES = {
    "sent": Status.SENT,
    "delivered": Status.DELIVERED,
    "read": Status.DELIVERED,  # READ is WhatsApp's; for SMS "read" (RCS) still means delivered
    "undelivered": Status.FAILED,
    "failed": Status.FAILED,
    "canceled": Status.FAILED,  # a scheduled message cancelled in Twilio: it will never go
}
_PENDING_STATUSES = frozenset({"queued", "accepted", "sending", "scheduled"})


def is_valid_sender(sender: str) -> bool:
    """Whether ``sender`` can be Twilio's ``From``: a number/short code or alphanumeric ID.

    Args:
        sender: e.g. ``+15005550006``, ``12345`` or ``ACME Ltd``.

    Returns:
        True for ``+`` and/or 3-15 digits, or 1-11 characters of letters,
        digits, inner spaces and ``+ - _ &`` with at least one letter.
    """
    return bool(_NUMERIC_SENDER.fullmatch(sender) or _ALPHA_SENDER.fullmatch(sender))


@dataclasses.dataclass(frozen=True, kw_only=True)
class TwilioSettings:
    """Validated settings of a :class:`TwilioProvider`.

    Attributes:
        account_sid: ``AC`` + 32 hex digits; the Basic-auth user and the URL path.
        auth_token: the Basic-auth password and the callback signing key (never in ``repr``).
        from_: the fallback ``From``, or None.
        messaging_service_sid: ``MG`` + 32 hex digits, or None.
        base_url: the API origin without a trailing slash.
        timeout: seconds for connecting and for each read and write.
        use_sender_id: whether the message's own sender ID is sent as ``From``.
    """

    account_sid: str
    auth_token: str = dataclasses.field(repr=False)
    from_: str | None = None
    messaging_service_sid: str | None = None
    base_url: str = DEFAULT_BASE_URL
    timeout: float = DEFAULT_TIMEOUT
    use_sender_id: bool = True

    def __post_init__(self) -> None:
        if not _ACCOUNT_SID.fullmatch(self.account_sid):
            raise ValueError("the account SID (URL user name) must be AC and 32 hex digits")
        if not self.auth_token:
            raise ValueError("the auth token (URL password) is missing: twilio://SID:TOKEN@")
        if self.from_ is None and self.messaging_service_sid is None:
            raise ValueError("a twilio URL needs from= or messaging_service_sid=")
        if self.from_ is not None and not is_valid_sender(self.from_):
            hint = " (write '+' as %2B)" if self.from_.startswith(" ") else ""
            raise ValueError(
                "from must be a number, short code or alphanumeric sender ID, "
                f"got {self.from_!r}{hint}"
            )
        if self.messaging_service_sid is not None and not _SERVICE_SID.fullmatch(
            self.messaging_service_sid
        ):
            raise ValueError("messaging_service_sid must be MG and 32 hex digits")
        check_timeout(self.timeout)
        check_http_url(self.base_url, "base_url")

    @classmethod
    def from_url(cls, url: str) -> TwilioSettings:
        """Parse and validate a ``twilio://`` URL (options in the module docstring).

        Args:
            url: e.g. ``twilio://AC...:TOKEN@?from=%2B15005550006&timeout=5``.

        Returns:
            The settings, with defaults filled in.

        Raises:
            ValueError: wrong scheme, a missing SID or token, an unknown option
                or a bad value; the message never contains the token.
        """
        parts = urlsplit(url)
        if parts.scheme.lower() != "twilio":
            raise ValueError(f"expected a twilio:// URL, got scheme {parts.scheme!r}")
        if parts.hostname or parts.path not in ("", "/") or parts.fragment:
            raise ValueError(
                "a twilio URL has no host, path or fragment: twilio://SID:TOKEN@?from=... "
                "(use base_url= for another API origin)"
            )
        options = url_options(parts.query, _OPTIONS)
        timeout = timeout_option(options, DEFAULT_TIMEOUT)
        use_sender_id = bool_option(options, "use_sender_id")
        return cls(
            account_sid=unquote(parts.username or ""),
            auth_token=unquote(parts.password or ""),
            from_=options.get("from"),
            messaging_service_sid=options.get("messaging_service_sid"),
            base_url=options.get("base_url", DEFAULT_BASE_URL).rstrip("/"),
            timeout=timeout,
            use_sender_id=True if use_sender_id is None else use_sender_id,
        )

    @property
    def redacted_url(self) -> str:
        """The settings as a ``twilio://`` URL with the token shown as ``***`` (safe to log)."""
        query = []
        if self.from_ is not None:
            query.append(f"from={quote(self.from_, safe='')}")
        if self.messaging_service_sid is not None:
            query.append(f"messaging_service_sid={self.messaging_service_sid}")
        if self.base_url != DEFAULT_BASE_URL:
            query.append(f"base_url={quote(self.base_url, safe='')}")
        query.append(f"timeout={self.timeout:g}")
        if not self.use_sender_id:
            query.append("use_sender_id=false")
        return f"twilio://{self.account_sid}:***@?{'&'.join(query)}"


# --------------------------------------------------------------------------- classification


def _twilio_error(response: httpx.Response) -> tuple[int | None, str] | None:
    """``(code, description)`` of Twilio's JSON error body, or None when it has none."""
    payload = json_or_none(response)
    if not isinstance(payload, dict) or ("message" not in payload and "code" not in payload):
        return None
    code = payload.get("code")
    code = code if isinstance(code, int) and not isinstance(code, bool) else None
    text = str(payload.get("message") or "").strip()
    more_info = payload.get("more_info")
    if isinstance(more_info, str) and more_info:
        text = f"{text} ({more_info})" if text else more_info
    return code, text


def classify_response(response: httpx.Response, *, now: datetime) -> ProviderResult:
    """Turn Twilio's answer to "create a message" into a :class:`ProviderResult`.

    Args:
        response: the HTTP response (its body read).
        now: the current UTC time, for a ``Retry-After`` HTTP date.

    Returns:
        The classified result (table in the module docstring). ``error_message``
        holds the HTTP status, Twilio's error code and its words.
    """
    status = response.status_code
    if 200 <= status < 300:
        payload: Any = json_or_none(response)
        sid = payload.get("sid") if isinstance(payload, dict) else None
        if isinstance(sid, str) and sid:
            return ProviderResult.accepted(sid)
        return ProviderResult.transient(
            ErrorCategory.UNKNOWN, f"HTTP {status} without a message sid: not Twilio's answer"
        )
    error = _twilio_error(response)
    code, words = error if error is not None else (None, None)
    text = answer_text(response, words, label=f"Twilio error {code}" if code is not None else "")
    retry_after = retry_after_seconds(response.headers.get("Retry-After"), now=now)

    if code in _INVALID_RECIPIENT_CODES:
        return ProviderResult.permanent(ErrorCategory.INVALID_RECIPIENT, text)
    if code == _UNSUBSCRIBED_CODE:
        return ProviderResult.permanent(
            ErrorCategory.RECIPIENT_OPTED_OUT,
            f"recipient unsubscribed (Twilio error 21610: they replied STOP to this sender "
            f"and must text START to opt back in); {text}",
        )
    if code in _SENDER_NOT_ALLOWED_CODES:
        return ProviderResult.permanent(ErrorCategory.REJECTED, text)
    if code in _AUTH_CODES or status in (401, 403):
        return ProviderResult.transient(ErrorCategory.AUTH, text)
    if status == 429 or code == _RATE_LIMIT_CODE:
        return ProviderResult.transient(ErrorCategory.RATE_LIMITED, text, retry_after=retry_after)
    # 5xx; any other 4xx is REJECTED if Twilio's own error body says so, else (a proxy,
    # a wrong base_url) it is retried like a 1xx/3xx.
    return classify_other_status(
        status, text, retry_after=retry_after, service_error=error is not None
    )


# --------------------------------------------------------------------------- signatures


def compute_signature(url: str, params: Iterable[tuple[str, str]], auth_token: str) -> str:
    """Twilio's request signature (https://www.twilio.com/docs/usage/webhooks/webhooks-security).

    The full URL, followed by every POST parameter's name and value sorted by
    name (then value), no separators; HMAC-SHA1 keyed with the auth token; base64.

    Args:
        url: the full URL Twilio requested, query string included.
        params: the form's ``(name, value)`` pairs, decoded.
        auth_token: the account's auth token.

    Returns:
        The base64 signature, as in the ``X-Twilio-Signature`` header.
    """
    data = url + "".join(name + value for name, value in sorted(params))
    digest = hmac.new(auth_token.encode("utf-8"), data.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def _url_variants(url: str) -> list[str]:
    """``url`` as given, and with its default port removed or added.

    Twilio's helper libraries accept both, because some Twilio services sign
    the URL with the port and some without.
    """
    parts = urlsplit(url)
    default = {"https": 443, "http": 80}.get(parts.scheme.lower())
    if default is None or not parts.hostname:
        return [url]
    try:
        port = parts.port
    except ValueError:
        return [url]
    userinfo, _, _hostport = parts.netloc.rpartition("@")
    prefix = f"{userinfo}@" if userinfo else ""
    host = url_host(parts.hostname)
    if port is None:
        return [url, urlunsplit(parts._replace(netloc=f"{prefix}{host}:{default}"))]
    if port == default:
        return [url, urlunsplit(parts._replace(netloc=f"{prefix}{host}"))]
    return [url]


# --------------------------------------------------------------------------- provider


class TwilioProvider(ConfiguredHttpProvider[TwilioSettings]):
    """An :class:`~commtunnel.ports.SmsProvider` for Twilio Programmable Messaging.

    One ``httpx.AsyncClient`` is made on the first send and reused (keep-alive
    connections) until :meth:`aclose`. Constructor arguments and :meth:`from_url`
    are :class:`~commtunnel.providers._http.ConfiguredHttpProvider`'s; the URL is
    parsed by :meth:`TwilioSettings.from_url`.

    Attributes:
        name: ``"twilio"``, recorded on every attempt.
        settings: the settings in use (:class:`TwilioSettings`).
    """

    name = "twilio"

    @classmethod
    def parse_settings(cls, url: str) -> TwilioSettings:
        """:meth:`TwilioSettings.from_url` (raises ``ValueError`` for a bad URL)."""
        return TwilioSettings.from_url(url)

    @property
    def messages_url(self) -> str:
        """The "create a message" endpoint of the configured account."""
        s = self.settings
        return f"{s.base_url}/2010-04-01/Accounts/{s.account_sid}/Messages.json"

    def form_for(self, sms: OutgoingSms) -> dict[str, str]:
        """The form fields sent for ``sms`` (sender rule in the module docstring).

        Args:
            sms: the message to send.

        Returns:
            ``To``, ``Body``, ``From`` and/or ``MessagingServiceSid``, and
            ``StatusCallback`` when the message has a callback URL.
        """
        s = self.settings
        form = {"To": sms.content.to}
        sender = sms.content.sender_id.strip()
        if s.use_sender_id and is_valid_sender(sender):
            form["From"] = sender
        elif s.from_ is not None:
            form["From"] = s.from_
        if s.messaging_service_sid is not None:
            form["MessagingServiceSid"] = s.messaging_service_sid
        form["Body"] = sms.content.body
        if sms.status_callback_url:
            form["StatusCallback"] = sms.status_callback_url
        return form

    async def send_sms(self, sms: OutgoingSms) -> ProviderResult:
        """Create a Twilio Message for ``sms`` and classify the outcome.

        Args:
            sms: the message to deliver (flash and forced UCS-2 are sent as normal SMS).

        Returns:
            Accepted with Twilio's message sid (``SM...``), or a transient or
            permanent failure (module docstring). Never raises for delivery problems.
        """
        if self._closed:
            return ProviderResult.transient(ErrorCategory.UNKNOWN, "the Twilio provider is closed")
        token = self.settings.auth_token
        answer = await self._post(
            self.messages_url,
            secret=token,
            data=self.form_for(sms),
            auth=httpx.BasicAuth(self.settings.account_sid, token),
            headers={"Accept": "application/json"},
        )
        if isinstance(answer, ProviderResult):
            return answer
        return scrub(classify_response(answer, now=self._clock.now()), token)

    def parse_status_callback(
        self, *, url: str, headers: Mapping[str, str], body: bytes
    ) -> list[DeliveryReceipt]:
        """Verify and parse a Twilio message status callback.

        Twilio POSTs a form (``MessageSid``, ``MessageStatus``, ``ErrorCode``...;
        https://www.twilio.com/docs/messaging/guides/track-outbound-message-status)
        signed in ``X-Twilio-Signature`` (:func:`compute_signature`, compared in
        constant time; the URL with and without its default port is accepted).

        Args:
            url: the full URL Twilio POSTed to, query string included.
            headers: the request headers (any case).
            body: the raw ``application/x-www-form-urlencoded`` body.

        Returns:
            One receipt for ``sent`` (SENT), ``delivered``/``read`` (DELIVERED),
            ``undelivered``/``failed``/``canceled`` (FAILED, with ``ErrorCode``
            and ``ErrorMessage`` when present); none for ``queued``,
            ``accepted``, ``sending`` and ``scheduled``, which move nothing.

        Raises:
            WebhookSignatureError: the signature header is missing or wrong.
            ValidationError: ``MessageSid`` or ``MessageStatus`` is missing, or
                the status is not one an outbound message reports.
        """
        signature = header(headers, SIGNATURE_HEADER)
        if not signature:
            raise WebhookSignatureError(f"The {SIGNATURE_HEADER} header is missing")
        try:
            params = parse_qsl(
                body.decode("utf-8"),
                keep_blank_values=True,
                max_num_fields=_MAX_CALLBACK_FIELDS,
            )
        except ValueError:  # undecodable or too many fields: nothing Twilio signed
            raise WebhookSignatureError("The callback body cannot be verified") from None
        given = signature.strip().encode("utf-8")
        matched = False
        for candidate in _url_variants(url):
            expected = compute_signature(candidate, params, self.settings.auth_token)
            matched |= hmac.compare_digest(expected.encode("ascii"), given)
        if not matched:
            raise WebhookSignatureError(f"The {SIGNATURE_HEADER} header does not match")

        fields = dict(params)
        sid = fields.get("MessageSid", "").strip()
        word = fields.get("MessageStatus", "").strip().lower()
        problems = {}
        if not sid:
            problems["MessageSid"] = "missing"
        if not word:
            problems["MessageStatus"] = "missing"
        elif word not in _FINAL_STATUSES and word not in _PENDING_STATUSES:
            problems["MessageStatus"] = f"not an outbound message status: {word!r}"
        if problems:
            raise ValidationError.from_fields(problems)
        if word in _PENDING_STATUSES:
            return []
        status = _FINAL_STATUSES[word]
        error_code = fields.get("ErrorCode", "").strip() or None
        error_message = fields.get("ErrorMessage", "").strip() or None
        if status is not Status.FAILED:
            error_code = error_message = None
        return [
            DeliveryReceipt(
                provider_message_id=sid,
                status=status,
                provider_status=word,
                error_code=error_code,
                error_message=error_message,
            )
        ]
