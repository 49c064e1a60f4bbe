"""The email channel's use cases: send, preview, status, timeline, stats.

Contract: ``../shared/seeds/000_427ee8481191f61a.txt``, "Email (public API)".
A send is accepted only after the message, its first timeline event and its
dispatch job are committed together (``Storage.accept``); everything that
can refuse a request (scope, fields, template, sender, idempotency key)
runs before that, so a refused request stores nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from datetime import datetime
from typing import Any

import attrs

from commtunnel.domain import email as rules
from commtunnel.domain.errors import SenderNotVerifiedError, ValidationError
from commtunnel.domain.events import TimelineEvent
from commtunnel.domain.keys import Principal, Scope
from commtunnel.domain.messages import Channel, EmailContent, Message
from commtunnel.ids import new_id
from commtunnel.ports import Clock, NewMessage, SchedulingStorage, Storage
from commtunnel.services import channel, email_batch, idempotency, scheduling
from commtunnel.services.auth import require
from commtunnel.services.channel import MAX_TIMELINE_LIMIT as MAX_TIMELINE_LIMIT  # re-exported
from commtunnel.services.templates import TemplateError, TemplateRenderer

ENDPOINT_SEND = "emails.send"
MAX_BODY_CHARS = 5_000_000  # per part; the HTTP body limit is usually lower
MAX_STATS_WINDOW_DAYS = 366


@attrs.frozen(kw_only=True)
class EmailSendRequest:
    """A send request as the caller gave it (wire names in ``details``).

    Values are typed ``Any`` on purpose: this is untrusted input, checked by
    :meth:`EmailService.send`, which reports every bad field at once.
    """

    from_addr: Any = None
    to: Any = None
    subject: Any = None
    html: Any = None
    text: Any = None
    template_id: Any = None
    variables: Any = None
    tracking: Any = False
    unsubscribe: Any = False
    sandbox_mode: Any = False
    scheduled_at: Any = None
    idempotency_key: Any = None

    def wire_payload(self) -> dict[str, Any]:
        """The request in wire spelling, without the idempotency key (for fingerprints)."""
        payload = scheduling.fingerprint_payload(channel.wire_payload(self, WIRE_FIELDS))
        if payload.get("unsubscribe") is False:
            # As for scheduledAt: a key stored before the field existed still replays.
            del payload["unsubscribe"]
        return payload


#: wire field name -> EmailSendRequest attribute
WIRE_FIELDS: dict[str, str] = {
    "from": "from_addr",
    "to": "to",
    "subject": "subject",
    "html": "html",
    "text": "text",
    "templateId": "template_id",
    "variables": "variables",
    "tracking": "tracking",
    "unsubscribe": "unsubscribe",
    "sandboxMode": "sandbox_mode",
    "scheduledAt": "scheduled_at",
    "idempotencyKey": "idempotency_key",
}


def request_from_wire(payload: dict[str, Any], *, header_key: str | None) -> EmailSendRequest:
    """Build a request from a JSON object, refusing unknown fields.

    Args:
        payload: the decoded JSON body.
        header_key: the ``x-idempotency-key`` header, if sent.

    Raises:
        ValidationError: unknown fields, or a header key that differs from the body's.
    """
    return EmailSendRequest(**channel.values_from_wire(payload, WIRE_FIELDS, header_key=header_key))


#: What a send answers: the message and whether it was a replay of an earlier send.
SendResult = channel.SendResult
#: A message with its attempts, as ``GET /v1/public/emails/{id}`` shows it.
EmailStatus = channel.MessageStatus


@attrs.frozen(kw_only=True)
class Rendered:
    """Subject and bodies after template rendering.

    Attributes:
        tracking: a preview's answer to "will opens and clicks be tracked":
            asked for, and there is an HTML part to carry the pixel and links
            (they are rewritten at delivery, not in the preview).
    """

    subject: str
    html: str | None
    text: str | None
    template_id: str | None
    tracking: bool = False


@attrs.frozen(kw_only=True)
class EmailStats:
    """Counts for a window: messages created in it by status, events in it by type.

    Attributes:
        opens / clicks: ``email_opened`` / ``email_clicked`` events in the window.
        unique_opens / unique_clicks: distinct emails opened / clicked in it.
        include_bots: whether hits marked ``isBot`` (scanners, Apple Mail
            Privacy Protection prefetches) are in the four counts above;
            ``events`` always counts every event.
    """

    start: datetime
    end: datetime
    total: int
    by_status: dict[str, int]
    events: dict[str, int]
    opens: int = 0
    unique_opens: int = 0
    clicks: int = 0
    unique_clicks: int = 0
    include_bots: bool = False


@attrs.frozen(kw_only=True)
class _Checked:
    """A send request's fields once checked: (name, addr-spec) mailboxes, the time it is due."""

    sender: tuple[str, str]
    to: tuple[str, str]
    scheduled_at: datetime | None


class EmailService:
    """Send, preview and read transactional email.

    Args:
        storage: the durable records.
        clock: every "now".
        renderer: liquid templates.
        idempotency_retention: seconds an idempotency key is remembered.
        recipient_check: awaited with (organization id, recipient addr-spec)
            before a send is accepted; raises to refuse it (the suppression
            list's check). None checks nothing.
        scheduling_store: cancels and batches (None: :meth:`cancel` and
            :meth:`send_batch` raise ``RuntimeError``).
        schedule_horizon: seconds ahead a ``scheduledAt`` may be at most.
        batch_max_messages: the most emails in one batch.
    """

    def __init__(
        self,
        storage: Storage,
        clock: Clock,
        renderer: TemplateRenderer,
        *,
        idempotency_retention: float = 86_400.0,
        recipient_check: Callable[[str, str], Awaitable[None]] | None = None,
        scheduling_store: SchedulingStorage | None = None,
        schedule_horizon: float = scheduling.DEFAULT_HORIZON,
        batch_max_messages: int = email_batch.DEFAULT_MAX_MESSAGES,
    ) -> None:
        self._storage = storage
        self._scheduling = scheduling_store
        self._horizon = schedule_horizon
        self._batch_max = batch_max_messages
        self._recipient_check = recipient_check
        self._clock = clock
        self._renderer = renderer
        self._retention = idempotency_retention
        self._in_flight = idempotency.InFlight()
        self._messages = channel.ChannelMessages(
            storage,
            Channel.EMAIL,
            "email",
            read_scope=Scope.READ_EMAIL,
            send_scope=Scope.SEND_EMAIL,
        )

    # ------------------------------------------------------------------ validation

    @staticmethod
    def _check_fields(
        req: EmailSendRequest,
    ) -> tuple[dict[str, str], dict[str, tuple[str, str]]]:
        """Per-field problems, and the parsed ``from`` / ``to`` mailboxes that are valid."""
        problems: dict[str, str] = {}
        mailboxes: dict[str, tuple[str, str]] = {}
        for wire, value in (("from", req.from_addr), ("to", req.to)):
            if value is None or value == "":
                problems[wire] = "is required"
            elif not isinstance(value, str):
                problems[wire] = "must be a string"
            else:
                try:
                    mailboxes[wire] = rules.parse_mailbox(value)
                except ValueError as exc:
                    problems[wire] = str(exc)
        for wire, value in (("html", req.html), ("text", req.text)):
            if value is not None and not isinstance(value, str):
                problems[wire] = "must be a string"
            elif value is not None and len(value) > MAX_BODY_CHARS:
                problems[wire] = f"must be at most {MAX_BODY_CHARS} characters"
        if req.template_id is not None and not isinstance(req.template_id, str):
            problems["templateId"] = "must be a string"
        if req.variables is not None and not isinstance(req.variables, dict):
            problems["variables"] = "must be an object"
        for wire, value in (
            ("tracking", req.tracking),
            ("unsubscribe", req.unsubscribe),
            ("sandboxMode", req.sandbox_mode),
        ):
            if not isinstance(value, bool):
                problems[wire] = "must be a boolean"
        if req.template_id is None:
            if req.subject is None or req.subject == "":
                problems["subject"] = "is required"
            if req.html in (None, "") and req.text in (None, ""):
                problems.setdefault("html", "provide html and/or text, or a templateId")
        if req.subject is not None:
            if not isinstance(req.subject, str):
                problems["subject"] = "must be a string"
            else:
                reason = rules.validate_subject(req.subject)
                if reason:
                    problems["subject"] = reason
        return problems, mailboxes

    async def _render(
        self,
        org_id: str,
        *,
        subject: str | None,
        html: str | None,
        text: str | None,
        template_id: str | None,
        variables: dict[str, Any] | None,
    ) -> Rendered:
        """Render a template (or the inline sources) with ``variables``.

        Inline sources are not liquid-rendered: only templates are, so inline
        bodies that contain ``{{`` are sent as written.

        Raises:
            ValidationError: an unknown template (``templateId``), a part that
                fails to render (``subject``, or ``variables`` for a body), or a
                rendered subject with a line break or over 998 characters.
        """
        if template_id is None:
            return Rendered(subject=subject or "", html=html, text=text, template_id=None)
        template = await self._storage.get_template(org_id, template_id)
        if template is None:
            raise ValidationError.from_fields({"templateId": "unknown template"})
        parts = self._render_parts(
            subject=subject if subject is not None else template.subject,
            html=template.html,
            text=template.text,
            variables=variables,
            problem=lambda part, exc: (
                "subject" if part == "subject" else "variables",
                f"{part} failed to render: {exc}",
            ),
        )
        rendered_subject = parts["subject"] or ""
        reason = rules.validate_subject(rendered_subject)
        if reason:
            raise ValidationError.from_fields({"subject": f"rendered subject {reason}"})
        return Rendered(
            subject=rendered_subject,
            html=parts["html"],
            text=parts["text"],
            template_id=template.id,
        )

    def _render_parts(
        self,
        *,
        subject: str | None,
        html: str | None,
        text: str | None,
        variables: dict[str, Any] | None,
        problem: Callable[[str, TemplateError], tuple[str, str]],
    ) -> dict[str, str | None]:
        """Render each liquid source that is set with ``variables``.

        Args:
            subject / html / text: the sources; None stays None.
            variables: the template variables (None: none).
            problem: (part, its error) -> (wire field, reason) for the refusal.

        Returns:
            ``{"subject": ..., "html": ..., "text": ...}``, rendered.

        Raises:
            ValidationError: every part that failed to render, as ``problem`` names it.
        """
        parts: dict[str, str | None] = {}
        problems: dict[str, str] = {}
        for part, source in (("subject", subject), ("html", html), ("text", text)):
            try:
                parts[part] = (
                    None if source is None else self._renderer.render(source, variables or {})
                )
            except TemplateError as exc:
                field, reason = problem(part, exc)
                problems[field] = reason
        if problems:
            raise ValidationError.from_fields(problems)
        return parts

    async def _check_sender(self, org_id: str, address: str) -> None:
        """Refuse a ``from`` address the organization has not verified (nor its domain).

        Raises:
            SenderNotVerifiedError: with ``details.from``.
        """
        if not await self._storage.is_sender_verified(org_id, address, rules.domain_of(address)):
            raise SenderNotVerifiedError(
                f"'{address}' is not a verified sender of this organization",
                details={"from": address},
            )

    # ------------------------------------------------------------------ use cases

    async def send(self, principal: Principal, req: EmailSendRequest) -> SendResult:
        """Accept an email for delivery, now or at ``scheduled_at``.

        Returns:
            The queued message (status QUEUED, or SCHEDULED with a
            ``scheduledAt``), or with ``duplicate=True`` the message an earlier
            request with the same idempotency key created.

        Raises:
            InsufficientScopeError: the key lacks ``send:email``.
            ValidationError: bad fields (``details`` per field), a malformed
                idempotency key, an unknown template, or a ``scheduledAt`` that
                is not an ISO 8601 time with a timezone, not in the future or
                beyond the horizon (:mod:`commtunnel.services.scheduling`).
            SenderNotVerifiedError: ``from`` is not a verified address or domain.
            EmailRecipientSuppressedError: what ``recipient_check`` raises: ``to``
                is on the organization's suppression list.
            IdempotencyKeyReusedError: the key was used with another payload or endpoint.
            IdempotencyKeyInUseError: the key's first request is still in flight.
        """
        require(principal, Scope.SEND_EMAIL)
        key = idempotency.validate_key(req.idempotency_key)
        checked = self._checked(req)
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
                return SendResult(message=original, duplicate=True)
            new = await self._prepare(principal, req, checked, details={})
            record = channel.idempotency_record(
                org_id=principal.org_id,
                key=key,
                endpoint=ENDPOINT_SEND,
                payload=req.wire_payload(),
                message_id=new.message.id,
                now=new.message.created_at,
                retention=self._retention,
            )
            result = await self._storage.accept(
                new.message, new.event, run_at=new.run_at, idempotency=record
            )
        accepted = channel.accepted_message(result, key=key, endpoint=ENDPOINT_SEND)
        return SendResult(message=accepted, duplicate=result.duplicate)

    def _checked(self, req: EmailSendRequest) -> _Checked:
        """Every field's problems at once, ``scheduledAt``'s format among them.

        Raises:
            ValidationError: per field.
        """
        problems, mailboxes = self._check_fields(req)
        scheduled_at = None
        try:
            scheduled_at = scheduling.read_scheduled_at(req.scheduled_at)
        except ValidationError as exc:
            problems.update(exc.details)
        if problems:
            raise ValidationError.from_fields(problems)
        return _Checked(sender=mailboxes["from"], to=mailboxes["to"], scheduled_at=scheduled_at)

    async def _prepare(
        self,
        principal: Principal,
        req: EmailSendRequest,
        checked: _Checked,
        *,
        details: dict[str, Any],
    ) -> NewMessage:
        """What runs after the replay lookup: the schedule's window, template, sender and
        recipient checks, then the message, its first event and its job's time.

        Args:
            details: extra details of the first event (a batch's ``batchId``).

        Raises:
            ValidationError: ``scheduledAt`` not in the future or beyond the
                horizon, an unknown template, a render error.
            SenderNotVerifiedError: ``from`` is not verified.
            CommtunnelError: whatever the recipient check raises (a suppressed address).
        """
        scheduling.check_scheduled_at(
            checked.scheduled_at, now=self._clock.now(), horizon=self._horizon
        )
        rendered = await self._render(
            principal.org_id,
            subject=req.subject,
            html=req.html,
            text=req.text,
            template_id=req.template_id,
            variables=req.variables,
        )
        await self._check_sender(principal.org_id, checked.sender[1])
        if self._recipient_check is not None:
            await self._recipient_check(principal.org_id, checked.to[1])
        now = self._clock.now()
        message_id = new_id()
        content = EmailContent(
            from_addr=rules.format_mailbox(*checked.sender),
            to=rules.format_mailbox(*checked.to),
            subject=rendered.subject,
            html=rendered.html,
            text=rendered.text,
            message_id_header=f"<{message_id}@{rules.domain_of(checked.sender[1])}>",
            template_id=rendered.template_id,
            tracking=bool(req.tracking),
            unsubscribe=bool(req.unsubscribe),
        )
        message = Message(
            id=message_id,
            org_id=principal.org_id,
            channel=Channel.EMAIL,
            status=scheduling.first_status(checked.scheduled_at),
            sandbox=principal.sandbox or bool(req.sandbox_mode),
            api_key_id=principal.api_key_id,
            email=content,
            created_at=now,
            updated_at=now,
            scheduled_at=checked.scheduled_at,
        )
        if message.sandbox:
            details = {**details, "sandbox": True}
        event = scheduling.first_event(message, at=now, details=details)
        return NewMessage(message=message, event=event, run_at=scheduling.run_at(message))

    async def preview(
        self,
        principal: Principal,
        *,
        subject: Any = None,
        html: Any = None,
        text: Any = None,
        template_id: Any = None,
        variables: Any = None,
        tracking: Any = False,
        unknown_fields: Collection[str] = (),
    ) -> Rendered:
        """Render subject and bodies without queuing anything.

        Args:
            tracking: whether the email would be sent with ``tracking``; the
                preview says whether it applies (:attr:`Rendered.tracking`)
                and shows the HTML as stored: links and pixel are rewritten
                at delivery, with tokens for the real message.
            unknown_fields: wire fields the caller sent that preview does not
                take, refused together with every other bad field.

        Raises:
            InsufficientScopeError: the key lacks ``send:email``.
            ValidationError: unknown fields, bad types, nothing to render,
                unknown template, render errors.
        """
        require(principal, Scope.SEND_EMAIL)
        problems = dict.fromkeys(sorted(unknown_fields), "unknown field")
        if not isinstance(tracking, bool):
            problems["tracking"] = "must be a boolean"
        for wire, value in (("subject", subject), ("html", html), ("text", text)):
            if value is not None and not isinstance(value, str):
                problems[wire] = "must be a string"
        if template_id is not None and not isinstance(template_id, str):
            problems["templateId"] = "must be a string"
        if variables is not None and not isinstance(variables, dict):
            problems["variables"] = "must be an object"
        if template_id is None and subject is None and html is None and text is None:
            problems["html"] = "provide subject, html, text or a templateId"
        if problems:
            raise ValidationError.from_fields(problems)
        if template_id is None:
            # Inline sources are previewed through liquid too, for template QA.
            rendered = self._render_parts(
                subject=subject,
                html=html,
                text=text,
                variables=variables,
                problem=lambda part, exc: (part, f"failed to render: {exc}"),
            )
            result = Rendered(
                subject=rendered["subject"] or "",
                html=rendered["html"],
                text=rendered["text"],
                template_id=None,
            )
        else:
            result = await self._render(
                principal.org_id,
                subject=subject,
                html=html,
                text=text,
                template_id=template_id,
                variables=variables,
            )
        return attrs.evolve(result, tracking=tracking and bool(result.html))

    async def get(self, principal: Principal, message_id: str) -> EmailStatus:
        """A message of the caller's organization with its attempts.

        Raises:
            InsufficientScopeError: the key lacks ``read:email``.
            NotFoundError: no such email in the caller's organization.
        """
        return await self._messages.get(principal, message_id)

    async def timeline(
        self, principal: Principal, message_id: str, *, limit: int = 100
    ) -> list[TimelineEvent]:
        """The message's events, oldest first, at most ``limit`` (1..1000).

        Raises:
            InsufficientScopeError: the key lacks ``read:email``.
            ValidationError: ``limit`` out of range.
            NotFoundError: no such email in the caller's organization.
        """
        return await self._messages.timeline(principal, message_id, limit)

    def _scheduling_store(self) -> SchedulingStorage:
        if self._scheduling is None:
            raise RuntimeError("EmailService was built without a scheduling store")
        return self._scheduling

    async def cancel(self, principal: Principal, message_id: str) -> EmailStatus:
        """Cancel an email that is SCHEDULED, or QUEUED and not yet claimed by a worker.

        The message moves to CANCELED with an ``email_canceled`` event
        (``details.previousStatus``) and its job is deleted, atomically: it is
        never sent.

        Returns:
            The message (CANCELED) with its attempts, as :meth:`get` shows it.

        Raises:
            InsufficientScopeError: the key lacks ``send:email``.
            NotFoundError: no such email in the caller's organization.
            MessageNotCancelableError: 409, any other status (``details.status``),
                PROCESSING (a worker is sending it) among them.
        """
        store = self._scheduling_store()
        return await self._messages.cancel(store, principal, message_id, now=self._clock.now())

    async def send_batch(
        self, principal: Principal, request: email_batch.BatchRequest
    ) -> email_batch.BatchResult:
        """Accept up to ``batch_max_messages`` emails, each checked as :meth:`send` checks one.

        Refused items are answered with their error and take nothing with them;
        the accepted ones are committed together (all or none). The
        idempotency key covers the whole batch; items may not carry their own.
        See :mod:`commtunnel.services.email_batch`.

        Returns:
            Each item's outcome, in order (message or error), and the batch id
            (None when every item was refused: nothing is stored then).

        Raises:
            InsufficientScopeError: the key lacks ``send:email``.
            ValidationError: ``messages`` is not a list of 1..max items, or a
                malformed idempotency key.
            IdempotencyKeyReusedError / IdempotencyKeyInUseError: see DESIGN.md.
        """
        require(principal, Scope.SEND_EMAIL)
        sender = email_batch.BatchSender(
            self._storage,
            self._scheduling_store(),
            self._clock,
            prepare=self._prepare_item,
            in_flight=self._in_flight,
            retention=self._retention,
            max_messages=self._batch_max,
        )
        return await sender.send(principal, request)

    async def _prepare_item(
        self, principal: Principal, item: Any, details: dict[str, Any]
    ) -> NewMessage:
        """One batch item, checked as a single send is (the key is the batch's).

        Raises:
            ValidationError: the item is not an object, carries an
                ``idempotencyKey``, or has bad or unknown fields.
            CommtunnelError: any other refusal of a single send.
        """
        if not isinstance(item, dict):
            raise ValidationError.from_fields({"message": "must be a JSON object"})
        if "idempotencyKey" in item:
            raise ValidationError.from_fields(
                {"idempotencyKey": "set one key on the batch, not on its messages"}
            )
        req = request_from_wire(item, header_key=None)
        return await self._prepare(principal, req, self._checked(req), details=details)

    async def stats(
        self, principal: Principal, *, start: datetime, end: datetime, include_bots: bool = False
    ) -> EmailStats:
        """Counts for emails created in ``[start, end)`` and events in that window.

        Args:
            include_bots: count opens and clicks marked ``isBot`` too (scanners,
                privacy proxies); by default they are left out.

        Raises:
            InsufficientScopeError: the key lacks ``read:email``.
            ValidationError: naive datetimes, end not after start, or a window over 366 days.
        """
        require(principal, Scope.READ_EMAIL)
        if start.tzinfo is None or end.tzinfo is None:
            raise ValidationError.from_fields({"start": "must include a timezone (e.g. Z)"})
        if end <= start:
            raise ValidationError.from_fields({"end": "must be after start"})
        if (end - start).days > MAX_STATS_WINDOW_DAYS:
            raise ValidationError.from_fields(
                {"end": f"window must be at most {MAX_STATS_WINDOW_DAYS} days"}
            )
        by_status, events, engagement = await self._storage.stats(
            principal.org_id, Channel.EMAIL, start, end, include_bots=include_bots
        )
        return EmailStats(
            start=start,
            end=end,
            total=sum(by_status.values()),
            by_status=by_status,
            events=events,
            opens=engagement.opens,
            unique_opens=engagement.unique_opens,
            clicks=engagement.clicks,
            unique_clicks=engagement.unique_clicks,
            include_bots=include_bots,
        )
