"""Customer webhooks over HTTP: every ``/v1/public/webhooks`` route's answer and refusal.

The rules themselves (signing, retries, the SSRF guard's address table) are
tested at the service level in ``test_webhooks.py``; here each route is
driven through the Starlette app and its status, shape and error code checked.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest

import pg
from app_client import ApiEnv, app_client, assert_error
from commtunnel import Commtunnel, Settings
from commtunnel.testing import ManualClock, MockProvider
from commtunnel_http import create_app
from webhook_receiver import Receiver

pytestmark = pytest.mark.anyio

BASE = "/v1/public/webhooks"
DELIVERIES = f"{BASE}/deliveries"
SEND = "/v1/public/emails/send"
URL = "https://hooks.example.com/commtunnel"
PUBLIC_URL = "https://1.1.1.1/hook"  # a literal public address: the guard needs no DNS
UNKNOWN_ID = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
START = "2026-01-01T12:00:00.000Z"
SCOPES = frozenset({"webhooks:manage", "send:email", "read:email"})
EMAIL = {"from": "hi@example.com", "to": "ada@example.org", "subject": "Hi", "text": "Hello"}
ENDPOINT_KEYS = {
    "id",
    "url",
    "description",
    "events",
    "enabled",
    "disabledAt",
    "disabledReason",
    "failingSince",
    "secretRotatedUntil",
    "createdAt",
    "updatedAt",
}
DELIVERY_KEYS = {
    "id",
    "endpointId",
    "eventId",
    "eventType",
    "messageId",
    "status",
    "attemptCount",
    "nextAttemptAt",
    "replayOf",
    "lastStatusCode",
    "lastError",
    "createdAt",
    "updatedAt",
}

ALLOW_PRIVATE = Settings(embedded_worker=False, webhooks_allow_private=True)


@attrs.define
class Env(ApiEnv):
    """The env (:class:`~app_client.ApiEnv`) with webhook and email scopes, and more keys.

    ``no_scope_key`` lacks ``webhooks:manage``; ``other_key`` manages another
    organization's webhooks.
    """

    clock: ManualClock
    no_scope_key: str
    other_key: str

    async def create(self, body: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
        """POST an endpoint (``{"url": URL, **fields}`` by default), expecting 201."""
        r = await self.post(BASE, body if body is not None else {"url": URL, **fields})
        assert r.status_code == 201, r.text
        created: dict[str, Any] = r.json()
        return created

    async def patch(self, path: str, body: Any, key: str | None = None) -> httpx.Response:
        return await self.client.patch(path, json=body, headers=self.auth(key))

    async def delete(self, path: str, key: str | None = None) -> httpx.Response:
        return await self.client.delete(path, headers=self.auth(key))

    async def send_test(self, endpoint_id: str) -> dict[str, Any]:
        """Queue a test event for ``endpoint_id``, expecting 202."""
        r = await self.post(f"{BASE}/{endpoint_id}/test", None)
        assert r.status_code == 202, r.text
        delivery: dict[str, Any] = r.json()
        return delivery

    async def send_email(self) -> str:
        r = await self.post(SEND, EMAIL)
        assert r.status_code == 202, r.text
        message_id: str = r.json()["id"]
        return message_id

    async def endpoints(self, key: str | None = None) -> list[dict[str, Any]]:
        r = await self.get(BASE, key=key)
        assert r.status_code == 200, r.text
        data: list[dict[str, Any]] = r.json()["data"]
        return data

    async def deliveries(self, path: str = DELIVERIES, **params: Any) -> list[dict[str, Any]]:
        r = await self.get(path, **params)
        assert r.status_code == 200, r.text
        data: list[dict[str, Any]] = r.json()["data"]
        return data


@asynccontextmanager
async def open_env(tmp_path: Path, settings: Settings = ALLOW_PRIVATE) -> AsyncIterator[Env]:
    """Build an :class:`Env` (the app's lifespan is not run: the facade is started here)."""
    clock = ManualClock()
    async with Commtunnel.open(
        db=pg.fresh_db(tmp_path / "ct.db"),
        email_provider=MockProvider(),
        clock=clock,
        settings=settings,
    ) as ct:
        await ct.admin.add_sender(ct.org.id, "example.com")
        _, key = await ct.keys.create(ct.org.id, scopes=SCOPES)
        _, no_scope_key = await ct.keys.create(ct.org.id, scopes=frozenset({"send:email"}))
        other = await ct.admin.create_org("other")
        _, other_key = await ct.keys.create(other.id, scopes=frozenset({"webhooks:manage"}))
        async with app_client(create_app(ct)) as client:
            yield Env(
                ct=ct,
                client=client,
                key=key,
                clock=clock,
                no_scope_key=no_scope_key,
                other_key=other_key,
            )


@pytest.fixture
async def env(tmp_path: Path, anyio_backend: str) -> AsyncIterator[Env]:
    async with open_env(tmp_path) as e:
        yield e


@pytest.fixture
async def guarded(tmp_path: Path, anyio_backend: str) -> AsyncIterator[Env]:
    """An env with the default settings: the SSRF guard refuses non-public addresses."""
    async with open_env(tmp_path, Settings(embedded_worker=False)) as e:
        yield e


# --------------------------------------------------------------------------- endpoints


async def test_create_answers_201_with_the_secret_once(env: Env) -> None:
    """Creation answers 201 with the endpoint and a ``whsec_`` secret; events are sorted."""
    r = await env.post(
        BASE,
        {
            "url": URL,
            "events": ["email_sent", "email_bounced", "email_sent"],
            "description": "orders",
        },
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert set(body) == ENDPOINT_KEYS | {"secret"}
    assert body["secret"].startswith("whsec_")
    assert len(body["secret"]) > len("whsec_") + 30
    assert body["url"] == URL
    assert body["events"] == ["email_bounced", "email_sent"]
    assert body["description"] == "orders"
    assert body["enabled"] is True
    assert (body["disabledAt"], body["disabledReason"], body["failingSince"]) == (None, None, None)
    assert body["secretRotatedUntil"] is None
    assert body["createdAt"] == body["updatedAt"] == START


async def test_create_defaults_to_every_event_and_enabled(env: Env) -> None:
    """Without ``events`` the endpoint receives every event; description defaults to ''."""
    body = await env.create()
    assert body["events"] is None
    assert body["description"] == ""
    assert body["enabled"] is True


async def test_create_disabled_records_a_manual_disable(env: Env) -> None:
    """``enabled: false`` at creation stores the endpoint disabled, reason ``manual``."""
    body = await env.create(enabled=False)
    assert body["enabled"] is False
    assert body["disabledAt"] == START
    assert body["disabledReason"] == "manual"


async def test_each_endpoint_gets_its_own_secret(env: Env) -> None:
    """Two endpoints never share a signing secret."""
    a, b = await env.create(), await env.create()
    assert a["id"] != b["id"]
    assert a["secret"] != b["secret"]


async def test_list_is_oldest_first_and_never_shows_a_secret(env: Env) -> None:
    """GET lists the organization's endpoints oldest first, without ``secret``."""
    a = await env.create(description="a")
    env.clock.advance(1)
    b = await env.create(description="b", url="https://hooks.example.com/other")
    other = await env.post(BASE, {"url": URL}, key=env.other_key)
    assert other.status_code == 201
    data = await env.endpoints()
    assert [e["id"] for e in data] == [a["id"], b["id"]]
    assert all(set(e) == ENDPOINT_KEYS for e in data)
    assert data[0] == {k: v for k, v in a.items() if k != "secret"}


async def test_list_is_empty_for_a_new_organization(env: Env) -> None:
    """An organization without endpoints lists ``{"data": []}``."""
    r = await env.get(BASE)
    assert r.status_code == 200
    assert r.json() == {"data": []}


async def test_get_shows_the_endpoint_without_its_secret(env: Env) -> None:
    """GET /{id} answers the endpoint as created, minus ``secret``."""
    created = await env.create(events=["email_sent"])
    r = await env.get(f"{BASE}/{created['id']}")
    assert r.status_code == 200
    body = r.json()
    assert "secret" not in body
    assert body == {k: v for k, v in created.items() if k != "secret"}


async def test_patch_changes_only_the_fields_given(env: Env) -> None:
    """PATCH changes url/events/description, keeps the rest, bumps updatedAt, hides the secret."""
    created = await env.create(events=["email_sent"], description="before")
    env.clock.advance(2.5)
    r = await env.patch(
        f"{BASE}/{created['id']}",
        {"url": "https://hooks.example.com/new", "description": "after"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == ENDPOINT_KEYS
    assert body["url"] == "https://hooks.example.com/new"
    assert body["description"] == "after"
    assert body["events"] == ["email_sent"]
    assert body["createdAt"] == START
    assert body["updatedAt"] == "2026-01-01T12:00:02.500Z"
    assert (await env.get(f"{BASE}/{created['id']}")).json() == body


async def test_patch_events_null_subscribes_to_every_event(env: Env) -> None:
    """``events: null`` removes the filter; a list replaces it, sorted."""
    created = await env.create(events=["email_sent"])
    path = f"{BASE}/{created['id']}"
    assert (await env.patch(path, {"events": None})).json()["events"] is None
    r = await env.patch(path, {"events": ["sms_sent", "email_opened"]})
    assert r.json()["events"] == ["email_opened", "sms_sent"]


async def test_patch_disable_then_enable(env: Env) -> None:
    """Disabling records ``manual``; enabling again clears disabledAt and the reason."""
    created = await env.create()
    path = f"{BASE}/{created['id']}"
    env.clock.advance(60)
    off = (await env.patch(path, {"enabled": False})).json()
    assert off["enabled"] is False
    assert off["disabledAt"] == "2026-01-01T12:01:00.000Z"
    assert off["disabledReason"] == "manual"
    on = (await env.patch(path, {"enabled": True})).json()
    assert on["enabled"] is True
    assert (on["disabledAt"], on["disabledReason"], on["failingSince"]) == (None, None, None)


async def test_rotate_secret_returns_a_new_secret_and_the_grace_end(env: Env) -> None:
    """rotate-secret answers 200 with a new ``whsec_`` secret; GET then shows no secret."""
    created = await env.create()
    env.clock.advance(10)
    r = await env.post(f"{BASE}/{created['id']}/rotate-secret", None)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == ENDPOINT_KEYS | {"secret"}
    assert body["secret"].startswith("whsec_")
    assert body["secret"] != created["secret"]
    assert body["secretRotatedUntil"] == "2026-01-02T12:00:10.000Z"  # 1 day of grace
    again = (await env.post(f"{BASE}/{created['id']}/rotate-secret", None)).json()
    assert again["secret"] not in {created["secret"], body["secret"]}
    shown = (await env.get(f"{BASE}/{created['id']}")).json()
    assert "secret" not in shown
    assert shown["secretRotatedUntil"] == "2026-01-02T12:00:10.000Z"


async def test_delete_answers_200_then_404(env: Env) -> None:
    """DELETE answers ``{id, deleted: true}``; the endpoint and its deliveries are gone."""
    created = await env.create()
    keep = await env.create()
    await env.send_test(created["id"])
    path = f"{BASE}/{created['id']}"
    r = await env.delete(path)
    assert r.status_code == 200
    assert r.json() == {"id": created["id"], "deleted": True}
    assert_error(await env.get(path), 404, "NOT_FOUND")
    assert_error(await env.delete(path), 404, "NOT_FOUND")
    assert [e["id"] for e in await env.endpoints()] == [keep["id"]]
    assert await env.deliveries() == []


# --------------------------------------------------------------------------- deliveries


async def test_test_event_answers_202_with_a_pending_delivery(env: Env) -> None:
    """POST /{id}/test queues one ``webhook.test`` delivery, due now, for that endpoint."""
    created = await env.create(events=["email_sent"])  # the filter does not apply
    r = await env.post(f"{BASE}/{created['id']}/test", None)
    assert r.status_code == 202, r.text
    body = r.json()
    assert set(body) == DELIVERY_KEYS
    assert body["eventType"] == "webhook.test"
    assert body["endpointId"] == created["id"]
    assert body["status"] == "PENDING"
    assert body["attemptCount"] == 0
    assert body["nextAttemptAt"] == START
    assert (body["messageId"], body["replayOf"]) == (None, None)
    assert (body["lastStatusCode"], body["lastError"]) == (None, None)
    [listed] = await env.deliveries(f"{BASE}/{created['id']}/deliveries")
    assert listed["id"] == body["id"]
    assert listed["attempts"] == []


async def test_endpoint_deliveries_page_with_a_cursor(env: Env) -> None:
    """Deliveries come newest first with attempts; ``nextCursor`` is absent on the last page."""
    created = await env.create()
    other = await env.create()
    ids = [(await env.send_test(created["id"]))["id"] for _ in range(3)]
    await env.send_test(other["id"])
    path = f"{BASE}/{created['id']}/deliveries"

    first = await env.get(path, limit=2)
    assert first.status_code == 200
    page = first.json()
    assert set(page) == {"data", "nextCursor"}
    assert [d["id"] for d in page["data"]] == ids[:0:-1]
    assert all(set(d) == DELIVERY_KEYS | {"attempts"} for d in page["data"])
    assert all(d["attempts"] == [] for d in page["data"])

    last = (await env.get(path, limit=2, cursor=page["nextCursor"])).json()
    assert set(last) == {"data"}
    assert [d["id"] for d in last["data"]] == ids[:1]

    assert [d["id"] for d in await env.deliveries(path)] == ids[::-1]


async def test_deliveries_of_every_endpoint_page_too(env: Env) -> None:
    """GET /deliveries lists every endpoint's deliveries of the organization, paged."""
    a, b = await env.create(), await env.create()
    first = (await env.send_test(a["id"]))["id"]
    second = (await env.send_test(b["id"]))["id"]
    other = await env.post(BASE, {"url": URL}, key=env.other_key)
    await env.post(f"{BASE}/{other.json()['id']}/test", None, key=env.other_key)
    page = (await env.get(DELIVERIES, limit=1)).json()
    assert [d["id"] for d in page["data"]] == [second]
    rest = (await env.get(DELIVERIES, limit=1, cursor=page["nextCursor"])).json()
    assert [d["id"] for d in rest["data"]] == [first]
    assert "nextCursor" not in rest


async def test_deliveries_by_message_id(env: Env) -> None:
    """``?messageId=`` keeps one message's deliveries: its events, not test events."""
    created = await env.create()
    await env.send_test(created["id"])
    first = await env.send_email()
    second = await env.send_email()
    mine = await env.deliveries(messageId=first)
    assert [d["messageId"] for d in mine] == [first]
    assert mine[0]["eventType"] == "email_queued"
    assert mine[0]["endpointId"] == created["id"]
    assert [d["messageId"] for d in await env.deliveries(messageId=second)] == [second]
    assert await env.deliveries(messageId=UNKNOWN_ID) == []
    assert len(await env.deliveries()) == 3


async def test_replay_answers_202_with_replay_of(env: Env) -> None:
    """Replay queues a new delivery of the same event, pointing at the original."""
    created = await env.create()
    original = await env.send_test(created["id"])
    env.clock.advance(30)
    r = await env.post(f"{DELIVERIES}/{original['id']}/replay", None)
    assert r.status_code == 202, r.text
    body = r.json()
    assert set(body) == DELIVERY_KEYS
    assert body["replayOf"] == original["id"]
    assert body["id"] != original["id"]
    assert body["eventId"] == original["eventId"]
    assert body["eventType"] == "webhook.test"
    assert body["status"] == "PENDING"
    assert body["attemptCount"] == 0
    assert body["createdAt"] == body["nextAttemptAt"] == "2026-01-01T12:00:30.000Z"
    listed = await env.deliveries()
    assert [(d["id"], d["replayOf"]) for d in listed] == [
        (body["id"], original["id"]),
        (original["id"], None),
    ]


async def test_a_delivery_reaches_a_real_receiver(tmp_path: Path, anyio_backend: str) -> None:
    """An email sent through the API is delivered signed; the log shows 204 for every event."""
    async with open_env(tmp_path) as env, Receiver(env.clock).running() as receiver:
        created = await env.create(url=receiver.url)
        receiver.secrets.append(created["secret"])
        message_id = await env.send_email()
        assert await env.ct.run_worker_until_idle() == 1
        assert await env.ct.run_webhooks_until_idle() == 3

        assert receiver.types() == ["email_queued", "email_processing", "email_sent"]
        assert all(r.verified_with == [created["secret"]] for r in receiver.received)
        deliveries = await env.deliveries(messageId=message_id)
        assert [d["eventType"] for d in deliveries] == [
            "email_sent",
            "email_processing",
            "email_queued",
        ]
        for delivery in deliveries:
            assert delivery["status"] == "SUCCEEDED"
            assert delivery["attemptCount"] == 1
            assert delivery["lastStatusCode"] == 204
            assert delivery["nextAttemptAt"] is None
            [attempt] = delivery["attempts"]
            assert attempt["number"] == 1
            assert attempt["statusCode"] == 204
            assert attempt["succeeded"] is True
            assert attempt["error"] is None
            assert TIMESTAMP.fullmatch(attempt["timestamp"])

        test = await env.send_test(created["id"])
        assert await env.ct.run_webhooks_until_idle() == 1
        assert receiver.types()[-1] == "webhook.test"
        [logged] = [d for d in await env.deliveries() if d["id"] == test["id"]]
        assert logged["status"] == "SUCCEEDED"
        assert logged["attempts"][0]["statusCode"] == 204


# --------------------------------------------------------------------------- refusals

# Every route, with a body where it reads one; ``{id}`` is filled in per test.
ROUTES = [
    ("POST", BASE, {"url": URL}),
    ("GET", BASE, None),
    ("GET", DELIVERIES, None),
    ("POST", f"{DELIVERIES}/{{id}}/replay", None),
    ("GET", f"{BASE}/{{id}}", None),
    ("PATCH", f"{BASE}/{{id}}", {"description": "changed"}),
    ("DELETE", f"{BASE}/{{id}}", None),
    ("POST", f"{BASE}/{{id}}/rotate-secret", None),
    ("GET", f"{BASE}/{{id}}/deliveries", None),
    ("POST", f"{BASE}/{{id}}/test", None),
]
ROUTE_IDS = [f"{method} {path}" for method, path, _ in ROUTES]


async def call(
    env: Env, method: str, path: str, body: Any, headers: dict[str, str]
) -> httpx.Response:
    return await env.client.request(method, path, json=body, headers=headers)


async def fixtures_for_routes(env: Env) -> tuple[str, str]:
    """An endpoint and one of its deliveries: what the ``{id}`` of the routes names."""
    created = await env.create()
    delivery = await env.send_test(created["id"])
    return created["id"], delivery["id"]


def fill(path: str, endpoint_id: str, delivery_id: str) -> str:
    return path.format(id=delivery_id if "replay" in path else endpoint_id)


@pytest.mark.parametrize(("method", "path", "body"), ROUTES, ids=ROUTE_IDS)
async def test_no_key_is_401(env: Env, method: str, path: str, body: Any) -> None:
    """Every route refuses a request without a key (401 UNAUTHORIZED), and one with a bad key."""
    endpoint_id, delivery_id = await fixtures_for_routes(env)
    path = fill(path, endpoint_id, delivery_id)
    assert_error(await call(env, method, path, body, {}), 401, "UNAUTHORIZED")
    bad = {"Authorization": "Bearer ct_live_not-a-real-key"}
    assert_error(await call(env, method, path, body, bad), 401, "UNAUTHORIZED")
    assert [e["id"] for e in await env.endpoints()] == [endpoint_id]
    assert len(await env.deliveries()) == 1


@pytest.mark.parametrize(("method", "path", "body"), ROUTES, ids=ROUTE_IDS)
async def test_key_without_webhooks_manage_is_403(
    env: Env, method: str, path: str, body: Any
) -> None:
    """Every route refuses a key lacking ``webhooks:manage`` (403) and changes nothing."""
    endpoint_id, delivery_id = await fixtures_for_routes(env)
    before = await env.endpoints()
    path = fill(path, endpoint_id, delivery_id)
    r = await call(env, method, path, body, env.auth(env.no_scope_key))
    assert_error(r, 403, "INSUFFICIENT_SCOPE")
    assert await env.endpoints() == before
    assert len(await env.deliveries()) == 1


BAD_FIELDS = [
    ({"url": "ftp://hooks.example.com/x"}, "url"),
    ({"url": "hooks.example.com/x"}, "url"),
    ({"url": "https://user:pw@hooks.example.com/x"}, "url"),
    ({"url": "https://token@hooks.example.com/x"}, "url"),
    ({"url": "https:///no-host"}, "url"),
    ({"url": "https://hooks.example.com:99999/x"}, "url"),
    ({"url": "https://hooks.example.com/" + "a" * 2048}, "url"),
    ({"url": 42}, "url"),
    ({"events": ["email_nope"]}, "events"),
    ({"events": ["email_sent", "webhook.test"]}, "events"),
    ({"events": []}, "events"),
    ({"events": "email_sent"}, "events"),
    ({"events": [1]}, "events"),
    ({"colour": "red"}, "colour"),
    ({"secret": "whsec_mine"}, "secret"),
    ({"enabled": "yes"}, "enabled"),
    ({"enabled": 1}, "enabled"),
    ({"description": "a" * 501}, "description"),
    ({"description": None}, "description"),
]


@pytest.mark.parametrize(("fields", "field"), BAD_FIELDS)
async def test_create_refuses_bad_fields(env: Env, fields: dict[str, Any], field: str) -> None:
    """A bad field is 400 VALIDATION_ERROR naming it; no endpoint is created."""
    details = assert_error(await env.post(BASE, {"url": URL, **fields}), 400, "VALIDATION_ERROR")
    assert field in details
    assert await env.endpoints() == []


async def test_create_needs_a_url(env: Env) -> None:
    """A body without ``url`` is refused naming it."""
    details = assert_error(await env.post(BASE, {"events": None}), 400, "VALIDATION_ERROR")
    assert "url" in details


async def test_create_reports_every_bad_field_at_once(env: Env) -> None:
    """Several bad fields are named together in one answer."""
    body = {"url": "ftp://x", "events": [], "enabled": "no", "description": 5}
    details = assert_error(await env.post(BASE, body), 400, "VALIDATION_ERROR")
    assert {"url", "events", "enabled", "description"} <= set(details)


async def test_description_of_500_characters_passes(env: Env) -> None:
    """The description limit is 500 characters: 500 is accepted."""
    assert (await env.create(description="a" * 500))["description"] == "a" * 500


@pytest.mark.parametrize(("fields", "field"), BAD_FIELDS)
async def test_patch_refuses_bad_fields(env: Env, fields: dict[str, Any], field: str) -> None:
    """PATCH refuses the same bad fields with 400 naming them, and changes nothing."""
    created = await env.create()
    path = f"{BASE}/{created['id']}"
    before = (await env.get(path)).json()
    details = assert_error(await env.patch(path, fields), 400, "VALIDATION_ERROR")
    assert field in details
    assert (await env.get(path)).json() == before


async def test_patch_with_an_empty_body_is_400(env: Env) -> None:
    """An empty PATCH body is 400 VALIDATION_ERROR (give at least one field)."""
    created = await env.create()
    details = assert_error(await env.patch(f"{BASE}/{created['id']}", {}), 400, "VALIDATION_ERROR")
    assert details


@pytest.mark.parametrize(
    ("method", "content", "content_type"),
    [
        ("POST", b"{not json", "application/json"),
        ("POST", b"[1, 2]", "application/json"),
        ("POST", b'{"url": NaN}', "application/json"),
        ("POST", b'{"url": "https://hooks.example.com/x"}', "text/plain"),
        ("PATCH", b"{not json", "application/json"),
        ("PATCH", b'"enabled"', "application/json"),
        ("PATCH", b"", "application/json"),
    ],
)
async def test_a_body_that_is_no_json_object_is_400_invalid_json(
    env: Env, method: str, content: bytes, content_type: str
) -> None:
    """Create and PATCH refuse a body that is not a JSON object with INVALID_JSON."""
    created = await env.create()
    path = BASE if method == "POST" else f"{BASE}/{created['id']}"
    headers = env.auth(**{"Content-Type": content_type})
    r = await env.client.request(method, path, content=content, headers=headers)
    assert_error(r, 400, "INVALID_JSON")
    assert len(await env.endpoints()) == 1


@pytest.mark.parametrize("route", ["all", "endpoint"])
@pytest.mark.parametrize(
    "limit", ["0", "101", "abc", "-1", "1.5", "", " 5", "\u0661"]
)  # Arabic-Indic one
async def test_bad_limit_is_400(env: Env, route: str, limit: str) -> None:
    """``limit`` must be a plain integer from 1 to 100 on both delivery listings."""
    created = await env.create()
    path = DELIVERIES if route == "all" else f"{BASE}/{created['id']}/deliveries"
    details = assert_error(await env.get(path, limit=limit), 400, "VALIDATION_ERROR")
    assert "limit" in details


@pytest.mark.parametrize("limit", ["1", "100"])
async def test_limit_bounds_are_accepted(env: Env, limit: str) -> None:
    """``limit=1`` and ``limit=100`` are inside the range."""
    created = await env.create()
    await env.send_test(created["id"])
    assert len(await env.deliveries(limit=limit)) == 1


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://localhost/",
        "http://10.0.0.7/hook",
        "https://192.168.1.1/hook",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://0.0.0.0/",
    ],
)
async def test_private_urls_are_refused_by_default(guarded: Env, url: str) -> None:
    """Without webhooks_allow_private, a non-public host is 400 WEBHOOK_URL_NOT_ALLOWED."""
    details = assert_error(await guarded.post(BASE, {"url": url}), 400, "WEBHOOK_URL_NOT_ALLOWED")
    assert "url" in details
    assert await guarded.endpoints() == []


async def test_patch_to_a_private_url_is_refused_by_default(guarded: Env) -> None:
    """Changing a public endpoint's URL to a private host is refused; the URL stays."""
    created = await guarded.create(url=PUBLIC_URL)
    path = f"{BASE}/{created['id']}"
    r = await guarded.patch(path, {"url": "http://169.254.169.254/"})
    assert_error(r, 400, "WEBHOOK_URL_NOT_ALLOWED")
    assert (await guarded.get(path)).json()["url"] == PUBLIC_URL


async def test_loopback_is_allowed_when_the_operator_allows_private(env: Env) -> None:
    """With webhooks_allow_private, a loopback URL is accepted."""
    assert (await env.create(url="http://127.0.0.1:9/hook"))["url"] == "http://127.0.0.1:9/hook"


ENDPOINT_ROUTES = [
    ("GET", f"{BASE}/{{id}}", None),
    ("PATCH", f"{BASE}/{{id}}", {"description": "changed"}),
    ("DELETE", f"{BASE}/{{id}}", None),
    ("POST", f"{BASE}/{{id}}/rotate-secret", None),
    ("POST", f"{BASE}/{{id}}/test", None),
    ("GET", f"{BASE}/{{id}}/deliveries", None),
]
ENDPOINT_ROUTE_IDS = [f"{method} {path}" for method, path, _ in ENDPOINT_ROUTES]


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINT_ROUTES, ids=ENDPOINT_ROUTE_IDS)
async def test_unknown_endpoint_is_404(env: Env, method: str, path: str, body: Any) -> None:
    """Every endpoint route answers an unknown id with 404 NOT_FOUND naming it."""
    details = assert_error(
        await call(env, method, path.format(id=UNKNOWN_ID), body, env.auth()), 404, "NOT_FOUND"
    )
    assert details == {"id": UNKNOWN_ID}


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINT_ROUTES, ids=ENDPOINT_ROUTE_IDS)
async def test_another_organizations_endpoint_is_404(
    env: Env, method: str, path: str, body: Any
) -> None:
    """An endpoint of another organization is 404 on every route and stays untouched."""
    r = await env.post(BASE, {"url": URL}, key=env.other_key)
    theirs = r.json()
    await env.post(f"{BASE}/{theirs['id']}/test", None, key=env.other_key)
    r = await call(env, method, path.format(id=theirs["id"]), body, env.auth())
    assert_error(r, 404, "NOT_FOUND")
    assert await env.endpoints(key=env.other_key) == [
        {k: v for k, v in theirs.items() if k != "secret"}
    ]
    r = await env.get(f"{BASE}/{theirs['id']}/deliveries", key=env.other_key)
    assert len(r.json()["data"]) == 1


async def test_replay_of_an_unknown_delivery_is_404(env: Env) -> None:
    """Replaying a delivery id that does not exist is 404 NOT_FOUND."""
    r = await env.post(f"{DELIVERIES}/{UNKNOWN_ID}/replay", None)
    assert assert_error(r, 404, "NOT_FOUND") == {"id": UNKNOWN_ID}


async def test_replay_of_another_organizations_delivery_is_404(env: Env) -> None:
    """A delivery of another organization cannot be replayed; nothing is queued."""
    theirs = (await env.post(BASE, {"url": URL}, key=env.other_key)).json()
    r = await env.post(f"{BASE}/{theirs['id']}/test", None, key=env.other_key)
    delivery_id = r.json()["id"]
    assert_error(await env.post(f"{DELIVERIES}/{delivery_id}/replay", None), 404, "NOT_FOUND")
    r = await env.get(DELIVERIES, key=env.other_key)
    assert [d["id"] for d in r.json()["data"]] == [delivery_id]


async def test_replay_after_the_endpoint_was_deleted_is_404(env: Env) -> None:
    """A delivery whose endpoint was deleted is gone with it: replay is 404."""
    created = await env.create()
    delivery = await env.send_test(created["id"])
    assert (await env.delete(f"{BASE}/{created['id']}")).status_code == 200
    assert_error(await env.post(f"{DELIVERIES}/{delivery['id']}/replay", None), 404, "NOT_FOUND")


async def test_test_and_replay_on_a_disabled_endpoint_are_409(env: Env) -> None:
    """A disabled endpoint refuses test events and replays with 409 CONFLICT; nothing is queued."""
    created = await env.create()
    delivery = await env.send_test(created["id"])
    path = f"{BASE}/{created['id']}"
    assert (await env.patch(path, {"enabled": False})).status_code == 200
    details = assert_error(await env.post(f"{path}/test", None), 409, "CONFLICT")
    assert details == {"id": created["id"], "disabledReason": "manual"}
    r = await env.post(f"{DELIVERIES}/{delivery['id']}/replay", None)
    assert assert_error(r, 409, "CONFLICT")["disabledReason"] == "manual"
    assert [d["id"] for d in await env.deliveries()] == [delivery["id"]]

    assert (await env.patch(path, {"enabled": True})).status_code == 200
    assert (await env.post(f"{path}/test", None)).status_code == 202


async def test_a_cursor_no_page_gave_is_refused(env: Env) -> None:
    """``cursor=garbage`` is a 400 naming the cursor, not a silently empty or full page."""
    endpoint = (await env.post(BASE, {"url": URL})).json()["id"]
    for path in ("/v1/public/webhooks/deliveries", f"/v1/public/webhooks/{endpoint}/deliveries"):
        r = await env.get(path, cursor="garbage")
        assert assert_error(r, 400, "VALIDATION_ERROR") == {
            "cursor": "not a cursor from a previous page"
        }
