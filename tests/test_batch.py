"""Batch email sends: each item judged alone, the accepted ones committed together.

In process (``ct.email.send_batch``) and over HTTP (``POST /v1/public/emails/batch``):
partial failure, all-or-nothing storage, size limits, per-item refusals, the
batch-wide idempotency key, sandbox keys.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest

import pg
from app_client import ApiEnv, app_client, assert_error
from commtunnel import Commtunnel, Settings
from commtunnel.domain.errors import (
    IdempotencyKeyInUseError,
    IdempotencyKeyReusedError,
    InsufficientScopeError,
    ValidationError,
)
from commtunnel.domain.keys import Principal
from commtunnel.domain.messages import Status
from commtunnel.testing import ManualClock, MockProvider
from commtunnel_http import create_app

pytestmark = pytest.mark.anyio

BATCH = "/v1/public/emails/batch"
OK: dict[str, Any] = {
    "from": "Team <hi@example.com>",
    "to": "ada@example.org",
    "subject": "Hi",
    "text": "Hello",
}


ONE_KEY = "set one key on the batch, not on its messages"
NO_BODY = "provide html and/or text, or a templateId"
NAIVE = "must include a timezone (e.g. Z or +02:00)"


def item(**changes: Any) -> dict[str, Any]:
    """A valid batch item with ``changes`` (a None value drops the field)."""
    merged = {**OK, **changes}
    return {k: v for k, v in merged.items() if v is not None}


def count(ct: Commtunnel, table: str) -> int:
    return int(ct.backend.conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


# --------------------------------------------------------------------------- in process


async def test_partial_failure_answers_each_item_and_stores_only_the_valid(
    ct: Commtunnel, provider: MockProvider
) -> None:
    """Valid items are accepted, invalid ones answered with their error; only valid ones stored."""
    result = await ct.email.send_batch(
        [
            item(),
            item(to="not an address"),
            item(**{"from": "x@elsewhere.com"}),
            item(to="bob@example.org", subject="Second"),
        ]
    )
    assert result.id is not None
    assert (result.accepted, result.rejected, result.duplicate) == (2, 2, False)
    assert [i.index for i in result.items] == [0, 1, 2, 3]
    first, bad_to, bad_from, second = result.items
    assert first.message is not None and first.message.status == Status.QUEUED
    assert second.message is not None and second.message.email is not None
    assert second.message.email.subject == "Second"
    assert bad_to.error is not None and bad_to.message is None
    assert (bad_to.error.code, set(bad_to.error.details)) == ("VALIDATION_ERROR", {"to"})
    assert bad_from.error is not None
    assert (bad_from.error.code, bad_from.error.details) == (
        "SENDER_NOT_VERIFIED",
        {"from": "x@elsewhere.com"},
    )
    assert count(ct, "messages") == 2
    assert count(ct, "jobs") == 2
    assert count(ct, "email_batches") == 1
    assert await ct.run_worker_until_idle() == 2
    assert sorted(e.content.to for e in provider.sent) == ["ada@example.org", "bob@example.org"]
    [queued, *_] = await ct.email.timeline(first.message.id)
    assert (queued.type, queued.details) == ("email_queued", {"batchId": result.id})


async def test_a_storage_failure_leaves_nothing_of_the_batch(ct: Commtunnel) -> None:
    """When one write fails, no message, event, job, batch or key of the batch remains."""
    pg.refuse_inserts(ct.backend.conn, "refuse_boom", "disk full", subject="boom")
    batch = [item(), item(subject="boom"), item()]
    with pytest.raises(Exception, match="disk full"):
        await ct.email.send_batch(batch, idempotency_key="all-or-nothing")
    for table in ("messages", "events", "jobs", "email_batches", "idempotency_keys"):
        assert count(ct, table) == 0, table
    pg.allow_inserts(ct.backend.conn, "refuse_boom")
    retried = await ct.email.send_batch(batch, idempotency_key="all-or-nothing")
    assert (retried.accepted, retried.duplicate) == (3, False)


async def test_every_item_refused_stores_nothing_and_keeps_the_key(ct: Commtunnel) -> None:
    """A batch whose items are all refused has no id, stores nothing, and burns no key."""
    result = await ct.email.send_batch([item(to="broken")], idempotency_key="k")
    assert (result.id, result.accepted, result.rejected) == (None, 0, 1)
    assert count(ct, "messages") == count(ct, "email_batches") == count(ct, "idempotency_keys") == 0
    fixed = await ct.email.send_batch([item()], idempotency_key="k")
    assert (fixed.accepted, fixed.duplicate) == (1, False)


@pytest.mark.parametrize(
    ("messages", "reason"),
    [
        ([], "must be a list of 1 to 100 messages"),
        (None, "must be a list of 1 to 100 messages"),
        ({"0": OK}, "must be a list of 1 to 100 messages"),
        ([OK] * 101, "must hold at most 100 messages, got 101"),
    ],
)
async def test_size_limits(ct: Commtunnel, messages: Any, reason: str) -> None:
    """No items, not a list, or over batch_max_messages: 400 on messages, nothing stored."""
    with pytest.raises(ValidationError) as caught:
        await ct.email.send_batch(messages)
    assert caught.value.details == {"messages": reason}
    assert count(ct, "messages") == 0


async def test_the_largest_batch_is_accepted(ct: Commtunnel) -> None:
    """Exactly batch_max_messages items are accepted in one transaction."""
    result = await ct.email.send_batch([item(to=f"u{i}@example.org") for i in range(100)])
    assert result.accepted == 100
    assert len({i.message_id for i in result.items}) == 100
    assert count(ct, "jobs") == 100


@pytest.mark.parametrize(
    ("raw", "details"),
    [
        ("just text", {"message": "must be a JSON object"}),
        (item(idempotencyKey="k"), {"idempotencyKey": ONE_KEY}),
        (item(cc="x@example.org"), {"cc": "unknown field"}),
        (item(subject=None, text=None), {"subject": "is required", "html": NO_BODY}),
        (item(templateId="nope"), {"templateId": "unknown template"}),
        (item(scheduledAt="2026-01-01T12:00:00"), {"scheduledAt": NAIVE}),
        (item(scheduledAt="2025-12-31T12:00:00Z"), {"scheduledAt": "must be in the future"}),
    ],
)
async def test_per_item_validation_refusals(ct: Commtunnel, raw: Any, details: dict) -> None:
    """Every refusal of a single send, and the batch's own, is answered per item."""
    result = await ct.email.send_batch([item(), raw])
    refused = result.items[1]
    assert refused.error is not None
    assert (refused.error.code, refused.error.details) == ("VALIDATION_ERROR", details)
    assert (result.accepted, result.rejected) == (1, 1)


async def test_a_suppressed_recipient_is_refused_per_item(ct: Commtunnel) -> None:
    """The suppression list's recipient check applies to each item."""
    await ct.suppressions.add_suppression(ct.email.principal, "blocked@example.org")
    result = await ct.email.send_batch([item(to="blocked@example.org"), item()])
    refused = result.items[0].error
    assert refused is not None
    assert (refused.code, refused.details["to"]) == (
        "EMAIL_RECIPIENT_SUPPRESSED",
        "blocked@example.org",
    )
    assert (result.accepted, result.rejected) == (1, 1)


async def test_scheduled_items_wait_for_their_time(ct: Commtunnel, clock: ManualClock) -> None:
    """An item with scheduledAt is SCHEDULED; the others go out at once."""
    result = await ct.email.send_batch([item(scheduledAt="2026-01-01T13:00:00Z"), item()])
    scheduled, now = result.items
    assert scheduled.message is not None and now.message is not None
    assert (scheduled.message.status, now.message.status) == (Status.SCHEDULED, Status.QUEUED)
    assert await ct.run_worker_until_idle() == 1
    clock.advance(3600)
    assert await ct.run_worker_until_idle() == 1


async def test_idempotent_replay_answers_the_stored_batch(ct: Commtunnel) -> None:
    """Same key and payload: the stored answer, statuses as now, duplicate, nothing new stored."""
    batch = [item(), item(to="broken")]
    first = await ct.email.send_batch(batch, idempotency_key="batch-1")
    await ct.run_worker_until_idle()
    again = await ct.email.send_batch(batch, idempotency_key="batch-1")
    assert (again.id, again.duplicate) == (first.id, True)
    assert [i.message_id for i in again.items] == [i.message_id for i in first.items]
    assert again.items[0].message is not None
    assert again.items[0].message.status == Status.SENT
    assert again.items[1].error == first.items[1].error
    assert count(ct, "messages") == 1
    assert count(ct, "email_batches") == 1


async def test_key_reuse_is_refused(ct: Commtunnel) -> None:
    """Another payload, or a key a single send used (and the reverse), answers 422."""
    single = {"from_": OK["from"], "to": OK["to"], "subject": "Hi", "text": "x"}
    await ct.email.send_batch([item()], idempotency_key="batch-1")
    with pytest.raises(IdempotencyKeyReusedError) as caught:
        await ct.email.send_batch([item(subject="Other")], idempotency_key="batch-1")
    assert caught.value.details["originalEndpoint"] == "emails.batch"
    with pytest.raises(IdempotencyKeyReusedError) as caught:
        await ct.email.send(**single, idempotency_key="batch-1")
    assert caught.value.details["originalEndpoint"] == "emails.batch"
    await ct.email.send(**single, idempotency_key="one")
    with pytest.raises(IdempotencyKeyReusedError) as caught:
        await ct.email.send_batch([item()], idempotency_key="one")
    assert caught.value.details["originalEndpoint"] == "emails.send"
    assert count(ct, "email_batches") == 1


async def test_key_in_flight_answers_409(ct: Commtunnel) -> None:
    """While the key's first request (batch or single) is in flight, a batch is refused."""
    with (
        ct.emails._in_flight.hold(ct.org.id, "busy"),
        pytest.raises(IdempotencyKeyInUseError) as caught,
    ):
        await ct.email.send_batch([item()], idempotency_key="busy")
    assert caught.value.http_status == 409
    assert count(ct, "messages") == 0


async def test_an_expired_key_is_taken_over(ct: Commtunnel, clock: ManualClock) -> None:
    """After the retention window the same key and payload make a new batch."""
    first = await ct.email.send_batch([item()], idempotency_key="k")
    clock.advance(ct.settings.idempotency_retention + 1)
    second = await ct.email.send_batch([item()], idempotency_key="k")
    assert (second.duplicate, second.id != first.id) == (False, True)


async def test_batch_needs_the_send_scope(ct: Commtunnel) -> None:
    """A read-only principal is refused the whole batch."""
    reader = ct.email_for(Principal(org_id=ct.org.id, scopes=frozenset({"read:email"})))
    with pytest.raises(InsufficientScopeError):
        await reader.send_batch([item()])


async def test_sandbox_per_item_and_per_key(ct: Commtunnel, provider: MockProvider) -> None:
    """sandboxMode marks its item only; a ct_test_ principal makes every item sandboxed."""
    result = await ct.email.send_batch([item(sandboxMode=True), item()])
    flags = [i.message.sandbox for i in result.items if i.message is not None]
    assert flags == [True, False]
    tester = ct.email_for(
        Principal(org_id=ct.org.id, scopes=frozenset({"send:email"}), sandbox=True)
    )
    sandboxed = await tester.send_batch([item(), item()])
    assert all(i.message is not None and i.message.sandbox for i in sandboxed.items)
    await ct.run_worker_until_idle()
    assert len(provider.sent) == 1


# --------------------------------------------------------------------------- HTTP


@attrs.define
class Env(ApiEnv):
    """The env with email scopes, a read-only key and a ct_test_ key."""

    clock: ManualClock
    reader: str
    sandbox: str


@pytest.fixture
async def env(tmp_path: Path, anyio_backend: str) -> AsyncIterator[Env]:
    clock = ManualClock()
    async with Commtunnel.open(
        db=pg.fresh_db(tmp_path / "ct.db"),
        email_provider=MockProvider(),
        clock=clock,
        settings=Settings(embedded_worker=False, batch_max_messages=3),
    ) as ct:
        await ct.admin.add_sender(ct.org.id, "example.com")
        scopes = frozenset({"send:email", "read:email"})
        _, key = await ct.keys.create(ct.org.id, scopes=scopes)
        _, reader = await ct.keys.create(ct.org.id, scopes=frozenset({"read:email"}))
        _, sandbox = await ct.keys.create(ct.org.id, scopes=scopes, test=True)
        async with app_client(create_app(ct)) as client:
            yield Env(ct=ct, client=client, key=key, clock=clock, reader=reader, sandbox=sandbox)


async def test_http_partial_failure(env: Env) -> None:
    """200 with one result per item: ids and statuses, or the error envelope without requestId."""
    body = {"messages": [item(), item(to="broken"), item(scheduledAt="2026-01-01T13:00:00Z")]}
    r = await env.post(BATCH, body)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert set(answer) == {"id", "data", "accepted", "rejected", "duplicate"}
    assert (answer["accepted"], answer["rejected"], answer["duplicate"]) == (2, 1, False)
    assert "idempotent-replayed" not in r.headers
    first, refused, scheduled = answer["data"]
    assert set(first) == {"index", "id", "status", "createdAt", "scheduledAt"}
    assert (first["index"], first["status"], first["createdAt"], first["scheduledAt"]) == (
        0,
        "QUEUED",
        "2026-01-01T12:00:00.000Z",
        None,
    )
    assert refused["index"] == 1
    assert set(refused) == {"index", "error"}
    assert set(refused["error"]) == {"error", "code", "details"}
    assert (refused["error"]["code"], list(refused["error"]["details"])) == (
        "VALIDATION_ERROR",
        ["to"],
    )
    assert (scheduled["status"], scheduled["scheduledAt"]) == (
        "SCHEDULED",
        "2026-01-01T13:00:00.000Z",
    )
    got = await env.get(f"/v1/public/emails/{first['id']}")
    assert got.json()["status"] == "QUEUED"


async def test_http_idempotent_replay_and_refusals(env: Env) -> None:
    """Header key: replay 200 with Idempotent-Replayed; another payload 422; keys differ 400."""
    body = {"messages": [item()]}
    first = await env.post(BATCH, body, **{"x-idempotency-key": "b1"})
    again = await env.post(BATCH, {**body, "idempotencyKey": "b1"})
    assert again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["duplicate"] is True
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["data"] == first.json()["data"]
    r = await env.post(BATCH, {"messages": [item(subject="Other")]}, **{"x-idempotency-key": "b1"})
    details = assert_error(r, 422, "IDEMPOTENCY_KEY_REUSED")
    assert details == {"idempotencyKey": "b1", "originalEndpoint": "emails.batch"}
    r = await env.post(BATCH, {**body, "idempotencyKey": "a"}, **{"x-idempotency-key": "b"})
    assert assert_error(r, 400, "VALIDATION_ERROR") == {
        "idempotencyKey": "differs from the x-idempotency-key header"
    }


async def test_http_key_in_flight_answers_409(env: Env) -> None:
    """A concurrent request with the key of a batch still in flight answers 409."""
    with env.ct.emails._in_flight.hold(env.ct.org.id, "busy"):
        r = await env.post(BATCH, {"messages": [item()]}, **{"x-idempotency-key": "busy"})
    assert_error(r, 409, "IDEMPOTENCY_KEY_IN_USE")


@pytest.mark.parametrize(
    ("body", "details"),
    [
        ({"messages": []}, {"messages": "must be a list of 1 to 3 messages"}),
        ({}, {"messages": "must be a list of 1 to 3 messages"}),
        ({"messages": "x"}, {"messages": "must be a list of 1 to 3 messages"}),
        ({"messages": [OK] * 4}, {"messages": "must hold at most 3 messages, got 4"}),
        ({"messages": [OK], "extra": 1}, {"extra": "unknown field"}),
        (
            {"messages": [OK], "idempotencyKey": ""},
            {"idempotencyKey": "must be a non-empty string"},
        ),
    ],
)
async def test_http_whole_batch_refusals(env: Env, body: dict, details: dict) -> None:
    """A malformed batch is one 400 (limits from the settings) and stores nothing."""
    r = await env.post(BATCH, body)
    assert assert_error(r, 400, "VALIDATION_ERROR") == details
    assert count(env.ct, "messages") == 0


async def test_http_auth_and_body_refusals(env: Env) -> None:
    """No key 401, read-only key 403, a body that is not JSON 400 INVALID_JSON."""
    assert_error(await env.client.post(BATCH, json={"messages": [OK]}), 401, "UNAUTHORIZED")
    r = await env.post(BATCH, {"messages": [OK]}, key=env.reader)
    assert assert_error(r, 403, "INSUFFICIENT_SCOPE") == {"requiredScope": "send:email"}
    r = await env.client.post(BATCH, content=b"[1,", headers=env.auth())
    assert_error(r, 400, "INVALID_JSON")


async def test_http_storage_failure_is_a_500_and_stores_nothing(env: Env) -> None:
    """A failing write answers the 500 envelope; no item of the batch is stored."""
    pg.refuse_inserts(env.ct.backend.conn, "refuse_all", "x")
    r = await env.post(BATCH, {"messages": [item(), item()]})
    assert_error(r, 500, "INTERNAL_ERROR")
    assert count(env.ct, "email_batches") == count(env.ct, "events") == 0


async def test_http_sandbox_key_sandboxes_every_item(env: Env) -> None:
    """A ct_test_ key's batch is accepted and marked sandbox, item by item."""
    r = await env.post(BATCH, {"messages": [item(), item()]}, key=env.sandbox)
    assert r.json()["accepted"] == 2
    for result in r.json()["data"]:
        got = await env.get(f"/v1/public/emails/{result['id']}")
        assert got.json()["sandbox"] is True


async def test_http_replay_after_delivery_shows_current_statuses(env: Env) -> None:
    """The stored answer is replayed with each message's status as it is now."""
    body = {"messages": [item()], "idempotencyKey": "later"}
    await env.post(BATCH, body)
    env.clock.advance(5)
    await env.ct.run_worker_until_idle()
    again = (await env.post(BATCH, body)).json()
    assert again["data"][0]["status"] == "SENT"
    assert again["data"][0]["createdAt"] == "2026-01-01T12:00:00.000Z"
