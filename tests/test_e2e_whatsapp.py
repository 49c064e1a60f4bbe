"""The README's WhatsApp round trip against real processes.

``commtunnel serve`` sends through a fake Graph API (``examples/fake_graph.py``,
its own process on loopback); a status webhook signed the way Meta signs it
(HMAC-SHA256 of the raw body with the app secret) then moves the message to
DELIVERED and READ.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import pg
from processes import (
    Spawned,
    clean_env,
    free_port,
    org_with_key,
    serve,
    stop_cleanly,
    wait_until_answering,
)

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
APP_SECRET = "meta-app-secret-for-e2e"
PNID = "106540352242922"


@pytest.fixture
def fake_graph(tmp_path: Path) -> Iterator[str]:
    """``examples/fake_graph.py`` on a free port; its base URL. Killed afterwards."""
    port = free_port()
    proc = Spawned(
        [sys.executable, str(ROOT / "examples" / "fake_graph.py"), "--port", str(port)],
        logs=tmp_path / "fake_graph",
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_answering(f"{base}/_requests", proc, "the fake Graph API")
        yield base
    finally:
        proc.kill()
        proc.wait(timeout=10)


def status_payload(wamid: str, status: str) -> dict[str, Any]:
    """A Meta ``messages`` webhook carrying one status of ``wamid`` on the platform line."""
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "WABA_ID",
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {
                                "display_phone_number": "15550001111",
                                "phone_number_id": PNID,
                            },
                            "statuses": [
                                {
                                    "id": wamid,
                                    "status": status,
                                    "timestamp": "1767268800",
                                    "recipient_id": "14155552671",
                                }
                            ],
                        },
                    }
                ],
            }
        ],
    }


def test_whatsapp_send_and_status_webhook_round_trip(
    tmp_path: Path, fake_graph: str, spawn: Callable[..., Spawned]
) -> None:
    """A send reaches the fake Graph; signed statuses move it to READ; a forged one is 401."""
    db = pg.fresh_db(tmp_path / "ct.db")
    key = org_with_key(db, "send:whatsapp,read:whatsapp")
    env = clean_env(
        COMMTUNNEL_EMAIL_PROVIDER=f"outbox://{tmp_path / 'outbox'}",
        COMMTUNNEL_SMS_PROVIDER=f"outbox://{tmp_path / 'outbox'}",
        WHATSAPP_CLOUD_API_ENABLED="true",
        WHATSAPP_GRAPH_BASE_URL=fake_graph,
        WHATSAPP_PHONE_NUMBER_ID=PNID,
        WHATSAPP_ACCESS_TOKEN="EAAfake-platform-token-000000",
        WHATSAPP_APP_SECRET=APP_SECRET,
        WHATSAPP_VERIFY_TOKEN="verify-me",
    )
    server, base = serve(spawn, db, env=env)
    auth = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=base, timeout=10.0) as http:
        challenge = http.get(
            "/v1/webhooks/whatsapp",
            params={
                "hub.mode": "subscribe",
                "hub.verify_token": "verify-me",
                "hub.challenge": "42",
            },
        )
        assert (challenge.status_code, challenge.text) == (200, "42")

        sent = http.post(
            "/v1/public/whatsapp/send",
            headers={**auth, "x-idempotency-key": "wa-e2e-1"},
            json={"to": "14155552671", "body": "Your table is ready"},
        )
        assert sent.status_code == 201, sent.text
        result = sent.json()
        assert (result["status"], result["duplicate"]) == ("SENT", False)
        wamid = result["providerMessageId"]
        assert wamid.startswith("wamid.FAKE")
        seen = httpx.get(f"{fake_graph}/_requests").json()
        assert seen[-1]["phoneNumberId"] == PNID
        assert seen[-1]["authorization"] == "Bearer EAAfake-platform-token-000000"
        assert seen[-1]["json"]["text"] == {"preview_url": False, "body": "Your table is ready"}

        for status in ("delivered", "read", "delivered"):  # the last one arrives late
            body = json.dumps(status_payload(wamid, status)).encode()
            signature = hmac.new(APP_SECRET.encode(), body, hashlib.sha256).hexdigest()
            hook = http.post(
                "/v1/webhooks/whatsapp",
                content=body,
                headers={
                    "Content-Type": "application/json",
                    "X-Hub-Signature-256": f"sha256={signature}",
                },
            )
            assert hook.status_code == 200, hook.text
        forged = http.post(
            "/v1/webhooks/whatsapp",
            content=json.dumps(status_payload(wamid, "failed")).encode(),
            headers={"Content-Type": "application/json", "X-Hub-Signature-256": "sha256=00"},
        )
        assert (forged.status_code, forged.json()["code"]) == (401, "INVALID_WEBHOOK_SIGNATURE")

        message = http.get(f"/v1/public/whatsapp/{result['id']}", headers=auth).json()
        assert message["status"] == "READ"
        events = http.get(f"/v1/public/whatsapp/{result['id']}/timeline", headers=auth).json()
        assert [e["type"] for e in events["events"]] == [
            "whatsapp_queued",
            "whatsapp_processing",
            "whatsapp_sent",
            "whatsapp_delivered",
            "whatsapp_read",
        ]

    stop_cleanly(server)
