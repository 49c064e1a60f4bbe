"""The README's webhook and tracking walkthrough, against real processes.

``commtunnel serve`` (outbox provider, as on a fresh clone), the receiver in
``examples/webhook_receiver.py`` as its own process verifying every request
with ``standardwebhooks``, and httpx opening the pixel and following the link
found in the ``.eml`` the outbox wrote.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest
from selectolax.lexbor import LexborHTMLParser

import pg
from processes import (
    Spawned,
    clean_env,
    free_port,
    org_with_key,
    serve,
    stop_cleanly,
    wait_until,
)

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "webhook_receiver.py"


def _events(receiver: Spawned) -> list[dict[str, Any]]:
    return [json.loads(line) for line in receiver.stdout_text().splitlines() if line.strip()]


def test_walkthrough_endpoint_tracked_email_open_click_signed_events(
    tmp_path: Path, spawn: Callable[..., Spawned]
) -> None:
    """Create an endpoint, send a tracked email, open and click it: the receiver verifies
    email_sent, email_opened and email_clicked, and the click lands on the original link."""
    db = pg.fresh_db(tmp_path / "ct.db")
    outbox = tmp_path / "outbox"
    key = org_with_key(db, "send:email,read:email,webhooks:manage", sender="example.com")
    env = clean_env(COMMTUNNEL_WEBHOOKS_ALLOW_PRIVATE="true")
    server, base = serve(spawn, db, "--email-provider", f"outbox://{outbox}", env=env)
    receiver_port = free_port()
    auth = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=base, timeout=5.0) as http:
        created = http.post(
            "/v1/public/webhooks",
            headers=auth,
            json={
                "url": f"http://127.0.0.1:{receiver_port}/",
                "events": ["email_sent", "email_opened", "email_clicked"],
                "description": "walkthrough",
            },
        )
        assert created.status_code == 201, created.text
        secret = created.json()["secret"]
        receiver = Spawned(
            [sys.executable, str(EXAMPLE), "--port", str(receiver_port)],
            logs=tmp_path / "receiver",
            env=clean_env(WEBHOOK_SECRET=secret),
        )
        try:
            wait_until(lambda: "listening" in receiver.stderr_text(), 10, "the example receiver")
            sent = http.post(
                "/v1/public/emails/send",
                headers=auth,
                json={
                    "from": "Acme <hello@example.com>",
                    "to": "bob@example.net",
                    "subject": "Your order",
                    "html": '<p>Track it <a href="https://shop.example/orders/42?x=1&amp;y=2">here</a></p>',
                    "text": "Track it: https://shop.example/orders/42",
                    "tracking": True,
                },
            )
            assert sent.status_code == 202, sent.text
            message_id = sent.json()["id"]
            eml = outbox / f"{message_id}.eml"
            wait_until(eml.exists, 10, "the .eml in the outbox")
            mail = message_from_bytes(eml.read_bytes(), policy=policy.default)
            assert isinstance(mail, EmailMessage)
            html_part = mail.get_body(("html",))
            text_part = mail.get_body(("plain",))
            assert html_part is not None and text_part is not None
            assert "https://shop.example/orders/42" in text_part.get_content()  # untouched
            tree = LexborHTMLParser(html_part.get_content())
            links = [a.attributes["href"] for a in tree.css("a")]
            pixels = [
                img.attributes["src"]
                for img in tree.css("img")
                if "/v1/track/open" in (img.attributes.get("src") or "")
            ]
            assert len(links) == 1 and links[0] is not None
            assert links[0].startswith(f"{base}/v1/track/click?t=")
            assert len(pixels) == 1 and pixels[0] is not None

            opened = http.get(pixels[0], headers={"User-Agent": "Mozilla/5.0 (Macintosh)"})
            assert opened.status_code == 200
            assert opened.headers["content-type"] == "image/gif"
            clicked = http.get(links[0], headers={"User-Agent": "Mozilla/5.0 (Macintosh)"})
            assert clicked.status_code == 302
            assert clicked.headers["location"] == "https://shop.example/orders/42?x=1&y=2"
            assert clicked.headers["cache-control"] == "no-store"

            def three_events() -> bool:
                return len(_events(receiver)) >= 3

            wait_until(three_events, 15, "email_sent, email_opened and email_clicked")
            events = _events(receiver)
            assert sorted(e["type"] for e in events) == [
                "email_clicked",
                "email_opened",
                "email_sent",
            ]
            assert all(e["data"]["messageId"] == message_id for e in events)
            by_type = {e["type"]: e for e in events}
            assert by_type["email_sent"]["data"]["status"] == "SENT"
            assert (
                by_type["email_clicked"]["data"]["url"] == "https://shop.example/orders/42?x=1&y=2"
            )
            assert by_type["email_opened"]["data"]["isBot"] is False

            def delivery_log() -> httpx.Response:
                return http.get(
                    f"/v1/public/webhooks/deliveries?messageId={message_id}", headers=auth
                )

            # The receiver has the third POST before the worker commits its attempt.
            wait_until(
                lambda: sum(len(d["attempts"]) for d in delivery_log().json()["data"]) >= 3,
                10,
                "three recorded attempts in the delivery log",
            )
            log = delivery_log()
            assert log.status_code == 200
            statuses = {d["eventType"]: d["status"] for d in log.json()["data"]}
            attempts = [a for d in log.json()["data"] for a in d["attempts"]]
            assert [a["statusCode"] for a in attempts] == [204, 204, 204]
            assert all(a["durationMs"] > 0 for a in attempts)  # real time, real HTTP
            assert statuses == {
                "email_sent": "SUCCEEDED",
                "email_opened": "SUCCEEDED",
                "email_clicked": "SUCCEEDED",
            }
        finally:
            receiver.terminate()
            receiver.wait(timeout=10)
    stop_cleanly(server)
    assert "Traceback" not in server.stderr_text()


def test_a_server_killed_after_the_202_loses_no_webhook(
    tmp_path: Path, spawn: Callable[..., Spawned]
) -> None:
    """SIGKILL `serve --no-worker` right after a 202: a `commtunnel worker` started later
    delivers the email and all three of its events to the receiver."""
    db = pg.fresh_db(tmp_path / "ct.db")
    outbox = tmp_path / "outbox"
    key = org_with_key(db, "send:email,webhooks:manage", sender="example.com")
    env = clean_env(COMMTUNNEL_WEBHOOKS_ALLOW_PRIVATE="true")
    server, base = serve(
        spawn, db, "--no-worker", "--email-provider", f"outbox://{outbox}", env=env
    )
    receiver_port = free_port()
    auth = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=base, timeout=5.0) as http:
        created = http.post(
            "/v1/public/webhooks", headers=auth, json={"url": f"http://127.0.0.1:{receiver_port}/"}
        )
        assert created.status_code == 201, created.text
        sent = http.post(
            "/v1/public/emails/send",
            headers=auth,
            json={
                "from": "hello@example.com",
                "to": "bob@example.net",
                "subject": "Hi",
                "text": "Hi",
            },
        )
        assert sent.status_code == 202, sent.text
    server.kill()  # SIGKILL: no shutdown, nothing flushed beyond what the 202 promised
    server.wait(timeout=10)
    receiver = Spawned(
        [sys.executable, str(EXAMPLE), "--port", str(receiver_port)],
        logs=tmp_path / "receiver",
        env=clean_env(WEBHOOK_SECRET=created.json()["secret"]),
    )
    try:
        wait_until(lambda: "listening" in receiver.stderr_text(), 10, "the example receiver")
        worker = spawn("worker", "--db", str(db), "--email-provider", f"outbox://{outbox}", env=env)
        wait_until(lambda: len(_events(receiver)) >= 3, 15, "three events after the crash")
        stop_cleanly(worker)
    finally:
        receiver.terminate()
        receiver.wait(timeout=10)
    events = _events(receiver)
    assert [e["type"] for e in events] == ["email_queued", "email_processing", "email_sent"]
    assert {e["data"]["messageId"] for e in events} == {sent.json()["id"]}
