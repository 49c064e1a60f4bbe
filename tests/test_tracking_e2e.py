"""Tracking end to end: a tracked email over real SMTP, its links and pixel followed over HTTP.

The email goes through the SMTP provider to an aiosmtpd server on loopback;
the received MIME is parsed with the standard library, and the rewritten
links and pixel are requested from the Starlette app with httpx.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator, Iterator
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs
import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from selectolax.lexbor import LexborHTMLParser
from starlette.types import ASGIApp

import pg
from app_client import assert_error
from commtunnel import Commtunnel, Settings
from commtunnel.domain.tracking import ClickToken, OpenToken, TokenSigner
from commtunnel.ids import new_id
from commtunnel.services.tracking import derive_key
from commtunnel.testing import ManualClock
from commtunnel_http import create_app
from processes import free_port

pytestmark = pytest.mark.anyio

PUBLIC_URL = "https://track.example.test"
CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
)
SCANNER = "Mozilla/5.0 (compatible; Barracuda Sentinel (EE))"
HTML = (
    "<p>Your order is ready.</p>"
    '<p><a href="https://shop.example/orders?id=1&amp;ref=mail">View order</a></p>'
    '<p><a href="mailto:help@shop.example">Mail us</a> <a href="tel:+15550100">Call</a> '
    '<a href="#details">Details</a> <a href="/account">Account</a></p>'
    '<p><a href="http://blog.example/news">News</a></p>'
    '<p><a data-ct-notrack href="https://shop.example/unsubscribe">Unsubscribe</a></p>'
)
TEXT = "Your order is ready: https://shop.example/orders?id=1&ref=mail\n"


class RecordingHandler:
    """An aiosmtpd handler that keeps the raw bytes of every message and answers 250."""

    def __init__(self) -> None:
        self.received: list[bytes] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Record the message as it arrived."""
        assert isinstance(envelope.content, bytes)
        self.received.append(envelope.content)
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[tuple[RecordingHandler, int]]:
    """An aiosmtpd server on a free loopback port, stopped afterwards."""
    handler, port = RecordingHandler(), free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


def client_on(app: ASGIApp, ip: str = "203.0.113.9") -> httpx.AsyncClient:
    """An httpx client on the app in process, seen by the app as coming from ``ip``."""
    transport = httpx.ASGITransport(app=app, client=(ip, 50000))
    return httpx.AsyncClient(transport=transport, base_url="http://test")


@attrs.define
class Env:
    """A started facade delivering over SMTP, a client on its app and an email key."""

    ct: Commtunnel
    app: ASGIApp
    client: httpx.AsyncClient
    key: str
    smtp: RecordingHandler

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    async def send_and_deliver(self, **fields: Any) -> str:
        """Send a tracked email over the API, deliver it; return its id."""
        body = {"from": "Shop <hi@example.com>", "to": "ada@example.org", "subject": "Order"}
        r = await self.client.post(
            "/v1/public/emails/send", json={**body, **fields}, headers=self.auth()
        )
        assert r.status_code == 202, r.text
        assert await self.ct.run_worker_until_idle() == 1
        message_id: str = r.json()["id"]
        return message_id

    async def hits(self, message_id: str) -> list[dict[str, Any]]:
        """The email_opened / email_clicked events of the message's timeline, oldest first."""
        r = await self.client.get(f"/v1/public/emails/{message_id}/timeline", headers=self.auth())
        assert r.status_code == 200
        return [e for e in r.json()["events"] if e["type"] in ("email_opened", "email_clicked")]

    async def stats(self, **params: str) -> dict[str, Any]:
        window = {"start": "2026-01-01T00:00:00Z", "end": "2026-01-02T00:00:00Z"}
        r = await self.client.get(
            "/v1/public/emails/stats", params={**window, **params}, headers=self.auth()
        )
        assert r.status_code == 200, r.text
        stats: dict[str, Any] = r.json()
        return stats


@pytest.fixture
async def env(tmp_path: Path, smtp: tuple[RecordingHandler, int]) -> AsyncIterator[Env]:
    handler, port = smtp
    async with Commtunnel.open(
        db=pg.fresh_db(tmp_path / "ct.db"),
        email_provider=f"smtp://127.0.0.1:{port}?local_hostname=localhost&timeout=5",
        clock=ManualClock(),
        settings=Settings(embedded_worker=False, public_url=PUBLIC_URL),
    ) as ct:
        await ct.admin.add_sender(ct.org.id, "example.com")
        _, key = await ct.keys.create(ct.org.id, scopes=frozenset({"send:email", "read:email"}))
        app = create_app(ct)
        async with client_on(app) as client:
            yield Env(ct=ct, app=app, client=client, key=key, smtp=handler)


def received_parts(raw: bytes) -> tuple[str, str | None]:
    """(html, text or None) of a received message, decoded, with SMTP's CRLF as LF."""
    message = message_from_bytes(raw, policy=policy.default)
    assert isinstance(message, EmailMessage)
    html_part, text_part = message.get_body(("html",)), message.get_body(("plain",))
    assert isinstance(html_part, EmailMessage)
    html = str(html_part.get_content()).replace("\r\n", "\n")
    if text_part is None:
        return html, None
    return html, str(text_part.get_content()).replace("\r\n", "\n")


def local(url: str) -> str:
    """The path and query of a tracking URL, checked to be on the public base URL."""
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == PUBLIC_URL
    return f"{parts.path}?{parts.query}"


def token_of(url: str) -> str:
    """The ``t`` parameter of a tracking URL (tokens are URL-safe: no decoding needed)."""
    query = urlsplit(url).query
    assert query.startswith("t=") and "&" not in query
    return query.removeprefix("t=")


def assert_gif_1x1(body: bytes) -> None:
    """``body`` is a GIF89a whose logical screen and only image are 1x1, with transparency."""
    assert body[:6] == b"GIF89a"
    assert struct.unpack("<HH", body[6:10]) == (1, 1)
    gce = body.index(b"\x21\xf9\x04")
    assert body[gce + 3] & 0x01  # transparent colour flag
    descriptor = body.index(b"\x2c", gce + 8)
    assert struct.unpack("<HHHH", body[descriptor + 1 : descriptor + 9]) == (0, 0, 1, 1)
    assert body.endswith(b"\x3b")


async def test_tracked_email_over_smtp_records_opens_and_clicks(env: Env) -> None:
    """Links and pixel arrive rewritten over SMTP; following them records events and stats."""
    message_id = await env.send_and_deliver(html=HTML, text=TEXT, tracking=True)
    [raw] = env.smtp.received
    html, text = received_parts(raw)

    # The text part is untouched; the stored message keeps the original HTML.
    assert text == TEXT
    stored = await env.client.get(f"/v1/public/emails/{message_id}", headers=env.auth())
    assert stored.json()["html"] == HTML

    tree = LexborHTMLParser(html)
    links = [a.attributes.get("href") or "" for a in tree.css("a")]
    tracked = [href for href in links if href.startswith(f"{PUBLIC_URL}/v1/track/click?t=")]
    assert len(tracked) == 2
    assert links[1:5] == ["mailto:help@shop.example", "tel:+15550100", "#details", "/account"]
    assert links[6] == "https://shop.example/unsubscribe"
    pixels = [
        img.attributes.get("src") or ""
        for img in tree.css("img")
        if (img.attributes.get("src") or "").startswith(f"{PUBLIC_URL}/v1/track/open?t=")
    ]
    assert len(pixels) == 1
    pixel = pixels[0]

    # Opens: a person twice (first, then not first), then Apple's privacy proxy.
    for _ in range(2):
        r = await env.client.get(local(pixel), headers={"User-Agent": CHROME})
        assert r.status_code == 200
        assert r.headers["content-type"] == "image/gif"
        assert r.headers["cache-control"] == "no-store"
        assert_gif_1x1(r.content)
    async with client_on(env.app, ip="17.58.101.12") as apple:
        r = await apple.get(local(pixel), headers={"User-Agent": "Mozilla/5.0"})
    assert r.status_code == 200

    # Clicks: the first link twice by a person, the second by a scanner.
    for _ in range(2):
        r = await env.client.get(local(tracked[0]), headers={"User-Agent": CHROME})
        assert r.status_code == 302
        assert r.headers["location"] == "https://shop.example/orders?id=1&ref=mail"
        assert r.headers["cache-control"] == "no-store"
    r = await env.client.get(local(tracked[1]), headers={"User-Agent": SCANNER})
    assert (r.status_code, r.headers["location"]) == (302, "http://blog.example/news")

    hits = await env.hits(message_id)
    # status: the message's as of each hit (SENT), not a change of it
    assert [(e["type"], e["status"]) for e in hits] == [
        ("email_opened", "SENT"),
        ("email_opened", "SENT"),
        ("email_opened", "SENT"),
        ("email_clicked", "SENT"),
        ("email_clicked", "SENT"),
        ("email_clicked", "SENT"),
    ]
    assert [e["details"] for e in hits[:3]] == [
        {"userAgent": CHROME, "isBot": False, "first": True},
        {"userAgent": CHROME, "isBot": False, "first": False},
        {"userAgent": "Mozilla/5.0", "isBot": True, "first": False},
    ]
    order = {"url": "https://shop.example/orders?id=1&ref=mail", "linkIndex": 0}
    assert [e["details"] for e in hits[3:]] == [
        {"userAgent": CHROME, "isBot": False, "first": True, **order},
        {"userAgent": CHROME, "isBot": False, "first": False, **order},
        {
            "userAgent": SCANNER,
            "isBot": True,
            "first": False,
            "url": "http://blog.example/news",
            "linkIndex": 1,
        },
    ]

    humans = await env.stats()
    assert (humans["opens"], humans["uniqueOpens"], humans["clicks"], humans["uniqueClicks"]) == (
        2,
        1,
        2,
        1,
    )
    assert humans["includeBots"] is False
    everyone = await env.stats(includeBots="true")
    assert (everyone["opens"], everyone["uniqueOpens"]) == (3, 1)
    assert (everyone["clicks"], everyone["uniqueClicks"]) == (3, 1)
    assert everyone["events"]["email_opened"] == 3 == humans["events"]["email_opened"]


def damaged(token: str) -> dict[str, str]:
    """A token damaged every way: payload, signature, truncated."""
    cut = token.rindex(".")

    def replace(at: int) -> str:
        return token[:at] + ("A" if token[at] != "A" else "B") + token[at + 1 :]

    return {"payload": replace(cut // 2), "signature": replace(cut + 1), "truncated": token[:-4]}


async def test_every_tampered_token_is_400_and_records_nothing(env: Env) -> None:
    """Modified, truncated, other-kind and foreign-key tokens answer 400 and write no event."""
    message_id = await env.send_and_deliver(html=HTML, text=TEXT, tracking=True)
    html, _ = received_parts(env.smtp.received[0])
    tree = LexborHTMLParser(html)
    click = token_of(tree.css("a")[0].attributes.get("href") or "")
    opened = token_of([img.attributes.get("src") or "" for img in tree.css("img")][-1])
    foreign = TokenSigner(derive_key("a different server's secret key"))
    foreign_open = foreign.sign_open(OpenToken(org_id=env.ct.org.id, message_id=message_id))
    foreign_click = foreign.sign_click(
        ClickToken(
            org_id=env.ct.org.id, message_id=message_id, link_index=0, url="https://evil.example/"
        )
    )
    bad_opens = {**damaged(opened), "other-kind": click, "foreign-key": foreign_open, "empty": ""}
    bad_clicks = {**damaged(click), "other-kind": opened, "foreign-key": foreign_click, "empty": ""}

    for name, token in bad_opens.items():
        r = await env.client.get(
            "/v1/track/open", params={"t": token}, headers={"User-Agent": CHROME}
        )
        assert r.status_code == 400, name
        assert r.headers["content-type"] == "image/gif", name
        assert r.headers["cache-control"] == "no-store", name
        assert_gif_1x1(r.content)
    for name, token in bad_clicks.items():
        r = await env.client.get(
            "/v1/track/click", params={"t": token}, headers={"User-Agent": CHROME}
        )
        assert_error(r, 400, "INVALID_TRACKING_TOKEN")
        assert "location" not in r.headers, name

    assert await env.hits(message_id) == []
    stats = await env.stats(includeBots="true")
    assert (stats["opens"], stats["clicks"]) == (0, 0)


async def test_missing_token_is_a_validation_error(env: Env) -> None:
    """Without ``t`` both routes answer 400 VALIDATION_ERROR naming it."""
    for path in ("/v1/track/open", "/v1/track/click"):
        details = assert_error(await env.client.get(path), 400, "VALIDATION_ERROR")
        assert details == {"t": "is required"}


async def test_valid_token_of_a_missing_message_answers_but_records_nothing(env: Env) -> None:
    """A well-signed token for no stored message still gets its GIF or redirect, no event."""
    signer = await env.ct.tracking.signer()
    ghost = new_id()
    open_token = signer.sign_open(OpenToken(org_id=env.ct.org.id, message_id=ghost))
    click_token = signer.sign_click(
        ClickToken(org_id=env.ct.org.id, message_id=ghost, link_index=0, url="https://x.example/")
    )
    r = await env.client.get("/v1/track/open", params={"t": open_token})
    assert (r.status_code, r.headers["content-type"]) == (200, "image/gif")
    r = await env.client.get("/v1/track/click", params={"t": click_token})
    assert (r.status_code, r.headers["location"]) == (302, "https://x.example/")
    stats = await env.stats(includeBots="true")
    assert (stats["opens"], stats["clicks"]) == (0, 0)
    assert "email_opened" not in stats["events"]


async def test_head_requests_answer_but_record_nothing(env: Env) -> None:
    """A HEAD on the pixel or a link (link checkers) verifies the token and records nothing."""
    message_id = await env.send_and_deliver(html=HTML, tracking=True)
    html, _ = received_parts(env.smtp.received[0])
    tree = LexborHTMLParser(html)
    link = tree.css("a")[0].attributes.get("href") or ""
    pixel = [img.attributes.get("src") or "" for img in tree.css("img")][-1]
    r = await env.client.head(local(pixel), headers={"User-Agent": CHROME})
    assert (r.status_code, r.headers["content-type"]) == (200, "image/gif")
    r = await env.client.head(local(link), headers={"User-Agent": CHROME})
    assert (r.status_code, r.headers["location"]) == (
        302,
        "https://shop.example/orders?id=1&ref=mail",
    )
    assert await env.hits(message_id) == []


async def test_untracked_email_arrives_as_written(env: Env) -> None:
    """Without ``tracking`` the HTML reaches the server with its links and no pixel."""
    await env.send_and_deliver(html=HTML, text=TEXT)
    html, _ = received_parts(env.smtp.received[0])
    assert "/v1/track/" not in html
    assert "https://shop.example/orders?id=1&amp;ref=mail" in html


async def test_stats_include_bots_must_be_true_or_false(env: Env) -> None:
    """``includeBots=yes`` answers 400 VALIDATION_ERROR naming it."""
    window = {"start": "2026-01-01T00:00:00Z", "end": "2026-01-02T00:00:00Z"}
    r = await env.client.get(
        "/v1/public/emails/stats", params={**window, "includeBots": "yes"}, headers=env.auth()
    )
    assert assert_error(r, 400, "VALIDATION_ERROR") == {"includeBots": "must be true or false"}


async def test_preview_over_http_reports_tracking_honestly(env: Env) -> None:
    """trackingEnabled is false for a text-only preview even when tracking is asked for."""
    body = {"subject": "S", "text": "t", "tracking": True}
    r = await env.client.post("/v1/public/emails/preview", json=body, headers=env.auth())
    assert (r.status_code, r.json()["trackingEnabled"]) == (200, False)
