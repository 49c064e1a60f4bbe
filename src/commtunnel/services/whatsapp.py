"""The WhatsApp Cloud channel's use cases: synchronous sends, status, lines, Meta webhooks.

Contract: ``../shared/seeds/000_427ee8481191f61a.txt`` ("WhatsApp Cloud
(public API)", "Meta WhatsApp webhook") and ``../shared/seeds/001_fc3b71c01ecf9734.txt``
(the ``WHATSAPP_*`` settings, the tenant line, ``WHATSAPP_LINE_MAP``).

A send is handed to Graph *synchronously* but durably: the message, its
events and its job are committed first (the job scheduled one lease ahead,
so no worker takes it meanwhile), then this process leases the job and
makes the attempt through the dispatcher, exactly as a worker would. If the
process dies during the call, the job comes due and a worker retries it.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

import attrs

from commtunnel.crypto import SecretBox, fingerprint
from commtunnel.domain import whatsapp as rules
from commtunnel.domain.delivery import ErrorCategory, ProviderResult
from commtunnel.domain.errors import (
    InternalError,
    SecretKeyMissingError,
    ValidationError,
    WebhookSignatureError,
    WhatsAppDisabledError,
    WhatsAppLineInUseError,
    WhatsAppLineNotConfiguredError,
    WhatsAppProviderError,
    WhatsAppSendRejectedError,
)
from commtunnel.domain.events import TimelineEvent, format_timestamp
from commtunnel.domain.keys import Principal, Scope
from commtunnel.domain.messages import Channel, Message, Status
from commtunnel.domain.whatsapp import MAX_TEXT_CHARACTERS as MAX_TEXT_CHARACTERS  # re-exported
from commtunnel.domain.whatsapp import WebhookBatch
from commtunnel.ids import new_id
from commtunnel.ports import (
    KEEP,
    Clock,
    InboundMessage,
    LineState,
    OptOut,
    SmsStorage,
    Storage,
    TenantLine,
    WhatsAppLine,
    WhatsAppStorage,
)
from commtunnel.services import channel, idempotency
from commtunnel.services.auth import require
from commtunnel.services.channel import MAX_TIMELINE_LIMIT as MAX_TIMELINE_LIMIT  # re-exported
from commtunnel.services.dispatch import Dispatcher
from commtunnel.services.timeline import apply_receipt, org_event, status_event

ENDPOINT_SEND = "whatsapp.send"
PAUSED_RETRY_SECONDS = 300.0
_PHONE_NUMBER_ID = re.compile(r"[0-9]{1,32}")
_INBOUND_NAMESPACE = uuid.UUID("6f0c2f4e-6a52-4f1e-9d55-7b0d1d8a9c11")  # inbound ids from wamids


@attrs.frozen(kw_only=True)
class WhatsAppSendRequest:
    """``POST /v1/public/whatsapp/send`` as the caller gave it (untrusted)."""

    to: Any = None
    body: Any = None
    template: Any = None
    idempotency_key: Any = None

    def wire_payload(self) -> dict[str, Any]:
        """The request in wire spelling without the key (for fingerprints)."""
        return channel.wire_payload(self, WIRE_FIELDS)


WIRE_FIELDS = {
    "to": "to",
    "body": "body",
    "template": "template",
    "idempotencyKey": "idempotency_key",
}


def send_request_from_wire(
    payload: dict[str, Any], *, header_key: str | None
) -> WhatsAppSendRequest:
    """Build a send request from a JSON object, refusing unknown fields.

    Raises:
        ValidationError: unknown fields, or a header key that differs from the body's.
    """
    return WhatsAppSendRequest(
        **channel.values_from_wire(payload, WIRE_FIELDS, header_key=header_key)
    )


#: A send's answer: the message (SENT) or, with ``duplicate``, an earlier one.
WhatsAppSendResult = channel.SendResult
#: A message with its attempts, as ``GET /v1/public/whatsapp/{id}`` shows it.
WhatsAppStatus = channel.MessageStatus


@attrs.frozen(kw_only=True)
class LineInfo:
    """What ``GET /v1/account/whatsapp-cloud-line`` answers (never the token)."""

    whatsapp_phone_number_id: str | None
    uses_platform_default: bool
    platform_line_configured: bool
    has_own_access_token: bool
    state: str


@attrs.frozen(kw_only=True)
class WebhookResult:
    """What one Meta webhook delivery did."""

    statuses_applied: int
    statuses_ignored: int
    inbound_stored: int


def _shown_state(state: LineState, token: str | None) -> str:
    """A line's state for the token it sends with now (``ACTIVE``, ``PAUSED`` or ``FLAGGED``).

    A line is paused for the token it was paused with: once that token is
    replaced it is ACTIVE again. An unknown token (None: unreadable or unset)
    leaves it as recorded.
    """
    if state.state == "PAUSED" and token is not None:
        return "PAUSED" if state.token_fingerprint == fingerprint(token) else "ACTIVE"
    return state.state


def parse_line_map(raw: str | None) -> dict[str, str]:
    """``WHATSAPP_LINE_MAP``: JSON ``{"<phone_number_id>": "<org id or name>"}`` or
    ``pnid=org,pnid=org``.

    Raises:
        ValueError: neither form parses.
    """
    if not raw or not raw.strip():
        return {}
    text = raw.strip()
    if text.startswith("{"):
        data = json.loads(text)
        if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in data.items()
        ):
            raise ValueError("WHATSAPP_LINE_MAP JSON must map strings to strings")
        return dict(data)
    mapping = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"WHATSAPP_LINE_MAP entry {item!r} is not phone_number_id=org")
        mapping[key.strip()] = value.strip()
    return mapping


class WhatsAppService:
    """Send and read WhatsApp Cloud messages; manage tenant lines; take Meta's webhooks.

    Args:
        storage: messages, events, attempts.
        sms_store: channel-neutral receipts, re-queues and inbound storage.
        store: WhatsApp lines, line states, opt-outs.
        clock: every "now".
        enabled: ``WHATSAPP_CLOUD_API_ENABLED``.
        platform_phone_number_id / platform_access_token: the default line.
        line_map: ``WHATSAPP_LINE_MAP`` parsed: phone number id -> org id or name.
        secret_box: encrypts tenant tokens (None without ``COMMTUNNEL_SECRET_KEY``).
        idempotency_retention: seconds a key is remembered.
        lease_seconds: the synchronous hand-off's lease (the worker's lease).
        dispatcher: returns the dispatcher that makes the hand-off's attempt.
    """

    def __init__(
        self,
        storage: Storage,
        sms_store: SmsStorage,
        store: WhatsAppStorage,
        clock: Clock,
        *,
        enabled: bool = False,
        platform_phone_number_id: str | None = None,
        platform_access_token: str | None = None,
        line_map: Mapping[str, str] | None = None,
        secret_box: SecretBox | None = None,
        idempotency_retention: float = 86_400.0,
        lease_seconds: float = 60.0,
        dispatcher: Callable[[], Dispatcher] | None = None,
    ) -> None:
        self._storage = storage
        self._receipts = sms_store
        self._store = store
        self._clock = clock
        self._enabled = enabled
        self._platform_pnid = platform_phone_number_id
        self._platform_token = platform_access_token
        self._line_map = dict(line_map or {})
        self._box = secret_box
        self._retention = idempotency_retention
        self._lease_seconds = lease_seconds
        self._in_flight = idempotency.InFlight()
        self._dispatcher = dispatcher
        self._messages = channel.ChannelMessages(
            storage,
            Channel.WHATSAPP,
            "WhatsApp message",
            read_scope=Scope.READ_WHATSAPP,
            send_scope=Scope.SEND_WHATSAPP,
        )

    # ------------------------------------------------------------------ lines

    @property
    def platform_line_configured(self) -> bool:
        """Whether the platform default line (phone number id + token) is set."""
        return bool(self._platform_pnid and self._platform_token)

    async def resolve_line(self, org_id: str) -> WhatsAppLine:
        """The line an organization sends from: its own parts, else the platform's.

        Raises:
            WhatsAppDisabledError: the channel is off.
            WhatsAppLineNotConfiguredError: no phone number id or no token.
        """
        if not self._enabled:
            raise WhatsAppDisabledError(
                "The WhatsApp Cloud channel is not enabled (WHATSAPP_CLOUD_API_ENABLED)"
            )
        own = await self._store.get_line(org_id)
        pnid = (own.phone_number_id if own else None) or self._platform_pnid
        token = self._line_token(own)
        if not pnid or not token:
            raise WhatsAppLineNotConfiguredError(
                "No WhatsApp line: set a phone number id and access token for the "
                "organization (PATCH /v1/account/whatsapp-cloud-line) or for the platform"
            )
        owner = org_id if own is not None and own.phone_number_id else None
        return WhatsAppLine(phone_number_id=pnid, access_token=token, org_id=owner)

    def _line_token(self, own: TenantLine | None) -> str | None:
        """The token an organization sends with: its own (decrypted), else the platform's.

        Raises:
            SecretKeyMissingError: its own token cannot be read (no or another secret key).
        """
        if own is None or own.access_token_enc is None:
            return self._platform_token
        return self._decrypt(own.access_token_enc)

    def _decrypt(self, token_enc: str) -> str:
        """The plaintext of a stored token.

        Raises:
            SecretKeyMissingError: no ``COMMTUNNEL_SECRET_KEY``, or not the one
                it was encrypted with.
        """
        if self._box is None:
            raise SecretKeyMissingError(
                "COMMTUNNEL_SECRET_KEY is not set, so the stored access token cannot be read"
            )
        try:
            return self._box.decrypt(token_enc)
        except InternalError:
            raise SecretKeyMissingError(
                "The stored access token cannot be decrypted with the current "
                "COMMTUNNEL_SECRET_KEY; set the token again"
            ) from None

    async def line_for_message(self, message: Message) -> WhatsAppLine | ProviderResult:
        """The worker's view: the line to use, or a result to record without calling Graph."""
        try:
            line = await self.resolve_line(message.org_id)
        except (
            WhatsAppDisabledError,
            WhatsAppLineNotConfiguredError,
            SecretKeyMissingError,
        ) as exc:
            return ProviderResult.transient(ErrorCategory.UNSUPPORTED, exc.message)
        state = await self._store.get_line_state(line.phone_number_id)
        if state is not None and _shown_state(state, line.access_token) == "PAUSED":
            return ProviderResult.transient(
                ErrorCategory.LINE_PAUSED,
                f"line {line.phone_number_id} is paused ({state.reason}); "
                "set a new access token to resume",
                retry_after=PAUSED_RETRY_SECONDS,
            )
        return line

    async def after_attempt(self, message: Message, result: ProviderResult) -> None:
        """Consequences of a failed attempt: pause or flag the line, record an opt-out."""
        category = result.error_category
        if category == ErrorCategory.RECIPIENT_OPTED_OUT and message.whatsapp is not None:
            await self._opt_out(message.org_id, message.whatsapp.to, source="provider")
            return
        if category not in (ErrorCategory.AUTH, ErrorCategory.POLICY_BLOCKED):
            return
        try:
            line = await self.resolve_line(message.org_id)
        except (WhatsAppDisabledError, WhatsAppLineNotConfiguredError):
            return
        paused = category == ErrorCategory.AUTH
        state = "PAUSED" if paused else "FLAGGED"
        event = org_event(
            message.org_id,
            "whatsapp_line_paused" if paused else "whatsapp_line_flagged",
            at=self._clock.now(),
            details={
                "phoneNumberId": line.phone_number_id,
                "reason": result.error_message,
                "messageId": message.id,
                "alert": True,
            },
        )
        await self._store.set_line_state(
            line.phone_number_id,
            state=state,
            reason=result.error_message,
            token_fingerprint=fingerprint(line.access_token),
            event=event,
        )

    async def _opt_out(self, org_id: str, phone: str, *, source: str) -> None:
        """Put ``phone`` on the organization's WhatsApp list with a ``whatsapp_opt_out`` event."""
        now = self._clock.now()
        event = org_event(
            org_id,
            "whatsapp_opt_out",
            at=now,
            details={"phone": phone, "optedOut": True, "source": source},
        )
        await self._store.add_opt_out(
            OptOut(org_id=org_id, phone=phone, source=source, created_at=now), event
        )

    async def get_line(self, principal: Principal) -> LineInfo:
        """The organization's line settings (``GET /v1/account/whatsapp-cloud-line``).

        Raises:
            InsufficientScopeError: the key lacks ``account:manage``.
        """
        require(principal, Scope.ACCOUNT_MANAGE)
        own = await self._store.get_line(principal.org_id)
        pnid = own.phone_number_id if own else None
        effective = pnid or self._platform_pnid
        state = await self._store.get_line_state(effective) if effective else None
        try:
            token = self._line_token(own)
        except SecretKeyMissingError:
            token = None  # unreadable: the line cannot send, a PAUSED line stays paused
        return LineInfo(
            whatsapp_phone_number_id=pnid,
            uses_platform_default=pnid is None,
            platform_line_configured=self.platform_line_configured,
            has_own_access_token=bool(own and own.access_token_enc),
            state="ACTIVE" if state is None else _shown_state(state, token),
        )

    async def update_line(self, principal: Principal, payload: dict[str, Any]) -> LineInfo:
        """Set or clear the organization's phone number id and/or access token.

        Args:
            payload: ``whatsappPhoneNumberId`` and/or ``whatsappAccessToken``;
                null clears; at least one field.

        Raises:
            InsufficientScopeError: the key lacks ``account:manage``.
            ValidationError: no field, unknown fields, bad values.
            WhatsAppLineInUseError: another organization holds the phone number id.
            SecretKeyMissingError: a token is given but ``COMMTUNNEL_SECRET_KEY`` is unset.
        """
        require(principal, Scope.ACCOUNT_MANAGE)
        allowed = {"whatsappPhoneNumberId", "whatsappAccessToken"}
        problems = dict.fromkeys(sorted(set(payload) - allowed), "unknown field")
        if not set(payload) & allowed:
            problems["whatsappPhoneNumberId"] = (
                "give whatsappPhoneNumberId and/or whatsappAccessToken (null clears)"
            )
        pnid: object = KEEP
        token_enc: object = KEEP
        if "whatsappPhoneNumberId" in payload:
            value = payload["whatsappPhoneNumberId"]
            if value is not None and (
                not isinstance(value, str) or not _PHONE_NUMBER_ID.fullmatch(value)
            ):
                problems["whatsappPhoneNumberId"] = "must be Meta's numeric phone number id or null"
            pnid = value
        if "whatsappAccessToken" in payload:
            token = payload["whatsappAccessToken"]
            if token is not None and (
                not isinstance(token, str) or not 20 <= len(token) <= 1024 or token != token.strip()
            ):
                problems["whatsappAccessToken"] = "must be a Graph access token (20-1024 chars)"
            elif token is not None:
                if self._box is None:
                    raise SecretKeyMissingError(
                        "Set COMMTUNNEL_SECRET_KEY before storing an access token: "
                        "tokens are stored encrypted"
                    )
                token_enc = self._box.encrypt(token)
            else:
                token_enc = None
        if problems:
            raise ValidationError.from_fields(problems)
        if isinstance(pnid, str):
            await self._check_line_free(principal.org_id, pnid)
        await self._store.set_line(
            principal.org_id, phone_number_id=pnid, access_token_enc=token_enc, at=self._clock.now()
        )
        return await self.get_line(principal)

    async def _check_line_free(self, org_id: str, phone_number_id: str) -> None:
        """Refuse the platform's own line, and lines the line map gives another organization."""
        if phone_number_id == self._platform_pnid:
            raise WhatsAppLineInUseError(
                "This phone number id is the platform default line; leave it unset to use it",
                details={"whatsappPhoneNumberId": phone_number_id},
            )
        if phone_number_id in self._line_map:
            owner = await self._org_for_line(phone_number_id)
            if owner != org_id:
                raise WhatsAppLineInUseError(
                    "Another organization already uses this WhatsApp phone number id",
                    details={"whatsappPhoneNumberId": phone_number_id},
                )

    # ------------------------------------------------------------------ sending

    async def send(self, principal: Principal, req: WhatsAppSendRequest) -> WhatsAppSendResult:
        """Hand a text or template message to Graph now.

        Returns:
            The SENT message with its ``provider_message_id`` (``wamid.…``), or
            with ``duplicate=True`` the message an earlier request with the
            same idempotency key created (whatever its status now).

        Raises:
            InsufficientScopeError: the key lacks ``send:whatsapp``.
            ValidationError: bad ``to``, ``body`` (over 4096 characters) or
                template (:func:`~commtunnel.domain.whatsapp.message_content`).
            WhatsAppDisabledError / WhatsAppLineNotConfiguredError: nothing to send with.
            WhatsAppProviderError: a transient Graph failure; the message is
                RETRYING and the worker retries it (``details.messageId``).
            WhatsAppSendRejectedError: Graph refused it; the message is FAILED.
            IdempotencyKeyReusedError / IdempotencyKeyInUseError: see DESIGN.md.
        """
        require(principal, Scope.SEND_WHATSAPP)
        key = idempotency.validate_key(req.idempotency_key)
        content = rules.message_content(to=req.to, body=req.body, template=req.template)
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
                return WhatsAppSendResult(message=original, duplicate=True)
            line = await self.resolve_line(principal.org_id)
            content = attrs.evolve(content, phone_number_id=line.phone_number_id)
            now = self._clock.now()
            message = Message(
                id=new_id(),
                org_id=principal.org_id,
                channel=Channel.WHATSAPP,
                status=Status.QUEUED,
                sandbox=principal.sandbox,
                api_key_id=principal.api_key_id,
                email=None,
                whatsapp=content,
                created_at=now,
                updated_at=now,
            )
            event = status_event(
                message,
                Status.QUEUED,
                at=now,
                details={"kind": content.kind, "phoneNumberId": line.phone_number_id},
            )
            record = channel.idempotency_record(
                org_id=principal.org_id,
                key=key,
                endpoint=ENDPOINT_SEND,
                payload=req.wire_payload(),
                message_id=message.id,
                now=now,
                retention=self._retention,
            )
            # The job comes due one lease from now: if this process dies during the
            # hand-off below, a worker takes it then; until then no worker does.
            result = await self._storage.accept(
                message,
                event,
                run_at=now + timedelta(seconds=self._lease_seconds),
                idempotency=record,
            )
            accepted = channel.accepted_message(result, key=key, endpoint=ENDPOINT_SEND)
            if result.duplicate:
                return WhatsAppSendResult(message=accepted, duplicate=True)
            return await self._hand_off(message)

    async def _hand_off(self, message: Message) -> WhatsAppSendResult:
        if self._dispatcher is None:
            raise InternalError("no dispatcher is wired to the WhatsApp service")
        dispatcher = self._dispatcher()
        await dispatcher.deliver_now(message.id)
        stored = await self._storage.get_message(message.org_id, message.id)
        if stored is None:  # pragma: no cover - it was just written
            raise InternalError("the message vanished during the hand-off")
        if stored.status == Status.SENT:
            return WhatsAppSendResult(message=stored, duplicate=False)
        attempts = await self._storage.list_attempts(message.org_id, message.id)
        last = attempts[-1] if attempts else None
        details = {
            "messageId": message.id,
            "status": str(stored.status),
            "errorCategory": last.error_category if last else None,
            "error": last.error_message if last else None,
        }
        if stored.status in (Status.RETRYING, Status.QUEUED, Status.PROCESSING):
            raise WhatsAppProviderError(
                "WhatsApp Cloud did not take the message yet; it will be retried",
                details=details,
            )
        raise WhatsAppSendRejectedError(
            "WhatsApp Cloud refused the message; it will not be retried", details=details
        )

    # ------------------------------------------------------------------ reading, retry

    async def get(self, principal: Principal, message_id: str) -> WhatsAppStatus:
        """One message with its attempts.

        Raises:
            InsufficientScopeError: the key lacks ``read:whatsapp``.
            NotFoundError: no such message in the caller's organization.
        """
        return await self._messages.get(principal, message_id)

    async def timeline(
        self, principal: Principal, message_id: str, *, limit: int = 100
    ) -> list[TimelineEvent]:
        """The message's events, oldest first, at most ``limit`` (1..1000).

        Raises:
            InsufficientScopeError: the key lacks ``read:whatsapp``.
            ValidationError: ``limit`` out of range.
            NotFoundError: no such message in the caller's organization.
        """
        return await self._messages.timeline(principal, message_id, limit)

    async def retry(self, principal: Principal, message_id: str) -> WhatsAppSendResult:
        """Re-send a FAILED message now (a fresh retry budget), like a new send.

        Raises:
            InsufficientScopeError: the key lacks ``send:whatsapp``.
            NotFoundError: no such message in the caller's organization.
            MessageNotRetryableError: the message is not FAILED.
            WhatsAppProviderError / WhatsAppSendRejectedError: as for :meth:`send`.
        """
        now = self._clock.now()
        message = await self._messages.requeue_failed(
            self._receipts,
            principal,
            message_id,
            now=now,
            run_at=now + timedelta(seconds=self._lease_seconds),
        )
        return await self._hand_off(message)

    # ------------------------------------------------------------------ Meta webhooks

    async def _org_for_line(self, phone_number_id: str) -> str | None:
        mapped = self._line_map.get(phone_number_id)
        if mapped is not None:
            org = await self._storage.get_org(org_id=mapped) or await self._storage.get_org(
                name=mapped
            )
            return org.id if org else None
        return await self._store.org_for_phone_number_id(phone_number_id)

    def handshake(self, params: Mapping[str, str], verify_token: str | None) -> str:
        """Answer Meta's subscription check: ``hub.challenge`` when the token matches.

        Raises:
            WebhookVerificationError: wrong mode, wrong or unset token (403).
        """
        return rules.verify_handshake(params, verify_token)

    async def receive_webhook(
        self, body: bytes, signature: str | None, app_secret: str | None
    ) -> WebhookResult:
        """Check ``X-Hub-Signature-256``, parse Meta's payload and apply it.

        Raises:
            WebhookSignatureError: the signature is missing, wrong, or no app secret is set.
            ValidationError: the body is not a WhatsApp Business webhook.
        """
        if not app_secret:
            raise WebhookSignatureError("WHATSAPP_APP_SECRET is not set; webhooks are refused")
        rules.verify_signature(body, signature, app_secret)
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError):
            raise ValidationError.from_fields({"body": "is not JSON"}) from None
        return await self.apply_webhook(rules.parse_webhook(payload))

    async def apply_webhook(self, batch: WebhookBatch) -> WebhookResult:
        """Apply a parsed, signature-checked Meta webhook.

        Status updates move the matching message forward with a
        ``whatsapp_<status>`` event, once, never backwards
        (:func:`~commtunnel.services.timeline.apply_receipt`); a ``failed``
        status carrying error 131050 also records an opt-out. Inbound messages
        are stored for the organization owning the receiving line (the line
        map, then tenant lines); messages for a line no organization owns are
        dropped, and a redelivered one is stored once.

        Returns:
            Counts of status updates applied and ignored (unknown message,
            duplicate, out of order) and of inbound messages newly stored.
        """
        applied = ignored = stored = 0
        for update in batch.statuses:
            message = await self._receipts.find_by_provider_message_id(
                Channel.WHATSAPP, update.provider_message_id
            )
            if message is None:
                ignored += 1
                continue
            details: dict[str, Any] = {
                "source": "meta",
                "providerStatus": update.provider_status,
                "at": format_timestamp(update.timestamp),
            }
            if update.errors:
                details["errors"] = update.errors
                details["error"] = "; ".join(
                    str(e.get("title") or e.get("message") or e.get("code")) for e in update.errors
                )
            outcome = await apply_receipt(
                self._receipts, message, update.status, at=self._clock.now(), details=details
            )
            if outcome.applied:
                applied += 1
            else:
                ignored += 1
            if update.recipient_opted_out and message.whatsapp:
                await self._opt_out(message.org_id, message.whatsapp.to, source="meta_webhook")
        for item in batch.inbound:
            org_id = await self._org_for_line(item.phone_number_id)
            if org_id is None:
                continue
            # Meta redelivers webhooks until answered 200: the id derived from
            # the wamid makes a redelivery store nothing new.
            inserted = await self._receipts.add_inbound(
                InboundMessage(
                    id=str(uuid.uuid5(_INBOUND_NAMESPACE, f"{org_id}:{item.message_id}")),
                    org_id=org_id,
                    channel=Channel.WHATSAPP,
                    sender=item.sender,
                    recipient=item.display_phone_number or item.phone_number_id,
                    body=item.text or f"[{item.type}]",
                    keyword=None,
                    created_at=self._clock.now(),
                )
            )
            stored += int(inserted)
        return WebhookResult(
            statuses_applied=applied, statuses_ignored=ignored, inbound_stored=stored
        )
