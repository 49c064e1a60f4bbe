"""The public email API over HTTP: what succeeds, and what idempotency answers."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import attrs
import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

import pg
from app_client import ApiEnv, app_client
from commtunnel import Commtunnel, Settings
from commtunnel.domain.delivery import ProviderResult
from commtunnel.ports import OutgoingEmail
from commtunnel.testing import ManualClock, MockProvider
from commtunnel_http import create_app
from commtunnel_http.wire import format_timestamp

pytestmark = pytest.mark.anyio

SEND = "/v1/public/emails/send"
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
EMAIL_SCOPES = frozenset({"send:email", "read:email"})
BODY = {"from": "Team <hi@example.com>", "to": "ada@example.org", "subject": "Hi", "text": "Hello"}


@attrs.define
class Env(ApiEnv):
    """The env (:class:`~app_client.ApiEnv`) with email scopes, its clock and its provider."""

    clock: ManualClock
    provider: MockProvider

    async def send(self, body: dict[str, Any] | None = None, **headers: str) -> httpx.Response:
        return await self.client.post(SEND, json=body or BODY, headers=self.auth(**headers))


@asynccontextmanager
async def open_env(tmp_path: Path, settings: Settings | None = None) -> AsyncIterator[Env]:
    """Build an :class:`Env` (the app's lifespan is not run: the facade is started here)."""
    clock, provider = ManualClock(), MockProvider()
    async with Commtunnel.open(
        db=pg.fresh_db(tmp_path / "ct.db"),
        email_provider=provider,
        clock=clock,
        settings=settings or Settings(embedded_worker=False),
    ) as ct:
        await ct.admin.add_sender(ct.org.id, "example.com")
        _, key = await ct.keys.create(ct.org.id, scopes=EMAIL_SCOPES)
        async with app_client(create_app(ct)) as client:
            yield Env(ct=ct, client=client, key=key, clock=clock, provider=provider)


@pytest.fixture
async def env(tmp_path: Path, anyio_backend: str) -> AsyncIterator[Env]:
    async with open_env(tmp_path) as e:
        yield e


async def test_send_answers_202_with_id_status_and_request_id(env: Env) -> None:
    """A send is accepted with 202, the documented shape, and an X-Request-Id."""
    r = await env.send()
    assert r.status_code == 202
    body = r.json()
    assert set(body) == {"id", "status", "createdAt", "duplicate"}
    assert body["status"] == "QUEUED"
    assert body["createdAt"] == "2026-01-01T12:00:00.000Z"
    assert body["duplicate"] is False
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])
    assert "idempotent-replayed" not in r.headers


async def test_sent_email_shows_status_attempts_and_timeline(env: Env) -> None:
    """After the worker runs, GET shows SENT with an attempt; timeline queued->processing->sent."""
    message_id = (await env.send()).json()["id"]
    env.clock.advance(1.5)
    assert await env.ct.run_worker_until_idle() == 1

    r = await env.client.get(f"/v1/public/emails/{message_id}", headers=env.auth())
    assert r.status_code == 200
    email = r.json()
    assert email["id"] == message_id
    assert email["channel"] == "email"
    assert email["status"] == "SENT"
    assert email["from"] == "Team <hi@example.com>"
    assert email["to"] == "ada@example.org"
    assert (email["subject"], email["text"], email["html"]) == ("Hi", "Hello", None)
    assert email["messageId"] == f"<{message_id}@example.com>"
    assert email["providerMessageId"] == "mock-1"
    assert email["attemptCount"] == 1
    assert email["sandbox"] is False
    assert email["createdAt"] == "2026-01-01T12:00:00.000Z"
    assert email["updatedAt"] == "2026-01-01T12:00:01.500Z"
    [attempt] = email["attempts"]
    assert attempt["number"] == 1
    assert attempt["provider"] == "mock"
    assert attempt["outcome"] == "accepted"
    assert attempt["status"] == "SENT"  # the message's status the attempt left
    assert attempt["errorCategory"] is None
    assert TIMESTAMP.fullmatch(attempt["timestamp"])

    r = await env.client.get(f"/v1/public/emails/{message_id}/timeline", headers=env.auth())
    assert r.status_code == 200
    timeline = r.json()
    assert timeline["id"] == message_id
    types = [e["type"] for e in timeline["events"]]
    assert types == ["email_queued", "email_processing", "email_sent"]
    assert [e["status"] for e in timeline["events"]] == ["QUEUED", "PROCESSING", "SENT"]
    assert all(TIMESTAMP.fullmatch(e["createdAt"]) for e in timeline["events"])
    assert timeline["events"][-1]["createdAt"] == "2026-01-01T12:00:01.500Z"
    assert set(timeline["events"][0]) == {"id", "type", "status", "createdAt", "details"}


async def test_timeline_limit_caps_the_events(env: Env) -> None:
    """``limit=1`` returns only the oldest event."""
    message_id = (await env.send()).json()["id"]
    await env.ct.run_worker_until_idle()
    r = await env.client.get(
        f"/v1/public/emails/{message_id}/timeline", params={"limit": "1"}, headers=env.auth()
    )
    assert [e["type"] for e in r.json()["events"]] == ["email_queued"]


async def test_template_send_renders_variables(env: Env) -> None:
    """A send by templateId renders the template with the variables given."""
    template = await env.ct.admin.add_template(
        env.ct.org.id, name="welcome", subject="Hi {{ name }}", html="<p>{{ name }}</p>", text=None
    )
    body = {
        "from": "hi@example.com",
        "to": "ada@example.org",
        "templateId": template.id,
        "variables": {"name": "Ada"},
    }
    message_id = (await env.send(body)).json()["id"]
    email = (await env.client.get(f"/v1/public/emails/{message_id}", headers=env.auth())).json()
    assert (email["subject"], email["html"], email["templateId"]) == (
        "Hi Ada",
        "<p>Ada</p>",
        template.id,
    )


async def test_preview_renders_without_queuing(env: Env) -> None:
    """Preview renders liquid sources, estimates the size, and queues nothing."""
    payload = {"subject": "Hi {{ n }}", "html": "<p>é</p>", "variables": {"n": "Ada"}}
    r = await env.client.post(
        "/v1/public/emails/preview", json={**payload, "tracking": True}, headers=env.auth()
    )
    assert r.status_code == 200
    assert r.json() == {
        "subject": "Hi Ada",
        "html": "<p>é</p>",
        "text": None,
        "trackingEnabled": True,
        "estimatedSizeBytes": len("Hi Ada") + len("<p>é</p>".encode()) + 300,
        "moderation": {"blocked": False, "token": None},
    }
    assert await env.ct.backend.pending_job_count() == 0


async def test_preview_tracking_defaults_to_false(env: Env) -> None:
    """Without ``tracking`` the preview says trackingEnabled false."""
    r = await env.client.post("/v1/public/emails/preview", json={"text": "x"}, headers=env.auth())
    assert r.json()["trackingEnabled"] is False


async def test_stats_count_by_status_and_event(env: Env) -> None:
    """Stats count messages by status and events by type within the window."""
    await env.send()
    await env.send()
    await env.ct.run_worker_until_idle()
    await env.send()
    window = {"start": "2026-01-01T11:00:00Z", "end": "2026-01-01T14:00:00+01:00"}
    r = await env.client.get("/v1/public/emails/stats", params=window, headers=env.auth())
    assert r.status_code == 200
    stats = r.json()
    assert stats["start"] == "2026-01-01T11:00:00.000Z"
    assert stats["end"] == "2026-01-01T13:00:00.000Z"
    assert stats["total"] == 3
    assert stats["byStatus"] == {"SENT": 2, "QUEUED": 1}
    assert stats["events"] == {"email_queued": 3, "email_processing": 2, "email_sent": 2}


async def test_test_key_sends_to_the_sandbox(env: Env) -> None:
    """A ct_test_ key's email reaches SENT through the sandbox, never the provider."""
    _, test_key = await env.ct.keys.create(env.ct.org.id, scopes=EMAIL_SCOPES, test=True)
    assert test_key.startswith("ct_test_")
    r = await env.client.post(SEND, json=BODY, headers=env.auth(test_key))
    assert r.status_code == 202
    await env.ct.run_worker_until_idle()
    email = (await env.client.get(f"/v1/public/emails/{r.json()['id']}", headers=env.auth())).json()
    assert email["sandbox"] is True
    assert email["status"] == "SENT"
    assert [a["provider"] for a in email["attempts"]] == ["sandbox"]
    assert env.provider.sent == []


async def test_same_key_same_payload_replays_the_original(env: Env) -> None:
    """A repeated key and payload answers the same id, duplicate true, and sends once."""
    first = await env.send(**{"x-idempotency-key": "order-1"})
    second = await env.send(**{"x-idempotency-key": "order-1"})
    assert second.status_code == 202
    assert second.json()["id"] == first.json()["id"]
    assert second.json()["duplicate"] is True
    assert second.headers["idempotent-replayed"] == "true"
    await env.ct.run_worker_until_idle()
    assert len(env.provider.sent) == 1


async def test_body_idempotency_key_deduplicates_too(env: Env) -> None:
    """The ``idempotencyKey`` body field deduplicates like the header."""
    body = {**BODY, "idempotencyKey": "k-body"}
    first, second = await env.send(body), await env.send(body)
    assert second.json() == {**first.json(), "duplicate": True}


async def test_same_key_other_payload_is_422(env: Env) -> None:
    """Reusing a key with another payload answers 422 IDEMPOTENCY_KEY_REUSED."""
    await env.send(**{"x-idempotency-key": "k"})
    r = await env.send({**BODY, "subject": "Other"}, **{"x-idempotency-key": "k"})
    assert r.status_code == 422
    assert r.json()["code"] == "IDEMPOTENCY_KEY_REUSED"
    assert await env.ct.backend.pending_job_count() == 1


async def test_key_in_flight_is_409(env: Env) -> None:
    """A key whose first request is still in flight answers 409 IDEMPOTENCY_KEY_IN_USE."""
    with env.ct.emails._in_flight.hold(env.ct.org.id, "busy"):
        r = await env.send(**{"x-idempotency-key": "busy"})
    assert r.status_code == 409
    assert r.json()["code"] == "IDEMPOTENCY_KEY_IN_USE"
    assert (await env.send(**{"x-idempotency-key": "busy"})).status_code == 202


async def test_key_expires_after_the_retention_window(tmp_path: Path, anyio_backend: str) -> None:
    """After the retention window the same key creates a new message."""
    settings = Settings(embedded_worker=False, idempotency_retention=60)
    async with open_env(tmp_path, settings) as env:
        first = (await env.send(**{"x-idempotency-key": "k"})).json()
        env.clock.advance(30)
        assert (await env.send(**{"x-idempotency-key": "k"})).json()["id"] == first["id"]
        env.clock.advance(31)
        later = (await env.send(**{"x-idempotency-key": "k"})).json()
    assert later["id"] != first["id"]
    assert later["duplicate"] is False


async def test_other_organizations_email_is_404_like_a_missing_one(env: Env) -> None:
    """Another organization's email answers exactly what a random id answers."""
    message_id = (await env.send()).json()["id"]
    other = await env.ct.admin.create_org("other")
    _, other_key = await env.ct.keys.create(other.id, scopes=EMAIL_SCOPES)
    missing = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"
    for suffix in ("", "/timeline"):
        theirs = await env.client.get(
            f"/v1/public/emails/{message_id}{suffix}", headers=env.auth(other_key)
        )
        random = await env.client.get(
            f"/v1/public/emails/{missing}{suffix}", headers=env.auth(other_key)
        )
        assert theirs.status_code == random.status_code == 404
        a, b = theirs.json(), random.json()
        assert a["details"].pop("id") == message_id
        assert b["details"].pop("id") == missing
        a.pop("requestId"), b.pop("requestId")
        assert a == b
        assert a["code"] == "NOT_FOUND"


async def test_healthz_reports_schema_and_pending_jobs(env: Env) -> None:
    """/healthz needs no key and counts the jobs not yet done."""
    await env.send()
    r = await env.client.get("/healthz")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok"
    assert body["schemaVersion"] == env.ct.backend.schema_version() >= 1
    assert body["pendingJobs"] == 1


async def test_lifespan_starts_worker_and_closes_facade(tmp_path: Path, anyio_backend: str) -> None:
    """The lifespan starts the facade and the embedded worker, and closes both on shutdown."""
    delivered = anyio.Event()

    def accept(email: OutgoingEmail) -> ProviderResult:
        delivered.set()
        return ProviderResult.accepted("p-1")

    provider = MockProvider(accept)
    ct = Commtunnel.open(
        db=pg.fresh_db(tmp_path / "ct.db"),
        email_provider=provider,
        clock=ManualClock(),
        settings=Settings(),
    )
    app = create_app(ct)
    async with app.router.lifespan_context(app):
        await ct.admin.add_sender(ct.org.id, "example.com")
        _, key = await ct.keys.create(ct.org.id, scopes=EMAIL_SCOPES)
        async with app_client(app) as client:
            r = await client.post(SEND, json=BODY, headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 202
        with anyio.fail_after(5):
            await delivered.wait()
    assert provider.closed
    with pytest.raises(RuntimeError, match="not open"):
        ct.backend.schema_version()


@given(
    st.datetimes(
        min_value=datetime(1900, 1, 1), max_value=datetime(9000, 1, 1), timezones=st.timezones()
    )
)
def test_wire_timestamps_are_utc_milliseconds_z(value: datetime) -> None:
    """Any aware datetime goes on the wire as UTC with milliseconds and Z, the same instant."""
    text = format_timestamp(value)
    assert TIMESTAMP.fullmatch(text)
    back = datetime.fromisoformat(text)
    assert timedelta(0) <= value - back < timedelta(milliseconds=1)
