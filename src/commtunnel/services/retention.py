"""Retention: records past their age are deleted by the worker, in small batches.

The seed (``../shared/seeds/004_5b7054fd91e163a8.txt``, "04 · retrieve a
message") promises that records are retained for 90 days. The purge deletes:

* messages created more than ``retention`` seconds ago (90 days by default,
  ``COMMTUNNEL_RETENTION``) that have no dispatch job left, with their
  timeline events, provider attempts and customer-webhook deliveries (and
  those deliveries' attempts). A message still scheduled, queued or being
  retried keeps its job and is kept, whatever its age;
* organization-level events and webhook deliveries (opt-outs, disabled
  endpoints, test events) and inbound messages older than ``retention``;
* idempotency keys once their window has passed (``expires_at``), and email
  batch answers older than the idempotency retention.

Each batch (at most ``purge_batch`` messages, or rows of another table) is
one short transaction, so the database writer is never held long; the
worker runs :meth:`Purger.run`, one pass every ``purge_interval`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime, timedelta

from commtunnel.ports import Clock, PurgeCounts, PurgeCutoffs, RetentionStorage

log = logging.getLogger("commtunnel.retention")


class Purger:
    """Deletes what is past its retention.

    Args:
        storage: the deletes (:class:`~commtunnel.ports.RetentionStorage`).
        clock: "now" for :meth:`run`.
        retention: seconds messages, events, attempts, deliveries and inbound
            messages are kept (``settings.retention``).
        idempotency_retention: seconds email batch answers are kept
            (``settings.idempotency_retention``); idempotency keys carry
            their own ``expires_at``.
        batch: messages (or rows of another table) one transaction deletes, >= 1.

    Raises:
        ValueError: ``batch`` below 1, or a negative retention.
    """

    def __init__(
        self,
        storage: RetentionStorage,
        clock: Clock,
        *,
        retention: float,
        idempotency_retention: float,
        batch: int,
    ) -> None:
        if batch < 1:
            raise ValueError("the purge batch must be at least 1")
        if retention < 0 or idempotency_retention < 0:
            raise ValueError("retention periods cannot be negative")
        self._storage = storage
        self._clock = clock
        self._retention = timedelta(seconds=retention)
        self._idempotency_retention = timedelta(seconds=idempotency_retention)
        self._batch = batch

    def cutoffs(self, now: datetime) -> PurgeCutoffs:
        """The instants before which each kind of record goes, at ``now`` (UTC)."""
        return PurgeCutoffs(
            records=now - self._retention,
            now=now,
            batches=now - self._idempotency_retention,
        )

    async def purge_once(self, now: datetime) -> PurgeCounts:
        """Delete everything past its retention at ``now``, batch after batch, until none is left.

        Other tasks run between batches (each batch is its own transaction).

        Returns:
            The rows deleted, per table, summed over the batches.
        """
        cutoffs = self.cutoffs(now)
        total = PurgeCounts()
        while True:
            counts = await self._storage.purge_messages(cutoffs.records, self._batch)
            total += counts
            if counts.messages == 0:
                break
            await asyncio.sleep(0)  # let requests in between two transactions
        while True:
            counts = await self._storage.purge_others(cutoffs, self._batch)
            total += counts
            if counts.total == 0:
                break
            await asyncio.sleep(0)
        if total.total:
            log.info("purged %s", total)
        return total

    async def count(self, now: datetime) -> PurgeCounts:
        """What :meth:`purge_once` would delete at ``now`` (a dry run; nothing is deleted)."""
        return await self._storage.count_purgeable(self.cutoffs(now))

    async def run(self, stop: asyncio.Event, *, interval: float) -> None:
        """Purge at once, then every ``interval`` seconds, until ``stop`` is set.

        A failed pass (the database briefly unavailable) is logged and tried
        again at the next interval; it never ends the loop.
        """
        while not stop.is_set():
            try:
                await self.purge_once(self._clock.now())
            except Exception:
                log.exception("purge pass failed; trying again in %s s", interval)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
