"""A stand-in for Meta's Graph API, for trying the WhatsApp channel without a Meta account.

It answers ``POST /{version}/{phone-number-id}/messages`` the way the Cloud
API documents (https://developers.facebook.com/docs/whatsapp/cloud-api/reference/messages):
``200 {"messaging_product": "whatsapp", "contacts": [...], "messages": [{"id": "wamid..."}]}``,
and refuses a missing bearer token with Graph's error object (code 190).
Every request it received is listed at ``GET /_requests``.

    python examples/fake_graph.py --port 8099
    WHATSAPP_GRAPH_BASE_URL=http://127.0.0.1:8099 ... commtunnel serve
"""

from __future__ import annotations

import argparse
import itertools
import json
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

received: list[dict[str, Any]] = []
_ids = itertools.count(1)


async def messages(request: Request) -> JSONResponse:
    """Accept one message send as Graph does, or refuse it as Graph would."""
    auth = request.headers.get("authorization", "")
    body = json.loads(await request.body())
    received.append(
        {
            "phoneNumberId": request.path_params["phone_number_id"],
            "authorization": auth,
            "json": body,
        }
    )
    if not auth.startswith("Bearer "):
        error = {
            "message": "An access token is required to request this resource.",
            "type": "OAuthException",
            "code": 190,
            "fbtrace_id": "fake",
        }
        return JSONResponse({"error": error}, status_code=401)
    wamid = f"wamid.FAKE{next(_ids):06d}"
    return JSONResponse(
        {
            "messaging_product": "whatsapp",
            "contacts": [{"input": body.get("to"), "wa_id": body.get("to")}],
            "messages": [{"id": wamid}],
        }
    )


async def requests_seen(_request: Request) -> JSONResponse:
    """Everything received so far, oldest first."""
    return JSONResponse(received)


app = Starlette(
    routes=[
        Route("/{version}/{phone_number_id}/messages", messages, methods=["POST"]),
        Route("/_requests", requests_seen),
    ]
)


def main() -> None:
    """Serve the fake on 127.0.0.1 (``--port``, default 8099)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8099)
    args = parser.parse_args()
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
