"""WhatsApp Cloud rules (pure): what a send may carry, and Meta's webhooks.

No I/O here. :func:`message_content` checks a send request's recipient, text
and template (https://developers.facebook.com/docs/whatsapp/cloud-api/reference/messages).
For the webhooks (https://developers.facebook.com/docs/whatsapp/cloud-api/webhooks/components):
:func:`verify_handshake` (the ``GET`` subscription check), :func:`verify_signature`
(``X-Hub-Signature-256`` on each ``POST``: the HMAC-SHA256 of the raw body with
the app secret) and :func:`parse_webhook` (status updates and inbound messages).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import attrs

from commtunnel.domain.errors import (
    ValidationError,
    WebhookSignatureError,
    WebhookVerificationError,
)
from commtunnel.domain.messages import Status, WhatsAppContent, _aware
from commtunnel.domain.sms import normalise_e164

__all__ = [
    "MAX_TEXT_CHARACTERS",
    "OPTED_OUT_ERROR_CODE",
    "SIGNATURE_HEADER",
    "WEBHOOK_OBJECT",
    "InboundWhatsApp",
    "StatusUpdate",
    "WebhookBatch",
    "compute_signature",
    "message_content",
    "parse_webhook",
    "verify_handshake",
    "verify_signature",
]

MAX_TEXT_CHARACTERS = 4096
"""Longest text ``body``, in characters (Meta: ``text.body`` is limited to 4096)."""
#: Graph error "user stopped marketing messages": the recipient opted out.
OPTED_OUT_ERROR_CODE = 131050

SIGNATURE_HEADER = "X-Hub-Signature-256"
WEBHOOK_OBJECT = "whatsapp_business_account"
_SIGNATURE = re.compile(r"sha256=([0-9a-fA-F]{64})")

# webhook statuses[].status -> Status; others ("deleted", "warning", ...) are skipped
_STATUSES = {
    "sent": Status.SENT,
    "delivered": Status.DELIVERED,
    "read": Status.READ,
    "failed": Status.FAILED,
}


# --------------------------------------------------------------------------- sends

_TEMPLATE_NAME = re.compile(r"[a-z0-9_]{1,512}")
_LANGUAGE = re.compile(r"[a-z]{2,3}(_[A-Za-z]{2,4})?")
_TEMPLATE_FIELDS = frozenset({"name", "language", "variables"})
Variables = list[str] | dict[str, str] | None


def message_content(*, to: object, body: object, template: object) -> WhatsAppContent:
    """Check a send request and build its content (``phone_number_id`` not yet set).

    Args:
        to: the recipient: E.164, or the digits alone as Meta writes them.
        body: a text message: a non-blank string of at most
            :data:`MAX_TEXT_CHARACTERS` (4096) characters; None for a template.
        template: a template message: ``{"name": "order_update", "language":
            "en_US", "variables": [...] or {...}}``; ``language`` defaults to
            ``en_US``; None for a text message.

    Returns:
        ``kind="text"`` content with the body, or ``kind="template"`` content.

    Raises:
        ValidationError: every bad field at once: ``to``, ``body`` (neither or
            not a usable text), ``template`` (both given, or not an object),
            ``template.name`` (lower case, digits, ``_``), ``template.language``
            (``en`` / ``en_US``), ``template.variables`` (strings only),
            ``template.<other>`` (unknown field).
    """
    problems: dict[str, str] = {}
    e164 = None
    try:
        e164 = normalise_e164(to, plus_optional=True)
    except ValidationError as exc:
        problems.update(exc.details)
    if template is None and body is None:
        problems["body"] = "give body (text) or template"
    if template is not None and body is not None:
        problems["template"] = "give body or template, not both"
    if body is not None:
        if not isinstance(body, str) or not body.strip():
            problems["body"] = "must be a non-empty string"
        elif len(body) > MAX_TEXT_CHARACTERS:
            problems["body"] = f"must be at most {MAX_TEXT_CHARACTERS} characters"
    name = language = variables = None
    if template is not None:
        name, language, variables = _template(template, problems)
    if problems:
        raise ValidationError.from_fields(problems)
    assert e164 is not None
    if template is not None:
        return WhatsAppContent(
            to=e164,
            kind="template",
            template_name=name,
            template_language=language,
            template_variables=variables,
        )
    assert isinstance(body, str)
    return WhatsAppContent(to=e164, kind="text", body=body)


def _template(template: object, problems: dict[str, str]) -> tuple[Any, Any, Variables]:
    """(name, language, variables) of a ``template`` object; its problems go to ``problems``."""
    if not isinstance(template, dict):
        problems["template"] = "must be an object {name, language, variables}"
        return None, None, None
    for field in sorted(set(template) - _TEMPLATE_FIELDS):
        problems[f"template.{field}"] = "unknown field"
    name, language = template.get("name"), template.get("language", "en_US")
    if not isinstance(name, str) or not _TEMPLATE_NAME.fullmatch(name):
        problems["template.name"] = "must be a template name (lower case, digits, _)"
    if not isinstance(language, str) or not _LANGUAGE.fullmatch(language):
        problems["template.language"] = "must be a language code such as en or en_US"
    variables = template.get("variables")
    if isinstance(variables, list) and not all(isinstance(v, str) for v in variables):
        problems["template.variables"] = "list items must be strings"
    elif isinstance(variables, dict) and not all(
        isinstance(k, str) and isinstance(v, str) for k, v in variables.items()
    ):
        problems["template.variables"] = "object values must be strings"
    elif variables is not None and not isinstance(variables, list | dict):
        problems["template.variables"] = "must be a list or an object of strings"
    return name, language, variables


# --------------------------------------------------------------------------- webhook security


def compute_signature(body: bytes, app_secret: str) -> str:
    """The ``X-Hub-Signature-256`` value Meta sends for ``body``.

    Args:
        body: the raw request body, byte for byte.
        app_secret: the Meta app's secret.

    Returns:
        ``sha256=`` and the lowercase hex HMAC-SHA256 of ``body`` keyed with the secret.
    """
    digest = hmac.new(app_secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify_signature(body: bytes, header: str | None, app_secret: str) -> None:
    """Check Meta's ``X-Hub-Signature-256`` header on a webhook ``POST``.

    Meta signs every event notification with the app secret
    (https://developers.facebook.com/docs/graph-api/webhooks/getting-started#event-notifications).

    Args:
        body: the raw request body, before any JSON parsing.
        header: the header's value (``sha256=<64 hex digits>``), or None when absent.
        app_secret: the Meta app's secret (``WHATSAPP_APP_SECRET``).

    Raises:
        WebhookSignatureError: no secret configured, the header missing or
            malformed, or the digest does not match (constant-time comparison).
    """
    if not app_secret:
        raise WebhookSignatureError("No WhatsApp app secret is configured to check signatures")
    if header is None or not header.strip():
        raise WebhookSignatureError(f"The {SIGNATURE_HEADER} header is missing")
    match = _SIGNATURE.fullmatch(header.strip())
    if match is None:
        raise WebhookSignatureError(f"The {SIGNATURE_HEADER} header is not sha256=<hex digest>")
    expected = compute_signature(body, app_secret).removeprefix("sha256=")
    if not hmac.compare_digest(expected.encode("ascii"), match.group(1).lower().encode("ascii")):
        raise WebhookSignatureError(f"The {SIGNATURE_HEADER} header does not match the body")


def verify_handshake(params: Mapping[str, str], verify_token: str | None) -> str:
    """Answer Meta's webhook verification request (``GET`` with ``hub.*`` query parameters).

    Meta sends ``hub.mode=subscribe``, ``hub.verify_token`` (the token typed in
    the app dashboard) and ``hub.challenge``; the endpoint echoes the challenge
    (https://developers.facebook.com/docs/graph-api/webhooks/getting-started#verification-requests).

    Args:
        params: the query parameters.
        verify_token: the configured token (``WHATSAPP_VERIFY_TOKEN``), None if unset.

    Returns:
        The ``hub.challenge`` value, to be sent back as the plain-text body.

    Raises:
        WebhookVerificationError: no token configured, a mode other than ``subscribe``,
            a wrong token (constant-time comparison) or no challenge. The HTTP
            layer answers 403 for it on this route.
    """
    if not verify_token:
        raise WebhookVerificationError("No WhatsApp webhook verify token is configured")
    if params.get("hub.mode") != "subscribe":
        raise WebhookVerificationError("hub.mode must be 'subscribe'")
    given = params.get("hub.verify_token") or ""
    if not hmac.compare_digest(given.encode("utf-8"), verify_token.encode("utf-8")):
        raise WebhookVerificationError("hub.verify_token does not match")
    challenge = params.get("hub.challenge")
    if not challenge:
        raise WebhookVerificationError("hub.challenge is missing")
    return challenge


# --------------------------------------------------------------------------- webhook payloads


@attrs.frozen(kw_only=True)
class StatusUpdate:
    """One ``statuses[]`` item of a messages webhook: what happened to a message we sent.

    Attributes:
        phone_number_id: the business line (``value.metadata.phone_number_id``).
        provider_message_id: the ``wamid.…`` returned when it was sent.
        status: SENT, DELIVERED, READ or FAILED.
        provider_status: Meta's word (``sent``, ``delivered``, ``read``, ``failed``).
        recipient_id: the customer's WhatsApp id (digits, no ``+``).
        timestamp: when it happened (UTC, from Meta's unix seconds).
        errors: for ``failed``: ``{"code": int | None, "title": str | None,
            "message": str | None, "details": str | None}`` per error.
    """

    phone_number_id: str
    provider_message_id: str
    status: Status
    provider_status: str
    recipient_id: str | None
    timestamp: datetime = attrs.field(validator=_aware)
    errors: list[dict[str, Any]] = attrs.field(factory=list)

    @property
    def recipient_opted_out(self) -> bool:
        """Whether an error says the recipient stopped marketing messages (code 131050)."""
        return any(error["code"] == OPTED_OUT_ERROR_CODE for error in self.errors)


@attrs.frozen(kw_only=True)
class InboundWhatsApp:
    """One ``messages[]`` item of a messages webhook: a customer wrote to a business line.

    Attributes:
        phone_number_id: the business line it arrived on.
        display_phone_number: that line's number as Meta displays it, or None.
        sender: the customer's number in E.164 (``+`` and ``messages[].from``).
        message_id: the inbound ``wamid.…``.
        type: Meta's message type (``text``, ``button``, ``interactive``, ``image`` ...).
        text: ``text.body``, the ``button`` text or the interactive reply's
            title; None for other types.
        timestamp: when it was sent (UTC, from Meta's unix seconds).
        contact_name: ``contacts[].profile.name`` of the sender, if given.
    """

    phone_number_id: str
    display_phone_number: str | None
    sender: str
    message_id: str
    type: str
    text: str | None
    timestamp: datetime = attrs.field(validator=_aware)
    contact_name: str | None = None


@attrs.frozen(kw_only=True)
class WebhookBatch:
    """Everything one messages webhook ``POST`` carried, in payload order.

    Attributes:
        statuses: status updates of messages we sent (unknown statuses left out).
        inbound: messages customers sent us.
    """

    statuses: list[StatusUpdate]
    inbound: list[InboundWhatsApp]


def _invalid(field: str, reason: str) -> ValidationError:
    return ValidationError.from_fields({field: reason})


def _str(value: object) -> str | None:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _timestamp(value: object, field: str) -> datetime:
    text = _str(value)
    if text is None or not text.isdigit():
        raise _invalid(field, "must be unix seconds")
    try:
        return datetime.fromtimestamp(int(text), tz=UTC)
    except (OverflowError, OSError, ValueError):
        raise _invalid(field, "out of range") from None


def _list(value: object, field: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _invalid(field, "must be a list")
    return value


def _dict(value: object, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _invalid(field, "must be an object")
    return value


def _status_errors(value: object, field: str) -> list[dict[str, Any]]:
    errors = []
    for item in _list(value, field):
        if not isinstance(item, dict):
            continue
        code = item.get("code")
        data = item.get("error_data")
        details = data.get("details") if isinstance(data, dict) else None
        errors.append(
            {
                "code": code if isinstance(code, int) and not isinstance(code, bool) else None,
                "title": _str(item.get("title")),
                "message": _str(item.get("message")),
                "details": _str(details),
            }
        )
    return errors


def _inbound_text(message: dict[str, Any]) -> str | None:
    kind = message.get("type")
    part = message.get(kind) if isinstance(kind, str) else None
    if not isinstance(part, dict):
        return None
    if kind == "text":
        return _str(part.get("body"))
    if kind == "button":
        return _str(part.get("text"))
    if kind == "interactive":
        for reply in ("button_reply", "list_reply"):
            chosen = part.get(reply)
            if isinstance(chosen, dict):
                return _str(chosen.get("title"))
    return None


def parse_webhook(payload: object) -> WebhookBatch:
    """Read a WhatsApp messages webhook (the JSON body, already signature-checked).

    Walks ``entry[].changes[]`` whose ``field`` is ``messages`` and reads each
    ``value``'s ``metadata``, ``statuses[]``, ``messages[]`` and ``contacts[]``
    (https://developers.facebook.com/docs/whatsapp/cloud-api/webhooks/components).
    Changes for other fields are ignored.

    Args:
        payload: the decoded JSON body.

    Returns:
        The status updates and inbound messages, in payload order. Statuses
        other than ``sent``, ``delivered``, ``read`` and ``failed`` (e.g.
        ``deleted``, ``warning``) are skipped.

    Raises:
        ValidationError: not the documented shape: not an object, ``object``
            other than ``whatsapp_business_account``, ``entry`` missing or not
            a list, a messages change without ``metadata.phone_number_id``, or
            a status or message without its id, status/sender or timestamp.
    """
    root = payload if isinstance(payload, dict) else None
    if root is None:
        raise _invalid("body", "must be a JSON object")
    if root.get("object") != WEBHOOK_OBJECT:
        raise _invalid("object", f"must be {WEBHOOK_OBJECT!r}")
    if not isinstance(root.get("entry"), list):
        raise _invalid("entry", "must be a list")
    statuses: list[StatusUpdate] = []
    inbound: list[InboundWhatsApp] = []
    for i, entry in enumerate(root["entry"]):
        entry = _dict(entry, f"entry[{i}]")
        for j, change in enumerate(_list(entry.get("changes"), f"entry[{i}].changes")):
            where = f"entry[{i}].changes[{j}]"
            change = _dict(change, where)
            if change.get("field") != "messages":
                continue
            value = _dict(change.get("value"), f"{where}.value")
            metadata = _dict(value.get("metadata"), f"{where}.value.metadata")
            line = _str(metadata.get("phone_number_id"))
            if line is None:
                raise _invalid(f"{where}.value.metadata.phone_number_id", "missing")
            statuses.extend(_statuses(value, line, where))
            inbound.extend(
                _messages(value, line, _str(metadata.get("display_phone_number")), where)
            )
    return WebhookBatch(statuses=statuses, inbound=inbound)


def _statuses(value: dict[str, Any], line: str, where: str) -> list[StatusUpdate]:
    found = []
    for k, item in enumerate(_list(value.get("statuses"), f"{where}.value.statuses")):
        field = f"{where}.value.statuses[{k}]"
        item = _dict(item, field)
        wamid = _str(item.get("id"))
        word = _str(item.get("status"))
        if wamid is None or word is None:
            raise _invalid(field, "id and status are required")
        status = _STATUSES.get(word.lower())
        if status is None:
            continue
        found.append(
            StatusUpdate(
                phone_number_id=line,
                provider_message_id=wamid,
                status=status,
                provider_status=word.lower(),
                recipient_id=_str(item.get("recipient_id")),
                timestamp=_timestamp(item.get("timestamp"), f"{field}.timestamp"),
                errors=_status_errors(item.get("errors"), f"{field}.errors"),
            )
        )
    return found


def _messages(
    value: dict[str, Any], line: str, display: str | None, where: str
) -> list[InboundWhatsApp]:
    names: dict[str, str] = {}
    for contact in _list(value.get("contacts"), f"{where}.value.contacts"):
        if not isinstance(contact, dict):
            continue
        profile = contact.get("profile")
        wa_id = _str(contact.get("wa_id"))
        name = _str(profile.get("name")) if isinstance(profile, dict) else None
        if wa_id is not None and name is not None:
            names[wa_id] = name
    found = []
    for k, item in enumerate(_list(value.get("messages"), f"{where}.value.messages")):
        field = f"{where}.value.messages[{k}]"
        item = _dict(item, field)
        wamid = _str(item.get("id"))
        sender = _str(item.get("from"))
        if wamid is None or sender is None:
            raise _invalid(field, "id and from are required")
        digits = sender.removeprefix("+")
        found.append(
            InboundWhatsApp(
                phone_number_id=line,
                display_phone_number=display,
                sender=f"+{digits}",
                message_id=wamid,
                type=_str(item.get("type")) or "unknown",
                text=_inbound_text(item),
                timestamp=_timestamp(item.get("timestamp"), f"{field}.timestamp"),
                contact_name=names.get(digits),
            )
        )
    return found
