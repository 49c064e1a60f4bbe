"""Batch email sends: up to ``batch_max_messages`` emails in one request, each judged alone.

``POST /v1/public/emails/batch`` takes ``{"messages": [send, ...], "idempotencyKey"?}``.
Every item goes through the checks of a single send (fields, ``scheduledAt``,
template, sender, the recipient check of the suppression list); a refused
item is answered with its error envelope and the others go ahead. The
accepted items, their first events and jobs, and the batch answer are
committed in one transaction (``SchedulingStorage.accept_batch``): all or none.

Shapes follow the batch APIs of ESPs: Postmark's ``/email/batch`` answers
one result per message, in order, each with its own ``ErrorCode``
(https://postmarkapp.com/developer/api/email-api#send-batch-emails); here
each result names its ``index`` and carries either the message id and
status or the error envelope. The idempotency key covers the whole batch:
a replay answers the stored answer (``duplicate: true``), with each
message's status as it is now.

A batch in which every item is refused stores nothing and leaves its key
unused (as a refused single send does); its answer has no ``id``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import attrs

from commtunnel.domain.errors import CommtunnelError, InternalError, ValidationError
from commtunnel.domain.keys import Principal
from commtunnel.domain.messages import Message
from commtunnel.ids import new_id
from commtunnel.ports import (
    BatchAcceptResult,
    Clock,
    EmailBatch,
    NewMessage,
    SchedulingStorage,
    Storage,
)
from commtunnel.services import channel, idempotency

ENDPOINT_BATCH = "emails.batch"
#: the default most messages in one batch (``Settings.batch_max_messages``).
DEFAULT_MAX_MESSAGES = 100
#: wire field name -> BatchRequest attribute.
BATCH_WIRE_FIELDS = {"messages": "messages", "idempotencyKey": "idempotency_key"}

#: (principal, one raw item, details for its first event) -> the message to accept;
#: raises a CommtunnelError to refuse the item.
PrepareItem = Callable[[Principal, Any, dict[str, Any]], Awaitable[NewMessage]]


@attrs.frozen(kw_only=True)
class BatchRequest:
    """A batch as the caller gave it (untrusted; checked by :class:`BatchSender`).

    Attributes:
        messages: a list of send requests in wire spelling (JSON objects).
        idempotency_key: one key for the whole batch (items may not carry one).
    """

    messages: Any = None
    idempotency_key: Any = None


def batch_request_from_wire(payload: dict[str, Any], *, header_key: str | None) -> BatchRequest:
    """Build a batch request from a JSON object, refusing unknown fields.

    Args:
        payload: ``{"messages": [...], "idempotencyKey"?: "..."}``.
        header_key: the ``x-idempotency-key`` header, if sent.

    Raises:
        ValidationError: unknown fields, or a header key that differs from the body's.
    """
    return BatchRequest(
        **channel.values_from_wire(payload, BATCH_WIRE_FIELDS, header_key=header_key)
    )


@attrs.frozen(kw_only=True)
class BatchItemError:
    """Why one item of a batch was refused: the error envelope without a request id."""

    code: str
    message: str
    details: dict[str, Any]

    @classmethod
    def from_error(cls, exc: CommtunnelError) -> BatchItemError:
        """The envelope of a refusal raised while checking the item."""
        return cls(code=exc.code, message=exc.message, details=dict(exc.details))

    def to_wire(self) -> dict[str, Any]:
        """``{"error": message, "code": CODE, "details": {...}}``."""
        return {"error": self.message, "code": self.code, "details": self.details}


@attrs.frozen(kw_only=True)
class BatchItem:
    """One item's outcome, at ``index`` (from 0) in the request.

    Attributes:
        message_id: the accepted message's id; None for a refused item.
        message: the accepted message (on a replay, as it is now; None if it
            is no longer stored).
        error: why the item was refused; None for an accepted one.
    """

    index: int
    message_id: str | None = None
    message: Message | None = None
    error: BatchItemError | None = None


@attrs.frozen(kw_only=True)
class BatchResult:
    """What a batch send answers.

    Attributes:
        id: the batch id; None when every item was refused (nothing stored).
        items: one outcome per item, in request order.
        duplicate: True for a replay of an earlier batch with the same key.
    """

    id: str | None
    items: list[BatchItem]
    duplicate: bool = False

    @property
    def accepted(self) -> int:
        """Items accepted."""
        return sum(1 for item in self.items if item.error is None)

    @property
    def rejected(self) -> int:
        """Items refused."""
        return len(self.items) - self.accepted


class BatchSender:
    """Validates, accepts and replays email batches.

    Args:
        storage: reads messages back for a replay.
        store: commits batches (``accept_batch``) and finds their replays.
        clock: every "now".
        prepare: checks one item like a single send and builds its message.
        in_flight: the email service's registry of keys in flight (one key
            space per organization, shared with single sends).
        retention: seconds a key is remembered.
        max_messages: the most items in one batch.
    """

    def __init__(
        self,
        storage: Storage,
        store: SchedulingStorage,
        clock: Clock,
        *,
        prepare: PrepareItem,
        in_flight: idempotency.InFlight,
        retention: float,
        max_messages: int = DEFAULT_MAX_MESSAGES,
    ) -> None:
        self._storage = storage
        self._store = store
        self._clock = clock
        self._prepare = prepare
        self._in_flight = in_flight
        self._retention = retention
        self._max = max_messages

    def _check_messages(self, messages: Any) -> list[Any]:
        """The items list, when it is a list of 1..max items.

        Raises:
            ValidationError: on ``messages``.
        """
        if not isinstance(messages, list) or not messages:
            raise ValidationError.from_fields(
                {"messages": f"must be a list of 1 to {self._max} messages"}
            )
        if len(messages) > self._max:
            raise ValidationError.from_fields(
                {"messages": f"must hold at most {self._max} messages, got {len(messages)}"}
            )
        return messages

    async def send(self, principal: Principal, request: BatchRequest) -> BatchResult:
        """Accept the batch's valid items together; answer every item's outcome.

        The caller has checked the scope.

        Returns:
            The outcome of each item; with ``duplicate=True`` the answer an
            earlier batch with the same key and payload got.

        Raises:
            ValidationError: ``messages`` is not a list of 1..max items, or a
                malformed idempotency key.
            IdempotencyKeyReusedError: the key was used with another payload
                or by another endpoint.
            IdempotencyKeyInUseError: the key's first request is in flight.
        """
        key = idempotency.validate_key(request.idempotency_key)
        items = self._check_messages(request.messages)
        fingerprint = idempotency.fingerprint(ENDPOINT_BATCH, {"messages": items})
        with self._in_flight.hold(principal.org_id, key):
            if key is not None:
                found = await self._store.find_batch_replay(
                    principal.org_id,
                    key,
                    endpoint=ENDPOINT_BATCH,
                    fingerprint=fingerprint,
                    now=self._clock.now(),
                )
                if found is not None:
                    return await self._answer(found, key)
            batch_id = new_id()
            outcomes: list[BatchItem] = []
            accepted: list[NewMessage] = []
            for index, item in enumerate(items):
                try:
                    new = await self._prepare(principal, item, {"batchId": batch_id})
                except CommtunnelError as exc:
                    if not 400 <= exc.http_status < 500:
                        raise  # not a refusal of the item: the batch fails whole
                    outcomes.append(BatchItem(index=index, error=BatchItemError.from_error(exc)))
                    continue
                accepted.append(new)
                outcomes.append(
                    BatchItem(index=index, message_id=new.message.id, message=new.message)
                )
            if not accepted:
                return BatchResult(id=None, items=outcomes)
            now = self._clock.now()
            batch = EmailBatch(
                id=batch_id,
                org_id=principal.org_id,
                items=[_stored_item(outcome) for outcome in outcomes],
                created_at=now,
            )
            record = channel.idempotency_record(
                org_id=principal.org_id,
                key=key,
                endpoint=ENDPOINT_BATCH,
                payload={"messages": items},
                message_id=batch_id,
                now=now,
                retention=self._retention,
            )
            result = await self._store.accept_batch(batch, accepted, idempotency=record)
        if result.duplicate or result.conflict is not None:  # a concurrent process won the key
            return await self._answer(result, key)
        return BatchResult(id=batch_id, items=outcomes)

    async def _answer(self, found: BatchAcceptResult, key: str | None) -> BatchResult:
        """The stored batch as a replay (each message as it is now), or the key's conflict.

        Raises:
            IdempotencyKeyReusedError: ``found`` is a conflict.
        """
        if found.conflict is not None:
            raise channel.key_reused(found.conflict, key=key, endpoint=ENDPOINT_BATCH)
        batch = found.batch
        if batch is None:  # pragma: no cover - storage contract violation
            raise InternalError("storage answered no batch")
        items = []
        for stored in batch.items:
            index = int(stored["index"])
            error = stored.get("error")
            if error is not None:
                items.append(
                    BatchItem(
                        index=index,
                        error=BatchItemError(
                            code=error["code"], message=error["error"], details=error["details"]
                        ),
                    )
                )
                continue
            message_id = str(stored["id"])
            message = await self._storage.get_message(batch.org_id, message_id)
            items.append(BatchItem(index=index, message_id=message_id, message=message))
        return BatchResult(id=batch.id, items=items, duplicate=True)


def _stored_item(item: BatchItem) -> dict[str, Any]:
    """An outcome as ``email_batches.items`` keeps it (:class:`~commtunnel.ports.EmailBatch`)."""
    if item.error is not None:
        return {"index": item.index, "error": item.error.to_wire()}
    return {"index": item.index, "id": item.message_id}
