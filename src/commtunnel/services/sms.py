"""The SMS and OTP channel's use cases.

Contract: ``../shared/seeds/000_427ee8481191f61a.txt`` ("SMS (public API)",
"SMS inbound (MO receive)", the DLR webhook) and
``../shared/seeds/001_fc3b71c01ecf9734.txt`` (sender-ID requests and
review, listing filters, the DLR / provider / inbound-opt-out routes).

As for email, everything that can refuse a send (scope, fields, sender ID,
opt-out, idempotency key, OTP cooldown) is decided before or inside the one
transaction that stores the message, its first event and its job, so a
refused request stores nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import attrs

from commtunnel.domain import sms as rules
from commtunnel.domain.delivery import ErrorCategory, ProviderResult
from commtunnel.domain.errors import (
    ConflictError,
    NotFoundError,
    OtpCooldownError,
    SmsBrandNotApprovedError,
    SmsRecipientOptedOutError,
    SmsSenderIdNotApprovedError,
    ValidationError,
)
from commtunnel.domain.events import TimelineEvent
from commtunnel.domain.keys import Principal, Scope
from commtunnel.domain.messages import Channel, Message, SmsContent, Status
from commtunnel.ids import new_id
from commtunnel.ports import (
    AcceptResult,
    Clock,
    CooldownClaim,
    DeliveryReceipt,
    InboundMessage,
    OptOut,
    ReceiptOutcome,
    SchedulingStorage,
    SenderIdRequest,
    SmsPage,
    SmsProvider,
    SmsStorage,
    Storage,
)
from commtunnel.services import channel, idempotency, scheduling
from commtunnel.services.auth import new_webhook_token, org_for_webhook_token, require
from commtunnel.services.channel import MAX_TIMELINE_LIMIT as MAX_TIMELINE_LIMIT  # re-exported
from commtunnel.services.timeline import apply_receipt, org_event

ENDPOINT_SEND = "sms.send"
ENDPOINT_OTP = "sms.otp.send"
FLOWS = ("STANDARD", "OTP")
REQUEST_STATUSES = ("PENDING", "APPROVED", "REJECTED")
LIST_STATUSES = tuple(s.value for s in Status)
MAX_PAGE_SIZE = 100
MAX_REASON_CHARACTERS = 500
MAX_QUERY_CHARACTERS = 200
OPT_OUT_EVENT = "sms_opt_out"


# --------------------------------------------------------------------------- requests


@attrs.frozen(kw_only=True)
class SmsSendRequest:
    """``POST /v1/public/sms/send`` as the caller gave it (untrusted, checked by the service)."""

    to: Any = None
    sender_id: Any = None
    body: Any = None
    send_type: Any = None
    sandbox_mode: Any = False
    scheduled_at: Any = None
    idempotency_key: Any = None

    def wire_payload(self) -> dict[str, Any]:
        """The request in wire spelling without the key (for fingerprints)."""
        return scheduling.fingerprint_payload(channel.wire_payload(self, SEND_WIRE_FIELDS))


@attrs.frozen(kw_only=True)
class OtpSendRequest:
    """``POST /v1/public/sms/otp/send`` as the caller gave it."""

    to: Any = None
    brand_name: Any = None
    otp_code: Any = None
    purpose: Any = None
    sandbox_mode: Any = False
    idempotency_key: Any = None

    def wire_payload(self) -> dict[str, Any]:
        """The request in wire spelling without the key (for fingerprints)."""
        return channel.wire_payload(self, OTP_WIRE_FIELDS)


SEND_WIRE_FIELDS = {
    "to": "to",
    "senderId": "sender_id",
    "body": "body",
    "sendType": "send_type",
    "sandboxMode": "sandbox_mode",
    "scheduledAt": "scheduled_at",
    "idempotencyKey": "idempotency_key",
}
OTP_WIRE_FIELDS = {
    "to": "to",
    "brandName": "brand_name",
    "otpCode": "otp_code",
    "purpose": "purpose",
    "sandboxMode": "sandbox_mode",
    "idempotencyKey": "idempotency_key",
}


def send_request_from_wire(payload: dict[str, Any], *, header_key: str | None) -> SmsSendRequest:
    """Build a send request from a JSON object, refusing unknown fields.

    Raises:
        ValidationError: unknown fields, or a header key that differs from the body's.
    """
    return SmsSendRequest(
        **channel.values_from_wire(payload, SEND_WIRE_FIELDS, header_key=header_key)
    )


def otp_request_from_wire(payload: dict[str, Any], *, header_key: str | None) -> OtpSendRequest:
    """Build an OTP request from a JSON object, refusing unknown fields.

    Raises:
        ValidationError: unknown fields, or a header key that differs from the body's.
    """
    return OtpSendRequest(
        **channel.values_from_wire(payload, OTP_WIRE_FIELDS, header_key=header_key)
    )


# --------------------------------------------------------------------------- results

#: A send's answer: the message, and whether it replays an earlier request.
SmsSendResult = channel.SendResult
#: A message with its attempts, as ``GET /v1/public/sms/{id}`` shows it.
SmsStatus = channel.MessageStatus
#: What a delivery receipt did to its message (``applied``: whether it moved it).
ReceiptResult = ReceiptOutcome


@attrs.frozen(kw_only=True)
class OtpSendResult:
    """An OTP send's answer; ``cooldown_seconds`` is the wait before the next OTP."""

    message: Message
    duplicate: bool
    cooldown_seconds: int


@attrs.frozen(kw_only=True)
class Page:
    """A page of a listing: items plus where it sits (``page`` from 1)."""

    items: list[Any]
    page: int
    page_size: int
    total: int


@attrs.frozen(kw_only=True)
class InboundResult:
    """What an MO webhook did.

    Attributes:
        inbound: the stored MO message (None when the route stores none).
        keyword: STOP, START or HELP when the text was one.
        reply: text to send back to the handset (``sms_message``), if any.
        opted_out: the number's opt-out state after the message, when it changed
            or was confirmed by a keyword; None otherwise.
        recorded: for the inbound-opt-out route, whether a change was recorded.
    """

    inbound: InboundMessage | None
    keyword: str | None
    reply: str | None
    opted_out: bool | None = None
    recorded: bool = False


def page_problems(page: Any, page_size: Any) -> dict[str, str]:
    """What is wrong with a listing's paging, keyed ``page`` / ``pageSize``; empty when fine.

    ``page`` must be an integer >= 1 and ``page_size`` one from 1 to
    :data:`MAX_PAGE_SIZE` (every offset-paged listing: SMS messages, opt-outs,
    inbound messages, the email suppression list).
    """
    problems = {}
    if not channel.is_int_in(page, 1):
        problems["page"] = "must be an integer >= 1"
    if not channel.is_int_in(page_size, 1, MAX_PAGE_SIZE):
        problems["pageSize"] = f"must be an integer from 1 to {MAX_PAGE_SIZE}"
    return problems


def _page_bounds(page: Any, page_size: Any) -> tuple[int, int]:
    """(page, page_size) when ``page`` >= 1 and ``page_size`` is 1..100.

    Raises:
        ValidationError: on ``page`` and/or ``pageSize`` (:func:`page_problems`).
    """
    problems = page_problems(page, page_size)
    if problems:
        raise ValidationError.from_fields(problems)
    return page, page_size


def _check_flow(flow: Any) -> None:
    """Refuse a flow other than ``STANDARD`` / ``OTP`` (ValidationError on ``flow``)."""
    if flow not in FLOWS:
        raise ValidationError.from_fields({"flow": f"must be one of {', '.join(FLOWS)}"})


def _reason_problem(reason: Any) -> dict[str, str]:
    """``{"reason": why}`` for a reason that is not None or a string of at most 500 characters."""
    if reason is None or (isinstance(reason, str) and len(reason) <= MAX_REASON_CHARACTERS):
        return {}
    return {"reason": f"must be a string of at most {MAX_REASON_CHARACTERS} characters"}


def _for_reading(message: Message) -> Message:
    """The message as reads show it: an OTP's passcode masked.

    A one-time passcode is the recipient's secret; support sees what was sent,
    never the code (:func:`~commtunnel.domain.sms.redact_otp_body`).
    """
    sms = message.sms
    if sms is None or sms.flow != "OTP":
        return message
    return attrs.evolve(message, sms=attrs.evolve(sms, body=rules.redact_otp_body(sms.body)))


class SmsService:
    """Send, read and receive SMS; manage sender IDs, OTP brands, opt-outs and webhook tokens.

    Args:
        storage: messages, events, attempts (shared with email).
        sms_store: the SMS channel's own records.
        clock: every "now".
        default_sender_id: the platform sender ID every organization may use
            for standard messages (``COMMTUNNEL_SMS_DEFAULT_SENDER_ID``), or None.
        otp_cooldown: seconds between OTPs to one number for one purpose.
        idempotency_retention: seconds an idempotency key is remembered.
        help_text / stop_text / start_text: replies to HELP, STOP and START.
        scheduling_store: cancels (None: :meth:`cancel` raises ``RuntimeError``).
        schedule_horizon: seconds ahead a ``scheduledAt`` may be at most.
    """

    def __init__(
        self,
        storage: Storage,
        sms_store: SmsStorage,
        clock: Clock,
        *,
        default_sender_id: str | None = None,
        otp_cooldown: float = 60.0,
        idempotency_retention: float = 86_400.0,
        help_text: str = "",
        stop_text: str = "",
        start_text: str = "",
        scheduling_store: SchedulingStorage | None = None,
        schedule_horizon: float = scheduling.DEFAULT_HORIZON,
    ) -> None:
        self._storage = storage
        self._store = sms_store
        self._scheduling = scheduling_store
        self._horizon = schedule_horizon
        self._clock = clock
        self._default_sender_id = default_sender_id
        self._cooldown = otp_cooldown
        self._retention = idempotency_retention
        self._replies = {
            rules.Keyword.HELP: help_text,
            rules.Keyword.STOP: stop_text,
            rules.Keyword.START: start_text,
        }
        self._in_flight = idempotency.InFlight()
        self._messages = channel.ChannelMessages(
            storage, Channel.SMS, "SMS", read_scope=Scope.READ_SMS, send_scope=Scope.SEND_SMS
        )

    # ------------------------------------------------------------------ sending

    async def send(self, principal: Principal, req: SmsSendRequest) -> SmsSendResult:
        """Queue a standard SMS, now or at ``scheduled_at`` (stored SCHEDULED until then).

        Returns:
            The queued message (``sms`` content carries ``encoding`` and
            ``segments``), or with ``duplicate=True`` the one an earlier
            request with the same idempotency key created.

        Raises:
            InsufficientScopeError: the key lacks ``send:sms``.
            ValidationError: bad ``to`` (not E.164), ``senderId``, ``body``
                (empty or over 1600 characters), ``sendType``, ``sandboxMode``
                (not a boolean), ``scheduledAt`` (see
                :mod:`commtunnel.services.scheduling`) or key; every bad field at once.
            SmsSenderIdNotApprovedError: the sender ID is neither approved
                for the organization nor the platform default.
            SmsRecipientOptedOutError: the number is on the opt-out list.
            IdempotencyKeyReusedError / IdempotencyKeyInUseError: see DESIGN.md.
        """
        require(principal, Scope.SEND_SMS)
        key = idempotency.validate_key(req.idempotency_key)
        to, sender_id, body, send_type, sandbox_mode, scheduled_at = channel.check_fields(
            lambda: rules.normalise_e164(req.to),
            lambda: rules.validate_sender_id(req.sender_id),
            lambda: rules.validate_body(req.body),
            lambda: rules.parse_send_type(req.send_type),
            lambda: channel.check_bool(req.sandbox_mode, "sandboxMode"),
            lambda: scheduling.read_scheduled_at(req.scheduled_at),
        )
        with self._in_flight.hold(principal.org_id, key):
            original = await self._replay(principal, key, ENDPOINT_SEND, req.wire_payload())
            if original is not None:
                return SmsSendResult(message=original, duplicate=True)
            scheduling.check_scheduled_at(
                scheduled_at, now=self._clock.now(), horizon=self._horizon
            )
            if not await self._sender_id_allowed(principal.org_id, sender_id):
                raise SmsSenderIdNotApprovedError(
                    f"Sender ID '{sender_id}' is not approved for this organization",
                    details={"senderId": sender_id},
                )
            await self._check_opt_out(principal.org_id, to, otp=False)
            info = rules.analyse(body, force_unicode=send_type == rules.SendType.UNICODE)
            content = SmsContent(
                sender_id=sender_id,
                to=to,
                body=body,
                send_type=int(send_type),
                encoding=str(info.encoding),
                segments=info.segments,
                flow="STANDARD",
            )
            result = await self._accept(
                principal,
                content,
                key,
                ENDPOINT_SEND,
                req.wire_payload(),
                sandbox_mode,
                scheduled_at=scheduled_at,
            )
        message = channel.accepted_message(result, key=key, endpoint=ENDPOINT_SEND)
        return SmsSendResult(message=message, duplicate=result.duplicate)

    async def send_otp(self, principal: Principal, req: OtpSendRequest) -> OtpSendResult:
        """Queue a one-time passcode under an OTP-approved brand.

        The body is built from the brand, code and purpose
        (:func:`commtunnel.domain.sms.otp_body`); the brand is the sender ID.

        Returns:
            The queued message and ``cooldown_seconds`` (the wait before the
            next OTP to the number for the purpose), or with ``duplicate=True``
            the one an earlier request with the same idempotency key created.

        Raises:
            InsufficientScopeError: the key lacks ``send:sms``.
            ValidationError: bad ``to``, ``brandName`` (3-20 characters),
                ``otpCode`` (4-8 digits), ``purpose``, ``sandboxMode`` or key.
            SmsBrandNotApprovedError: the brand is not approved for OTP.
            SmsRecipientOptedOutError: the number opted out (unless the
                organization lets OTP through).
            OtpCooldownError: an OTP for the same number and purpose was
                queued less than the cooldown ago (``retry_after`` seconds).
            IdempotencyKeyReusedError / IdempotencyKeyInUseError: see DESIGN.md.
        """
        require(principal, Scope.SEND_SMS)
        key = idempotency.validate_key(req.idempotency_key)
        to, brand, code, purpose, sandbox_mode = channel.check_fields(
            lambda: rules.normalise_e164(req.to),
            lambda: rules.validate_brand_name(req.brand_name),
            lambda: rules.validate_otp_code(req.otp_code),
            lambda: rules.parse_purpose(req.purpose),
            lambda: channel.check_bool(req.sandbox_mode, "sandboxMode"),
        )
        with self._in_flight.hold(principal.org_id, key):
            original = await self._replay(principal, key, ENDPOINT_OTP, req.wire_payload())
            if original is not None:
                return OtpSendResult(
                    message=original, duplicate=True, cooldown_seconds=math.ceil(self._cooldown)
                )
            if not await self._store.is_sender_id_approved(principal.org_id, brand, "OTP"):
                raise SmsBrandNotApprovedError(
                    f"Brand '{brand}' is not approved for OTP in this organization",
                    details={"brandName": brand},
                )
            await self._check_opt_out(principal.org_id, to, otp=True)
            body = rules.otp_body(brand, code, purpose)
            info = rules.analyse(body)
            content = SmsContent(
                sender_id=rules.otp_sender_id(brand, default=self._default_sender_id),
                to=to,
                body=body,
                send_type=int(rules.SendType.NORMAL),
                encoding=str(info.encoding),
                segments=info.segments,
                flow="OTP",
                purpose=str(purpose),
            )
            now = self._clock.now()
            cooldown = CooldownClaim(
                org_id=principal.org_id,
                recipient=to,
                purpose=str(purpose),
                now=now,
                until=now + timedelta(seconds=self._cooldown),
            )
            result = await self._accept(
                principal,
                content,
                key,
                ENDPOINT_OTP,
                req.wire_payload(),
                sandbox_mode,
                cooldown=cooldown,
            )
        if result.cooldown_until is not None:
            wait = max(1, math.ceil((result.cooldown_until - now).total_seconds()))
            raise OtpCooldownError(
                f"An OTP for this number and purpose was sent recently; retry in {wait} s",
                retry_after=wait,
            )
        message = channel.accepted_message(result, key=key, endpoint=ENDPOINT_OTP)
        return OtpSendResult(
            message=message, duplicate=result.duplicate, cooldown_seconds=math.ceil(self._cooldown)
        )

    async def _replay(
        self, principal: Principal, key: str | None, endpoint: str, payload: dict[str, Any]
    ) -> Message | None:
        """The message an earlier request with ``key`` created (:func:`channel.replay`)."""
        return await channel.replay(
            self._storage,
            org_id=principal.org_id,
            key=key,
            endpoint=endpoint,
            payload=payload,
            now=self._clock.now(),
        )

    async def _sender_id_allowed(self, org_id: str, sender_id: str) -> bool:
        default = self._default_sender_id
        if default is not None and sender_id.casefold() == default.casefold():
            return True
        return await self._store.is_sender_id_approved(org_id, sender_id, "STANDARD")

    async def _check_opt_out(self, org_id: str, to: str, *, otp: bool) -> None:
        if not await self._store.is_opted_out(org_id, to):
            return
        if otp:
            org = await self._storage.get_org(org_id=org_id)
            if org is not None and org.otp_ignores_opt_out:
                return
        raise SmsRecipientOptedOutError(
            "The recipient opted out of messages from this organization", details={"to": to}
        )

    async def _accept(
        self,
        principal: Principal,
        content: SmsContent,
        key: str | None,
        endpoint: str,
        payload: dict[str, Any],
        sandbox_mode: bool,
        *,
        cooldown: CooldownClaim | None = None,
        scheduled_at: datetime | None = None,
    ) -> AcceptResult:
        now = cooldown.now if cooldown is not None else self._clock.now()
        message_id = new_id()
        message = Message(
            id=message_id,
            org_id=principal.org_id,
            channel=Channel.SMS,
            status=scheduling.first_status(scheduled_at),
            sandbox=principal.sandbox or sandbox_mode,
            api_key_id=principal.api_key_id,
            email=None,
            sms=content,
            created_at=now,
            updated_at=now,
            scheduled_at=scheduled_at,
        )
        details: dict[str, Any] = {"segments": content.segments, "encoding": content.encoding}
        if message.sandbox:
            details["sandbox"] = True
        event = scheduling.first_event(message, at=now, details=details)
        record = channel.idempotency_record(
            org_id=principal.org_id,
            key=key,
            endpoint=endpoint,
            payload=payload,
            message_id=message_id,
            now=now,
            retention=self._retention,
        )
        return await self._storage.accept(
            message,
            event,
            run_at=scheduling.run_at(message),
            idempotency=record,
            cooldown=cooldown,
        )

    # ------------------------------------------------------------------ reading

    async def get(self, principal: Principal, message_id: str) -> SmsStatus:
        """One SMS of the caller's organization with its attempts.

        Raises:
            InsufficientScopeError: the key lacks ``read:sms``.
            NotFoundError: no such SMS in the caller's organization.
        """
        status = await self._messages.get(principal, message_id)
        return attrs.evolve(status, message=_for_reading(status.message))

    async def timeline(
        self, principal: Principal, message_id: str, *, limit: int = 100
    ) -> list[TimelineEvent]:
        """The SMS's events, oldest first, at most ``limit`` (1..1000).

        Raises:
            InsufficientScopeError: the key lacks ``read:sms``.
            ValidationError: ``limit`` out of range.
            NotFoundError: no such SMS in the caller's organization.
        """
        return await self._messages.timeline(principal, message_id, limit)

    async def list_messages(
        self,
        principal: Principal,
        *,
        flow: str | None = None,
        status: str | None = None,
        query: str | None = None,
        page: int = 1,
        page_size: int = 20,
    ) -> Page:
        """SMS of the organization, newest first.

        Args:
            flow: ``STANDARD`` or ``OTP``; None for both.
            status: a status name; None for any.
            query: free text (at most 200 characters) matched against
                recipient, body, id and provider id; empty or None for any.
            page: from 1. page_size: 1..100.

        Returns:
            A :class:`Page` of :class:`Message`.

        Raises:
            InsufficientScopeError: the key lacks ``read:sms``.
            ValidationError: an unknown flow or status, a query over 200
                characters, or bad paging.
        """
        require(principal, Scope.READ_SMS)
        problems = {}
        if flow is not None and flow not in FLOWS:
            problems["flow"] = f"must be one of {', '.join(FLOWS)}"
        if status is not None and status not in LIST_STATUSES:
            problems["status"] = f"must be one of {', '.join(LIST_STATUSES)}"
        if query is not None and len(query) > MAX_QUERY_CHARACTERS:
            problems["query"] = f"must be at most {MAX_QUERY_CHARACTERS} characters"
        if problems:
            raise ValidationError.from_fields(problems)
        page, page_size = _page_bounds(page, page_size)
        result: SmsPage = await self._store.list_sms(
            principal.org_id,
            flow=flow,
            status=status,
            query=query or None,
            offset=(page - 1) * page_size,
            limit=page_size,
        )
        items = [_for_reading(m) for m in result.messages]
        return Page(items=items, page=page, page_size=page_size, total=result.total)

    # ------------------------------------------------------------------ retry

    async def retry(self, principal: Principal, message_id: str) -> Message:
        """Re-queue a FAILED SMS (a fresh retry budget; attempts keep their numbers).

        Retrying is idempotent by state: the first call moves FAILED -> QUEUED
        with an ``sms_queued`` event (``details.retry``); a second call finds
        the message no longer FAILED and is refused, so nothing is queued twice.

        Raises:
            InsufficientScopeError: the key lacks ``send:sms``.
            NotFoundError: no such SMS in the caller's organization.
            MessageNotRetryableError: the message is not FAILED (``details.status``).
        """
        now = self._clock.now()
        return await self._messages.requeue_failed(
            self._store, principal, message_id, now=now, run_at=now
        )

    async def cancel(self, principal: Principal, message_id: str) -> SmsStatus:
        """Cancel an SMS that is SCHEDULED, or QUEUED and not yet claimed by a worker.

        The message moves to CANCELED with an ``sms_canceled`` event
        (``details.previousStatus``) and its job is deleted, atomically.

        Returns:
            The message (CANCELED) with its attempts, as :meth:`get` shows it.

        Raises:
            InsufficientScopeError: the key lacks ``send:sms``.
            NotFoundError: no such SMS in the caller's organization.
            MessageNotCancelableError: 409, any other status (``details.status``).
        """
        if self._scheduling is None:
            raise RuntimeError("SmsService was built without a scheduling store")
        status = await self._messages.cancel(
            self._scheduling, principal, message_id, now=self._clock.now()
        )
        return attrs.evolve(status, message=_for_reading(status.message))

    # ------------------------------------------------------------------ sender IDs

    async def request_sender_id(
        self, principal: Principal, *, sender_id: Any, flow: Any = None, reason: Any = None
    ) -> SenderIdRequest:
        """Ask the platform to approve a sender ID (flow STANDARD) or an OTP brand (flow OTP).

        Args:
            sender_id: the value (wire ``senderId``): a sender ID for STANDARD
                (:func:`~commtunnel.domain.sms.validate_sender_id`), a brand
                name for OTP (:func:`~commtunnel.domain.sms.validate_brand_name`).
            flow: ``STANDARD`` (None) or ``OTP``.
            reason: why the organization asks; None or at most 500 characters.

        Returns:
            The stored PENDING request.

        Raises:
            InsufficientScopeError: the key lacks ``sender_ids:request``.
            ValidationError: an unknown flow (alone); else a bad value for its
                flow (on ``senderId``) and/or a reason that is not a string or
                is over 500 characters.
            ConflictError: the same value is already pending or approved.
        """
        require(principal, Scope.SENDER_IDS_REQUEST)
        flow = "STANDARD" if flow is None else flow
        _check_flow(flow)
        validate = rules.validate_brand_name if flow == "OTP" else rules.validate_sender_id
        problems = _reason_problem(reason)
        try:
            value = validate(sender_id)
        except ValidationError as exc:  # the brand rule names its own field: brandName
            problems["senderId"] = next(iter(exc.details.values()))
        if problems:
            raise ValidationError.from_fields(problems)
        request = SenderIdRequest(
            id=new_id(),
            org_id=principal.org_id,
            sender_id=value,
            flow=flow,
            status="PENDING",
            reason=reason,
            created_at=self._clock.now(),
        )
        await self._store.create_sender_id_request(request)
        return request

    async def review_sender_id(
        self,
        principal: Principal,
        request_id: str,
        *,
        decision: Any,
        reason: Any = None,
    ) -> SenderIdRequest:
        """Approve or reject a pending request (platform operators).

        Args:
            request_id: the request's id (any organization).
            decision: ``approve`` or ``reject``.
            reason: the reviewer's note; None or at most 500 characters.

        Returns:
            The request, APPROVED or REJECTED.

        Raises:
            InsufficientScopeError: the key lacks ``platform:admin``.
            ValidationError: ``decision`` is not approve/reject; bad reason.
            NotFoundError: no such request.
            ConflictError: the request was already reviewed.
        """
        require(principal, Scope.PLATFORM_ADMIN)
        problems = _reason_problem(reason)
        if decision not in ("approve", "reject"):
            problems["decision"] = "must be approve or reject"
        if problems:
            raise ValidationError.from_fields(problems)
        existing = await self._store.get_sender_id_request(request_id)
        if existing is None:
            raise NotFoundError("No sender ID request with this id", details={"id": request_id})
        reviewed = await self._store.review_sender_id_request(
            request_id,
            status="APPROVED" if decision == "approve" else "REJECTED",
            review_reason=reason,
            reviewed_by=principal.api_key_id or "cli",
            at=self._clock.now(),
        )
        if reviewed is None:
            raise ConflictError(
                f"This request was already reviewed ({existing.status})",
                details={"id": request_id, "status": existing.status},
            )
        return reviewed

    async def list_sender_ids(
        self, principal: Principal, *, flow: str | None = None
    ) -> list[SenderIdRequest]:
        """Approved sender IDs (and OTP brands) of the organization.

        Raises:
            InsufficientScopeError: the key has neither ``read:sms`` nor
                ``sender_ids:request``.
            ValidationError: an unknown flow.
        """
        require(principal, Scope.READ_SMS, Scope.SENDER_IDS_REQUEST)
        if flow is not None:
            _check_flow(flow)
        return await self._store.list_sender_id_requests(
            org_id=principal.org_id, status="APPROVED", flow=flow
        )

    async def list_sender_id_requests(
        self, principal: Principal, *, status: str | None = None, all_orgs: bool = False
    ) -> list[SenderIdRequest]:
        """Requests of the organization, or of every organization for a platform admin.

        Raises:
            InsufficientScopeError: ``all_orgs`` without ``platform:admin``, or
                neither ``sender_ids:request`` nor ``platform:admin``.
            ValidationError: an unknown status.
        """
        if all_orgs:
            require(principal, Scope.PLATFORM_ADMIN)
        else:
            require(principal, Scope.SENDER_IDS_REQUEST, Scope.PLATFORM_ADMIN)
        if status is not None and status not in REQUEST_STATUSES:
            raise ValidationError.from_fields({"status": "must be PENDING, APPROVED or REJECTED"})
        return await self._store.list_sender_id_requests(
            org_id=None if all_orgs else principal.org_id, status=status, flow=None
        )

    # ------------------------------------------------------------------ opt-outs

    def _opt_out_event(
        self, org_id: str, phone: str, *, opted_out: bool, source: str
    ) -> TimelineEvent:
        return org_event(
            org_id,
            OPT_OUT_EVENT,
            at=self._clock.now(),
            details={"phone": phone, "optedOut": opted_out, "source": source},
        )

    async def opt_out(self, org_id: str, phone: str, *, source: str) -> bool:
        """Add a normalised number to the list with an ``sms_opt_out`` event; False if listed."""
        record = OptOut(org_id=org_id, phone=phone, source=source, created_at=self._clock.now())
        event = self._opt_out_event(org_id, phone, opted_out=True, source=source)
        return await self._store.add_opt_out(record, event)

    async def opt_in(self, org_id: str, phone: str, *, source: str) -> bool:
        """Remove a number with an ``sms_opt_out`` event (``optedOut: false``); False if absent."""
        event = self._opt_out_event(org_id, phone, opted_out=False, source=source)
        return await self._store.remove_opt_out(org_id, phone, event)

    async def add_opt_out(self, principal: Principal, phone: Any) -> tuple[str, bool]:
        """Put a number on the list (``source`` api).

        Returns:
            (the E.164 number, True when it was not listed before).

        Raises:
            InsufficientScopeError: the key lacks ``opt_outs:manage``.
            ValidationError: not a valid E.164 number (field ``phone``).
        """
        require(principal, Scope.OPT_OUTS_MANAGE)
        e164 = rules.normalise_e164(phone, field="phone")
        source = "api" if principal.api_key_id else "cli"
        return e164, await self.opt_out(principal.org_id, e164, source=source)

    async def remove_opt_out(self, principal: Principal, phone: Any) -> str:
        """Take a number off the list.

        Raises:
            InsufficientScopeError: the key lacks ``opt_outs:manage``.
            ValidationError: not a valid E.164 number.
            NotFoundError: the number is not on the list.
        """
        require(principal, Scope.OPT_OUTS_MANAGE)
        e164 = rules.normalise_e164(phone, field="phone")
        source = "api" if principal.api_key_id else "cli"
        if not await self.opt_in(principal.org_id, e164, source=source):
            raise NotFoundError("This number is not on the opt-out list", details={"phone": e164})
        return e164

    async def list_opt_outs(
        self, principal: Principal, *, page: int = 1, page_size: int = 50
    ) -> Page:
        """The organization's opt-out list, newest first.

        Raises:
            InsufficientScopeError: the key has neither ``read:sms`` nor ``opt_outs:manage``.
            ValidationError: bad paging.
        """
        require(principal, Scope.READ_SMS, Scope.OPT_OUTS_MANAGE)
        page, page_size = _page_bounds(page, page_size)
        items, total = await self._store.list_opt_outs(
            principal.org_id, offset=(page - 1) * page_size, limit=page_size
        )
        return Page(items=items, page=page, page_size=page_size, total=total)

    # ------------------------------------------------------------------ webhook tokens

    async def token(self, org_id: str, *, rotate: bool = False) -> str:
        """The organization's inbound-webhook token, created on first use.

        The same token guards the MO, DLR and inbound-opt-out routes of that
        organization. ``rotate`` replaces it at once (the old one stops working).
        It is stored as text so ``commtunnel sms token`` can show it again (a
        digest beside it would protect nothing); keep the database private.

        Returns:
            ``smst_`` and 43 URL-safe characters.
        """
        current = await self._store.get_sms_token(org_id)
        if current is not None and not rotate:
            return current
        token = new_webhook_token("smst_")
        await self._store.set_sms_token(org_id, token, self._clock.now())
        return token

    async def org_for_token(self, token: Any) -> str:
        """The organization a webhook token belongs to.

        Raises:
            WebhookAuthError: no token, one over 200 characters, or one no
                organization holds (:func:`~commtunnel.services.auth.org_for_webhook_token`).
        """
        return await org_for_webhook_token(token, self._store.org_for_sms_token)

    # ------------------------------------------------------------------ inbound MO

    @staticmethod
    def _mo_fields(payload: dict[str, Any]) -> tuple[str, str, str]:
        """(sender in E.164, our number as received, text) of an MO webhook body.

        ``sms_from`` may come without its ``+`` or as a JSON number, as
        carriers send it.

        Raises:
            ValidationError: a missing field, a non-string ``sms_to`` /
                ``sms_message``, an invalid ``sms_from``, or a text over 1600
                characters.
        """
        problems = {}
        for name in ("sms_from", "sms_to", "sms_message"):
            value = payload.get(name)
            if value is None or value == "":
                problems[name] = "is required"
            elif name != "sms_from" and not isinstance(value, str):
                problems[name] = "must be a string"
        if problems:
            raise ValidationError.from_fields(problems)
        raw_from = payload["sms_from"]
        if isinstance(raw_from, int) and not isinstance(raw_from, bool):
            raw_from = str(raw_from)
        sender = rules.normalise_e164(raw_from, field="sms_from", plus_optional=True)
        text = payload["sms_message"]
        if len(text) > rules.MAX_BODY_CHARACTERS:
            raise ValidationError.from_fields(
                {"sms_message": f"must be at most {rules.MAX_BODY_CHARACTERS} characters"}
            )
        return sender, str(payload["sms_to"]).strip(), text

    async def receive_inbound(self, token: Any, payload: dict[str, Any]) -> InboundResult:
        """Handle one MO message (``POST /v1/webhooks/sms/inbound``).

        STOP-type keywords put the number on the opt-out list, START-type
        keywords take it off, HELP/INFO answer the help text; each keyword
        answers a reply for the handset. Every MO message, keyword or not,
        is stored as an inbound message of the organization.

        Args:
            token: the ``?token=`` value.
            payload: ``sms_from``, ``sms_to``, ``sms_message`` (form or JSON).

        Returns:
            The stored message, its keyword, the reply for the handset (None
            when the keyword's reply text is empty) and the opt-out state a
            STOP (True) or START (False) left.

        Raises:
            WebhookAuthError: a bad token (nothing is stored).
            ValidationError: a missing field or an invalid ``sms_from``.
        """
        org_id = await self.org_for_token(token)
        sender, recipient, text = self._mo_fields(payload)
        keyword = rules.classify_keyword(text)
        inbound = InboundMessage(
            id=new_id(),
            org_id=org_id,
            channel=Channel.SMS,
            sender=sender,
            recipient=recipient,
            body=text,
            keyword=None if keyword is None else str(keyword),
            created_at=self._clock.now(),
        )
        await self._store.add_inbound(inbound)
        opted_out: bool | None = None
        if keyword == rules.Keyword.STOP:
            await self.opt_out(org_id, sender, source="inbound_keyword")
            opted_out = True
        elif keyword == rules.Keyword.START:
            await self.opt_in(org_id, sender, source="inbound_keyword")
            opted_out = False
        reply = self._replies[keyword] or None if keyword is not None else None
        return InboundResult(
            inbound=inbound,
            keyword=inbound.keyword,
            reply=reply,
            opted_out=opted_out,
            recorded=opted_out is not None,
        )

    async def inbound_opt_out(self, token: Any, payload: dict[str, Any]) -> InboundResult:
        """Handle MO traffic forwarded only for opt-out bookkeeping.

        A STOP (or START) keyword changes the list only when the organization
        has sent an SMS to that number before; anything else changes nothing.
        Nothing is stored as an inbound message.

        Returns:
            The keyword, and with ``recorded`` the change made (``opted_out``)
            and the keyword's reply.

        Raises:
            WebhookAuthError: a bad token.
            ValidationError: a missing field or an invalid ``sms_from``.
        """
        org_id = await self.org_for_token(token)
        sender, _recipient, text = self._mo_fields(payload)
        keyword = rules.classify_keyword(text)
        if keyword not in (rules.Keyword.STOP, rules.Keyword.START):
            return InboundResult(inbound=None, keyword=keyword and str(keyword), reply=None)
        if not await self._store.has_sent_sms_to(org_id, sender):
            return InboundResult(inbound=None, keyword=str(keyword), reply=None)
        if keyword == rules.Keyword.STOP:
            await self.opt_out(org_id, sender, source="inbound_opt_out")
        else:
            await self.opt_in(org_id, sender, source="inbound_opt_out")
        return InboundResult(
            inbound=None,
            keyword=str(keyword),
            reply=self._replies[keyword] or None,
            opted_out=keyword == rules.Keyword.STOP,
            recorded=True,
        )

    async def list_inbound(
        self, principal: Principal, *, page: int = 1, page_size: int = 50
    ) -> Page:
        """Inbound (MO) messages of the organization, newest first.

        Raises:
            InsufficientScopeError: the key lacks ``read:sms``.
            ValidationError: bad paging.
        """
        require(principal, Scope.READ_SMS)
        page, page_size = _page_bounds(page, page_size)
        items, total = await self._store.list_inbound(
            principal.org_id, Channel.SMS, offset=(page - 1) * page_size, limit=page_size
        )
        return Page(items=items, page=page, page_size=page_size, total=total)

    # ------------------------------------------------------------------ delivery receipts

    async def receive_dlr(self, token: Any, payload: dict[str, Any]) -> ReceiptResult:
        """Apply a carrier delivery receipt (``POST /v1/webhooks/sms/dlr?token=``).

        Args:
            token: the organization's webhook token.
            payload: ``message_id`` (the id send returned, or the provider's
                id), ``status`` (DELIVERED, FAILED, or an SMPP word such as
                DELIVRD / UNDELIV / EXPIRED), optional ``error_code``, ``error``.

        Returns:
            The message after the receipt, and whether it moved (never
            backwards, never twice: see :func:`~commtunnel.services.timeline.apply_receipt`).

        Raises:
            WebhookAuthError: a bad token (nothing changes).
            ValidationError: a missing or unknown field value.
            NotFoundError: no SMS of that organization has this id.
        """
        org_id = await self.org_for_token(token)
        problems = {}
        message_id = payload.get("message_id")
        if not isinstance(message_id, str) or not message_id.strip():
            problems["message_id"] = "is required (a string)"
        try:
            word, status = rules.parse_receipt_status(payload.get("status"))
        except ValidationError as exc:
            problems.update(exc.details)
        error_code = payload.get("error_code")
        error = payload.get("error")
        if error_code is not None and not isinstance(error_code, str | int):
            problems["error_code"] = "must be a string or integer"
        if error is not None and not isinstance(error, str):
            problems["error"] = "must be a string"
        # Other fields (timestamps, network codes) vary by aggregator and are ignored.
        if problems:
            raise ValidationError.from_fields(problems)
        assert isinstance(message_id, str)
        message = await self._storage.get_message(org_id, message_id.strip())
        if message is None or message.channel != Channel.SMS:
            by_provider = await self._store.find_by_provider_message_id(
                Channel.SMS, message_id.strip()
            )
            message = by_provider if by_provider and by_provider.org_id == org_id else None
        if message is None:
            raise NotFoundError("No SMS with this id", details={"message_id": message_id})
        return await self._apply(
            message,
            status,
            source="dlr",
            provider_status=word,
            error_code=None if error_code is None else str(error_code),
            error=error,
        )

    async def receive_provider_callback(
        self,
        provider: SmsProvider | None,
        *,
        url: str,
        headers: Mapping[str, str],
        body: bytes,
    ) -> tuple[int, int]:
        """Verify, parse and apply a provider's signed status callback.

        Args:
            provider: the configured SMS provider (None when there is none).
            url: the URL the provider POSTed to, as it signed it.
            headers / body: the request as received.

        Returns:
            (receipts the callback carried, receipts that moved a message).

        Raises:
            NotFoundError: no provider, a provider without signed callbacks, or
                receipts none of which matches a message here.
            WebhookSignatureError: the signature is missing or wrong.
            ValidationError: the body is not a status callback of this provider.
        """
        if provider is None:
            raise NotFoundError("No SMS provider is configured, so none sends status callbacks")
        receipts = provider.parse_status_callback(url=url, headers=headers, body=body)
        results = await self.receive_provider_receipts(receipts, provider=provider.name)
        return len(receipts), sum(1 for r in results if r.applied)

    async def held(self, message: Message) -> ProviderResult | None:
        """The result to record instead of sending, when the number opted out since.

        A scheduled, queued or retrying SMS whose recipient replied STOP (or was
        put on the list) after the send was accepted is not sent: each attempt
        asks here first (the dispatcher's ``check_sms`` hook). An OTP still
        goes when the organization lets OTPs ignore opt-outs, as at accept.

        Returns:
            A permanent ``RECIPIENT_OPTED_OUT`` result (the message becomes
            FAILED, no other provider is tried), or None.
        """
        if message.sms is None:
            return None
        try:
            await self._check_opt_out(message.org_id, message.sms.to, otp=message.sms.flow == "OTP")
        except SmsRecipientOptedOutError:
            return ProviderResult.permanent(
                ErrorCategory.RECIPIENT_OPTED_OUT,
                "the recipient opted out after this message was accepted",
            )
        return None

    async def after_attempt(self, message: Message, result: ProviderResult) -> None:
        """Consequences of a failed attempt beyond the message: a provider that says
        the recipient opted out (Twilio 21610) puts the number on the opt-out list."""
        if message.sms is not None and result.error_category == ErrorCategory.RECIPIENT_OPTED_OUT:
            await self.opt_out(message.org_id, message.sms.to, source="provider")

    async def set_otp_ignores_opt_out(self, org_id: str, value: bool) -> None:
        """Whether OTP messages of the organization still reach opted-out numbers.

        Raises:
            NotFoundError: no such organization.
        """
        if not await self._store.set_otp_ignores_opt_out(org_id, value):
            raise NotFoundError("No such organization", details={"org": org_id})

    async def receive_provider_receipts(
        self, receipts: list[DeliveryReceipt], *, provider: str
    ) -> list[ReceiptResult]:
        """Apply receipts a provider's signed status callback carried.

        Receipts for messages this system does not know are skipped (a
        provider account may be shared); the result lists those found.

        Args:
            receipts: what ``SmsProvider.parse_status_callback`` read.
            provider: the provider's name (the events' ``details.source``).

        Returns:
            What each receipt of a known message did, in order.

        Raises:
            NotFoundError: the callback carried receipts and none matched a
                message here (the issue's "an unknown id -> 4xx").
        """
        results = []
        for receipt in receipts:
            message = await self._store.find_by_provider_message_id(
                Channel.SMS, receipt.provider_message_id
            )
            if message is None:
                continue
            results.append(
                await self._apply(
                    message,
                    receipt.status,
                    source=provider,
                    provider_status=receipt.provider_status,
                    error_code=receipt.error_code,
                    error=receipt.error_message,
                )
            )
        if receipts and not results:
            raise NotFoundError(
                "No SMS with this provider message id",
                details={"providerMessageId": receipts[0].provider_message_id},
            )
        return results

    async def _apply(
        self,
        message: Message,
        status: Status,
        *,
        source: str,
        provider_status: str,
        error_code: str | None,
        error: str | None,
    ) -> ReceiptResult:
        """Apply one receipt; ``error`` is kept to 500 characters in the event."""
        details: dict[str, Any] = {"source": source, "providerStatus": provider_status}
        if error_code is not None:
            details["errorCode"] = error_code
        if error is not None:
            details["error"] = error[:500]
        return await apply_receipt(
            self._store, message, status, at=self._clock.now(), details=details
        )


__all__ = [
    "InboundResult",
    "OtpSendRequest",
    "OtpSendResult",
    "Page",
    "ReceiptResult",
    "SmsSendRequest",
    "SmsSendResult",
    "SmsService",
    "SmsStatus",
    "otp_request_from_wire",
    "send_request_from_wire",
]
