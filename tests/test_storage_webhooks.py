"""The SQLite webhook store: fan-out with each event, leases and their fencing,
retries, automatic disabling, the delivery log, tenancy and the v5 migration."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path

import attrs
import pytest

import pg
from commtunnel.backends import make_backend, schema
from commtunnel.backends.sqlite import INTEGRITY_ERRORS, SqliteBackend, ts
from commtunnel.backends.sqlite_webhooks import SqliteWebhookStore
from commtunnel.domain.events import TimelineEvent
from commtunnel.domain.keys import Organization
from commtunnel.domain.messages import Message
from commtunnel.domain.webhooks import (
    ENDPOINT_DISABLED_EVENT,
    DeliveryStatus,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)
from commtunnel.ids import new_id
from commtunnel.ports import ClaimedDelivery, DeliveryCompletion
from commtunnel.testing import ManualClock
from test_storage import old_schema_file, queued_email

pytestmark = pytest.mark.anyio

LEASE = 30.0  # seconds


@pytest.fixture
async def backend(tmp_path: Path, clock: ManualClock) -> AsyncIterator[SqliteBackend]:
    b = make_backend(pg.fresh_db(tmp_path / "w.db"), clock=clock)
    await b.open()
    for org_id in ("org-1", "org-2"):
        await b.create_org(Organization(id=org_id, name=org_id, created_at=clock.now()))
    yield b
    await b.aclose()


@pytest.fixture
def store(backend: SqliteBackend) -> SqliteWebhookStore:
    return SqliteWebhookStore(backend)


async def add_endpoint(
    store: SqliteWebhookStore,
    clock: ManualClock,
    org_id: str = "org-1",
    *,
    events: tuple[str, ...] | None = None,
    enabled: bool = True,
) -> WebhookEndpoint:
    """Store and return a new endpoint of ``org_id``."""
    endpoint = WebhookEndpoint(
        id=new_id(),
        org_id=org_id,
        url="https://hooks.example.com/in",
        events=events,
        enabled=enabled,
        secret="whsec_c2VjcmV0",
        created_at=clock.now(),
        updated_at=clock.now(),
    )
    await store.create_endpoint(endpoint)
    return endpoint


async def accept_email(
    backend: SqliteBackend, clock: ManualClock, org_id: str = "org-1"
) -> tuple[Message, TimelineEvent]:
    """Accept a QUEUED email created now; its ``email_queued`` event fans out."""
    message, event = queued_email(clock, org_id)
    await backend.accept(message, event, run_at=clock.now(), idempotency=None)
    return message, event


async def deliveries(store: SqliteWebhookStore, org_id: str = "org-1") -> list[WebhookDelivery]:
    """Every delivery of the organization, newest first."""
    page = await store.list_deliveries(org_id, limit=1000)
    return [delivery for delivery, _attempts in page.items]


async def claim(
    store: SqliteWebhookStore, clock: ManualClock, limit: int = 10
) -> list[ClaimedDelivery]:
    return await store.claim_deliveries(now=clock.now(), limit=limit, lease_seconds=LEASE)


def result(
    claimed: ClaimedDelivery,
    clock: ManualClock,
    *,
    status: DeliveryStatus,
    status_code: int,
    next_attempt_at: datetime | None = None,
    failing_since: datetime | None = None,
    disable: str | None = None,
    disabled_event: TimelineEvent | None = None,
) -> DeliveryCompletion:
    """The completion of one attempt at ``claimed`` that started now."""
    succeeded = 200 <= status_code < 300
    attempt = WebhookAttempt(
        delivery_id=claimed.delivery.id,
        number=claimed.delivery.attempt_count + 1,
        started_at=clock.now(),
        duration_ms=12.5,
        status_code=status_code,
        succeeded=succeeded,
        error=None if succeeded else f"HTTP {status_code}",
        response_body="ok" if succeeded else "boom",
    )
    return DeliveryCompletion(
        claimed=claimed,
        attempt=attempt,
        status=status,
        next_attempt_at=next_attempt_at,
        last_error=attempt.error,
        endpoint_failing_since=failing_since,
        disable_endpoint=disable,
        disabled_event=disabled_event,
    )


def disabled_event(endpoint: WebhookEndpoint, clock: ManualClock) -> TimelineEvent:
    return TimelineEvent(
        id=new_id(),
        message_id=None,
        org_id=endpoint.org_id,
        type=ENDPOINT_DISABLED_EVENT,
        status=None,
        created_at=clock.now(),
        details={"endpointId": endpoint.id},
    )


# ----------------------------------------------------------------------------- endpoints


async def test_an_endpoint_reads_back_as_stored_and_updates_in_place(
    store: SqliteWebhookStore, clock: ManualClock
) -> None:
    """Every field survives the round trip (the filter too); updates set only what they name."""
    first = await add_endpoint(store, clock, events=("email_bounced", "email_sent"))
    clock.advance(1)
    second = await add_endpoint(store, clock)
    assert await store.get_endpoint("org-1", first.id) == first
    assert await store.list_endpoints("org-1") == [first, second]
    fields = {
        "url": "https://other.example.com/",
        "description": "billing",
        "events": None,
        "failing_since": clock.now(),
        "enabled": False,
        "disabled_at": clock.now(),
        "disabled_reason": "manual",
    }
    at = clock.advance(1)
    changed = await store.update_endpoint("org-1", first.id, fields, at)
    assert changed == attrs.evolve(first, updated_at=at, **fields)
    assert await store.get_endpoint("org-1", first.id) == changed
    assert await store.update_endpoint("org-1", new_id(), {"enabled": True}, at) is None
    with pytest.raises(ValueError, match="secret"):
        await store.update_endpoint("org-1", first.id, {"secret": "whsec_x"}, at)


async def test_updates_leave_fields_they_do_not_name_to_concurrent_writers(
    store: SqliteWebhookStore, clock: ManualClock
) -> None:
    """A rotation between a PATCH's read and its write survives the PATCH."""
    endpoint = await add_endpoint(store, clock)
    stale = await store.get_endpoint("org-1", endpoint.id)  # a PATCH reads ...
    until = clock.now() + timedelta(hours=24)
    rotated = await store.rotate_secret(
        "org-1", endpoint.id, secret="whsec_bmV3", previous_until=until, at=clock.advance(1)
    )
    assert rotated is not None and stale is not None
    assert (rotated.secret, rotated.previous_secret) == ("whsec_bmV3", endpoint.secret)
    assert rotated.previous_secret_expires_at == until
    patched = await store.update_endpoint(  # ... and writes after the rotation
        "org-1", endpoint.id, {"description": "orders"}, clock.advance(1)
    )
    assert patched is not None and patched.secret == "whsec_bmV3"
    assert patched.previous_secret == endpoint.secret and patched.description == "orders"
    assert (
        await store.rotate_secret(
            "org-2", endpoint.id, secret="whsec_x", previous_until=until, at=clock.now()
        )
        is None
    )


async def test_another_organizations_records_read_as_missing(
    backend: SqliteBackend, store: SqliteWebhookStore, clock: ManualClock
) -> None:
    """Endpoints and deliveries of org-1 are invisible (and untouchable) from org-2."""
    endpoint = await add_endpoint(store, clock)
    await accept_email(backend, clock)
    (delivery,) = await deliveries(store)
    assert await store.get_endpoint("org-2", endpoint.id) is None
    assert await store.list_endpoints("org-2") == []
    assert await store.get_delivery("org-2", delivery.id) is None
    assert await store.get_delivery("org-1", delivery.id) == delivery
    page = await store.list_deliveries("org-2", endpoint_id=endpoint.id)
    assert page.items == [] and page.next_cursor is None
    assert (
        await store.update_endpoint(
            "org-2", endpoint.id, {"url": "https://x.example/"}, clock.now()
        )
        is None
    )
    assert not await store.delete_endpoint("org-2", endpoint.id)
    assert await store.get_endpoint("org-1", endpoint.id) == endpoint


# ----------------------------------------------------------------------------- fan-out


async def test_an_accepted_email_fans_out_to_the_matching_enabled_endpoints_of_its_org(
    backend: SqliteBackend, store: SqliteWebhookStore, clock: ManualClock
) -> None:
    """One PENDING delivery per enabled endpoint whose filter names the type; none elsewhere."""
    every = await add_endpoint(store, clock)
    queued_only = await add_endpoint(store, clock, events=("email_queued", "sms_queued"))
    await add_endpoint(store, clock, events=("email_sent",))
    await add_endpoint(store, clock, enabled=False)
    await add_endpoint(store, clock, "org-2")
    clock.advance(5)
    message, event = await accept_email(backend, clock)
    found = await deliveries(store)
    assert sorted(d.endpoint_id for d in found) == sorted([every.id, queued_only.id])
    for d in found:
        assert (d.org_id, d.event_id, d.event_type, d.message_id) == (
            "org-1",
            event.id,
            "email_queued",
            message.id,
        )
        assert (d.status, d.attempt_count, d.payload, d.replay_of) == (
            DeliveryStatus.PENDING,
            0,
            None,
            None,
        )
        assert d.next_attempt_at == d.created_at == d.updated_at == event.created_at
    assert await deliveries(store, "org-2") == []


async def test_a_filter_matches_whole_event_types_only(
    backend: SqliteBackend, store: SqliteWebhookStore, clock: ManualClock
) -> None:
    """A filter of ``sms_queued`` does not catch ``email_queued`` (no substring match)."""
    await add_endpoint(store, clock, events=("sms_queued",))
    await accept_email(backend, clock)
    assert await deliveries(store) == []


async def test_the_fan_out_is_undone_with_the_accept_that_wrote_it(
    backend: SqliteBackend, store: SqliteWebhookStore, clock: ManualClock
) -> None:
    """An accept failing after its event leaves no delivery; its batch-mate's fans out once."""
    await add_endpoint(store, clock)
    good, good_event = queued_email(clock)
    bad, bad_event = queued_email(clock)
    # A stray job row makes the bad accept's last insert (its job) fail, after its event.
    now = ts(clock.now())
    backend.conn.execute(
        "INSERT INTO jobs (id, message_id, run_at, created_at) VALUES (?, ?, ?, ?)",
        (bad.id, bad.id, now, now),
    )
    results = await asyncio.gather(
        backend.accept(good, good_event, run_at=clock.now(), idempotency=None),
        backend.accept(bad, bad_event, run_at=clock.now(), idempotency=None),
        return_exceptions=True,
    )
    assert isinstance(results[1], INTEGRITY_ERRORS)
    assert await backend.get_message("org-1", bad.id) is None
    assert [d.event_id for d in await deliveries(store)] == [good_event.id]


async def test_append_event_marks_the_first_of_its_type_and_fans_out(
    backend: SqliteBackend, store: SqliteWebhookStore, clock: ManualClock
) -> None:
    """``first`` is True only for the message's first event of that type; the stored copy agrees."""
    endpoint = await add_endpoint(store, clock, events=("email_opened",))
    message, _ = await accept_email(backend, clock)

    def event(kind: str) -> TimelineEvent:
        return TimelineEvent(
            id=new_id(),
            message_id=message.id,
            org_id="org-1",
            type=kind,
            status=None,
            created_at=clock.advance(1),
        )

    firsts = [
        (await backend.append_event(event(kind))).details["first"]
        for kind in ("email_opened", "email_opened", "email_clicked")
    ]
    assert firsts == [True, False, True]
    stored = await backend.list_events("org-1", message.id, 100)
    assert [e.details.get("first") for e in stored if e.type != "email_queued"] == firsts
    found = await deliveries(store)
    assert [(d.endpoint_id, d.event_type) for d in found] == [(endpoint.id, "email_opened")] * 2


async def test_instance_secret_keeps_the_first_value_stored(
    backend: SqliteBackend, tmp_path: Path, clock: ManualClock
) -> None:
    """Later candidates, from this process or another on the same file, get the first value."""
    assert await backend.instance_secret("tracking", "first", clock.now()) == "first"
    assert await backend.instance_secret("tracking", "second", clock.now()) == "first"
    other = make_backend(pg.fresh_db(tmp_path / "w.db"), clock=clock)
    await other.open()
    try:
        assert await other.instance_secret("tracking", "third", clock.now()) == "first"
        assert await other.instance_secret("another", "x", clock.now()) == "x"
    finally:
        await other.aclose()


# ----------------------------------------------------------------------------- the worker's side


async def test_a_claimed_delivery_comes_with_its_endpoint_event_and_recipient(
    backend: SqliteBackend, store: SqliteWebhookStore, clock: ManualClock
) -> None:
    """The claim joins what an attempt needs: the endpoint, the event, the message's ``to``."""
    endpoint = await add_endpoint(store, clock)
    message, event = await accept_email(backend, clock)
    (claimed,) = await claim(store, clock)
    assert claimed.endpoint == endpoint
    assert claimed.event == event
    assert message.email is not None and claimed.recipient == message.email.to
    assert claimed.delivery.attempt_count == 0 and claimed.lease_token


async def test_a_delivery_with_its_own_payload_is_claimed_without_an_event(
    store: SqliteWebhookStore, clock: ManualClock
) -> None:
    """A ``webhook.test`` delivery (payload set, no message) has no event and no recipient."""
    endpoint = await add_endpoint(store, clock)
    delivery = WebhookDelivery(
        id=new_id(),
        endpoint_id=endpoint.id,
        org_id="org-1",
        event_id=new_id(),
        event_type="webhook.test",
        payload='{"type":"webhook.test"}',
        next_attempt_at=clock.now(),
        created_at=clock.now(),
        updated_at=clock.now(),
    )
    await store.add_delivery(delivery)
    assert await store.get_delivery("org-1", delivery.id) == delivery
    (claimed,) = await claim(store, clock)
    assert claimed.delivery == delivery
    assert (claimed.event, claimed.recipient) == (None, None)


async def test_a_claimed_delivery_is_not_claimed_again_until_its_lease_expires(
    backend: SqliteBackend, store: SqliteWebhookStore, clock: ManualClock
) -> None:
    """While leased it is invisible to claims; once the lease ran out it is due again."""
    await add_endpoint(store, clock)
    await accept_email(backend, clock)
    (first,) = await claim(store, clock)
    assert await claim(store, clock) == []
    clock.advance(LEASE - 1)
    assert await claim(store, clock) == []
    clock.advance(1)
    (again,) = await claim(store, clock)
    assert again.delivery.id == first.delivery.id
    assert again.lease_token != first.lease_token


async def test_claims_take_due_deliveries_oldest_first_up_to_the_limit(
    backend: SqliteBackend, store: SqliteWebhookStore, clock: ManualClock
) -> None:
    """A delivery due later is left alone; the limit caps one claim."""
    await add_endpoint(store, clock)
    _, early = await accept_email(backend, clock)
    clock.advance(1)
    _, middle = await accept_email(backend, clock)
    clock.advance(1)
    _, late = await accept_email(backend, clock)
    at = early.created_at + timedelta(seconds=1.5)
    (one,) = await store.claim_deliveries(now=at, limit=1, lease_seconds=LEASE)
    (two,) = await store.claim_deliveries(now=at, limit=5, lease_seconds=LEASE)
    assert [one.delivery.event_id, two.delivery.event_id] == [early.id, middle.id]
    assert await store.claim_deliveries(now=at, limit=5, lease_seconds=LEASE) == []
    assert [c.delivery.event_id for c in await claim(store, clock)] == [late.id]


async def test_a_completion_under_a_lost_lease_writes_nothing(
    backend: SqliteBackend, store: SqliteWebhookStore, clock: ManualClock
) -> None:
    """A stale lease token records no attempt and changes neither delivery nor endpoint."""
    endpoint = await add_endpoint(store, clock)
    await accept_email(backend, clock)
    (stale,) = await claim(store, clock)
    clock.advance(LEASE)
    (current,) = await claim(store, clock)
    failed = result(
        stale,
        clock,
        status=DeliveryStatus.FAILED,
        status_code=410,
        failing_since=clock.now(),
        disable="gone",
        disabled_event=disabled_event(endpoint, clock),
    )
    assert not await store.complete_delivery(failed)
    page = await store.list_deliveries("org-1")
    ((delivery, attempts),) = page.items
    assert delivery == stale.delivery and attempts == []
    assert await store.get_endpoint("org-1", endpoint.id) == endpoint
    events = backend.conn.execute(
        "SELECT COUNT(*) FROM events WHERE type = ?", (ENDPOINT_DISABLED_EVENT,)
    )
    assert events.fetchone()[0] == 0
    assert await store.complete_delivery(
        result(current, clock, status=DeliveryStatus.SUCCEEDED, status_code=200)
    )


async def test_a_failed_attempt_reschedules_and_a_success_finishes(
    backend: SqliteBackend, store: SqliteWebhookStore, clock: ManualClock
) -> None:
    """A retry is PENDING at its new time with the lease cleared; a 2xx ends it healthy."""
    endpoint = await add_endpoint(store, clock)
    await accept_email(backend, clock)
    (claimed,) = await claim(store, clock)
    failed_at = clock.now()
    retry_at = failed_at + timedelta(seconds=5)
    completion = result(
        claimed,
        clock,
        status=DeliveryStatus.PENDING,
        status_code=500,
        next_attempt_at=retry_at,
        failing_since=failed_at,
    )
    assert await store.complete_delivery(completion)
    delivery = await store.get_delivery("org-1", claimed.delivery.id)
    assert delivery is not None
    assert (delivery.status, delivery.attempt_count, delivery.next_attempt_at) == (
        DeliveryStatus.PENDING,
        1,
        retry_at,
    )
    assert (delivery.last_status_code, delivery.last_error) == (500, "HTTP 500")
    stored = await store.get_endpoint("org-1", endpoint.id)
    assert stored is not None and stored.failing_since == failed_at and stored.enabled
    assert await store.next_delivery_at() == retry_at
    clock.advance(4.9)
    assert await claim(store, clock) == []
    clock.set(retry_at)
    (again,) = await claim(store, clock)  # the lease was cleared: no wait for it to expire
    assert again.delivery.attempt_count == 1
    assert await store.complete_delivery(
        result(again, clock, status=DeliveryStatus.SUCCEEDED, status_code=204)
    )
    done = await store.get_delivery("org-1", claimed.delivery.id)
    assert done is not None
    assert (done.status, done.attempt_count, done.next_attempt_at, done.last_error) == (
        DeliveryStatus.SUCCEEDED,
        2,
        None,
        None,
    )
    healthy = await store.get_endpoint("org-1", endpoint.id)
    assert healthy is not None and healthy.failing_since is None
    assert await store.next_delivery_at() is None
    ((_, attempts),) = (await store.list_deliveries("org-1")).items
    assert [(a.number, a.status_code, a.succeeded) for a in attempts] == [
        (1, 500, False),
        (2, 204, True),
    ]


async def test_disabling_an_endpoint_fans_its_event_out_to_the_other_endpoints_only(
    backend: SqliteBackend, store: SqliteWebhookStore, clock: ManualClock
) -> None:
    """The disabled endpoint gets no ``endpoint_disabled`` delivery; the other endpoint does."""
    gone = await add_endpoint(store, clock)
    other = await add_endpoint(store, clock)
    await accept_email(backend, clock)
    clock.advance(3)
    claimed = next(c for c in await claim(store, clock) if c.endpoint.id == gone.id)
    event = disabled_event(gone, clock)
    completion = result(
        claimed,
        clock,
        status=DeliveryStatus.FAILED,
        status_code=410,
        disable="gone",
        disabled_event=event,
    )
    assert await store.complete_delivery(completion)
    stored = await store.get_endpoint("org-1", gone.id)
    assert stored is not None
    assert (stored.enabled, stored.disabled_reason, stored.disabled_at) == (
        False,
        "gone",
        clock.now(),
    )
    fanned = [d for d in await deliveries(store) if d.event_type == ENDPOINT_DISABLED_EVENT]
    assert [(d.endpoint_id, d.event_id, d.message_id) for d in fanned] == [
        (other.id, event.id, None)
    ]
    failed = await store.get_delivery("org-1", claimed.delivery.id)
    assert failed is not None and failed.status == DeliveryStatus.FAILED


async def test_an_endpoint_disabled_meanwhile_keeps_its_reason_and_gets_no_second_event(
    backend: SqliteBackend, store: SqliteWebhookStore, clock: ManualClock
) -> None:
    """A disable arriving after the customer's own records no ``endpoint_disabled`` event."""
    endpoint = await add_endpoint(store, clock)
    await add_endpoint(store, clock, events=(ENDPOINT_DISABLED_EVENT,))
    await accept_email(backend, clock)
    claimed = next(c for c in await claim(store, clock) if c.endpoint.id == endpoint.id)
    manual = {"enabled": False, "disabled_at": clock.now(), "disabled_reason": "manual"}
    assert await store.update_endpoint("org-1", endpoint.id, manual, clock.now())
    clock.advance(1)
    completion = result(
        claimed,
        clock,
        status=DeliveryStatus.FAILED,
        status_code=500,
        disable="failing",
        disabled_event=disabled_event(endpoint, clock),
    )
    assert await store.complete_delivery(completion)
    stored = await store.get_endpoint("org-1", endpoint.id)
    assert stored is not None and stored.disabled_reason == "manual"
    assert [d.event_type for d in await deliveries(store)] == ["email_queued"]


async def test_next_delivery_at_counts_a_leased_delivery_at_its_lease_end(
    backend: SqliteBackend, store: SqliteWebhookStore, clock: ManualClock
) -> None:
    """A leased delivery is due when its lease runs out, unless another is due sooner."""
    assert await store.next_delivery_at() is None
    await add_endpoint(store, clock)
    start = clock.now()
    await accept_email(backend, clock)
    clock.advance(10)
    await accept_email(backend, clock)
    assert await store.next_delivery_at() == start
    await claim(store, clock, limit=1)  # the first, leased until start + 10 + LEASE
    assert await store.next_delivery_at() == start + timedelta(seconds=10)
    await claim(store, clock, limit=1)
    assert await store.next_delivery_at() == start + timedelta(seconds=10 + LEASE)


# ----------------------------------------------------------------------------- the delivery log


async def test_list_deliveries_pages_newest_first_with_attempts_oldest_first(
    backend: SqliteBackend, store: SqliteWebhookStore, clock: ManualClock
) -> None:
    """Cursor pages cover every delivery once, newest first; the last page has no cursor."""
    await add_endpoint(store, clock)
    messages = []
    for _ in range(5):
        message, _ = await accept_email(backend, clock)
        messages.append(message)
        clock.advance(1)
    seen: list[str] = []
    cursor: str | None = None
    sizes = []
    while True:
        page = await store.list_deliveries("org-1", limit=2, before=cursor)
        sizes.append(len(page.items))
        seen.extend(d.id for d, _ in page.items)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert sizes == [2, 2, 1]
    assert seen == sorted(seen, reverse=True) and len(set(seen)) == 5
    assert (await store.list_deliveries("org-1", limit=5)).next_cursor is None
    # Two attempts at the oldest message's delivery, listed with it in order.
    for status_code in (500, 200):
        (claimed,) = await claim(store, clock, limit=1)
        status = DeliveryStatus.PENDING if status_code == 500 else DeliveryStatus.SUCCEEDED
        # retried at its first due time, so that it stays the oldest due
        retry = claimed.delivery.next_attempt_at if status_code == 500 else None
        assert await store.complete_delivery(
            result(claimed, clock, status=status, status_code=status_code, next_attempt_at=retry)
        )
    page = await store.list_deliveries("org-1", message_id=messages[0].id)
    ((delivery, attempts),) = page.items
    assert delivery.message_id == messages[0].id
    assert [a.number for a in attempts] == [1, 2]
    assert attempts[0].response_body == "boom" and attempts[0].duration_ms == 12.5


async def test_list_deliveries_filters_by_endpoint(
    backend: SqliteBackend, store: SqliteWebhookStore, clock: ManualClock
) -> None:
    """Only the named endpoint's deliveries are listed."""
    first = await add_endpoint(store, clock)
    second = await add_endpoint(store, clock, events=("email_sent",))
    await accept_email(backend, clock)
    page = await store.list_deliveries("org-1", endpoint_id=second.id)
    assert page.items == []
    page = await store.list_deliveries("org-1", endpoint_id=first.id)
    assert [d.endpoint_id for d, _ in page.items] == [first.id]


async def test_deleting_an_endpoint_removes_its_deliveries_and_attempts(
    backend: SqliteBackend, store: SqliteWebhookStore, clock: ManualClock
) -> None:
    """The other endpoint's deliveries stay; a lease on a deleted delivery is lost."""
    doomed = await add_endpoint(store, clock)
    kept = await add_endpoint(store, clock)
    await accept_email(backend, clock)
    first = next(c for c in await claim(store, clock) if c.endpoint.id == doomed.id)
    retry = result(
        first, clock, status=DeliveryStatus.PENDING, status_code=500, next_attempt_at=clock.now()
    )
    assert await store.complete_delivery(retry)
    (leased,) = await claim(store, clock)  # the doomed one again; the kept one is still leased
    assert leased.endpoint.id == doomed.id
    assert await store.delete_endpoint("org-1", doomed.id)
    assert await store.get_endpoint("org-1", doomed.id) is None
    assert {d.endpoint_id for d in await deliveries(store)} == {kept.id}
    attempts = backend.conn.execute("SELECT COUNT(*) FROM webhook_attempts").fetchone()[0]
    assert attempts == 0
    assert not await store.complete_delivery(
        result(leased, clock, status=DeliveryStatus.SUCCEEDED, status_code=200)
    )
    assert not await store.delete_endpoint("org-1", doomed.id)


# ----------------------------------------------------------------------------- migration


async def test_a_v4_file_gains_the_webhook_tables_and_keeps_its_rows(
    tmp_path: Path, clock: ManualClock
) -> None:
    """After the v5 upgrade old events stay, and new events fan out to new endpoints."""
    path = old_schema_file(
        tmp_path / "v4.db",
        clock,
        4,
        "INSERT INTO orgs (id, name, created_at) VALUES ('org-1', 'acme', ?)",
        "INSERT INTO events (id, org_id, message_id, type, status, created_at, details) "
        "VALUES ('e-old', 'org-1', 'm-old', 'email_sent', 'SENT', ?, '{}')",
    )
    backend = SqliteBackend(path, clock=clock)
    await backend.open()
    try:
        assert backend.schema_version() == schema.LATEST_VERSION
        store = SqliteWebhookStore(backend)
        assert await deliveries(store) == []  # no fan-out of events older than the endpoints
        endpoint = await add_endpoint(store, clock)
        _, event = await accept_email(backend, clock)
        assert [(d.endpoint_id, d.event_id) for d in await deliveries(store)] == [
            (endpoint.id, event.id)
        ]
        old = backend.conn.execute("SELECT type FROM events WHERE id = 'e-old'").fetchone()
        assert old == ("email_sent",)
        assert await backend.instance_secret("k", "v", clock.now()) == "v"
    finally:
        await backend.aclose()
