"""Customer webhooks end to end in process: fan-out, signing, retries, replay, rotation, disable.

A real receiver (:mod:`webhook_receiver`, uvicorn on loopback) verifies each
request with the ``standardwebhooks`` package; time moves only on the manual clock.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import random
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import pg
from commtunnel import Commtunnel, Settings
from commtunnel.domain.errors import (
    ConflictError,
    InsufficientScopeError,
    InternalError,
    NotFoundError,
    ValidationError,
    WebhookUrlNotAllowedError,
)
from commtunnel.domain.keys import Principal, Scope
from commtunnel.domain.webhooks import DeliveryStatus
from commtunnel.providers.webhook_http import HttpWebhookSender
from commtunnel.services.webhook_worker import WebhookWorker
from commtunnel.services.webhooks import WebhookService
from commtunnel.testing import ManualClock, MockProvider
from processes import free_port
from webhook_receiver import Failure, Receiver

pytestmark = pytest.mark.anyio

SCHEDULE = (0.0, 5.0, 300.0, 1800.0)


@pytest.fixture
def settings() -> Settings:
    return Settings(
        embedded_worker=False,
        lease_seconds=60,
        send_timeout=5,
        webhooks_allow_private=True,  # the receiver is on loopback
        webhook_retry_schedule=SCHEDULE,
        webhook_timeout=5.0,
    )


@pytest.fixture
async def receiver(clock: ManualClock) -> AsyncIterator[Receiver]:
    async with Receiver(clock).running() as r:
        yield r


def admin(ct: Commtunnel) -> Principal:
    return Principal(org_id=ct.org.id, scopes=frozenset({Scope.WEBHOOKS_MANAGE.value}))


async def endpoint_for(ct: Commtunnel, receiver: Receiver, **fields: Any) -> str:
    created = await ct.webhooks.create(admin(ct), {"url": receiver.url, **fields})
    receiver.secrets.append(created.secret)
    return created.endpoint.id


async def send_email(ct: Commtunnel, **extra: Any) -> str:
    result = await ct.email.send(
        from_="a@example.com", to="bob@example.net", subject="Hi", text="Hello", **extra
    )
    return result.message.id


async def deliveries(ct: Commtunnel, **filters: Any) -> list[Any]:
    page = await ct.webhooks.deliveries(admin(ct), limit=100, **filters)
    return page.items


# --------------------------------------------------------------------------- delivery


async def test_every_lifecycle_event_reaches_the_receiver_signed(
    ct: Commtunnel, receiver: Receiver
) -> None:
    """queued, processing and sent arrive signed, with the payload shape of the contract."""
    await endpoint_for(ct, receiver)
    message_id = await send_email(ct)
    await ct.run_worker_until_idle()
    assert await ct.run_webhooks_until_idle() == 3
    assert receiver.types() == ["email_queued", "email_processing", "email_sent"]
    assert all(r.verified_with for r in receiver.received)
    sent = receiver.received[-1]
    payload = sent.payload
    assert payload["id"] == sent.headers["webhook-id"]
    assert payload["createdAt"].endswith("Z")
    assert payload["data"]["messageId"] == message_id
    assert payload["data"]["channel"] == "email"
    assert payload["data"]["status"] == "SENT"
    assert payload["data"]["to"] == "bob@example.net"
    assert payload["data"]["attempt"] == 1
    assert sent.headers["webhook-timestamp"] == str(int(ct.clock.now().timestamp()))
    assert sent.headers["content-type"] == "application/json"
    timeline = await ct.email.timeline(message_id)
    assert [r.payload["id"] for r in receiver.received] == [e.id for e in timeline]


async def test_event_filter_and_disabled_endpoints(ct: Commtunnel, receiver: Receiver) -> None:
    """A filter limits the types; a disabled endpoint gets nothing; all go to an unfiltered one."""
    only_sent = await endpoint_for(ct, receiver, events=["email_sent"])
    off = await endpoint_for(ct, receiver, enabled=False)
    await send_email(ct)
    await ct.run_worker_until_idle()
    await ct.run_webhooks_until_idle()
    assert receiver.types() == ["email_sent"]
    assert [d.endpoint_id for d, _ in await deliveries(ct)] == [only_sent]
    assert (await deliveries(ct, endpoint_id=off)) == []


async def test_a_signature_made_with_another_secret_does_not_verify(
    ct: Commtunnel, receiver: Receiver
) -> None:
    """The receiver's check is real: a request signed for another endpoint fails it."""
    await endpoint_for(ct, receiver)
    other = await ct.webhooks.create(admin(ct), {"url": receiver.url})  # secret unknown
    await send_email(ct)
    await ct.run_webhooks_until_idle()
    verdicts = sorted(bool(r.verified_with) for r in receiver.received)
    assert verdicts == [False, True]
    (bad,) = await deliveries(ct, endpoint_id=other.endpoint.id)
    assert bad[0].status == DeliveryStatus.PENDING  # 401 from the receiver: retried
    assert bad[1][0].status_code == 401


# --------------------------------------------------------------------------- retries


async def test_retries_follow_the_schedule_with_jitter_and_log_every_attempt(
    ct: Commtunnel, receiver: Receiver, clock: ManualClock
) -> None:
    """Fail, fail, fail, then 2xx: attempts at 0, ~5 s, ~300 s, ~1800 s, each logged."""
    endpoint = await endpoint_for(ct, receiver, events=["email_queued"])
    big = b"x" * 10_000
    receiver.fail_next(3, Failure(status=500, body=big))
    await send_email(ct)
    start = clock.now()
    assert await ct.run_webhooks_until_idle() == 1
    for delay in SCHEDULE[1:]:
        ((delivery, attempts),) = await deliveries(ct, endpoint_id=endpoint)
        assert delivery.status == DeliveryStatus.PENDING
        assert delivery.next_attempt_at is not None
        wait = (delivery.next_attempt_at - clock.now()).total_seconds()
        assert delay * 0.9 <= wait <= delay * 1.1
        assert wait != delay  # jittered
        clock.advance(wait - 0.001)
        assert await ct.run_webhooks_until_idle() == 0  # not yet due
        clock.advance(0.001)
        assert await ct.run_webhooks_until_idle() == 1
    ((delivery, attempts),) = await deliveries(ct, endpoint_id=endpoint)
    assert delivery.status == DeliveryStatus.SUCCEEDED
    assert [a.number for a in attempts] == [1, 2, 3, 4]
    assert [a.status_code for a in attempts] == [500, 500, 500, 204]
    assert [a.succeeded for a in attempts] == [False, False, False, True]
    assert attempts[0].error == "HTTP 500"
    assert attempts[0].response_body == "x" * 4096
    assert attempts[0].started_at == start
    ids = {r.headers["webhook-id"] for r in receiver.received}
    assert len(ids) == 1  # the same id on every retry, for de-duplication
    endpoint_now = await ct.webhooks.get(admin(ct), endpoint)
    assert endpoint_now.failing_since is None  # healthy again


async def test_the_schedule_used_up_fails_the_delivery(
    ct: Commtunnel, receiver: Receiver, clock: ManualClock
) -> None:
    """After the last scheduled attempt fails the delivery is FAILED, with nothing more due."""
    endpoint = await endpoint_for(ct, receiver, events=["email_queued"])
    receiver.fail_next(len(SCHEDULE), Failure(status=503))
    await send_email(ct)
    for _ in SCHEDULE:
        await ct.run_webhooks_until_idle()
        clock.advance(4000)
    ((delivery, attempts),) = await deliveries(ct, endpoint_id=endpoint)
    assert delivery.status == DeliveryStatus.FAILED
    assert delivery.next_attempt_at is None
    assert delivery.last_status_code == 503
    assert len(attempts) == len(SCHEDULE)
    assert await ct.webhook_store.next_delivery_at() is None


@pytest.mark.parametrize("status", [429, 502, 504])
async def test_retry_after_is_honoured(
    ct: Commtunnel, receiver: Receiver, clock: ManualClock, status: int
) -> None:
    """429/502/504 with Retry-After: the next attempt waits that long, not the schedule's 5 s."""
    endpoint = await endpoint_for(ct, receiver, events=["email_queued"])
    receiver.fail_next(1, Failure(status=status, headers={"Retry-After": "120"}))
    await send_email(ct)
    await ct.run_webhooks_until_idle()
    ((delivery, _),) = await deliveries(ct, endpoint_id=endpoint)
    assert delivery.next_attempt_at == clock.now() + timedelta(seconds=120)


async def test_a_retry_after_shorter_than_the_schedule_does_not_hurry_the_retry(
    ct: Commtunnel, receiver: Receiver, clock: ManualClock
) -> None:
    """``Retry-After: 0`` from a proxy still waits the schedule's ~5 s, so attempts last."""
    endpoint = await endpoint_for(ct, receiver, events=["email_queued"])
    receiver.fail_next(1, Failure(status=502, headers={"Retry-After": "0"}))
    await send_email(ct)
    await ct.run_webhooks_until_idle()
    ((delivery, _),) = await deliveries(ct, endpoint_id=endpoint)
    assert delivery.next_attempt_at is not None
    assert 4.5 <= (delivery.next_attempt_at - clock.now()).total_seconds() <= 5.5


async def test_retry_after_is_ignored_on_other_statuses(
    ct: Commtunnel, receiver: Receiver, clock: ManualClock
) -> None:
    """A 500's Retry-After does not change the schedule."""
    endpoint = await endpoint_for(ct, receiver, events=["email_queued"])
    receiver.fail_next(1, Failure(status=500, headers={"Retry-After": "120"}))
    await send_email(ct)
    await ct.run_webhooks_until_idle()
    ((delivery, _),) = await deliveries(ct, endpoint_id=endpoint)
    assert delivery.next_attempt_at is not None
    assert 4.5 <= (delivery.next_attempt_at - clock.now()).total_seconds() <= 5.5


async def test_a_compressed_answer_is_logged_decoded(ct: Commtunnel, receiver: Receiver) -> None:
    """A gzip-encoded error body lands in the attempt log as text, not as compressed bytes."""
    endpoint = await endpoint_for(ct, receiver, events=["email_queued"])
    body = gzip.compress(b"failing politely")
    receiver.fail_next(1, Failure(status=500, body=body, headers={"Content-Encoding": "gzip"}))
    await send_email(ct)
    await ct.run_webhooks_until_idle()
    ((_, attempts),) = await deliveries(ct, endpoint_id=endpoint)
    assert attempts[0].response_body == "failing politely"
    assert receiver.received[0].headers["accept-encoding"] == "identity"


async def test_a_redirect_is_a_failure_and_is_not_followed(
    ct: Commtunnel, receiver: Receiver
) -> None:
    """A 3xx answer is recorded as a failed attempt; the Location is never requested."""
    endpoint = await endpoint_for(ct, receiver, events=["email_queued"])
    receiver.fail_next(1, Failure(status=307, headers={"Location": receiver.url + "?again"}))
    await send_email(ct)
    await ct.run_webhooks_until_idle()
    ((delivery, attempts),) = await deliveries(ct, endpoint_id=endpoint)
    assert attempts[0].status_code == 307 and not attempts[0].succeeded
    assert delivery.status == DeliveryStatus.PENDING
    assert len(receiver.received) == 1


async def test_a_hanging_receiver_times_out_and_is_retried(
    ct: Commtunnel, receiver: Receiver
) -> None:
    """No answer within the timeout: a failed attempt without status code, retried later."""
    endpoint = await endpoint_for(ct, receiver, events=["email_queued"])
    receiver.fail_next(1, Failure(hang=True))
    await send_email(ct)
    sender = HttpWebhookSender(allow_private=True, timeout=0.3)
    worker = WebhookWorker(ct.webhook_store, ct.webhooks, ct.clock, sender=sender)
    try:
        assert await worker.run_until_idle() == 1
    finally:
        await sender.aclose()
    ((delivery, attempts),) = await deliveries(ct, endpoint_id=endpoint)
    assert attempts[0].status_code is None
    assert attempts[0].error == "timeout after 0.3 s"
    assert delivery.status == DeliveryStatus.PENDING


async def test_a_refused_connection_is_retried(ct: Commtunnel, clock: ManualClock) -> None:
    """Nobody listening: the attempt fails with a connection error and stays PENDING."""
    created = await ct.webhooks.create(admin(ct), {"url": f"http://127.0.0.1:{free_port()}/"})
    await send_email(ct)
    await ct.run_webhooks_until_idle()
    ((delivery, attempts),) = await deliveries(ct, endpoint_id=created.endpoint.id)
    assert delivery.status == DeliveryStatus.PENDING
    assert attempts[0].status_code is None and "ConnectError" in (attempts[0].error or "")


# --------------------------------------------------------------------------- disabling


async def test_410_gone_disables_the_endpoint_at_once(ct: Commtunnel, receiver: Receiver) -> None:
    """410: delivery FAILED, endpoint disabled (reason gone), endpoint_disabled to the others."""
    gone = await endpoint_for(ct, receiver, events=["email_queued"])
    watcher = await endpoint_for(ct, receiver, events=["endpoint_disabled"])
    receiver.fail_next(1, Failure(status=410))
    await send_email(ct)
    await ct.run_webhooks_until_idle()
    endpoint = await ct.webhooks.get(admin(ct), gone)
    assert not endpoint.enabled and endpoint.disabled_reason == "gone"
    ((delivery, _),) = await deliveries(ct, endpoint_id=gone)
    assert delivery.status == DeliveryStatus.FAILED
    ((notice, _),) = await deliveries(ct, endpoint_id=watcher)
    assert notice.status == DeliveryStatus.SUCCEEDED
    body = receiver.received[-1].payload
    assert body["type"] == "endpoint_disabled"
    assert body["data"]["endpointId"] == gone and body["data"]["reason"] == "gone"
    await send_email(ct)
    assert [d.id for d, _ in await deliveries(ct, endpoint_id=gone)] == [delivery.id]


async def test_repeated_failure_over_the_window_disables_the_endpoint(
    tmp_path: Path, clock: ManualClock, receiver: Receiver
) -> None:
    """Failing without a success for COMMTUNNEL_WEBHOOK_DISABLE_AFTER disables the endpoint."""
    settings = Settings(
        embedded_worker=False,
        webhooks_allow_private=True,
        webhook_retry_schedule=(0, 400, 400, 400),
        webhook_disable_after=1000,
    )
    async with Commtunnel.open(
        db=pg.fresh_db(tmp_path / "d.db"),
        email_provider=MockProvider(),
        clock=clock,
        settings=settings,
    ) as ct:
        await ct.admin.add_sender(ct.org.id, "example.com")
        endpoint_id = await endpoint_for(ct, receiver, events=["email_queued"])
        receiver.fail_next(100)
        await send_email(ct)
        for _ in range(3):  # t = 0, ~400, ~800: failing, not yet for 1000 s
            await ct.run_webhooks_until_idle()
            assert (await ct.webhooks.get(admin(ct), endpoint_id)).enabled
            clock.advance(440)
        await ct.run_webhooks_until_idle()  # t ≈ 1200
        endpoint = await ct.webhooks.get(admin(ct), endpoint_id)
        assert not endpoint.enabled and endpoint.disabled_reason == "failing"
        rows = ct.backend.conn.execute(
            "SELECT type, details FROM events WHERE message_id IS NULL"
        ).fetchall()
        assert [(t, json.loads(d)["reason"]) for t, d in rows] == [("endpoint_disabled", "failing")]
        await ct.webhooks.update(admin(ct), endpoint_id, {"enabled": True})
        again = await ct.webhooks.get(admin(ct), endpoint_id)
        assert again.enabled and again.failing_since is None and again.disabled_reason is None


# --------------------------------------------------------------------------- replay, test


async def test_replay_sends_the_same_event_again_as_a_new_delivery(
    ct: Commtunnel, receiver: Receiver
) -> None:
    """Replay: a new delivery pointing at the original, the same webhook-id, delivered."""
    endpoint = await endpoint_for(ct, receiver, events=["email_queued"])
    await send_email(ct)
    await ct.run_webhooks_until_idle()
    ((original, _),) = await deliveries(ct, endpoint_id=endpoint)
    replay = await ct.webhooks.replay(admin(ct), original.id)
    assert replay.replay_of == original.id and replay.id != original.id
    await ct.run_webhooks_until_idle()
    first, second = receiver.received
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == original.event_id
    assert first.body == second.body
    items = await deliveries(ct, endpoint_id=endpoint)
    assert [d.id for d, _ in items] == [replay.id, original.id]  # newest first
    assert items[0][0].status == DeliveryStatus.SUCCEEDED


async def test_test_event_goes_to_one_endpoint_whatever_its_filter(
    ct: Commtunnel, receiver: Receiver
) -> None:
    """webhook.test reaches the endpoint it was sent to even when filtered, and no other."""
    target = await endpoint_for(ct, receiver, events=["email_bounced"])
    await endpoint_for(ct, receiver)
    delivery = await ct.webhooks.send_test(admin(ct), target)
    await ct.run_webhooks_until_idle()
    assert receiver.types() == ["webhook.test"]
    body = receiver.received[0].payload
    assert body["id"] == delivery.event_id and body["data"]["endpointId"] == target


async def test_replay_and_test_refuse_a_disabled_endpoint(
    ct: Commtunnel, receiver: Receiver
) -> None:
    """409 CONFLICT for a disabled endpoint; 404 for unknown ids."""
    endpoint = await endpoint_for(ct, receiver)
    await send_email(ct)
    ((delivery, _),) = await deliveries(ct, endpoint_id=endpoint)
    await ct.webhooks.update(admin(ct), endpoint, {"enabled": False})
    with pytest.raises(ConflictError):
        await ct.webhooks.send_test(admin(ct), endpoint)
    with pytest.raises(ConflictError):
        await ct.webhooks.replay(admin(ct), delivery.id)
    with pytest.raises(NotFoundError):
        await ct.webhooks.replay(admin(ct), "nope")
    with pytest.raises(NotFoundError):
        await ct.webhooks.send_test(admin(ct), "nope")


async def test_pending_deliveries_of_a_disabled_endpoint_fail_without_a_request(
    ct: Commtunnel, receiver: Receiver
) -> None:
    """Disabled between fan-out and attempt: FAILED "endpoint disabled", nothing POSTed."""
    endpoint = await endpoint_for(ct, receiver, events=["email_queued"])
    await send_email(ct)
    await ct.webhooks.update(admin(ct), endpoint, {"enabled": False})
    await ct.run_webhooks_until_idle()
    ((delivery, attempts),) = await deliveries(ct, endpoint_id=endpoint)
    assert delivery.status == DeliveryStatus.FAILED
    assert attempts[0].error == "endpoint disabled"
    assert receiver.received == []


# --------------------------------------------------------------------------- rotation


async def test_rotation_signs_with_both_secrets_during_the_grace_period(
    ct: Commtunnel, receiver: Receiver, clock: ManualClock
) -> None:
    """After a rotation both secrets verify for 24 h; then only the new one does."""
    created = await ct.webhooks.create(admin(ct), {"url": receiver.url, "events": ["email_queued"]})
    old = created.secret
    rotated = await ct.webhooks.rotate_secret(admin(ct), created.endpoint.id)
    new = rotated.secret
    assert new != old and new.startswith("whsec_")
    receiver.secrets[:] = [old, new]
    await send_email(ct)
    await ct.run_webhooks_until_idle()
    assert receiver.received[-1].verified_with == [old, new]
    assert len(receiver.received[-1].headers["webhook-signature"].split(" ")) == 2
    clock.advance(86_400)
    await send_email(ct)
    await ct.run_webhooks_until_idle()
    assert receiver.received[-1].verified_with == [new]
    assert receiver.received[-1].headers["webhook-signature"].count("v1,") == 1


async def test_secrets_are_stored_encrypted_when_the_server_has_a_key(
    tmp_path: Path, clock: ManualClock, receiver: Receiver
) -> None:
    """With COMMTUNNEL_SECRET_KEY the stored secret is not the whsec_ text, yet it signs."""
    settings = Settings(embedded_worker=False, webhooks_allow_private=True, secret_key="k" * 32)
    async with Commtunnel.open(
        db=pg.fresh_db(tmp_path / "k.db"),
        email_provider=MockProvider(),
        clock=clock,
        settings=settings,
    ) as ct:
        await ct.admin.add_sender(ct.org.id, "example.com")
        await endpoint_for(ct, receiver, events=["email_queued"])
        stored = ct.backend.conn.execute("SELECT secret FROM webhook_endpoints").fetchone()[0]
        assert not stored.startswith("whsec_") and receiver.secrets[0] not in stored
        await send_email(ct)
        await ct.run_webhooks_until_idle()
        assert receiver.received[0].verified_with == receiver.secrets
        # A server that lost its key cannot sign with the stored secret: an internal error.
        keyless = WebhookService(ct.webhook_store, clock, sender=HttpWebhookSender())
        (endpoint,) = await ct.webhook_store.list_endpoints(ct.org.id)
        with pytest.raises(InternalError, match="COMMTUNNEL_SECRET_KEY"):
            keyless.signing_secrets(endpoint, clock.now())


# --------------------------------------------------------------------------- durability


async def test_deliveries_committed_with_their_events_are_sent_by_a_later_facade(
    tmp_path: Path, clock: ManualClock, settings: Settings, receiver: Receiver
) -> None:
    """The fan-out is committed with the event: a facade opened later on the file delivers it.

    (The SIGKILL version, with real processes, is in test_e2e_webhooks.py.)
    """
    db = pg.fresh_db(tmp_path / "crash.db")
    async with Commtunnel.open(
        db=db, email_provider=MockProvider(), clock=clock, settings=settings
    ) as first:
        await first.admin.add_sender(first.org.id, "example.com")
        await endpoint_for(first, receiver, events=["email_queued"])
        message_id = await send_email(first)
        # the process dies here: no webhook worker ran
    assert receiver.received == []
    async with Commtunnel.open(
        db=db, email_provider=MockProvider(), clock=clock, settings=settings
    ) as second:
        assert await second.run_webhooks_until_idle() == 1
    assert receiver.types() == ["email_queued"]
    assert receiver.received[0].payload["data"]["messageId"] == message_id


async def test_a_worker_that_dies_mid_attempt_leaves_a_lease_that_expires(
    ct: Commtunnel, receiver: Receiver, clock: ManualClock
) -> None:
    """A claimed but unrecorded delivery is claimed again once its lease has expired."""
    await endpoint_for(ct, receiver, events=["email_queued"])
    await send_email(ct)
    claimed = await ct.webhook_store.claim_deliveries(now=clock.now(), limit=10, lease_seconds=60)
    assert len(claimed) == 1  # this "worker" dies without recording anything
    assert await ct.run_webhooks_until_idle() == 0
    clock.advance(60)
    assert await ct.run_webhooks_until_idle() == 1
    assert receiver.types() == ["email_queued"]
    completion = await ct.webhook_worker.attempt(claimed[0])
    assert await ct.webhook_store.complete_delivery(completion) is False  # fenced out


# --------------------------------------------------------------------------- SSRF guard


def _resolver(table: dict[str, list[str]]) -> Any:
    async def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise OSError(-2, "Name or service not known")
        return table[host]

    return resolve


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1/hook", "loopback"),
        ("http://[::1]/hook", "loopback"),
        ("http://10.1.2.3/", "private"),
        ("https://192.168.0.10/", "private"),
        ("http://169.254.169.254/latest/meta-data", "metadata"),
        ("http://100.100.100.200/", "metadata"),
        ("http://[fd00:ec2::254]/", "metadata"),
        ("http://100.64.0.1/", "non-public"),
        ("http://224.0.0.1/", "multicast"),
        ("http://0.0.0.0/", "unspecified"),
        ("http://[::ffff:127.0.0.1]/", "loopback"),
        ("http://inside.example/", "private"),
        ("http://mixed.example/", "loopback"),
        ("http://nowhere.example/", "does not resolve"),
    ],
)
async def test_ssrf_guard_refuses_non_public_hosts_at_creation(
    ct: Commtunnel, url: str, reason: str
) -> None:
    """Loopback, private, link-local, metadata, multicast... and unresolvable hosts: refused."""
    table = {
        "inside.example": ["10.0.0.5"],
        "mixed.example": ["93.184.216.34", "127.0.0.1"],
    }
    sender = HttpWebhookSender(resolve=_resolver(table))
    service = WebhookService(ct.webhook_store, ct.clock, sender=sender)
    with pytest.raises(WebhookUrlNotAllowedError) as err:
        await service.create(admin(ct), {"url": url})
    assert reason in err.value.details["url"]
    assert await ct.webhook_store.list_endpoints(ct.org.id) == []


async def test_ssrf_guard_checks_again_at_delivery_time(ct: Commtunnel, clock: ManualClock) -> None:
    """A host that pointed outside at creation and resolves to loopback later is not POSTed to."""
    table = {"hooks.example": ["93.184.216.34"]}
    sender = HttpWebhookSender(resolve=_resolver(table))
    service = WebhookService(ct.webhook_store, clock, sender=sender)
    created = await service.create(admin(ct), {"url": "https://hooks.example/in"})
    table["hooks.example"] = ["127.0.0.1"]  # DNS rebinding
    worker = WebhookWorker(ct.webhook_store, service, clock, sender=sender, schedule=SCHEDULE)
    try:
        await send_email(ct)
        assert await worker.run_until_idle() == 1
    finally:
        await sender.aclose()
    ((delivery, attempts),) = await deliveries(ct, endpoint_id=created.endpoint.id)
    assert attempts[0].error == "refused: hooks.example resolves to a loopback address 127.0.0.1"
    assert attempts[0].status_code is None
    assert delivery.status == DeliveryStatus.PENDING


async def test_public_hosts_pass_the_guard(ct: Commtunnel) -> None:
    """Public addresses pass; allowing private ones still refuses cloud metadata."""
    sender = HttpWebhookSender(
        resolve=_resolver({"hooks.example": ["93.184.216.34", "2606:4700::1"]})
    )
    allowing = HttpWebhookSender(allow_private=True)
    try:
        assert await sender.check_url("https://hooks.example/x") is None
        assert await allowing.check_url("http://127.0.0.1/") is None
        refused = await allowing.check_url("http://169.254.169.254/latest/meta-data")
        assert refused == "169.254.169.254 resolves to a cloud metadata address 169.254.169.254"
        answer = await allowing.post("http://169.254.169.254/", b"{}", {})
        assert answer.status_code is None and (answer.error or "").startswith("refused: ")
    finally:
        await sender.aclose()
        await allowing.aclose()


async def test_the_request_goes_to_the_address_the_guard_checked(receiver: Receiver) -> None:
    """The sender connects to the address it resolved and checked, never resolving twice;
    the Host header keeps the name (so DNS rebinding cannot redirect the request)."""
    port = int(receiver.url.rsplit(":", 1)[1].split("/", 1)[0])
    lookups: list[str] = []

    async def resolve(host: str, port_: int) -> list[str]:
        lookups.append(host)
        return ["127.0.0.1"]

    sender = HttpWebhookSender(allow_private=True, resolve=resolve)
    try:
        answer = await sender.post(f"http://hooks.example:{port}/hook", b"{}", {})
    finally:
        await sender.aclose()
    assert lookups == ["hooks.example"]  # one lookup; the name itself resolves nowhere
    assert answer.status_code == 401  # reached the receiver (unsigned, so refused there)
    assert receiver.received[0].headers["host"] == f"hooks.example:{port}"


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("2002:7f00:1::", "loopback address 127.0.0.1 (inside 2002:7f00:1::)"),
        ("fec0::1", "site-local address fec0::1"),
        ("::ffff:10.0.0.1", "private address 10.0.0.1"),
        ("93.184.216.34", None),
        ("2606:4700::1", None),
    ],
)
def test_refused_addresses_look_inside_ipv6_transition_forms(
    address: str, reason: str | None
) -> None:
    """6to4 and IPv4-mapped addresses are judged by the IPv4 they carry; site-local is refused."""
    from commtunnel.domain.webhooks import refused_address

    assert refused_address(address) == reason


# --------------------------------------------------------------------------- management rules


async def test_management_refusals(ct: Commtunnel, receiver: Receiver) -> None:
    """Scope, unknown fields, bad URLs, unknown or empty event lists, long descriptions, 404s."""
    reader = Principal(org_id=ct.org.id, scopes=frozenset({Scope.READ_EMAIL.value}))
    with pytest.raises(InsufficientScopeError):
        await ct.webhooks.list_endpoints(reader)
    cases: list[tuple[dict[str, Any], str]] = [
        ({}, "url"),
        ({"url": "ftp://x.example/"}, "url"),
        ({"url": "http://user:pw@x.example/"}, "url"),
        ({"url": "http:///nohost"}, "url"),
        ({"url": "http://x.example:99999/"}, "url"),
        ({"url": "http://x.example/" + "a" * 2048}, "url"),
        ({"url": receiver.url, "events": ["email_sent", "email_nope"]}, "events"),
        ({"url": receiver.url, "events": []}, "events"),
        ({"url": receiver.url, "events": "email_sent"}, "events"),
        ({"url": receiver.url, "description": "d" * 501}, "description"),
        ({"url": receiver.url, "enabled": "yes"}, "enabled"),
        ({"url": receiver.url, "secret": "whsec_mine"}, "secret"),
    ]
    for payload, field in cases:
        with pytest.raises(ValidationError) as err:
            await ct.webhooks.create(admin(ct), payload)
        assert field in err.value.details, payload
    endpoint = await endpoint_for(ct, receiver)
    with pytest.raises(ValidationError):
        await ct.webhooks.update(admin(ct), endpoint, {})
    with pytest.raises(NotFoundError):
        await ct.webhooks.update(admin(ct), "missing", {"enabled": False})
    with pytest.raises(NotFoundError):
        await ct.webhooks.rotate_secret(admin(ct), "missing")
    with pytest.raises(ValidationError):
        await ct.webhooks.deliveries(admin(ct), limit=0)
    with pytest.raises(ValidationError) as err:
        await ct.webhooks.deliveries(admin(ct), cursor="not-a-delivery-id")
    assert set(err.value.details) == {"cursor"}
    with pytest.raises(NotFoundError):
        await ct.webhooks.deliveries(admin(ct), endpoint_id="missing")
    other_org = Principal(org_id="another-org", scopes=admin(ct).scopes)
    with pytest.raises(NotFoundError):
        await ct.webhooks.get(other_org, endpoint)
    with pytest.raises(NotFoundError):
        await ct.webhooks.delete(other_org, endpoint)
    await ct.webhooks.delete(admin(ct), endpoint)
    with pytest.raises(NotFoundError):
        await ct.webhooks.delete(admin(ct), endpoint)


async def test_update_changes_fields_and_keeps_the_rest(
    ct: Commtunnel, receiver: Receiver, clock: ManualClock
) -> None:
    """PATCH-style update: only the given fields change; disabling records when and why."""
    endpoint = await endpoint_for(ct, receiver, description="orders", events=["email_sent"])
    clock.advance(10)
    updated = await ct.webhooks.update(
        admin(ct), endpoint, {"events": ["email_opened", "email_clicked"], "enabled": False}
    )
    assert updated.events == ("email_clicked", "email_opened")
    assert updated.description == "orders" and updated.url == receiver.url
    assert not updated.enabled and updated.disabled_reason == "manual"
    assert updated.disabled_at == clock.now() and updated.updated_at == clock.now()
    assert await ct.webhooks.get(admin(ct), endpoint) == updated
    cleared = await ct.webhooks.update(admin(ct), endpoint, {"events": None})
    assert cleared.events is None


async def test_a_test_event_body_is_valid_json_with_the_contract_shape(
    ct: Commtunnel, receiver: Receiver
) -> None:
    """The stored body of a test event parses and names its type and id."""
    endpoint = await endpoint_for(ct, receiver)
    delivery = await ct.webhooks.send_test(admin(ct), endpoint)
    assert delivery.payload is not None
    body = json.loads(delivery.payload)
    assert set(body) == {"type", "id", "createdAt", "data"}


async def test_deliveries_page_with_a_cursor(ct: Commtunnel, receiver: Receiver) -> None:
    """Pages of 2, newest first, the cursor absent on the last page; by message too."""
    endpoint = await endpoint_for(ct, receiver, events=["email_queued"])
    ids = [await send_email(ct) for _ in range(5)]
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = await ct.webhooks.deliveries(admin(ct), endpoint_id=endpoint, limit=2, cursor=cursor)
        pages += 1
        seen.extend(d.message_id or "" for d, _ in page.items)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert pages == 3 and seen == ids[::-1]
    by_message = await deliveries(ct, message_id=ids[2])
    assert [d.message_id for d, _ in by_message] == [ids[2]]


async def test_jitter_is_seeded_and_bounded(ct: Commtunnel) -> None:
    """The worker's rng makes the jitter reproducible (seeded in tests)."""
    from commtunnel.domain.webhooks import next_delay

    a = next_delay(SCHEDULE, 1, rng=random.Random(1))
    b = next_delay(SCHEDULE, 1, rng=random.Random(1))
    c = next_delay(SCHEDULE, 1, rng=random.Random(2))
    assert a == b and a is not None and 4.5 <= a <= 5.5
    assert c is not None and c != a  # another seed, another delay: jitter is applied
    assert next_delay(SCHEDULE, len(SCHEDULE), rng=random.Random(1)) is None


async def test_a_host_lookup_that_hangs_is_refused_within_the_timeout() -> None:
    """A resolver that never answers: the check refuses after the sender's timeout."""

    async def hang(host: str, port: int) -> list[str]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    sender = HttpWebhookSender(resolve=hang, timeout=0.05)
    try:
        assert await sender.check_url("https://slow.example/") == (
            "looking up the host took over 0.05 s"
        )
        answer = await sender.post("https://slow.example/", b"{}", {})
    finally:
        await sender.aclose()
    assert (answer.status_code, answer.error) == (None, "timeout after 0.05 s")


async def test_an_unresolvable_host_passes_creation_only_when_private_addresses_are_allowed() -> (
    None
):
    """With private addresses allowed a name may resolve later; each attempt still checks it."""
    resolve = _resolver({})
    strict = HttpWebhookSender(resolve=resolve)
    allowing = HttpWebhookSender(resolve=resolve, allow_private=True)
    try:
        assert await strict.check_url("https://later.example/") == (
            "host 'later.example' does not resolve (Name or service not known)"
        )
        assert await allowing.check_url("https://later.example/") is None
        answer = await allowing.post("https://later.example/", b"{}", {})
    finally:
        await strict.aclose()
        await allowing.aclose()
    assert (
        answer.error == "refused: host 'later.example' does not resolve (Name or service not known)"
    )


async def test_the_sender_closes_its_connections_at_the_end_of_async_with() -> None:
    """``async with HttpWebhookSender()`` closes it: a POST afterwards fails softly."""
    async with HttpWebhookSender(allow_private=True) as sender:
        pass
    answer = await sender.post("http://127.0.0.1:9/", b"{}", {})
    assert answer.status_code is None
    assert answer.error is not None and "closed" in answer.error.lower()
