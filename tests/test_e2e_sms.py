"""The README's SMS walkthrough, run against a real ``commtunnel serve`` process.

Request a sender ID -> a platform admin approves it -> send -> the outbox
provider writes the message -> a DLR moves it to DELIVERED -> an inbound STOP
opts the number out -> the next send is refused with 403.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

import pg
from processes import Spawned, clean_env, cli, org_with_key, serve, stop_cleanly, wait_until

pytestmark = pytest.mark.slow

TO = "+14155552671"


def test_sms_walkthrough_against_serve(tmp_path: Path, spawn: Callable[..., Spawned]) -> None:
    """Sender ID approved, SMS sent to the outbox, DLR applied once, STOP then refuses sends."""
    db = pg.fresh_db(tmp_path / "ct.db")
    outbox = tmp_path / "outbox"
    key = org_with_key(db, "send:sms,read:sms,sender_ids:request")
    admin_key = json.loads(
        cli(db, "keys", "create", "--org", "acme", "--scopes", "platform:admin", "--json")
    )["key"]
    token = json.loads(cli(db, "sms", "token", "--org", "acme", "--json"))["token"]

    env = clean_env(
        COMMTUNNEL_EMAIL_PROVIDER=f"outbox://{outbox}", COMMTUNNEL_SMS_PROVIDER=f"outbox://{outbox}"
    )
    server, base = serve(spawn, db, env=env)
    auth = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=base, timeout=5.0) as http:
        # 1. request a sender ID; 2. the platform admin approves it
        requested = http.post(
            "/v1/sms/sender-id-requests",
            headers=auth,
            json={"senderId": "ACME", "reason": "order updates"},
        )
        assert requested.status_code == 201, requested.text
        assert requested.json()["status"] == "PENDING"
        refused = http.post(
            "/v1/public/sms/send", headers=auth, json={"to": TO, "senderId": "ACME", "body": "x"}
        )
        assert (refused.status_code, refused.json()["code"]) == (403, "SMS_SENDER_ID_NOT_APPROVED")
        reviewed = http.post(
            f"/v1/sms/sender-id-requests/{requested.json()['id']}/review",
            headers={"Authorization": f"Bearer {admin_key}"},
            json={"decision": "approve", "reason": "verified"},
        )
        assert (reviewed.status_code, reviewed.json()["status"]) == (200, "APPROVED")

        # 3. send: queued, then delivered to the outbox by the embedded worker
        sent = http.post(
            "/v1/public/sms/send",
            headers={**auth, "x-idempotency-key": "order-42"},
            json={"to": "+1 415 555 2671", "senderId": "ACME", "body": "Order #42 has shipped"},
        )
        assert sent.status_code == 202, sent.text
        accepted = sent.json()
        assert (accepted["status"], accepted["segments"], accepted["encoding"]) == (
            "QUEUED",
            1,
            "GSM7",
        )
        message_id = accepted["id"]
        status: dict[str, Any] = {}

        def reached(wanted: str) -> Callable[[], bool]:
            def check() -> bool:
                nonlocal status
                response = http.get(f"/v1/public/sms/{message_id}", headers=auth)
                assert response.status_code == 200, response.text
                status = response.json()
                return bool(status["status"] == wanted)

            return check

        wait_until(reached("SENT"), 10, "status SENT")
        written = json.loads((outbox / f"{message_id}.sms.json").read_text())
        assert (written["to"], written["from"], written["body"]) == (
            TO,
            "ACME",
            "Order #42 has shipped",
        )

        # 4. a delivery receipt moves it to DELIVERED, once
        for _ in range(2):
            dlr = http.post(
                "/v1/webhooks/sms/dlr",
                params={"token": token},
                json={"message_id": message_id, "status": "DELIVERED"},
            )
            assert dlr.status_code == 202, dlr.text
        assert dlr.json()["applied"] is False  # the second one changes nothing
        bad = http.post(
            "/v1/webhooks/sms/dlr",
            params={"token": "wrong"},
            json={"message_id": message_id, "status": "FAILED"},
        )
        assert (bad.status_code, bad.json()["code"]) == (401, "INVALID_WEBHOOK_TOKEN")
        assert reached("DELIVERED")()
        timeline = http.get(f"/v1/public/sms/{message_id}/timeline", headers=auth).json()
        assert [e["type"] for e in timeline["events"]] == [
            "sms_queued",
            "sms_processing",
            "sms_sent",
            "sms_delivered",
        ]

        # 5. the handset answers STOP (form-encoded, as aggregators post it)
        mo = http.post(
            "/v1/webhooks/sms/inbound",
            params={"token": token},
            data={"sms_from": "14155552671", "sms_to": "33445", "sms_message": "Stop"},
        )
        assert mo.status_code == 200, mo.text
        assert mo.json()["keyword"] == "STOP"
        assert "sms_message" in mo.json()  # the confirmation for the handset
        again = http.post(
            "/v1/public/sms/send", headers=auth, json={"to": TO, "senderId": "ACME", "body": "x"}
        )
        assert (again.status_code, again.json()["code"]) == (403, "SMS_RECIPIENT_OPTED_OUT")

    stop_cleanly(server)
