"""The dispatch worker: claims due jobs with a lease, calls the provider, records the result.

Each attempt moves the message along the status machine and appends an
event in the same transaction as the attempt record:

* claim: QUEUED/RETRYING -> PROCESSING (or PROCESSING again when an earlier
  worker's lease expired: it died mid-send);
* accepted -> SENT; permanent failure -> FAILED (BOUNCED for an invalid
  recipient); transient failure -> RETRYING with exponential backoff and
  jitter, or FAILED once the retry policy's attempts are used up.

Email and SMS go through a :class:`~commtunnel.services.routing.ProviderRoute`:
the channel's providers in failover order, each behind a circuit breaker.
A failure that another provider may fix moves the next attempt to the next
provider of the list, at once (no backoff) and even when the failure was
permanent for this provider (refused credentials, a content refusal), as
long as a later provider's circuit would take the call; wrapping round to
the first provider again, or every later circuit open, waits for the backoff. Each
attempt records the provider that made it (``attempts[].provider``).

A provider that raises or hangs never kills the worker: exceptions are
classified as transient ``UNKNOWN``, and each call is bounded by
``send_timeout`` (shorter than the lease, so a slow call does not let
another worker take the job while it is still running).
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import attrs

from commtunnel.domain.delivery import ErrorCategory, Outcome, ProviderResult, RetryPolicy
from commtunnel.domain.errors import StorageUnavailableError
from commtunnel.domain.events import TimelineEvent, format_timestamp
from commtunnel.domain.messages import Attempt, EmailContent, Message, Status
from commtunnel.ports import (
    ClaimedJob,
    Clock,
    Completion,
    EmailProvider,
    OutgoingEmail,
    OutgoingSms,
    OutgoingWhatsApp,
    Queue,
    RoutingStorage,
    SmsProvider,
    WhatsAppLine,
    WhatsAppProvider,
)
from commtunnel.services.routing import ProviderRoute
from commtunnel.services.timeline import status_event

log = logging.getLogger("commtunnel.worker")

SANDBOX_PROVIDER = "sandbox"
#: the provider recorded for an attempt that called none (not configured, every circuit open).
NO_PROVIDER = "none"


@attrs.frozen
class _Call:
    """One provider call to make: the provider's name, the call, the route it came from."""

    name: str
    send: Callable[[], Awaitable[ProviderResult]]
    route: ProviderRoute[Any] | None


async def until_idle(run_once: Callable[[], Awaitable[int]], max_batches: int) -> int:
    """Call ``run_once`` (one batch; returns how much it did) until it does nothing.

    The loop of both workers' ``run_until_idle`` (messages and webhooks).

    Args:
        run_once: processes one batch of due work; returns its size.
        max_batches: a bound, so a batch that never empties cannot spin forever.

    Returns:
        The total processed.
    """
    total = 0
    for _ in range(max_batches):
        done = await run_once()
        if done == 0:
            break
        total += done
    return total


class Dispatcher:
    """Delivers queued messages.

    Args:
        queue: where jobs are claimed and results recorded.
        email_provider: the email channel's provider, or its providers in
            failover order (a route).
        clock: every "now" and every duration.
        sms_provider: the SMS channel's provider or route (None: SMS jobs
            fail as ``UNSUPPORTED``, permanently).
        routing: where the previous attempt's provider is read (to fail
            over from it) and provider health is reported; None: every
            attempt starts at the first provider and health is not stored.
        sms_status_callback_url: handed to the SMS provider so it can POST
            delivery receipts back (``<public URL>/v1/webhooks/sms/provider``).
        whatsapp_provider: the WhatsApp Cloud provider (None: WhatsApp jobs
            fail as ``UNSUPPORTED``, permanently).
        whatsapp_line: returns the line a WhatsApp message is sent from, or a
            result to record instead of calling Graph (e.g. ``LINE_PAUSED``).
        after_attempt: awaited with the message and the provider's result
            after each recorded attempt, for consequences beyond the message:
            an opt-out a provider reported, a WhatsApp line to pause or flag.
        prepare_email: returns the content handed to the email provider for
            a message, on each attempt (open/click tracking rewrites the HTML
            here, so the stored message keeps the original); None sends
            ``message.email`` as stored. If it raises, the attempt is a
            transient ``UNKNOWN`` failure.
        check_email: asked before each email attempt; a result it returns is
            recorded instead of calling a provider (a recipient suppressed
            since the send was accepted). None: no check.
        check_sms: the same for SMS (a number that opted out since).
        policy: retry policy for transient failures.
        lease_seconds: how long a claim is exclusive; a worker that dies
            leaves a lease that expires after this many seconds.
        send_timeout: seconds one provider call may take (< lease_seconds).
        concurrency: provider calls in flight at once.
        rng: jitter source (seed it in tests).
        worker_id: recorded on leases; random by default.

    Raises:
        ValueError: ``send_timeout`` is not shorter than ``lease_seconds``.
    """

    def __init__(
        self,
        queue: Queue,
        email_provider: EmailProvider | ProviderRoute[EmailProvider],
        clock: Clock,
        *,
        policy: RetryPolicy | None = None,
        lease_seconds: float = 60.0,
        send_timeout: float = 30.0,
        concurrency: int = 16,
        rng: random.Random | None = None,
        worker_id: str | None = None,
        sms_provider: SmsProvider | ProviderRoute[SmsProvider] | None = None,
        routing: RoutingStorage | None = None,
        sms_status_callback_url: str | None = None,
        whatsapp_provider: WhatsAppProvider | None = None,
        whatsapp_line: Callable[[Message], Awaitable[WhatsAppLine | ProviderResult]] | None = None,
        after_attempt: Callable[[Message, ProviderResult], Awaitable[object]] | None = None,
        prepare_email: Callable[[Message], Awaitable[EmailContent]] | None = None,
        check_email: Callable[[Message], Awaitable[ProviderResult | None]] | None = None,
        check_sms: Callable[[Message], Awaitable[ProviderResult | None]] | None = None,
    ) -> None:
        if send_timeout >= lease_seconds:
            raise ValueError("send_timeout must be shorter than lease_seconds")
        self._queue = queue
        self._email_route = ProviderRoute.of("email", email_provider)
        self._sms_route = None if sms_provider is None else ProviderRoute.of("sms", sms_provider)
        self._routing = routing
        self._sms_callback_url = sms_status_callback_url
        self._whatsapp_provider = whatsapp_provider
        self._whatsapp_line = whatsapp_line
        self._after_attempt = after_attempt
        self._prepare_email = prepare_email
        self._check_email = check_email
        self._check_sms = check_sms
        self._clock = clock
        self._policy = policy or RetryPolicy()
        self._lease_seconds = lease_seconds
        self._send_timeout = send_timeout
        self._concurrency = concurrency
        self._rng = rng or random.Random()
        self.worker_id = worker_id or f"worker-{secrets.token_hex(4)}"

    # ------------------------------------------------------------------ claiming

    def _processing_event(self, message: Message, attempt_number: int) -> TimelineEvent:
        """The ``<channel>_processing`` event of a claim; ``leaseExpired`` marks a re-claim."""
        details: dict[str, Any] = {"attempt": attempt_number}
        if message.status == Status.PROCESSING:
            details["leaseExpired"] = True  # the previous worker died mid-send
        return status_event(message, Status.PROCESSING, at=self._clock.now(), details=details)

    async def claim(self, limit: int, *, message_id: str | None = None) -> list[ClaimedJob]:
        """Lease up to ``limit`` due jobs (moving them to PROCESSING).

        With ``message_id``, lease that message's job now, whether due or not.
        """
        return await self._queue.claim(
            worker_id=self.worker_id,
            now=self._clock.now(),
            lease_seconds=self._lease_seconds,
            limit=limit,
            processing_event=self._processing_event,
            message_id=message_id,
        )

    async def deliver_now(self, message_id: str) -> bool:
        """Lease one message's job and make its attempt in this task (a synchronous hand-off).

        Returns:
            False when another worker holds the job (it makes the attempt), else True.
        """
        jobs = await self.claim(1, message_id=message_id)
        for job in jobs:
            await self.process(job)
        return bool(jobs)

    # ------------------------------------------------------------------ one attempt

    async def _whatsapp_call(self, job: ClaimedJob) -> _Call | ProviderResult:
        """The call to the WhatsApp provider from the message's line, or a result at once."""
        message = job.message
        provider = self._whatsapp_provider
        if provider is None or self._whatsapp_line is None or message.whatsapp is None:
            return ProviderResult.permanent(
                ErrorCategory.UNSUPPORTED, "the WhatsApp channel is not configured"
            )
        line = await self._whatsapp_line(message)
        if isinstance(line, ProviderResult):
            return line
        outgoing = OutgoingWhatsApp(
            message_id=message.id,
            org_id=message.org_id,
            content=message.whatsapp,
            line=line,
            created_at=message.created_at,
            attempt_number=job.attempt_number,
        )
        return _Call(provider.name, lambda: provider.send_whatsapp(outgoing), None)

    async def _route_call(
        self,
        job: ClaimedJob,
        route: ProviderRoute[Any],
        send: Callable[[Any], Awaitable[ProviderResult]],
    ) -> _Call | ProviderResult:
        """The call to the provider ``route`` chooses for this attempt, or a result at once."""
        message = job.message
        previous = None
        if message.attempt_count > 0 and self._routing is not None:
            previous = await self._routing.last_attempt(message.id)
        now = self._clock.now()
        chosen = route.choose(now, previous)
        if chosen is None:
            wait = route.seconds_until_probe(now)
            return ProviderResult.transient(
                ErrorCategory.PROVIDER_OUTAGE,
                f"every {route.channel} provider's circuit is open "
                f"({', '.join(route.names)}); next probe in {wait:g} s",
                retry_after=wait,
            )
        provider = chosen.provider
        return _Call(chosen.name, lambda: send(provider), route)

    async def _provider_call(self, job: ClaimedJob) -> _Call | ProviderResult:
        """The call to make for the message's channel, or a result at once."""
        message = job.message
        if message.whatsapp is not None:
            return await self._whatsapp_call(job)
        if message.email is not None:
            if self._check_email is not None and (held := await self._check_email(message)):
                return held
            prepare = self._prepare_email
            email = OutgoingEmail(
                message_id=message.id,
                org_id=message.org_id,
                content=message.email if prepare is None else await prepare(message),
                created_at=message.created_at,
                attempt_number=job.attempt_number,
            )
            return await self._route_call(
                job, self._email_route, lambda provider: provider.send_email(email)
            )
        if message.sms is not None:
            if self._sms_route is None:
                return ProviderResult.permanent(
                    ErrorCategory.UNSUPPORTED, "no SMS provider is configured"
                )
            if self._check_sms is not None and (held := await self._check_sms(message)):
                return held
            sms = OutgoingSms(
                message_id=message.id,
                org_id=message.org_id,
                content=message.sms,
                created_at=message.created_at,
                attempt_number=job.attempt_number,
                status_callback_url=self._sms_callback_url,
            )
            return await self._route_call(
                job, self._sms_route, lambda provider: provider.send_sms(sms)
            )
        return ProviderResult.permanent(
            ErrorCategory.UNSUPPORTED, f"no content for channel {message.channel}"
        )

    async def _call_provider(
        self, job: ClaimedJob
    ) -> tuple[str, ProviderResult, ProviderRoute[Any] | None]:
        """(provider name, its result, the route it was chosen from) for one attempt."""
        message = job.message
        if message.sandbox:
            return SANDBOX_PROVIDER, ProviderResult.accepted(None), None
        try:
            call = await self._provider_call(job)
        except Exception as exc:  # e.g. a stored token that no longer decrypts
            log.exception("preparing the provider call for %s failed", message.id)
            return (
                NO_PROVIDER,
                ProviderResult.transient(
                    ErrorCategory.UNKNOWN, f"{type(exc).__name__}: {getattr(exc, 'message', exc)}"
                ),
                None,
            )
        if isinstance(call, ProviderResult):
            return NO_PROVIDER, call, None
        try:
            async with asyncio.timeout(self._send_timeout):
                result = await call.send()
        except TimeoutError:
            result = ProviderResult.transient(
                ErrorCategory.TIMEOUT, f"provider call exceeded {self._send_timeout:g} s"
            )
        except Exception as exc:  # a provider bug must not kill the worker
            log.exception("provider %s raised while sending %s", call.name, message.id)
            result = ProviderResult.transient(ErrorCategory.UNKNOWN, f"{type(exc).__name__}: {exc}")
        return call.name, result, call.route

    def _decide(
        self, job: ClaimedJob, result: ProviderResult, *, failover_to: str | None
    ) -> tuple[Status, datetime | None, dict[str, Any]]:
        """(new status, UTC time of the next attempt or None, event details) for a result.

        Args:
            failover_to: the provider after this one in the route, when the
                failure may be fixed by another provider; the next attempt
                then goes to it at once.
        """
        details: dict[str, Any] = {"attempt": job.attempt_number}
        if result.outcome == Outcome.ACCEPTED:
            if result.provider_message_id:
                details["providerMessageId"] = result.provider_message_id
            return Status.SENT, None, details
        details["errorCategory"] = str(result.error_category)
        details["error"] = result.error_message
        if result.outcome == Outcome.PERMANENT and failover_to is None:
            bounced = result.error_category == ErrorCategory.INVALID_RECIPIENT
            return (Status.BOUNCED if bounced else Status.FAILED), None, details
        # An explicit retry of a FAILED message starts a fresh retry budget. A
        # paused line (its token expired) holds messages without spending it:
        # they go out once the token is replaced.
        paused = result.error_category == ErrorCategory.LINE_PAUSED
        attempts_made = job.attempt_number - job.attempts_before
        if not paused and not self._policy.should_retry(attempts_made):
            details["reason"] = f"gave up after {job.attempt_number} attempts"
            return Status.FAILED, None, details
        if failover_to is not None:
            details["failoverTo"] = failover_to
            delay = 0.0
        else:
            delay = self._policy.delay(attempts_made, self._rng, result.retry_after)
        retry_at = self._clock.now() + timedelta(seconds=delay)
        details["retryAt"] = format_timestamp(retry_at)
        details["retryInSeconds"] = round(delay, 3)
        return Status.RETRYING, retry_at, details

    async def _report_health(
        self, route: ProviderRoute[Any], name: str, result: ProviderResult
    ) -> None:
        """Count the result against the provider's breaker; store the health when due."""
        now = self._clock.now()
        if route.record(name, now, result) and self._routing is not None:
            try:
                await self._routing.report_provider_health(route.health(now, worker=self.worker_id))
                route.reported(now)
            except Exception:  # health is a report; the attempt is what matters
                log.exception("reporting provider health failed")

    async def process(self, job: ClaimedJob) -> bool:
        """Make one attempt for a claimed job and record it.

        Returns:
            True when recorded; False when the lease had been lost meanwhile
            (another worker re-claimed the job after it expired).
        """
        started_at = self._clock.now()
        t0 = self._clock.monotonic()
        provider_name, result, route = await self._call_provider(job)
        duration_ms = round((self._clock.monotonic() - t0) * 1000, 3)
        failover_to = None
        if route is not None:
            await self._report_health(route, provider_name, result)
            if result.may_fail_over:
                failover_to = route.next_after(provider_name, self._clock.now())
        new_status, retry_at, details = self._decide(job, result, failover_to=failover_to)
        details["provider"] = provider_name
        message = job.message
        attempt = Attempt(
            message_id=message.id,
            number=job.attempt_number,
            provider=provider_name,
            outcome=str(result.outcome),
            error_category=None if result.error_category is None else str(result.error_category),
            error_message=result.error_message,
            duration_ms=duration_ms,
            started_at=started_at,
            status=new_status,
        )
        event = status_event(message, new_status, at=self._clock.now(), details=details)
        recorded = await self._record(
            Completion(
                job=job,
                attempt=attempt,
                new_status=new_status,
                event=event,
                provider_message_id=result.provider_message_id,
                retry_at=retry_at,
            )
        )
        if not recorded:
            log.warning("lease on %s was lost before its result was recorded", message.id)
        elif self._after_attempt is not None and result.outcome != Outcome.ACCEPTED:
            try:
                await self._after_attempt(message, result)
            except Exception:  # the attempt is recorded; the follow-up is best effort
                log.exception("after-attempt handling for %s failed", message.id)
        return recorded

    async def _record(self, completion: Completion) -> bool:
        """``queue.complete``, tried again while the database is unavailable and the lease lasts.

        The provider has answered: losing this write would let the lease run
        out and another worker send the message again. The write is fenced by
        the lease token, so trying it again is safe; it is given up (raising
        StorageUnavailableError) only when the lease is about to end anyway.
        """
        delay = 0.1
        while True:
            try:
                return await self._queue.complete(completion)
            except StorageUnavailableError:
                left = (completion.job.lease_until - self._clock.now()).total_seconds()
                if left <= delay + 1.0:
                    raise
                log.warning(
                    "recording the attempt on %s failed: database unavailable; trying again",
                    completion.job.message.id,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    # ------------------------------------------------------------------ loops

    async def run_once(self, limit: int | None = None) -> int:
        """Claim one batch of due jobs and process it concurrently.

        Returns:
            The number of jobs processed (0 when nothing was due).
        """
        jobs = await self.claim(limit or self._concurrency)
        if jobs:
            await asyncio.gather(*(self.process(job) for job in jobs))
        return len(jobs)

    async def run_until_idle(self, *, max_batches: int = 10_000) -> int:
        """Process batches until nothing is due at the clock's current time.

        Returns:
            The total number of jobs processed.
        """
        return await until_idle(self.run_once, max_batches)

    async def run(self, stop: asyncio.Event, *, poll_interval: float = 1.0) -> None:
        """Deliver until ``stop`` is set, keeping up to ``concurrency`` calls in flight.

        New work accepted in this process wakes the loop at once; work written
        by other processes and retries coming due are found by polling every
        ``poll_interval`` seconds. While attempts are in flight, jobs are
        claimed in batches: only once a quarter of the slots are free.
        """
        in_flight: set[asyncio.Task[bool]] = set()
        slot_freed = asyncio.Event()
        # One claim per freed slot meant one query and one commit per 1-3 jobs;
        # waiting for a quarter of the slots keeps claims batched while the rest
        # of the slots keep the provider busy.
        claim_batch = max(1, self._concurrency // 4)

        def finished(task: asyncio.Task[bool]) -> None:
            in_flight.discard(task)
            slot_freed.set()
            if not task.cancelled() and task.exception() is not None:
                log.error("attempt failed to record", exc_info=task.exception())

        try:
            while not stop.is_set():
                free = self._concurrency - len(in_flight)
                if free <= 0 or (in_flight and free < claim_batch):
                    slot_freed.clear()
                    await slot_freed.wait()
                    continue
                try:
                    jobs = await self.claim(free)
                except Exception:  # the database may be briefly unavailable
                    log.exception("claiming jobs failed; retrying")
                    jobs = []
                    await asyncio.sleep(poll_interval)
                if not jobs:
                    if in_flight:
                        slot_freed.clear()
                        waiter = asyncio.ensure_future(self._queue.wait_for_work(poll_interval))
                        freed = asyncio.ensure_future(slot_freed.wait())
                        await asyncio.wait({waiter, freed}, return_when=asyncio.FIRST_COMPLETED)
                        waiter.cancel()
                        freed.cancel()
                    else:
                        await self._queue.wait_for_work(poll_interval)
                    continue
                for job in jobs:
                    task = asyncio.create_task(self.process(job))
                    in_flight.add(task)
                    task.add_done_callback(finished)
        finally:
            if in_flight:
                await asyncio.gather(*in_flight, return_exceptions=True)
