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

import hashlib
import math
import secrets
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import attrs

from commtunnel.domain import sms as rules
from commtunnel.domain.errors import (
    ConflictError,
    InsufficientScopeError,
    NotFoundError,
    OtpCooldownError,
    SmsBrandNotApprovedError,
    SmsRecipientOptedOutError,
    SmsSenderIdNotApprovedError,
    ValidationError,
    WebhookAuthError,
)
from commtunnel.domain.events import TimelineEvent
from commtunnel.domain.keys import Principal, Scope
from commtunnel.domain.messages import Attempt, Channel, Message, SmsContent, Status, event_for
from commtunnel.ids import new_id
from commtunnel.ports import (
    AcceptResult,
    Clock,
    CooldownClaim,
    DeliveryReceipt,
    InboundMessage,
    OptOut,
    SenderIdRequest,
    SmsPage,
    SmsStorage,
    Storage,
)
from commtunnel.services import channel, idempotency
from commtunnel.services.auth import require
from commtunnel.services.channel import MAX_TIMELINE_LIMIT as MAX_TIMELINE_LIMIT  # re-exported

ENDPOINT_SEND = "sms.send"
ENDPOINT_OTP = "sms.otp.send"
FLOWS = ("STANDARD", "OTP")
LIST_STATUSES = tuple(s.value for s in Status)
MAX_PAGE_SIZE = 100
OPT_OUT_EVENT = "sms_opt_out"

# Receipt words from carriers and aggregators (SMPP ``stat`` values, SMPP v3.4
# Appendix B, and the usual JSON spellings) -> the status they mean.
_RECEIPT_WORDS: dict[str, Status] = {
    "DELIVERED": Status.DELIVERED,
    "DELIVRD": Status.DELIVERED,
    "FAILED": Status.FAILED,
    "UNDELIV": Status.FAILED,
    "UNDELIVERED": Status.FAILED,
    "REJECTD": Status.FAILED,
    "REJECTED": Status.FAILED,
    "EXPIRED": Status.FAILED,
    "EXPIRD": Status.FAILED,
    "SENT": Status.SENT,
    "ACCEPTD": Status.SENT,
    "ACCEPTED": Status.SENT,
    "ENROUTE": Status.SENT,
    "BUFFERED": Status.SENT,
}
# A receipt moves a message forward only: SENT -> DELIVERED or FAILED. A
# duplicate, or a late "sent" after "delivered", changes nothing.
_RECEIPT_ALLOWED_FROM: dict[Status, frozenset[Status]] = {
    Status.DELIVERED: frozenset({Status.SENT}),
    Status.FAILED: frozenset({Status.SENT}),
}


# --------------------------------------------------------------------------- requests


@attrs.frozen(kw_only=True)
class SmsSendRequest:
    """``POST /v1/public/sms/send`` as the caller gave it (untrusted, checked by the service)."""

    to: Any = None
    sender_id: Any = None
    body: Any = None
    send_type: Any = None
    sandbox_mode: Any = False
    idempotency_key: Any = None

    def wire_payload(self) -> dict[str, Any]:
        """The request in wire spelling without the key (for fingerprints)."""
        return channel.wire_payload(self, SEND_WIRE_FIELDS)


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


@attrs.frozen(kw_only=True)
class SmsSendResult:
    """A send's answer: the message, and whether it replays an earlier request."""

    message: Message
    duplicate: bool


@attrs.frozen(kw_only=True)
class OtpSendResult:
    """An OTP send's answer; ``cooldown_seconds`` is the wait before the next OTP."""

    message: Message
    duplicate: bool
    cooldown_seconds: int


@attrs.frozen(kw_only=True)
class SmsStatus:
    """A message with its attempts, as ``GET /v1/public/sms/{id}`` shows it."""

    message: Message
    attempts: list[Attempt]


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


@attrs.frozen(kw_only=True)
class ReceiptResult:
    """What a delivery receipt did to its message."""

    message: Message
    applied: bool


def _collect(checks: dict[str, Callable[[], Any]]) -> tuple[dict[str, Any], dict[str, str]]:
    """Run each validator; return (values that passed, every field's problem)."""
    values: dict[str, Any] = {}
    problems: dict[str, str] = {}
    for field, check in checks.items():
        try:
            values[field] = check()
        except ValidationError as exc:
            problems.update({str(k): str(v) for k, v in exc.details.items()})
    return values, problems


def _page_bounds(page: Any, page_size: Any) -> tuple[int, int]:
    problems = {}
    if isinstance(page, bool) or not isinstance(page, int) or page < 1:
        problems["page"] = "must be an integer >= 1"
    if (
        isinstance(page_size, bool)
        or not isinstance(page_size, int)
        or not 1 <= page_size <= MAX_PAGE_SIZE
    ):
        problems["pageSize"] = f"must be an integer from 1 to {MAX_PAGE_SIZE}"
    if problems:
        raise ValidationError.from_fields(problems)
    return page, page_size


def _inbound_number(raw: Any, field: str) -> str:
    """An MO ``sms_from``: carriers often send it without the ``+`` (or as a JSON number)."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = str(raw)
    if isinstance(raw, str):
        stripped = raw.strip()
        if stripped.isdigit():
            raw = "+" + stripped
    return rules.normalise_e164(raw, field=field)


def hash_token(token: str) -> str:
    """SHA-256 hex of a webhook token (what lookups use; 256-bit tokens need no slow hash)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


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
    ) -> None:
        self._storage = storage
        self._store = sms_store
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
        self._messages = channel.ChannelMessages(storage, Channel.SMS, "SMS")

    # ------------------------------------------------------------------ sending

    async def send(self, principal: Principal, req: SmsSendRequest) -> SmsSendResult:
        """Queue a standard SMS.

        Returns:
            The queued message (``sms`` content carries ``encoding`` and
            ``segments``), or with ``duplicate=True`` the one an earlier
            request with the same idempotency key created.

        Raises:
            InsufficientScopeError: the key lacks ``send:sms``.
            ValidationError: bad ``to`` (not E.164), ``senderId``, ``body``
                (empty or over 1600 characters), ``sendType``, or key.
            SmsSenderIdNotApprovedError: the sender ID is neither approved
                for the organization nor the platform default.
            SmsRecipientOptedOutError: the number is on the opt-out list.
            IdempotencyKeyReusedError / IdempotencyKeyInUseError: see DESIGN.md.
        """
        require(principal, Scope.SEND_SMS)
        key = idempotency.validate_key(req.idempotency_key)
        values, problems = _collect(
            {
                "to": lambda: rules.normalise_e164(req.to),
                "senderId": lambda: rules.validate_sender_id(req.sender_id),
                "body": lambda: rules.validate_body(req.body),
                "sendType": lambda: rules.parse_send_type(req.send_type),
                "sandboxMode": lambda: self._check_bool(req.sandbox_mode, "sandboxMode"),
            }
        )
        if problems:
            raise ValidationError.from_fields(problems)
        to, sender_id, body, send_type = (
            values["to"],
            values["senderId"],
            values["body"],
            values["sendType"],
        )
        with self._in_flight.hold(principal.org_id, key):
            original = await channel.replay(
                self._storage,
                org_id=principal.org_id,
                key=key,
                endpoint=ENDPOINT_SEND,
                payload=req.wire_payload(),
                now=self._clock.now(),
            )
            if original is not None:
                return SmsSendResult(message=original, duplicate=True)
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
                principal, content, key, ENDPOINT_SEND, req.wire_payload(), values["sandboxMode"]
            )
        message = channel.accepted_message(result, key=key, endpoint=ENDPOINT_SEND)
        return SmsSendResult(message=message, duplicate=result.duplicate)

    async def send_otp(self, principal: Principal, req: OtpSendRequest) -> OtpSendResult:
        """Queue a one-time passcode under an OTP-approved brand.

        The body is built from the brand, code and purpose
        (:func:`commtunnel.domain.sms.otp_body`); the brand is the sender ID.

        Raises:
            InsufficientScopeError: the key lacks ``send:sms``.
            ValidationError: bad ``to``, ``brandName`` (3-20), ``otpCode`` (4-8
                digits) or ``purpose``.
            SmsBrandNotApprovedError: the brand is not approved for OTP.
            SmsRecipientOptedOutError: the number opted out (unless the
                organization lets OTP through).
            OtpCooldownError: an OTP for the same number and purpose was
                queued less than the cooldown ago (``retry_after`` seconds).
        """
        require(principal, Scope.SEND_SMS)
        key = idempotency.validate_key(req.idempotency_key)
        values, problems = _collect(
            {
                "to": lambda: rules.normalise_e164(req.to),
                "brandName": lambda: rules.validate_brand_name(req.brand_name),
                "otpCode": lambda: rules.validate_otp_code(req.otp_code),
                "purpose": lambda: rules.parse_purpose(req.purpose),
                "sandboxMode": lambda: self._check_bool(req.sandbox_mode, "sandboxMode"),
            }
        )
        if problems:
            raise ValidationError.from_fields(problems)
        to, brand, code, purpose = (
            values["to"],
            values["brandName"],
            values["otpCode"],
            values["purpose"],
        )
        with self._in_flight.hold(principal.org_id, key):
            original = await channel.replay(
                self._storage,
                org_id=principal.org_id,
                key=key,
                endpoint=ENDPOINT_OTP,
                payload=req.wire_payload(),
                now=self._clock.now(),
            )
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
                sender_id=self._otp_sender(brand),
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
                values["sandboxMode"],
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

    def _otp_sender(self, brand: str) -> str:
        """The sender ID an OTP goes out under: the brand when it can be one.

        An alphanumeric sender ID holds at most 11 characters (3GPP TS 23.040
        §9.1.2.5) while a brand may have 20; a longer brand is named in the text
        and the message is sent from the platform default sender ID, or from the
        brand's first 11 letters and digits when there is no default.
        """
        try:
            return rules.validate_sender_id(brand)
        except ValidationError:
            if self._default_sender_id:
                return self._default_sender_id
            return "".join(ch for ch in brand if ch.isascii() and ch.isalnum())[:11]

    @staticmethod
    def _check_bool(value: Any, field: str) -> bool:
        if not isinstance(value, bool):
            raise ValidationError.from_fields({field: "must be a boolean"})
        return value

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
    ) -> AcceptResult:
        now = cooldown.now if cooldown is not None else self._clock.now()
        message_id = new_id()
        message = Message(
            id=message_id,
            org_id=principal.org_id,
            channel=Channel.SMS,
            status=Status.QUEUED,
            sandbox=principal.sandbox or sandbox_mode,
            api_key_id=principal.api_key_id,
            email=None,
            sms=content,
            created_at=now,
            updated_at=now,
        )
        details: dict[str, Any] = {"segments": content.segments, "encoding": content.encoding}
        if message.sandbox:
            details["sandbox"] = True
        event = TimelineEvent(
            id=new_id(),
            message_id=message_id,
            org_id=principal.org_id,
            type=event_for(Channel.SMS, Status.QUEUED),
            status=Status.QUEUED,
            created_at=now,
            details=details,
        )
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
            message, event, run_at=now, idempotency=record, cooldown=cooldown
        )

    # ------------------------------------------------------------------ reading

    async def get(self, principal: Principal, message_id: str) -> SmsStatus:
        """One SMS of the caller's organization with its attempts.

        Raises:
            InsufficientScopeError: the key lacks ``read:sms``.
            NotFoundError: no such SMS in the caller's organization.
        """
        require(principal, Scope.READ_SMS)
        message, attempts = await self._messages.with_attempts(principal, message_id)
        return SmsStatus(message=message, attempts=attempts)

    async def timeline(
        self, principal: Principal, message_id: str, *, limit: int = 100
    ) -> list[TimelineEvent]:
        """The SMS's events, oldest first, at most ``limit`` (1..1000).

        Raises:
            InsufficientScopeError: the key lacks ``read:sms``.
            ValidationError: ``limit`` out of range.
            NotFoundError: no such SMS in the caller's organization.
        """
        require(principal, Scope.READ_SMS)
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
            query: free text matched against recipient, body, id and provider id.
            page: from 1. page_size: 1..100.

        Raises:
            InsufficientScopeError: the key lacks ``read:sms``.
            ValidationError: an unknown flow or status, or bad paging.
        """
        require(principal, Scope.READ_SMS)
        problems = {}
        if flow is not None and flow not in FLOWS:
            problems["flow"] = f"must be one of {', '.join(FLOWS)}"
        if status is not None and status not in LIST_STATUSES:
            problems["status"] = f"must be one of {', '.join(LIST_STATUSES)}"
        if query is not None and len(query) > 200:
            problems["query"] = "must be at most 200 characters"
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
        return Page(items=result.messages, page=page, page_size=page_size, total=result.total)

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
        require(principal, Scope.SEND_SMS)
        now = self._clock.now()
        return await self._messages.requeue_failed(
            self._store, principal, message_id, now=now, run_at=now
        )

    # ------------------------------------------------------------------ sender IDs

    async def request_sender_id(
        self, principal: Principal, *, sender_id: Any, flow: Any = None, reason: Any = None
    ) -> SenderIdRequest:
        """Ask the platform to approve a sender ID (flow STANDARD) or an OTP brand (flow OTP).

        Raises:
            InsufficientScopeError: the key lacks ``sender_ids:request``.
            ValidationError: a bad value for its flow, an unknown flow, a reason
                that is not a string or is over 500 characters.
            ConflictError: the same value is already pending or approved.
        """
        require(principal, Scope.SENDER_IDS_REQUEST)
        flow = "STANDARD" if flow is None else flow
        if flow not in FLOWS:
            raise ValidationError.from_fields({"flow": f"must be one of {', '.join(FLOWS)}"})
        checks: dict[str, Callable[[], Any]] = {
            "senderId": (
                (lambda: rules.validate_brand_name(sender_id))
                if flow == "OTP"
                else (lambda: rules.validate_sender_id(sender_id))
            ),
        }
        values, problems = _collect(checks)
        if "brandName" in problems:  # the brand rule names its own field
            problems["senderId"] = problems.pop("brandName")
        if reason is not None and (not isinstance(reason, str) or len(reason) > 500):
            problems["reason"] = "must be a string of at most 500 characters"
        if problems:
            raise ValidationError.from_fields(problems)
        request = SenderIdRequest(
            id=new_id(),
            org_id=principal.org_id,
            sender_id=values["senderId"],
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

        Raises:
            InsufficientScopeError: the key lacks ``platform:admin``.
            ValidationError: ``decision`` is not approve/reject; bad reason.
            NotFoundError: no such request.
            ConflictError: the request was already reviewed.
        """
        require(principal, Scope.PLATFORM_ADMIN)
        problems = {}
        if decision not in ("approve", "reject"):
            problems["decision"] = "must be approve or reject"
        if reason is not None and (not isinstance(reason, str) or len(reason) > 500):
            problems["reason"] = "must be a string of at most 500 characters"
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
        self._require_any(principal, Scope.READ_SMS, Scope.SENDER_IDS_REQUEST)
        if flow is not None and flow not in FLOWS:
            raise ValidationError.from_fields({"flow": f"must be one of {', '.join(FLOWS)}"})
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
            self._require_any(principal, Scope.SENDER_IDS_REQUEST, Scope.PLATFORM_ADMIN)
        if status is not None and status not in ("PENDING", "APPROVED", "REJECTED"):
            raise ValidationError.from_fields({"status": "must be PENDING, APPROVED or REJECTED"})
        return await self._store.list_sender_id_requests(
            org_id=None if all_orgs else principal.org_id, status=status, flow=None
        )

    @staticmethod
    def _require_any(principal: Principal, *scopes: str) -> None:
        if not any(principal.has(scope) for scope in scopes):
            raise InsufficientScopeError(scopes[0])

    # ------------------------------------------------------------------ opt-outs

    def _opt_out_event(
        self, org_id: str, phone: str, *, opted_out: bool, source: str
    ) -> TimelineEvent:
        return TimelineEvent(
            id=new_id(),
            message_id=None,
            org_id=org_id,
            type=OPT_OUT_EVENT,
            status=None,
            created_at=self._clock.now(),
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
        self._require_any(principal, Scope.READ_SMS, Scope.OPT_OUTS_MANAGE)
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
        """
        current = await self._store.get_sms_token(org_id)
        if current is not None and not rotate:
            return current
        token = "smst_" + secrets.token_urlsafe(32)
        await self._store.set_sms_token(org_id, token, hash_token(token), self._clock.now())
        return token

    async def org_for_token(self, token: Any) -> str:
        """The organization a webhook token belongs to.

        Raises:
            WebhookAuthError: no token, or one no organization holds.
        """
        if not isinstance(token, str) or not token or len(token) > 200:
            raise WebhookAuthError("Missing or invalid webhook token")
        org_id = await self._store.org_for_sms_token(hash_token(token))
        if org_id is None:
            raise WebhookAuthError("Missing or invalid webhook token")
        return org_id

    # ------------------------------------------------------------------ inbound MO

    @staticmethod
    def _mo_fields(payload: dict[str, Any]) -> tuple[str, str, str]:
        problems = {}
        for name in ("sms_from", "sms_to", "sms_message"):
            value = payload.get(name)
            if value is None or value == "":
                problems[name] = "is required"
            elif name != "sms_from" and not isinstance(value, str):
                problems[name] = "must be a string"
        if problems:
            raise ValidationError.from_fields(problems)
        sender = _inbound_number(payload["sms_from"], "sms_from")
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

        Raises:
            WebhookAuthError: a bad token (nothing changes).
            ValidationError: a missing or unknown field value.
            NotFoundError: no SMS of that organization has this id.
        """
        org_id = await self.org_for_token(token)
        problems = {}
        message_id = payload.get("message_id")
        raw_status = payload.get("status")
        if not isinstance(message_id, str) or not message_id.strip():
            problems["message_id"] = "is required (a string)"
        if not isinstance(raw_status, str) or raw_status.strip().upper() not in _RECEIPT_WORDS:
            problems["status"] = f"must be one of {', '.join(sorted(_RECEIPT_WORDS))}"
        error_code = payload.get("error_code")
        error = payload.get("error")
        if error_code is not None and not isinstance(error_code, str | int):
            problems["error_code"] = "must be a string or integer"
        if error is not None and not isinstance(error, str):
            problems["error"] = "must be a string"
        # Other fields (timestamps, network codes) vary by aggregator and are ignored.
        if problems:
            raise ValidationError.from_fields(problems)
        assert isinstance(message_id, str) and isinstance(raw_status, str)
        message = await self._storage.get_message(org_id, message_id.strip())
        if message is None or message.channel != Channel.SMS:
            by_provider = await self._store.find_by_provider_message_id(
                Channel.SMS, message_id.strip()
            )
            message = by_provider if by_provider and by_provider.org_id == org_id else None
        if message is None:
            raise NotFoundError("No SMS with this id", details={"message_id": message_id})
        word = raw_status.strip().upper()
        return await self._apply(
            message,
            _RECEIPT_WORDS[word],
            source="dlr",
            provider_status=word,
            error_code=None if error_code is None else str(error_code),
            error=error,
        )

    async def receive_provider_receipts(
        self, receipts: list[DeliveryReceipt], *, provider: str
    ) -> list[ReceiptResult]:
        """Apply receipts a provider's signed status callback carried.

        Receipts for messages this system does not know are skipped (a
        provider account may be shared); the result lists those found.

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
        allowed = _RECEIPT_ALLOWED_FROM.get(status)
        if allowed is None:  # "sent"-type receipts confirm what the worker recorded
            return ReceiptResult(message=message, applied=False)
        details: dict[str, Any] = {"source": source, "providerStatus": provider_status}
        if error_code is not None:
            details["errorCode"] = error_code
        if error is not None:
            details["error"] = error[:500]
        event = TimelineEvent(
            id=new_id(),
            message_id=message.id,
            org_id=message.org_id,
            type=event_for(Channel.SMS, status),
            status=status,
            created_at=self._clock.now(),
            details=details,
        )
        outcome = await self._store.apply_receipt(
            message.id, new_status=status, allowed_from=allowed, event=event
        )
        if outcome is None:  # pragma: no cover - the message was read just before
            raise NotFoundError("No SMS with this id", details={"message_id": message.id})
        return ReceiptResult(message=outcome.message, applied=outcome.applied)


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
