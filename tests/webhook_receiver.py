"""A real webhook receiver for tests: an ASGI app under uvicorn on loopback.

It verifies every request with the ``standardwebhooks`` package itself (the
way a customer would), can be told to fail the first N calls (with a status,
headers, a body, or by hanging), and records what it got.

``standardwebhooks`` checks ``webhook-timestamp`` against its own "now" (5
minutes of tolerance); the receiver hands it the test's clock instead, so
retries hours apart on a :class:`~commtunnel.testing.ManualClock` verify as
they would in real time.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime, tzinfo
from typing import Any

import attrs
import standardwebhooks.webhooks as sw
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from commtunnel.ports import Clock


@attrs.define
class Received:
    """One request as the receiver saw it."""

    headers: dict[str, str]
    body: bytes
    verified_with: list[str]  # the secrets (of those the receiver knows) that verified it
    answered: int

    @property
    def payload(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


@attrs.define
class Failure:
    """How the receiver answers a call it is told to fail."""

    status: int = 500
    body: bytes = b"receiver failing on purpose"
    headers: dict[str, str] = attrs.field(factory=dict)
    hang: bool = False  # never answer (until the test ends)


@contextmanager
def clock_time(clock: Clock) -> Iterator[None]:
    """Make ``standardwebhooks`` read "now" from ``clock`` while verifying."""

    class _ClockDatetime(datetime):
        @classmethod
        def now(cls, tz: tzinfo | None = None) -> _ClockDatetime:
            value = clock.now().astimezone(tz)
            return cls.fromtimestamp(value.timestamp(), tz)

    original = sw.datetime  # type: ignore[attr-defined]
    sw.datetime = _ClockDatetime  # type: ignore[attr-defined]
    try:
        yield
    finally:
        sw.datetime = original  # type: ignore[attr-defined]


class Receiver:
    """The receiving end of a customer's webhook endpoint.

    Args:
        clock: the time ``standardwebhooks`` verifies timestamps against.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.secrets: list[str] = []
        self.received: list[Received] = []
        self.failures: list[Failure] = []
        self.answer: Callable[[Request], Response] | None = None
        self._release = asyncio.Event()
        self.url = ""

    def fail_next(self, count: int, failure: Failure | None = None) -> None:
        """Answer the next ``count`` calls with ``failure`` (a 500 by default)."""
        self.failures.extend([failure or Failure()] * count)

    def verified(self) -> list[Received]:
        """Requests whose signature verified with at least one known secret."""
        return [r for r in self.received if r.verified_with]

    def types(self) -> list[str]:
        """Event types of the requests answered 2xx, in arrival order."""
        return [r.payload["type"] for r in self.received if 200 <= r.answered < 300]

    async def _hook(self, request: Request) -> Response:
        body = await request.body()
        headers = {k.lower(): v for k, v in request.headers.items()}
        verified_with = []
        with clock_time(self.clock):
            for secret in self.secrets:
                try:
                    sw.Webhook(secret).verify(body, headers)
                except sw.WebhookVerificationError:
                    continue
                verified_with.append(secret)
        if self.failures:
            failure = self.failures.pop(0)
            self.received.append(Received(headers, body, verified_with, failure.status))
            if failure.hang:
                await self._release.wait()
            return Response(failure.body, status_code=failure.status, headers=failure.headers)
        status = 204 if verified_with else 401
        self.received.append(Received(headers, body, verified_with, status))
        return Response(status_code=status)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Receiver]:
        """Serve on ``127.0.0.1:<free port>`` for the duration of the block."""
        app = Starlette(routes=[Route("/hook", self._hook, methods=["POST"])])
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", lifespan="off")
        server = uvicorn.Server(config)
        # Listening before uvicorn starts: an early connection waits in the
        # backlog until the server accepts it, so no start-up wait is needed.
        sock.listen(128)
        task = asyncio.create_task(server.serve(sockets=[sock]))
        self.url = f"http://127.0.0.1:{port}/hook"
        try:
            yield self
        finally:
            self._release.set()
            server.should_exit = True
            await task
            sock.close()
