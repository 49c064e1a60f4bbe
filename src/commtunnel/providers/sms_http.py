"""The ``sms+https`` / ``sms+http`` provider: a generic JSON-over-HTTP SMS aggregator.

Many aggregators (Hollatags, Infobip-style gateways, in-house relays) take one
JSON POST per message. This provider speaks Commtunnel's generic shape of it,
so a small adapter (or a compatible aggregator) is all an operator needs::

    POST https://sms.example.com/api/send
    Authorization: Bearer TOKEN
    Content-Type: application/json

    {"from": "ACME", "to": "+2348012345678", "message": "Your code is 123456",
     "type": "normal", "reference": "<message id>",
     "callback_url": "https://ct.example.com/v1/webhooks/sms/provider"}

``type`` is ``flash`` for ``send_type`` 1 (class 0), ``unicode`` for
``send_type`` 2 or a UCS-2 body, else ``normal``. ``reference`` is
Commtunnel's message id (so a duplicate after a retried send is
recognisable); ``callback_url`` is sent only when a public URL is configured.

URL (parsed by :meth:`HttpSmsProvider.from_url`)::

    sms+https://TOKEN@sms.example.com/api/send?timeout=10
    sms+https://:TOKEN@sms.example.com/api/send     the token as the password
    sms+http://127.0.0.1:8080/send                  plain HTTP (loopback, tests), no token

The request goes to the URL without the ``sms+`` prefix, with its host, port
and path kept and Commtunnel's options (the query) removed. The token is
percent-decoded; it is sent as ``Authorization: Bearer TOKEN`` and signs the
status callbacks. Options:

=================  ===================================================================
``timeout=10``     seconds for connecting and for each read/write (0 < t <= 300).
=================  ===================================================================

The token never appears in ``repr``, logs or error messages
(:attr:`HttpSmsProvider.redacted_url`); :meth:`HttpSmsProvider.from_url`
raises :class:`~commtunnel.domain.errors.ProviderConfigError` itself, with the
whole user part of the URL masked (``user:TOKEN@`` and ``TOKEN:x@`` alike).

Classification (``../shared/DESIGN.md``, "Provider results"), see
:func:`classify_response` and :func:`classify_exception`:

===============================================  ================================
2xx                                              accepted(``message_id`` or ``id``
                                                 of the JSON answer, else reference)
429                                              transient RATE_LIMITED
408, httpx timeouts                              transient TIMEOUT
401, 403                                         transient AUTH
400, 413, 422                                    permanent REJECTED
5xx, connection refused, DNS, reset              transient PROVIDER_OUTAGE
other 4xx (404, 405...), 1xx, 3xx                transient UNKNOWN
===============================================  ================================

AUTH is transient as in the SMTP provider: the operator can fix the token and
the queued messages then go out. A ``Retry-After`` header (seconds or an HTTP
date) becomes ``retry_after`` on 429 and 5xx. Other 4xx are transient because
they say nothing about the message (a wrong path, a wrong method): the
operator can fix the URL, and nothing accepted is lost.

**Status callbacks (Commtunnel's generic convention).** The aggregator POSTs
JSON to ``callback_url``, signed with HMAC-SHA256 of the raw body keyed with
the token, hex-encoded, in ``X-Signature: sha256=<hex>``::

    {"message_id": "<id returned at send>", "status": "DELIVERED",
     "error_code": null, "error": null}

``status`` is ``SENT``, ``DELIVERED`` or ``FAILED`` (any case); a JSON array of
such objects carries several receipts. Without a token, callbacks cannot be
verified and are refused. The signature covers the body only, so a captured
callback could be replayed; a replay can only repeat a receipt already applied.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx

from commtunnel.domain.delivery import ErrorCategory, ProviderResult, retry_after_seconds
from commtunnel.domain.errors import (
    NotFoundError,
    ProviderConfigError,
    ValidationError,
    WebhookSignatureError,
)
from commtunnel.domain.messages import Status
from commtunnel.ports import DeliveryReceipt, OutgoingSms
from commtunnel.providers import redact_url
from commtunnel.providers._http import (
    ConfiguredHttpProvider,
    answer_text,
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
    url_port,
)

__all__ = [
    "HttpSmsProvider",
    "HttpSmsSettings",
    "classify_exception",
    "classify_response",
    "message_type",
    "sign_body",
]

DEFAULT_TIMEOUT = 10.0
SIGNATURE_HEADER = "X-Signature"
_SIGNATURE_PREFIX = "sha256="
_OPTIONS = ("timeout",)
_SCHEMES = {"sms+https": "https", "sms+http": "http"}
_TOKEN = re.compile(r"[\x21-\x7e]+")  # visible ASCII: it travels in a header
_STATUSES = {"SENT": Status.SENT, "DELIVERED": Status.DELIVERED, "FAILED": Status.FAILED}


@dataclasses.dataclass(frozen=True, kw_only=True)
class HttpSmsSettings:
    """Validated settings of an :class:`HttpSmsProvider`.

    Attributes:
        endpoint: the ``http(s)://`` URL messages are POSTed to (no query, no credentials).
        token: the bearer token and callback signing key, or None (never in ``repr``).
        timeout: seconds for connecting and for each read and write.

    Raises:
        ValueError: an endpoint that is not http(s) with a host, a token that
            is not visible ASCII, or a bad timeout.
    """

    endpoint: str
    token: str | None = dataclasses.field(default=None, repr=False)
    timeout: float = DEFAULT_TIMEOUT

    def __post_init__(self) -> None:
        check_http_url(self.endpoint, "the endpoint")
        check_timeout(self.timeout)
        if self.token is not None and not _TOKEN.fullmatch(self.token):
            raise ValueError("the token must be non-empty printable ASCII without spaces")

    @classmethod
    def from_url(cls, url: str) -> HttpSmsSettings:
        """Parse and validate an ``sms+https://`` or ``sms+http://`` URL (module docstring).

        Args:
            url: e.g. ``sms+https://TOKEN@sms.example.com/api/send?timeout=5``.

        Returns:
            The settings, with defaults filled in.

        Raises:
            ValueError: another scheme, no host, a bad port, both a user name
                and a password, an unknown option or a bad value. The message
                never contains the token.
        """
        parts = urlsplit(url)
        scheme = _SCHEMES.get(parts.scheme.lower())
        if scheme is None:
            raise ValueError(f"expected an sms+https:// or sms+http:// URL, got {parts.scheme!r}")
        if not parts.hostname:
            raise ValueError("the URL needs a host (sms+https://TOKEN@host/path)")
        if parts.fragment:
            raise ValueError("the URL has no '#' fragment")
        port = url_port(parts)
        user, password = parts.username, parts.password
        if user and password:
            raise ValueError(
                "give the token once: as the user name (TOKEN@) or the password (:TOKEN@)"
            )
        raw_token = password if password else user
        token = unquote(raw_token) if raw_token else None

        timeout = timeout_option(url_options(parts.query, _OPTIONS), DEFAULT_TIMEOUT)

        host = url_host(parts.hostname)
        netloc = host if port is None else f"{host}:{port}"
        endpoint = urlunsplit((scheme, netloc, parts.path or "/", "", ""))
        return cls(endpoint=endpoint, token=token, timeout=timeout)

    @property
    def redacted_url(self) -> str:
        """The settings as an ``sms+`` URL with the token shown as ``***`` (safe to log)."""
        parts = urlsplit(self.endpoint)
        netloc = f"***@{parts.netloc}" if self.token else parts.netloc
        query = f"timeout={self.timeout:g}"
        return urlunsplit((f"sms+{parts.scheme}", netloc, parts.path, query, ""))


# --------------------------------------------------------------------------- send


def message_type(sms: OutgoingSms) -> str:
    """The ``type`` field for ``sms``.

    Args:
        sms: the message.

    Returns:
        ``flash`` for ``send_type`` 1, ``unicode`` for ``send_type`` 2 or a
        ``UCS2`` encoding, else ``normal``.
    """
    if sms.content.send_type == 1:
        return "flash"
    if sms.content.send_type == 2 or sms.content.encoding.upper() == "UCS2":
        return "unicode"
    return "normal"


def _describe(response: httpx.Response) -> str:
    """``HTTP <status>: <the service's words>`` from an error response (:func:`answer_text`)."""
    words = ""
    payload: Any = json_or_none(response)
    if isinstance(payload, dict):
        for key in ("error", "message", "detail", "description"):
            value = payload.get(key)
            if isinstance(value, str) and value.strip():
                words = value.strip()
                break
        code = payload.get("code", payload.get("error_code"))
        if isinstance(code, str | int) and not isinstance(code, bool) and str(code):
            words = f"[{code}] {words}".strip()
    return answer_text(response, words or None)


def classify_response(response: httpx.Response, *, reference: str, now: datetime) -> ProviderResult:
    """Turn the aggregator's answer into a :class:`ProviderResult`.

    Args:
        response: the HTTP response (its body read).
        reference: Commtunnel's message id, the provider id when the answer has none.
        now: the current UTC time, for a ``Retry-After`` HTTP date.

    Returns:
        The classified result (table in the module docstring); ``error_message``
        holds the HTTP status and the service's words.
    """
    status = response.status_code
    if 200 <= status < 300:
        payload: Any = json_or_none(response)
        if isinstance(payload, dict):
            for key in ("message_id", "id"):
                value = payload.get(key)
                if isinstance(value, str | int) and not isinstance(value, bool) and str(value):
                    return ProviderResult.accepted(str(value))
        return ProviderResult.accepted(reference)
    text = _describe(response)
    retry_after = retry_after_seconds(response.headers.get("Retry-After"), now=now)
    if status == 429:
        return ProviderResult.transient(ErrorCategory.RATE_LIMITED, text, retry_after=retry_after)
    if status == 408:
        return ProviderResult.transient(ErrorCategory.TIMEOUT, text)
    if status in (401, 403):
        return ProviderResult.transient(ErrorCategory.AUTH, text)
    if status in (400, 413, 422):
        return ProviderResult.permanent(ErrorCategory.REJECTED, text)
    # No error format of its own to tell the aggregator from a proxy: only 5xx
    # (PROVIDER_OUTAGE) is known, any other status is UNKNOWN.
    return classify_other_status(status, text, retry_after=retry_after, service_error=False)


# --------------------------------------------------------------------------- callbacks


def sign_body(body: bytes, token: str) -> str:
    """The ``X-Signature`` value for a callback body (Commtunnel's generic convention).

    Args:
        body: the raw request body.
        token: the provider token (the HMAC key).

    Returns:
        ``sha256=`` and the lowercase hex HMAC-SHA256 of ``body``.
    """
    digest = hmac.new(token.encode("utf-8"), body, hashlib.sha256).hexdigest()
    return _SIGNATURE_PREFIX + digest


def _optional_text(item: Mapping[str, Any], key: str, problems: dict[str, str]) -> str | None:
    value = item.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        problems[key] = "must be a string or a number"
        return None
    return str(value)


def _receipt(item: Any, index: int | None) -> DeliveryReceipt:
    where = "" if index is None else f"[{index}]."
    if not isinstance(item, dict):
        raise ValidationError.from_fields({where.rstrip(".") or "body": "must be a JSON object"})
    problems: dict[str, str] = {}
    message_id = _optional_text(item, "message_id", problems)
    if message_id is None and "message_id" not in problems:
        problems["message_id"] = "missing"
    raw_status = item.get("status")
    status = _STATUSES.get(raw_status.upper()) if isinstance(raw_status, str) else None
    if status is None:
        problems["status"] = "must be SENT, DELIVERED or FAILED"
    error_code = _optional_text(item, "error_code", problems)
    error = _optional_text(item, "error", problems)
    if problems or message_id is None or status is None:
        raise ValidationError.from_fields({f"{where}{k}": v for k, v in problems.items()})
    return DeliveryReceipt(
        provider_message_id=message_id,
        status=status,
        provider_status=str(raw_status),
        error_code=error_code,
        error_message=error,
    )


# --------------------------------------------------------------------------- provider


class HttpSmsProvider(ConfiguredHttpProvider[HttpSmsSettings]):
    """An :class:`~commtunnel.ports.SmsProvider` for a generic JSON-over-HTTP aggregator.

    One ``httpx.AsyncClient`` is made on the first send and reused (keep-alive
    connections) until :meth:`aclose`. Constructor arguments and ``from_url``
    are :class:`~commtunnel.providers._http.ConfiguredHttpProvider`'s.

    Attributes:
        name: ``"sms_http"``, recorded on every attempt.
        settings: the settings in use (:class:`HttpSmsSettings`).
    """

    name = "sms_http"

    @classmethod
    def parse_settings(cls, url: str) -> HttpSmsSettings:
        """Parse an ``sms+https://`` or ``sms+http://`` URL (:meth:`HttpSmsSettings.from_url`).

        Raises:
            ProviderConfigError: an invalid URL or option, the URL's whole user
                part masked. Raised here rather than left to the registry as a
                ``ValueError``: the registry's redaction shows the user name of a
                ``user:password@`` part, and here either part may be the token.
        """
        try:
            return HttpSmsSettings.from_url(url)
        except ValueError as exc:
            raise ProviderConfigError(
                f"Invalid provider URL {redact_url(url, keep_user=False)}: {exc}"
            ) from None

    def payload_for(self, sms: OutgoingSms) -> dict[str, str]:
        """The JSON object sent for ``sms`` (fields in the module docstring).

        Args:
            sms: the message to send.

        Returns:
            ``from to message type reference`` and ``callback_url`` when set.
        """
        payload = {
            "from": sms.content.sender_id,
            "to": sms.content.to,
            "message": sms.content.body,
            "type": message_type(sms),
            "reference": sms.message_id,
        }
        if sms.status_callback_url:
            payload["callback_url"] = sms.status_callback_url
        return payload

    async def send_sms(self, sms: OutgoingSms) -> ProviderResult:
        """POST ``sms`` to the aggregator and classify the outcome.

        Args:
            sms: the message to deliver.

        Returns:
            Accepted with the aggregator's id (or ``sms.message_id`` when it
            returns none), or a transient or permanent failure (module
            docstring). Never raises for delivery problems.
        """
        if self._closed:
            return ProviderResult.transient(
                ErrorCategory.UNKNOWN, "the HTTP SMS provider is closed"
            )
        token = self.settings.token
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        answer = await self._post(
            self.settings.endpoint, secret=token, json=self.payload_for(sms), headers=headers
        )
        if isinstance(answer, ProviderResult):
            return answer
        result = classify_response(answer, reference=sms.message_id, now=self._clock.now())
        return scrub(result, token)

    def parse_status_callback(
        self, *, url: str, headers: Mapping[str, str], body: bytes
    ) -> list[DeliveryReceipt]:
        """Verify and parse a status callback in Commtunnel's generic convention.

        Args:
            url: the URL the callback was POSTed to (not signed in this convention).
            headers: the request headers (any case); ``X-Signature: sha256=<hex>``.
            body: the raw JSON body: one receipt object or an array of them.

        Returns:
            One receipt per object, in order.

        Raises:
            NotFoundError: no token is configured, so no callback can be verified.
            WebhookSignatureError: the signature header is missing or wrong
                (compared in constant time).
            ValidationError: the body is not a receipt object or array of them.
        """
        token = self.settings.token
        if not token:
            raise NotFoundError(
                "This HTTP SMS provider has no token, so it takes no signed status callbacks"
            )
        given = header(headers, SIGNATURE_HEADER)
        if not given:
            raise WebhookSignatureError(f"The {SIGNATURE_HEADER} header is missing")
        given = given.strip()
        if given[: len(_SIGNATURE_PREFIX)].lower() == _SIGNATURE_PREFIX:
            given = _SIGNATURE_PREFIX + given[len(_SIGNATURE_PREFIX) :].lower()
        if not hmac.compare_digest(sign_body(body, token).encode(), given.encode("utf-8")):
            raise WebhookSignatureError(f"The {SIGNATURE_HEADER} header does not match")
        try:
            payload = json.loads(body)
        except ValueError:
            raise ValidationError.from_fields({"body": "must be JSON"}) from None
        if isinstance(payload, list):
            if not payload:
                raise ValidationError.from_fields({"body": "must hold at least one receipt"})
            return [_receipt(item, index) for index, item in enumerate(payload)]
        return [_receipt(payload, None)]
