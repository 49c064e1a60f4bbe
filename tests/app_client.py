"""What the HTTP adapter's tests share: a client on the app, a keyed env, the envelope check."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import httpx
from starlette.types import ASGIApp

from commtunnel import Commtunnel


@asynccontextmanager
async def app_client(app: ASGIApp) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on ``app`` in process (the app's lifespan is not run)."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


@attrs.define
class ApiEnv:
    """A started facade, a client on its app and an API key; each test file adds its own parts."""

    ct: Commtunnel
    client: httpx.AsyncClient
    key: str

    def auth(self, key: str | None = None, **extra: str) -> dict[str, str]:
        """``Authorization: Bearer`` with ``key`` (the env's own by default), plus ``extra``."""
        return {"Authorization": f"Bearer {key or self.key}", **extra}

    async def post(
        self, path: str, body: Any, /, key: str | None = None, **headers: str
    ) -> httpx.Response:
        """POST ``body`` as JSON with ``key``'s bearer header and ``headers``."""
        return await self.client.post(path, json=body, headers=self.auth(key, **headers))

    async def get(self, path: str, key: str | None = None, **params: Any) -> httpx.Response:
        """GET ``path?params`` with ``key``'s bearer header."""
        return await self.client.get(path, params=params, headers=self.auth(key))


def assert_error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """Check the envelope's shape, status, code, message and request id; return its details."""
    assert r.status_code == status, r.text
    body = r.json()
    if status == 429:  # echoes Retry-After at the top level too
        assert body.pop("retryAfter") == int(r.headers["retry-after"])
    assert set(body) == {"error", "code", "requestId", "details"}
    assert body["code"] == code
    assert isinstance(body["error"], str) and body["error"]
    assert body["requestId"] == r.headers["x-request-id"]
    details: dict[str, Any] = body["details"]
    return details
