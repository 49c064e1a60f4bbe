"""Domain objects -> JSON-ready dicts in the wire format of the public API.

Wire rules (``../shared/DESIGN.md``, "Time" and "Wire format"): camelCase
field names; timestamps UTC ISO 8601 with milliseconds and ``Z``
(``2026-06-03T12:00:00.000Z``); enums as their value.

One configured cattrs converter (:func:`commtunnel.shapes.make_converter`,
shared with the CLI) unstructures the flat records (attempts, timeline
events, stats, opt-outs, inbound messages, sender-ID requests, WhatsApp
line settings, webhook records) and every leaf value. The composed answers
(send results, email, SMS and WhatsApp status, preview, pages) are plain
functions: they flatten several records into one object, which is clearer written out than
expressed as cattrs overrides.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import cattrs

from commtunnel.domain.events import TimelineEvent, format_timestamp
from commtunnel.domain.messages import Attempt, Message, SmsContent, WhatsAppContent
from commtunnel.ports import InboundMessage, OptOut, SenderIdRequest
from commtunnel.services.email import EmailStats, EmailStatus, Rendered, SendResult
from commtunnel.services.email_batch import BatchItem, BatchResult
from commtunnel.services.sms import (
    InboundResult,
    OtpSendResult,
    Page,
    ReceiptResult,
    SmsSendResult,
    SmsStatus,
)
from commtunnel.services.whatsapp import (
    LineInfo,
    WebhookResult,
    WhatsAppSendResult,
    WhatsAppStatus,
)
from commtunnel.shapes import make_converter

#: Bytes added to a preview's content size for the headers a real send carries
#: (From, To, Subject, Date, Message-ID, MIME-Version, Content-Type and the
#: multipart boundaries). An estimate: the exact figure depends on addresses.
HEADER_OVERHEAD_BYTES = 300


class Wire:
    """The answers of the email, SMS and WhatsApp routes, built with one converter.

    Args:
        converter: defaults to :func:`~commtunnel.shapes.make_converter`.
    """

    def __init__(self, converter: cattrs.Converter | None = None) -> None:
        self.conv = converter or make_converter()

    def _record(self, record: Any, cls: type[Any]) -> dict[str, Any]:
        """A flat record in the shape :func:`~commtunnel.shapes.make_converter` gave ``cls``."""
        shaped: dict[str, Any] = self.conv.unstructure(record, cls)
        return shaped

    def _id_status(self, m: Message) -> dict[str, Any]:
        """What every answer about one message starts with: id and status."""
        return {"id": m.id, "status": self.conv.unstructure(m.status)}

    def _accepted(self, m: Message, *, duplicate: bool) -> dict[str, Any]:
        """A queued send's answer: id, status, createdAt, duplicate."""
        return {
            **self._id_status(m),
            "createdAt": format_timestamp(m.created_at),
            "duplicate": duplicate,
        }

    def _message(self, m: Message) -> dict[str, Any]:
        """What every channel's ``GET /{id}`` shows of a message besides its content."""
        return {
            "id": m.id,
            "channel": self.conv.unstructure(m.channel),
            "status": self.conv.unstructure(m.status),
            "sandbox": m.sandbox,
            "providerMessageId": m.provider_message_id,
            "attemptCount": m.attempt_count,
            "lastError": m.last_error,
            "createdAt": format_timestamp(m.created_at),
            "updatedAt": format_timestamp(m.updated_at),
        }

    def _attempts(self, attempts: list[Attempt]) -> list[dict[str, Any]]:
        shaped: list[dict[str, Any]] = self.conv.unstructure(attempts, list[Attempt])
        return shaped

    def send_result(self, result: SendResult) -> dict[str, Any]:
        """``POST /emails/send``: id, status, createdAt, duplicate."""
        return self._accepted(result.message, duplicate=result.duplicate)

    def email_status(self, status: EmailStatus) -> dict[str, Any]:
        """``GET /emails/{id}``: the message, its content and its attempts."""
        m = status.message
        if m.email is None:  # pragma: no cover - the service returns email messages only
            raise ValueError(f"message {m.id} has no email content")
        e = m.email
        return {
            **self._message(m),
            "from": e.from_addr,
            "to": e.to,
            "subject": e.subject,
            "html": e.html,
            "text": e.text,
            "templateId": e.template_id,
            "tracking": e.tracking,
            "unsubscribe": e.unsubscribe,
            "messageId": e.message_id_header,
            "scheduledAt": _scheduled_at(m),
            "attempts": self._attempts(status.attempts),
        }

    def batch_result(self, result: BatchResult) -> dict[str, Any]:
        """``POST /emails/batch``: id, data (one result per item, in order), counts, duplicate.

        An accepted item is ``{index, id, status, createdAt, scheduledAt}``
        (status and times null on a replay whose message is no longer
        stored); a refused one is ``{index, error: {error, code, details}}``.
        """
        return {
            "id": result.id,
            "data": [self._batch_item(item) for item in result.items],
            "accepted": result.accepted,
            "rejected": result.rejected,
            "duplicate": result.duplicate,
        }

    def _batch_item(self, item: BatchItem) -> dict[str, Any]:
        if item.error is not None:
            return {"index": item.index, "error": item.error.to_wire()}
        m = item.message
        return {
            "index": item.index,
            "id": item.message_id,
            "status": None if m is None else self.conv.unstructure(m.status),
            "createdAt": None if m is None else format_timestamp(m.created_at),
            "scheduledAt": None if m is None else _scheduled_at(m),
        }

    def timeline(self, message_id: str, events: list[TimelineEvent]) -> dict[str, Any]:
        """``GET /{channel}/{id}/timeline``: the message id and its events, oldest first."""
        return {"id": message_id, "events": self.conv.unstructure(events, list[TimelineEvent])}

    def stats(self, stats: EmailStats) -> dict[str, Any]:
        """``GET /emails/stats``: start, end, total, byStatus, events and the engagement.

        The engagement is ``opens``, ``uniqueOpens``, ``clicks``, ``uniqueClicks``
        and ``includeBots`` (whether hits marked ``isBot`` are in those four).
        """
        return self._record(stats, EmailStats)

    @staticmethod
    def preview(rendered: Rendered) -> dict[str, Any]:
        """``POST /emails/preview``: the rendered parts and an estimated size.

        ``estimatedSizeBytes`` is the UTF-8 size of subject, html and text plus
        :data:`HEADER_OVERHEAD_BYTES`; the real MIME size differs by encoding
        (and, with tracking, by the rewritten links and pixel).
        ``trackingEnabled`` is :attr:`Rendered.tracking`: asked for, with an HTML part.
        """
        parts = (rendered.subject, rendered.html or "", rendered.text or "")
        size = sum(len(part.encode("utf-8")) for part in parts) + HEADER_OVERHEAD_BYTES
        return {
            "subject": rendered.subject,
            "html": rendered.html,
            "text": rendered.text,
            "trackingEnabled": rendered.tracking,
            "estimatedSizeBytes": size,
            "moderation": {"blocked": False, "token": None},
        }

    # ------------------------------------------------------------------ SMS

    def sms_send_result(self, result: SmsSendResult) -> dict[str, Any]:
        """``POST /sms/send``: id, senderId, status, createdAt, duplicate, segments, encoding."""
        sms = _sms_content(result.message)
        return {
            **self._accepted(result.message, duplicate=result.duplicate),
            "senderId": sms.sender_id,
            "segments": sms.segments,
            "encoding": sms.encoding,
        }

    def otp_send_result(self, result: OtpSendResult) -> dict[str, Any]:
        """``POST /sms/otp/send``: id, status, createdAt, duplicate, cooldownSeconds."""
        return {
            **self._accepted(result.message, duplicate=result.duplicate),
            "cooldownSeconds": result.cooldown_seconds,
        }

    def sms_message(self, m: Message) -> dict[str, Any]:
        """One SMS as ``GET /v1/sms`` lists it: content, flow, status, provider id, times."""
        sms = _sms_content(m)
        return {
            **self._message(m),
            "to": sms.to,
            "senderId": sms.sender_id,
            "body": sms.body,
            "sendType": sms.send_type,
            "encoding": sms.encoding,
            "segments": sms.segments,
            "flow": sms.flow,
            "purpose": sms.purpose,
            "scheduledAt": _scheduled_at(m),
        }

    def sms_status(self, status: SmsStatus) -> dict[str, Any]:
        """``GET /sms/{id}``: the listed shape plus the attempts (as for email)."""
        return {**self.sms_message(status.message), "attempts": self._attempts(status.attempts)}

    def sms_retry_result(self, message: Message) -> dict[str, Any]:
        """``POST /sms/{id}/retry``: id and status (QUEUED again)."""
        return self._id_status(message)

    @staticmethod
    def page(page: Page, item: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
        """A listing: ``{data: [item(x) ...], page, pageSize, total}``."""
        return {
            "data": [item(x) for x in page.items],
            "page": page.page,
            "pageSize": page.page_size,
            "total": page.total,
        }

    def opt_out(self, record: OptOut) -> dict[str, Any]:
        """An opt-out list entry: phone, source, createdAt."""
        return self._record(record, OptOut)

    def inbound(self, record: InboundMessage) -> dict[str, Any]:
        """A received MO message: id, from, to, body, keyword, createdAt."""
        return self._record(record, InboundMessage)

    def sender_id_request(self, request: SenderIdRequest) -> dict[str, Any]:
        """A sender-ID (or OTP brand) request: id, organizationId, senderId, flow, status,
        reason, createdAt, reviewReason, reviewedAt (the last two null until reviewed)."""
        return self._record(request, SenderIdRequest)

    @staticmethod
    def approved_sender_id(request: SenderIdRequest) -> dict[str, Any]:
        """An approved sender ID: senderId, flow, approvedAt, requestId."""
        approved = request.reviewed_at
        return {
            "senderId": request.sender_id,
            "flow": request.flow,
            "approvedAt": None if approved is None else format_timestamp(approved),
            "requestId": request.id,
        }

    @staticmethod
    def inbound_result(result: InboundResult) -> dict[str, Any]:
        """``POST /webhooks/sms/inbound``: id, keyword, optedOut and ``sms_message`` when set.

        ``sms_message`` (the aggregator convention's spelling) is the reply the
        aggregator delivers back to the handset; it is left out when there is none.
        """
        body: dict[str, Any] = {
            "id": None if result.inbound is None else result.inbound.id,
            "keyword": result.keyword,
        }
        return _with_reply(body, result)

    @staticmethod
    def inbound_opt_out_result(result: InboundResult) -> dict[str, Any]:
        """``POST /webhooks/sms/inbound-opt-out``: keyword, recorded, optedOut, ``sms_message``."""
        return _with_reply({"keyword": result.keyword, "recorded": result.recorded}, result)

    def receipt_result(self, result: ReceiptResult) -> dict[str, Any]:
        """``POST /webhooks/sms/dlr``: message id, its status now, whether the receipt moved it."""
        m = result.message
        return {
            "messageId": m.id,
            "status": self.conv.unstructure(m.status),
            "applied": result.applied,
        }

    # ------------------------------------------------------------------ WhatsApp

    def whatsapp_send_result(self, result: WhatsAppSendResult) -> dict[str, Any]:
        """``POST /whatsapp/send``: id, status, duplicate, providerMessageId (``wamid.…``)."""
        return {**self.whatsapp_retry_result(result), "duplicate": result.duplicate}

    def whatsapp_retry_result(self, result: WhatsAppSendResult) -> dict[str, Any]:
        """``POST /whatsapp/{id}/retry``: id, status, providerMessageId."""
        m = result.message
        return {**self._id_status(m), "providerMessageId": m.provider_message_id}

    def whatsapp_status(self, status: WhatsAppStatus) -> dict[str, Any]:
        """``GET /whatsapp/{id}``: the message, its content (text or template), its attempts.

        ``template`` is ``{name, language, variables}`` for template messages
        and null for text; ``body`` is null for templates.
        """
        m = status.message
        wa = _whatsapp_content(m)
        template = None
        if wa.kind == "template":
            template = {
                "name": wa.template_name,
                "language": wa.template_language,
                "variables": wa.template_variables,
            }
        return {
            **self._message(m),
            "to": wa.to,
            "kind": wa.kind,
            "body": wa.body,
            "template": template,
            "phoneNumberId": wa.phone_number_id,
            "attempts": self._attempts(status.attempts),
        }

    def whatsapp_line(self, info: LineInfo) -> dict[str, Any]:
        """``/account/whatsapp-cloud-line``: the line settings (the token never appears).

        ``whatsappPhoneNumberId``, ``usesPlatformDefault``, ``platformLineConfigured``,
        ``hasOwnAccessToken`` and ``state`` (ACTIVE, PAUSED or FLAGGED).
        """
        return self._record(info, LineInfo)

    def whatsapp_webhook_result(self, result: WebhookResult) -> dict[str, Any]:
        """``POST /webhooks/whatsapp``: statusesApplied, statusesIgnored, inboundStored."""
        return self._record(result, WebhookResult)


def _whatsapp_content(message: Message) -> WhatsAppContent:
    if message.whatsapp is None:  # pragma: no cover - the service returns WhatsApp only
        raise ValueError(f"message {message.id} has no WhatsApp content")
    return message.whatsapp


def _scheduled_at(message: Message) -> str | None:
    """When a scheduled send is (or was) due, in wire format; None for a send made at once."""
    return None if message.scheduled_at is None else format_timestamp(message.scheduled_at)


def _sms_content(message: Message) -> SmsContent:
    if message.sms is None:  # pragma: no cover - the SMS service returns SMS messages only
        raise ValueError(f"message {message.id} has no SMS content")
    return message.sms


def _with_reply(body: dict[str, Any], result: InboundResult) -> dict[str, Any]:
    if result.opted_out is not None:
        body["optedOut"] = result.opted_out
    if result.reply:
        body["sms_message"] = result.reply
    return body
