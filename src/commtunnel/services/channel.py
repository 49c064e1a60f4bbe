"""What the email, SMS and WhatsApp services do alike.

Each channel's service keeps its own public methods, errors and docstrings
(and names its scopes to :class:`ChannelMessages`); the steps whose logic is
the same for every channel live here:

* reading a send request's JSON body (:func:`values_from_wire`) and spelling
  it back for a fingerprint (:func:`wire_payload`), and checking its fields
  (:func:`check_fields`, :func:`check_bool`, :func:`is_int_in`);
* the idempotency record handed to ``Storage.accept``
  (:func:`idempotency_record`) and reading its answer (:func:`accepted_message`,
  :func:`key_reused`);
* what a send answers (:class:`SendResult`);
* reading and re-queuing one message of one channel (:class:`ChannelMessages`,
  answering :class:`MessageStatus`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

import attrs

from commtunnel.domain.errors import (
    IdempotencyKeyReusedError,
    InternalError,
    MessageNotCancelableError,
    MessageNotRetryableError,
    NotFoundError,
    ValidationError,
)
from commtunnel.domain.events import TimelineEvent
from commtunnel.domain.keys import Principal
from commtunnel.domain.messages import Attempt, Channel, Message, Status
from commtunnel.ports import (
    AcceptResult,
    IdempotencyRecord,
    SchedulingStorage,
    SmsStorage,
    Storage,
)
from commtunnel.services import idempotency
from commtunnel.services.auth import require
from commtunnel.services.scheduling import CANCELABLE
from commtunnel.services.timeline import status_event

#: the most events one timeline call returns.
MAX_TIMELINE_LIMIT = 1000
#: the request attribute that holds the idempotency key.
KEY_ATTRIBUTE = "idempotency_key"


@attrs.frozen(kw_only=True)
class SendResult:
    """What a send answers: the message, and whether it replays an earlier request.

    Attributes:
        message: the accepted message, or with ``duplicate`` the one an earlier
            request with the same idempotency key created (whatever its status now).
        duplicate: True for a replay (nothing new was stored or sent).
    """

    message: Message
    duplicate: bool


@attrs.frozen(kw_only=True)
class MessageStatus:
    """A message with its provider attempts, in order (``GET /v1/public/<channel>/{id}``)."""

    message: Message
    attempts: list[Attempt]


# --------------------------------------------------------------------------- wire requests


def values_from_wire(
    payload: Mapping[str, Any], fields: Mapping[str, str], *, header_key: str | None
) -> dict[str, Any]:
    """A send request's attributes from its JSON body, refusing unknown fields.

    Args:
        payload: the decoded JSON body.
        fields: wire field name -> request attribute, ``idempotencyKey`` ->
            ``idempotency_key`` among them.
        header_key: the ``x-idempotency-key`` header, if sent.

    Returns:
        Request attribute -> value, for the request class's constructor; a
        header key, when sent, is the ``idempotency_key``.

    Raises:
        ValidationError: unknown fields (each ``"unknown field"``), or a header
            key that differs from the body's ``idempotencyKey``.
    """
    unknown = sorted(set(payload) - set(fields))
    if unknown:
        raise ValidationError.from_fields(dict.fromkeys(unknown, "unknown field"))
    values = {fields[name]: value for name, value in payload.items()}
    if header_key is not None:
        body_key = values.get(KEY_ATTRIBUTE)
        if body_key is not None and body_key != header_key:
            raise ValidationError.from_fields(
                {"idempotencyKey": "differs from the x-idempotency-key header"}
            )
        values[KEY_ATTRIBUTE] = header_key
    return values


def wire_payload(request: object, fields: Mapping[str, str]) -> dict[str, Any]:
    """A request in wire spelling without its idempotency key (what a fingerprint covers).

    Args:
        request: a send request (attributes named by ``fields``' values).
        fields: wire field name -> request attribute, as for :func:`values_from_wire`.

    Returns:
        Wire field name -> the request's value, for every field but ``idempotencyKey``.
    """
    return {wire: getattr(request, attr) for wire, attr in fields.items() if attr != KEY_ATTRIBUTE}


# --------------------------------------------------------------------------- field checks


def check_fields(*checks: Callable[[], Any]) -> tuple[Any, ...]:
    """Run every field's check and report every problem at once.

    Args:
        checks: functions returning a checked value or raising
            :class:`ValidationError` naming its field in ``details``.

    Returns:
        The checked values, in the order of ``checks``.

    Raises:
        ValidationError: the union of every check's ``details``.
    """
    values: list[Any] = []
    problems: dict[str, str] = {}
    for check in checks:
        try:
            values.append(check())
        except ValidationError as exc:
            problems.update({str(k): str(v) for k, v in exc.details.items()})
    if problems:
        raise ValidationError.from_fields(problems)
    return tuple(values)


def check_bool(value: Any, field: str) -> bool:
    """``value`` when it is a JSON boolean (``1`` and ``"true"`` are not).

    Raises:
        ValidationError: on ``field``, "must be a boolean".
    """
    if not isinstance(value, bool):
        raise ValidationError.from_fields({field: "must be a boolean"})
    return value


def is_int_in(value: Any, low: int, high: int | None = None) -> bool:
    """Whether ``value`` is an integer (not a boolean) from ``low`` to ``high`` (no bound: None)."""
    if isinstance(value, bool) or not isinstance(value, int):
        return False
    return low <= value and (high is None or value <= high)


# --------------------------------------------------------------------------- idempotency


def idempotency_record(
    *,
    org_id: str,
    key: str | None,
    endpoint: str,
    payload: dict[str, Any],
    message_id: str,
    now: datetime,
    retention: float,
) -> IdempotencyRecord | None:
    """The claim a keyed send hands to ``Storage.accept``.

    Args:
        org_id: the sending organization.
        key: the validated idempotency key, or None (no claim).
        endpoint: the operation, e.g. ``sms.send``.
        payload: the request in wire spelling without the key (:func:`wire_payload`).
        message_id: the message the key produces.
        now: the time of the send (UTC).
        retention: seconds the key is remembered.

    Returns:
        The record, or None without a key.
    """
    if key is None:
        return None
    return IdempotencyRecord(
        org_id=org_id,
        key=key,
        endpoint=endpoint,
        fingerprint=idempotency.fingerprint(endpoint, payload),
        message_id=message_id,
        created_at=now,
        expires_at=now + timedelta(seconds=retention),
    )


async def replay(
    storage: Storage,
    *,
    org_id: str,
    key: str | None,
    endpoint: str,
    payload: dict[str, Any],
    now: datetime,
) -> Message | None:
    """The message an earlier request with this key created, checked before anything else.

    DESIGN.md: the same key and payload within the retention window answer the
    original message, ``duplicate: true``, whatever has changed since (an
    opt-out, a revoked sender, a disabled channel).

    Returns:
        The original message, or None when the key is new (or None).

    Raises:
        IdempotencyKeyReusedError: the key was used with another payload or endpoint.
    """
    if key is None:
        return None
    found = await storage.find_replay(
        org_id,
        key,
        endpoint=endpoint,
        fingerprint=idempotency.fingerprint(endpoint, payload),
        now=now,
    )
    if found is None:
        return None
    return accepted_message(found, key=key, endpoint=endpoint)


def key_reused(
    conflict: IdempotencyRecord, *, key: str | None, endpoint: str
) -> IdempotencyKeyReusedError:
    """The error for a key stored with another payload, or by another endpoint.

    Args:
        conflict: the stored key's record.
        key: the request's idempotency key (``details.idempotencyKey``).
        endpoint: the operation of this request; the record's is
            ``details.originalEndpoint``.
    """
    same_endpoint = conflict.endpoint == endpoint
    return IdempotencyKeyReusedError(
        "This idempotency key was already used with a different "
        + ("payload" if same_endpoint else "endpoint"),
        details={"idempotencyKey": key, "originalEndpoint": conflict.endpoint},
    )


def accepted_message(result: AcceptResult, *, key: str | None, endpoint: str) -> Message:
    """The message ``Storage.accept`` stored or found, or the error its answer means.

    Args:
        result: what ``accept`` answered (a cooldown refusal already handled).
        key: the request's idempotency key, for the error's details.
        endpoint: the operation of this request.

    Returns:
        The new message, or the one an earlier request with the same key created.

    Raises:
        IdempotencyKeyReusedError: the key was used with another payload or
            endpoint (``details.idempotencyKey``, ``details.originalEndpoint``).
        InternalError: the storage answered nothing (a contract violation).
    """
    if result.conflict is not None:
        raise key_reused(result.conflict, key=key, endpoint=endpoint)
    if result.message is None:  # pragma: no cover - storage contract violation
        raise InternalError("storage accepted nothing")
    return result.message


# --------------------------------------------------------------------------- reading


class ChannelMessages:
    """One channel's messages of the caller's organization, as the read and retry routes see them.

    Args:
        storage: messages, events and attempts.
        channel: the channel; a message of another channel is "not found".
        noun: how errors name a message, e.g. ``"SMS"`` for "No SMS with this id".
        read_scope: what :meth:`get` and :meth:`timeline` need (``read:sms`` ...).
        send_scope: what :meth:`requeue_failed` needs (``send:sms`` ...).
    """

    def __init__(
        self, storage: Storage, channel: Channel, noun: str, *, read_scope: str, send_scope: str
    ) -> None:
        self._storage = storage
        self._channel = channel
        self._noun = noun
        self._read_scope = read_scope
        self._send_scope = send_scope

    def not_found(self, message_id: str) -> NotFoundError:
        """The error for an id that names no message of this channel (``details.id``)."""
        return NotFoundError(f"No {self._noun} with this id", details={"id": message_id})

    async def own(self, principal: Principal, message_id: str) -> Message:
        """The caller's organization's message of this channel (no scope check).

        Raises:
            NotFoundError: no such message, another organization's, or another channel's.
        """
        message = await self._storage.get_message(principal.org_id, message_id)
        if message is None or message.channel != self._channel:
            raise self.not_found(message_id)
        return message

    async def get(self, principal: Principal, message_id: str) -> MessageStatus:
        """The message and its provider attempts, in order.

        Raises:
            InsufficientScopeError: the caller lacks the read scope.
            NotFoundError: as for :meth:`own`.
        """
        require(principal, self._read_scope)
        message = await self.own(principal, message_id)
        attempts = await self._storage.list_attempts(principal.org_id, message_id)
        return MessageStatus(message=message, attempts=attempts)

    async def timeline(
        self, principal: Principal, message_id: str, limit: int
    ) -> list[TimelineEvent]:
        """The message's events, oldest first, at most ``limit`` (1..1000).

        Raises:
            InsufficientScopeError: the caller lacks the read scope.
            ValidationError: ``limit`` is not an integer from 1 to 1000 (checked
                before the message is looked up).
            NotFoundError: as for :meth:`own`.
        """
        require(principal, self._read_scope)
        if not is_int_in(limit, 1, MAX_TIMELINE_LIMIT):
            raise ValidationError.from_fields(
                {"limit": f"must be an integer from 1 to {MAX_TIMELINE_LIMIT}"}
            )
        await self.own(principal, message_id)
        return await self._storage.list_events(principal.org_id, message_id, limit)

    async def requeue_failed(
        self,
        store: SmsStorage,
        principal: Principal,
        message_id: str,
        *,
        now: datetime,
        run_at: datetime,
    ) -> Message:
        """Move a FAILED message back to QUEUED, with a ``<channel>_queued`` event marked ``retry``.

        Args:
            store: where re-queues happen (``SmsStorage.requeue``).
            principal: the caller.
            message_id: the message to retry.
            now: the event's time (UTC).
            run_at: when its new job comes due (UTC).

        Returns:
            The re-queued message.

        Raises:
            InsufficientScopeError: the caller lacks the send scope.
            NotFoundError: as for :meth:`own`.
            MessageNotRetryableError: the message is not FAILED (``details.status``).
        """
        require(principal, self._send_scope)
        message = await self.own(principal, message_id)
        event = status_event(message, Status.QUEUED, at=now, details={"retry": True})
        outcome = await store.requeue(principal.org_id, message_id, event=event, run_at=run_at)
        if outcome is None:
            raise self.not_found(message_id)
        message, requeued = outcome
        if not requeued:
            raise MessageNotRetryableError(
                f"Only FAILED messages can be retried; this one is {message.status}",
                details={"id": message_id, "status": str(message.status)},
            )
        return message

    async def cancel(
        self,
        store: SchedulingStorage,
        principal: Principal,
        message_id: str,
        *,
        now: datetime,
    ) -> MessageStatus:
        """Move a SCHEDULED or QUEUED message to CANCELED, with a ``<channel>_canceled`` event.

        Its job is deleted in the same transaction, so it is never sent. A
        message a worker has claimed is PROCESSING and is refused: a send in
        progress is not cut off.

        Args:
            store: where cancels happen (``SchedulingStorage.cancel``).
            principal: the caller.
            message_id: the message to cancel.
            now: the event's time (UTC).

        Returns:
            The cancelled message with its attempts (as :meth:`get` answers).

        Raises:
            InsufficientScopeError: the caller lacks the send scope.
            NotFoundError: as for :meth:`own`.
            MessageNotCancelableError: the message is neither SCHEDULED nor
                QUEUED (``details.status``).
        """
        require(principal, self._send_scope)
        message = await self.own(principal, message_id)
        event = status_event(message, Status.CANCELED, at=now)
        org_id = principal.org_id
        outcome = await store.cancel(org_id, message_id, event=event, cancelable=CANCELABLE)
        if outcome is None:
            raise self.not_found(message_id)
        message, canceled = outcome
        if not canceled:
            raise MessageNotCancelableError(
                f"Only SCHEDULED or QUEUED messages can be canceled; this one is {message.status}",
                details={"id": message_id, "status": str(message.status)},
            )
        attempts = await self._storage.list_attempts(principal.org_id, message_id)
        return MessageStatus(message=message, attempts=attempts)
