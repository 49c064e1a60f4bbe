"""The webhook worker: leases due deliveries, POSTs them signed, records every attempt.

Outcomes of one attempt (after Svix's behaviour):

* 2xx: SUCCEEDED; the endpoint is healthy again.
* 410 Gone: FAILED, and the endpoint is disabled at once.
* 3xx (redirects are not followed), any other status, a timeout or a
  connection error: retried on the schedule (``COMMTUNNEL_WEBHOOK_RETRY_SCHEDULE``)
  with ±10 % jitter; 429/502/504 with ``Retry-After`` wait that long when
  it is longer than the schedule's delay. Once the schedule is used up the
  delivery is FAILED. When an endpoint has failed without a single success
  for ``COMMTUNNEL_WEBHOOK_DISABLE_AFTER`` seconds it is disabled and an
  ``endpoint_disabled`` event is recorded.

Requests are signed per the Standard Webhooks specification
(https://www.standardwebhooks.com/, "Signature scheme") with the
``standardwebhooks`` package: ``webhook-id`` (the event id, the same on every
retry and replay), ``webhook-timestamp`` (Unix seconds of the attempt) and
``webhook-signature`` (one ``v1,<base64>`` per active secret). The HTTP and
the SSRF guard are the :class:`~commtunnel.ports.WebhookSender`'s.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from datetime import UTC, datetime, timedelta

from standardwebhooks.webhooks import Webhook

from commtunnel.domain.delivery import retry_after_seconds
from commtunnel.domain.events import format_timestamp
from commtunnel.domain.webhooks import (
    DEFAULT_RETRY_SCHEDULE,
    ENDPOINT_DISABLED_EVENT,
    RETRY_AFTER_STATUSES,
    DeliveryStatus,
    WebhookAttempt,
    event_payload,
    next_delay,
    signature_header,
)
from commtunnel.ports import (
    ClaimedDelivery,
    Clock,
    DeliveryCompletion,
    WebhookAnswer,
    WebhookSender,
    WebhookStorage,
)
from commtunnel.services.dispatch import until_idle
from commtunnel.services.timeline import org_event
from commtunnel.services.webhooks import WebhookService

log = logging.getLogger("commtunnel.webhooks")


class WebhookWorker:
    """Leases due deliveries, POSTs them signed, and records every attempt.

    Args:
        store: where deliveries are claimed and results recorded.
        service: reads signing secrets (and decrypts them).
        clock: every "now" (the ``webhook-timestamp`` too).
        sender: POSTs (checking each URL's addresses again first: the SSRF guard).
        schedule: seconds before each attempt (see
            :func:`~commtunnel.domain.webhooks.parse_retry_schedule`).
        disable_after: seconds of failure without a success before the
            endpoint is disabled.
        lease_seconds: a claimed delivery's lease (longer than the sender's timeout).
        concurrency: POSTs in flight at once.
        rng: jitter source (seed it in tests).
    """

    def __init__(
        self,
        store: WebhookStorage,
        service: WebhookService,
        clock: Clock,
        *,
        sender: WebhookSender,
        schedule: tuple[float, ...] = DEFAULT_RETRY_SCHEDULE,
        disable_after: float = 5 * 86_400.0,
        lease_seconds: float = 60.0,
        concurrency: int = 16,
        rng: random.Random | None = None,
    ) -> None:
        self._store = store
        self._service = service
        self._clock = clock
        self._sender = sender
        self._schedule = schedule
        self._disable_after = timedelta(seconds=disable_after)
        self._lease_seconds = lease_seconds
        self._concurrency = concurrency
        self._rng = rng or random.Random()
        self._wake = asyncio.Event()

    def notify(self) -> None:
        """Wake :meth:`run` now (new deliveries were written in this process)."""
        self._wake.set()

    # ------------------------------------------------------------------ one attempt

    def _body(self, claimed: ClaimedDelivery) -> str | None:
        delivery, event = claimed.delivery, claimed.event
        if delivery.payload is not None:
            return delivery.payload
        if event is None:
            return None
        channel = event.channel
        body = event_payload(
            event_id=event.id,
            event_type=event.type,
            created_at=format_timestamp(event.created_at),
            message_id=event.message_id,
            channel=None if channel is None else str(channel),
            status=None if event.status is None else str(event.status),
            to=claimed.recipient,
            details=event.details,
        )
        return json.dumps(body, separators=(",", ":"))

    def _headers(self, claimed: ClaimedDelivery, body: str, now: datetime) -> dict[str, str]:
        """Standard Webhooks headers: the id, the Unix timestamp, one signature per secret."""
        msg_id = claimed.delivery.event_id
        timestamp = now.astimezone(UTC)
        signatures = [
            Webhook(secret).sign(msg_id, timestamp, body)
            for secret in self._service.signing_secrets(claimed.endpoint, now)
        ]
        return {
            "content-type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(timestamp.timestamp())),
            "webhook-signature": signature_header(signatures),
        }

    async def attempt(self, claimed: ClaimedDelivery) -> DeliveryCompletion:
        """Make one attempt of a claimed delivery and decide what follows (not yet recorded)."""
        endpoint = claimed.endpoint
        started = self._clock.now()
        t0 = self._clock.monotonic()
        body = self._body(claimed)
        answer: WebhookAnswer
        final_reason: str | None = None
        if not endpoint.enabled:
            final_reason = "endpoint disabled"
        elif body is None:
            final_reason = "the event no longer exists"
        if final_reason is not None:
            answer = WebhookAnswer(status_code=None, error=final_reason)
        else:
            assert body is not None
            headers = self._headers(claimed, body, started)
            answer = await self._sender.post(endpoint.url, body.encode("utf-8"), headers)
        attempt = WebhookAttempt(
            delivery_id=claimed.delivery.id,
            number=claimed.delivery.attempt_count + 1,
            started_at=started,
            duration_ms=round((self._clock.monotonic() - t0) * 1000, 3),
            status_code=answer.status_code,
            succeeded=answer.error is None,
            error=answer.error,
            response_body=answer.body,
        )
        if final_reason is not None:
            return DeliveryCompletion(
                claimed=claimed,
                attempt=attempt,
                status=DeliveryStatus.FAILED,
                last_error=final_reason,
                endpoint_failing_since=endpoint.failing_since,
            )
        return self._decide(claimed, attempt, answer)

    def _decide(
        self, claimed: ClaimedDelivery, attempt: WebhookAttempt, answer: WebhookAnswer
    ) -> DeliveryCompletion:
        endpoint, now = claimed.endpoint, attempt.started_at
        if attempt.succeeded:
            return DeliveryCompletion(
                claimed=claimed, attempt=attempt, status=DeliveryStatus.SUCCEEDED
            )
        failing_since = endpoint.failing_since or now
        if answer.status_code == 410:
            return self._disable(claimed, attempt, failing_since, "gone")
        if now - failing_since >= self._disable_after:
            return self._disable(claimed, attempt, failing_since, "failing")
        retry_after = None
        if answer.status_code in RETRY_AFTER_STATUSES:
            retry_after = retry_after_seconds(answer.retry_after, now=now)
        delay = next_delay(self._schedule, attempt.number, retry_after=retry_after, rng=self._rng)
        if delay is None:
            return DeliveryCompletion(
                claimed=claimed,
                attempt=attempt,
                status=DeliveryStatus.FAILED,
                last_error=answer.error,
                endpoint_failing_since=failing_since,
            )
        return DeliveryCompletion(
            claimed=claimed,
            attempt=attempt,
            status=DeliveryStatus.PENDING,
            next_attempt_at=now + timedelta(seconds=delay),
            last_error=answer.error,
            endpoint_failing_since=failing_since,
        )

    def _disable(
        self,
        claimed: ClaimedDelivery,
        attempt: WebhookAttempt,
        failing_since: datetime,
        reason: str,
    ) -> DeliveryCompletion:
        endpoint = claimed.endpoint
        event = org_event(
            endpoint.org_id,
            ENDPOINT_DISABLED_EVENT,
            at=attempt.started_at,
            details={
                "endpointId": endpoint.id,
                "url": endpoint.url,
                "reason": reason,
                "failingSince": format_timestamp(failing_since),
                "lastError": attempt.error,
            },
        )
        return DeliveryCompletion(
            claimed=claimed,
            attempt=attempt,
            status=DeliveryStatus.FAILED,
            last_error=attempt.error,
            endpoint_failing_since=failing_since,
            disable_endpoint=reason,
            disabled_event=event,
        )

    async def process(self, claimed: ClaimedDelivery) -> bool:
        """Attempt one claimed delivery and record the result; False if the lease was lost."""
        try:
            completion = await self.attempt(claimed)
        except Exception as exc:  # e.g. a secret that no longer decrypts: retried later
            log.exception("webhook delivery %s could not be attempted", claimed.delivery.id)
            completion = self._decide(
                claimed,
                WebhookAttempt(
                    delivery_id=claimed.delivery.id,
                    number=claimed.delivery.attempt_count + 1,
                    started_at=self._clock.now(),
                    duration_ms=0.0,
                    status_code=None,
                    succeeded=False,
                    error=f"{type(exc).__name__}: {getattr(exc, 'message', exc)}"[:500],
                ),
                WebhookAnswer(status_code=None, error="internal error"),
            )
        recorded = await self._store.complete_delivery(completion)
        if not recorded:
            log.warning("lease lost for webhook delivery %s", claimed.delivery.id)
        return recorded

    # ------------------------------------------------------------------ loops

    async def run_once(self) -> int:
        """Claim one batch of due deliveries and attempt them concurrently; returns how many."""
        claimed = await self._store.claim_deliveries(
            now=self._clock.now(), limit=self._concurrency, lease_seconds=self._lease_seconds
        )
        if claimed:
            await asyncio.gather(*(self.process(c) for c in claimed))
        return len(claimed)

    async def run_until_idle(self, *, max_batches: int = 10_000) -> int:
        """Attempt batches until nothing is due at the clock's current time; returns the total."""
        return await until_idle(self.run_once, max_batches)

    async def run(self, stop: asyncio.Event, *, poll_interval: float = 0.5) -> None:
        """Deliver until ``stop`` is set.

        Sleeps until the earliest due delivery, at most ``poll_interval``
        seconds (deliveries written by other processes are found by polling),
        or until :meth:`notify`.
        """
        while not stop.is_set():
            try:
                done = await self.run_once()
            except Exception:  # the database may be briefly unavailable
                log.exception("webhook delivery batch failed; retrying")
                done = 0
            if done:
                continue
            wait = poll_interval
            try:
                due = await self._store.next_delivery_at()
            except Exception:
                due = None
            if due is not None:
                wait = min(wait, max(0.0, (due - self._clock.now()).total_seconds()))
            self._wake.clear()
            stopper = asyncio.ensure_future(stop.wait())
            waker = asyncio.ensure_future(self._wake.wait())
            await asyncio.wait({stopper, waker}, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            waker.cancel()
