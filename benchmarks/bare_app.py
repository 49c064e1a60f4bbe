"""The HTTP baseline: a bare Starlette ``POST`` endpoint answering 202 with JSON.

    python -m benchmarks.bare_app --port 8100

It reads the request body (so the same bytes cross the wire as for
Commtunnel) and answers a small fixed JSON object, nothing else: no auth, no
validation, no storage. Served exactly like ``commtunnel serve``: one uvicorn
process, uvloop, httptools, access log off.
"""

from __future__ import annotations

import argparse

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


async def send(request: Request) -> JSONResponse:
    await request.body()
    return JSONResponse(
        {"id": "0190c8d2-0000-7000-8000-000000000000", "status": "QUEUED", "duplicate": False},
        status_code=202,
    )


app = Starlette(routes=[Route("/v1/public/emails/send", send, methods=["POST"])])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        workers=1,
    )


if __name__ == "__main__":
    main()
