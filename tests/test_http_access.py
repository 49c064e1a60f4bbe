"""Access rules over HTTP: RateLimit-* headers, 429 RATE_LIMITED, 403 IP_NOT_ALLOWED, proxies."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from app_client import assert_error
from commtunnel import Commtunnel, Settings
from commtunnel.testing import ManualClock, MockProvider
from commtunnel_http import create_app
from commtunnel_http.openapi import openapi_document

pytestmark = pytest.mark.anyio

SCOPES = frozenset({"send:email", "read:email"})
SEND = "/v1/public/emails/send"
READ = "/v1/public/emails/no-such-id"
BODY = {"from": "hi@example.com", "to": "ada@example.org", "subject": "Hi", "text": "Hello"}
OUTSIDE = "203.0.113.5"
OFFICE = "198.51.100.0/24"
INSIDE = "198.51.100.7"
PROXY = "10.0.0.2"


class Server:
    """A started facade with a key, and clients on its app from any peer address."""

    def __init__(self, ct: Commtunnel, key: str, key_id: str) -> None:
        self.ct = ct
        self.key = key
        self.key_id = key_id

    @asynccontextmanager
    async def client(self, peer: str = "127.0.0.1") -> AsyncIterator[httpx.AsyncClient]:
        """A client whose requests come from ``peer`` (the TCP peer the app sees)."""
        transport = httpx.ASGITransport(app=create_app(self.ct), client=(peer, 40_000))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            yield c

    async def get(self, peer: str = "127.0.0.1", **headers: str) -> httpx.Response:
        """A read with the key, from ``peer``, with ``headers``."""
        async with self.client(peer) as c:
            return await c.get(READ, headers={"Authorization": f"Bearer {self.key}", **headers})


OpenServer = Callable[..., Awaitable[Server]]


@pytest.fixture
async def open_server(tmp_path: Path, anyio_backend: str) -> AsyncIterator[OpenServer]:
    """``await open_server(**settings)``: a server with those settings (closed afterwards)."""
    opened: list[Commtunnel] = []

    async def open_(**settings: Any) -> Server:
        ct = Commtunnel.open(
            db=tmp_path / f"ct{len(opened)}.db",
            email_provider=MockProvider(),
            clock=ManualClock(),
            settings=Settings(embedded_worker=False, **settings),
        )
        opened.append(await ct.start())
        await ct.admin.add_sender(ct.org.id, "example.com")
        record, key = await ct.keys.create(ct.org.id, scopes=SCOPES)
        return Server(ct, key, record.id)

    yield open_
    for ct in opened:
        await ct.aclose()


@pytest.fixture
async def server(open_server: OpenServer) -> Server:
    return await open_server()


# --------------------------------------------------------------------------- headers


async def test_every_answer_to_a_key_carries_ratelimit_headers(server: Server) -> None:
    """A 2xx and a 4xx after the key both show limit, remaining, reset and policy."""
    await server.ct.access.set_key_rate_limit(server.ct.org.id, server.key_id, "100/day")
    async with server.client() as c:
        sent = await c.post(SEND, json=BODY, headers={"Authorization": f"Bearer {server.key}"})
        missing = await c.get(READ, headers={"Authorization": f"Bearer {server.key}"})
    assert sent.status_code == 202, sent.text
    assert sent.headers["ratelimit-limit"] == "100"
    assert sent.headers["ratelimit-remaining"] == "99"
    assert 0 < int(sent.headers["ratelimit-reset"]) <= 86_400
    assert sent.headers["ratelimit-policy"] == "100;w=86400"
    assert missing.status_code == 404
    assert missing.headers["ratelimit-remaining"] == "98"  # reads and sends: one bucket


async def test_requests_without_a_valid_key_are_not_counted(server: Server) -> None:
    """401s and keyless routes carry no RateLimit headers and use none of the key's quota."""
    async with server.client() as c:
        bad = await c.get(READ, headers={"Authorization": "Bearer ct_live_nope"})
        health = await c.get("/healthz")
    assert_error(bad, 401, "UNAUTHORIZED")
    assert "ratelimit-limit" not in bad.headers
    assert "ratelimit-limit" not in health.headers
    counted = await server.get()
    assert counted.headers["ratelimit-remaining"] == "99"
    assert counted.headers["ratelimit-policy"] == "100;w=60"  # the default: 100 a minute


# --------------------------------------------------------------------------- 429


async def test_over_the_limit_answers_429_with_retry_after(server: Server) -> None:
    """The third request of a 2/day key is 429 RATE_LIMITED; Retry-After in header and body."""
    await server.ct.access.set_key_rate_limit(server.ct.org.id, server.key_id, "2/day")
    assert [(await server.get()).status_code for _ in range(2)] == [404, 404]
    r = await server.get()
    details = assert_error(r, 429, "RATE_LIMITED")  # also checks body retryAfter == header
    wait = int(r.headers["retry-after"])
    assert 1 <= wait <= 86_400
    assert details == {"retryAfter": wait, "limit": "2/day"}
    assert r.json()["retryAfter"] == wait
    assert r.headers["ratelimit-remaining"] == "0"
    assert r.headers["ratelimit-limit"] == "2"
    assert "2/day" in r.json()["error"]


async def test_a_send_over_the_limit_is_refused_before_its_body_is_read(server: Server) -> None:
    """A send past the limit is 429 whatever its body: nothing is queued."""
    await server.ct.access.set_org_access(server.ct.org.id, rate_limit="1/day")
    async with server.client() as c:
        auth = {"Authorization": f"Bearer {server.key}"}
        assert (await c.post(SEND, json=BODY, headers=auth)).status_code == 202
        r = await c.post(SEND, content=b"not json", headers=auth)
    assert_error(r, 429, "RATE_LIMITED")
    assert await server.ct.run_worker_until_idle() == 1  # the first send only


async def test_the_org_limit_and_the_server_default_apply_over_http(
    open_server: OpenServer,
) -> None:
    """COMMTUNNEL_RATE_LIMIT sets the default; an organization's limit overrides it."""
    server = await open_server(rate_limit="1/day")
    assert (await server.get()).headers["ratelimit-policy"] == "1;w=86400"
    assert_error(await server.get(), 429, "RATE_LIMITED")
    await server.ct.access.set_org_access(server.ct.org.id, rate_limit="3/hour")
    r = await server.get()
    assert r.status_code == 404
    assert r.headers["ratelimit-policy"] == "3;w=3600"


# --------------------------------------------------------------------------- 403


async def test_an_address_outside_the_allowlist_is_ip_not_allowed(server: Server) -> None:
    """With an allowlist, a caller outside it is 403 IP_NOT_ALLOWED naming its address."""
    await server.ct.access.set_org_access(server.ct.org.id, ip_allowlist=[OFFICE])
    r = await server.get(OUTSIDE)
    assert assert_error(r, 403, "IP_NOT_ALLOWED") == {"ip": OUTSIDE}
    assert OUTSIDE in r.json()["error"]
    assert "ratelimit-limit" not in r.headers  # refused before counting
    assert (await server.get(INSIDE)).status_code == 404


async def test_without_an_allowlist_any_address_may_call(server: Server) -> None:
    """No allowlist (the default, or cleared with None) admits every address."""
    assert (await server.get(OUTSIDE)).status_code == 404
    await server.ct.access.set_org_access(server.ct.org.id, ip_allowlist=[OFFICE])
    await server.ct.access.set_org_access(server.ct.org.id, ip_allowlist=None)
    assert (await server.get(OUTSIDE)).status_code == 404


async def test_spoofed_forwarded_for_from_an_untrusted_peer_is_ignored(server: Server) -> None:
    """A client outside the allowlist cannot get in by claiming an inside X-Forwarded-For."""
    await server.ct.access.set_org_access(server.ct.org.id, ip_allowlist=[OFFICE])
    r = await server.get(OUTSIDE, **{"X-Forwarded-For": INSIDE})
    assert assert_error(r, 403, "IP_NOT_ALLOWED") == {"ip": OUTSIDE}


async def test_without_trusted_proxies_a_proxy_is_the_caller(server: Server) -> None:
    """Behind an undeclared proxy, the proxy's own address is checked, not the header."""
    await server.ct.access.set_org_access(server.ct.org.id, ip_allowlist=[OFFICE])
    r = await server.get(PROXY, **{"X-Forwarded-For": INSIDE})
    assert assert_error(r, 403, "IP_NOT_ALLOWED") == {"ip": PROXY}


async def test_behind_a_trusted_proxy_the_forwarded_client_is_checked(
    open_server: OpenServer,
) -> None:
    """Behind a trusted proxy the rightmost untrusted X-Forwarded-For hop is the caller."""
    server = await open_server(trusted_proxies="10.0.0.0/8")
    await server.ct.access.set_org_access(server.ct.org.id, ip_allowlist=[OFFICE])
    # The client spoofed the left entry; the proxy appended the real one.
    inside = await server.get(PROXY, **{"X-Forwarded-For": f"{OUTSIDE}, {INSIDE}"})
    assert inside.status_code == 404
    outside = await server.get(PROXY, **{"X-Forwarded-For": f"{INSIDE}, {OUTSIDE}"})
    assert assert_error(outside, 403, "IP_NOT_ALLOWED") == {"ip": OUTSIDE}
    chained = await server.get(PROXY, **{"X-Forwarded-For": f"{INSIDE}, 10.9.9.9"})
    assert chained.status_code == 404


# --------------------------------------------------------------------------- the document


def test_openapi_documents_the_refusals_and_headers_on_key_routes() -> None:
    """Every API-key operation documents 403 IP_NOT_ALLOWED, 429 with Retry-After, RateLimit-*."""
    document = openapi_document()
    unauthorized = {"$ref": "#/components/responses/Unauthorized"}
    checked = 0
    for item in document["paths"].values():
        for operation in item.values():
            responses = operation["responses"]
            if responses.get("401") != unauthorized:
                assert "429" not in responses or "RATE_LIMITED" not in str(responses["429"])
                continue
            checked += 1
            assert "IP_NOT_ALLOWED" in responses["403"]["description"]
            assert "RATE_LIMITED" in responses["429"]["description"]
            assert {"Retry-After", "RateLimit-Remaining"} <= set(responses["429"]["headers"])
            success = next(r for s, r in responses.items() if s.startswith("2"))
            assert "RateLimit-Limit" in success["headers"]
    assert checked > 20
    otp = document["paths"]["/v1/public/sms/otp/send"]["post"]["responses"]["429"]
    assert "OTP_COOLDOWN" in otp["description"]
    assert "RATE_LIMITED" in otp["description"]
    assert "retryAfter" in document["components"]["schemas"]["Error"]["properties"]
    assert document["paths"]["/healthz"]["get"]["responses"].keys() == {"200", "default"}
