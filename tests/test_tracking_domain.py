"""The pure tracking rules: the HTML rewrite, the signed tokens and the bot classification."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from selectolax.lexbor import LexborHTMLParser

from commtunnel.domain.errors import InvalidTrackingTokenError
from commtunnel.domain.tracking import (
    MAX_TOKEN_CHARS,
    TRANSPARENT_GIF,
    ClickToken,
    Kind,
    OpenToken,
    TokenSigner,
    classify_client,
    link_target,
    rewrite_html,
)
from commtunnel.services.tracking import derive_key

OPEN_URL = "https://t.example/v1/track/open?t=OPEN"


def click_url(index: int, url: str) -> str:
    """A recognisable stand-in for the service's click URL."""
    return f"https://t.example/c/{index}"


def hrefs(html: str) -> list[str | None]:
    """Every ``<a>``/``<area>`` href of ``html``, in document order, decoded."""
    return [n.attributes.get("href") for n in LexborHTMLParser(html).css("a, area")]


def pixels(html: str) -> list[dict[str, str | None]]:
    """The attributes of every ``<img>`` loading the open URL."""
    images = LexborHTMLParser(html).css("img")
    return [dict(n.attributes) for n in images if n.attributes.get("src") == OPEN_URL]


# --------------------------------------------------------------------------- rewrite


def test_links_are_rewritten_in_document_order_with_their_indexes() -> None:
    """Each http(s) link gets the click URL of its index (0, 1, ...) and its own target."""
    seen: list[tuple[int, str]] = []

    def record(index: int, url: str) -> str:
        seen.append((index, url))
        return click_url(index, url)

    html = (
        '<p><a href="https://a.example/1">one</a> <a href="http://b.example/2">two</a></p>'
        '<map><area href="https://c.example/3"></map><a href="HTTPS://D.example/4">four</a>'
    )
    out = rewrite_html(html, click_url=record, open_url=OPEN_URL)
    assert seen == [
        (0, "https://a.example/1"),
        (1, "http://b.example/2"),
        (2, "https://c.example/3"),
        (3, "HTTPS://D.example/4"),
    ]
    assert hrefs(out) == [click_url(i, "") for i in range(4)]


@pytest.mark.parametrize(
    "link",
    [
        '<a href="mailto:help@example.com">mail</a>',
        '<a href="tel:+15550100">call</a>',
        '<a href="#top">top</a>',
        '<a href="/account">relative</a>',
        '<a href="account/settings">relative, no slash</a>',
        '<a href="//cdn.example/x">scheme-relative</a>',
        '<a href="ftp://files.example/x">other scheme</a>',
        '<a href="javascript:alert(1)">script</a>',
        '<a href="https://">no host</a>',
        '<a data-ct-notrack href="https://unsubscribe.example/u">opted out</a>',
        "<a>no href</a>",
    ],
)
def test_links_that_are_not_tracked_stay_as_written(link: str) -> None:
    """mailto:, tel:, anchors, relative links, data-ct-notrack and the like keep their href."""
    out = rewrite_html(f"<p>{link}</p>", click_url=click_url, open_url=OPEN_URL)
    assert hrefs(out) == hrefs(link)
    assert "t.example/c/" not in out


def test_untracked_links_do_not_consume_an_index() -> None:
    """Indexes count the rewritten links only: the link after a mailto: is still index 0."""
    html = '<a href="mailto:a@example.com">m</a><a href="https://x.example/">x</a>'
    out = rewrite_html(html, click_url=click_url, open_url=OPEN_URL)
    assert hrefs(out) == ["mailto:a@example.com", click_url(0, "")]


def test_pixel_is_added_once_at_the_end_of_the_body() -> None:
    """Exactly one 1x1 image loads the open URL, after the content."""
    out = rewrite_html("<p>Hi</p><p>Bye</p>", click_url=click_url, open_url=OPEN_URL)
    [pixel] = pixels(out)
    assert (pixel["width"], pixel["height"], pixel["alt"]) == ("1", "1", "")
    assert out.startswith("<p>Hi</p><p>Bye</p><img ")


def test_entities_in_hrefs_are_decoded_into_the_target_and_escaped_in_the_output() -> None:
    """``&amp;`` in an href is ``&`` in the signed URL; the rewritten href is escaped again."""
    targets: list[str] = []

    def record(index: int, url: str) -> str:
        targets.append(url)
        return f"https://t.example/c?t={index}&x=1"

    html = '<a href="https://shop.example/o?id=1&amp;ref=mail&#x26;q=%C3%A9">order</a>'
    out = rewrite_html(html, click_url=record, open_url=OPEN_URL)
    assert targets == ["https://shop.example/o?id=1&ref=mail&q=%C3%A9"]
    assert 'href="https://t.example/c?t=0&amp;x=1"' in out
    assert hrefs(out) == ["https://t.example/c?t=0&x=1"]


def test_surrounding_whitespace_in_an_href_is_dropped_like_a_browser_does() -> None:
    """A target is the href without surrounding spaces and without tabs or newlines."""
    assert link_target("  https://x.example/a\n/b\t ") == "https://x.example/a/b"


def test_a_fragment_stays_a_fragment_with_its_leading_style() -> None:
    """No <html>/<head>/<body> wrapper is added; a leading <style> is kept in place."""
    html = "<style>p{color:red}</style><p>Hi <b>there</b></p>"
    out = rewrite_html(html, click_url=click_url, open_url=OPEN_URL)
    assert out.startswith("<style>p{color:red}</style><p>Hi <b>there</b></p>")
    assert "<html" not in out and "<body" not in out


def test_a_whole_document_stays_whole() -> None:
    """A document keeps its doctype, head and body; the pixel goes at the end of the body."""
    html = (
        "<!DOCTYPE html><html><head><title>T</title></head>"
        '<body><a href="https://x.example/">x</a></body></html>'
    )
    out = rewrite_html(html, click_url=click_url, open_url=OPEN_URL)
    assert out.startswith("<!DOCTYPE html><html><head><title>T</title></head><body>")
    assert out.endswith("</body></html>")
    assert len(pixels(out)) == 1
    assert hrefs(out) == [click_url(0, "")]


def test_plain_text_html_gets_only_the_pixel() -> None:
    """HTML without links keeps its text (entities intact) and gains the pixel."""
    out = rewrite_html("Fish &amp; chips", click_url=click_url, open_url=OPEN_URL)
    assert out.startswith("Fish &amp; chips<img ")
    assert len(pixels(out)) == 1


def test_the_pixel_gif_is_a_transparent_1x1_gif89a() -> None:
    """The GIF's header says 1x1, its control extension marks index 0 transparent."""
    assert TRANSPARENT_GIF[:6] == b"GIF89a"
    assert TRANSPARENT_GIF[6:10] == b"\x01\x00\x01\x00"
    gce = TRANSPARENT_GIF.index(b"!\xf9\x04")
    assert TRANSPARENT_GIF[gce + 3] & 1 == 1  # transparency flag
    assert TRANSPARENT_GIF.endswith(b";")


# --------------------------------------------------------------------------- tokens

KEY = derive_key("the server secret key, 32+ chars")
OPEN = OpenToken(org_id="org-1", message_id="msg-1")
CLICK = ClickToken(org_id="org-1", message_id="msg-1", link_index=2, url="https://x.example/?a=1")


def test_tokens_round_trip() -> None:
    """A signed open or click token reads back as the same token."""
    signer = TokenSigner(KEY)
    assert signer.read_open(signer.sign_open(OPEN)) == OPEN
    assert signer.read_click(signer.sign_click(CLICK)) == CLICK


def test_tokens_are_deterministic_and_url_safe() -> None:
    """Signing twice gives the same token (a retried send has the same links), URL-safe."""
    signer = TokenSigner(KEY)
    token = signer.sign_click(CLICK)
    assert token == signer.sign_click(CLICK)
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")


def _replace(token: str, at: int) -> str:
    """``token`` with the character at ``at`` replaced by another URL-safe character."""
    new = "A" if token[at] != "A" else "B"
    return token[:at] + new + token[at + 1 :]


def tampered(token: str) -> dict[str, str]:
    """Every way a token can be damaged: payload, signature, truncation, emptiness."""
    cut = token.rindex(".")
    return {
        "payload": _replace(token, cut // 2),
        "signature": _replace(token, cut + 1),
        "truncated": token[:-3],
        "truncated-payload": token[cut // 2 :],
        "no-signature": token[:cut],
        "empty": "",
        "non-ascii": token[:-1] + "é",
        "too-long": token + "A" * MAX_TOKEN_CHARS,
    }


@pytest.mark.parametrize("kind", ["open", "click"])
@pytest.mark.parametrize(
    "damage",
    [
        "payload",
        "signature",
        "truncated",
        "truncated-payload",
        "no-signature",
        "empty",
        "non-ascii",
        "too-long",
    ],
)
def test_damaged_tokens_are_refused(kind: Kind, damage: str) -> None:
    """A tampered, truncated or otherwise damaged token raises INVALID_TRACKING_TOKEN."""
    signer = TokenSigner(KEY)
    read: Callable[[str], object]
    if kind == "open":
        token, read = signer.sign_open(OPEN), signer.read_open
    else:
        token, read = signer.sign_click(CLICK), signer.read_click
    with pytest.raises(InvalidTrackingTokenError) as info:
        read(tampered(token)[damage])
    assert (info.value.code, info.value.http_status) == ("INVALID_TRACKING_TOKEN", 400)


def test_a_token_of_the_other_kind_is_refused() -> None:
    """An open token is not a click token and the other way round (distinct salts)."""
    signer = TokenSigner(KEY)
    with pytest.raises(InvalidTrackingTokenError):
        signer.read_click(signer.sign_open(OPEN))
    with pytest.raises(InvalidTrackingTokenError):
        signer.read_open(signer.sign_click(CLICK))


def test_a_token_signed_with_another_key_is_refused() -> None:
    """A token from another server (another secret) does not verify here."""
    foreign = TokenSigner(derive_key("someone else's secret key, 32+"))
    signer = TokenSigner(KEY)
    with pytest.raises(InvalidTrackingTokenError):
        signer.read_open(foreign.sign_open(OPEN))
    with pytest.raises(InvalidTrackingTokenError):
        signer.read_click(foreign.sign_click(CLICK))


@pytest.mark.parametrize(
    "payload",
    [
        [],
        {"o": "org", "m": "msg", "i": 0},
        {"o": "org", "m": "msg", "i": 0, "u": "https://x.example/", "extra": 1},
        {"o": "", "m": "msg", "i": 0, "u": "https://x.example/"},
        {"o": "org", "m": 5, "i": 0, "u": "https://x.example/"},
        {"o": "org", "m": "msg", "i": -1, "u": "https://x.example/"},
        {"o": "org", "m": "msg", "i": True, "u": "https://x.example/"},
        {"o": "org", "m": "msg", "i": "0", "u": "https://x.example/"},
        {"o": "org", "m": "msg", "i": 0, "u": "javascript:alert(1)"},
        {"o": "org", "m": "msg", "i": 0, "u": "/relative"},
        {"o": "org", "m": "msg", "i": 0, "u": " https://x.example/"},
    ],
)
def test_click_payloads_of_the_wrong_shape_are_refused(payload: Any) -> None:
    """Only {o, m, i, u} with ids, a non-negative index and an http(s) URL is a click token."""
    with pytest.raises(ValueError, match=r"click|index|ids"):
        ClickToken.from_payload(payload)


@pytest.mark.parametrize("payload", [None, {"o": "org"}, {"o": "org", "m": ""}, {"o": 1, "m": "m"}])
def test_open_payloads_of_the_wrong_shape_are_refused(payload: Any) -> None:
    """Only {o, m} with two non-empty strings is an open token."""
    with pytest.raises(ValueError, match="open-token"):
        OpenToken.from_payload(payload)


def test_a_short_key_is_refused() -> None:
    """Keys under 32 bytes are not accepted."""
    with pytest.raises(ValueError, match="32 bytes"):
        TokenSigner(b"short")


def test_derived_keys_differ_per_secret_and_from_the_secret_box() -> None:
    """HKDF gives 32 bytes, different for different secrets, stable for one."""
    assert len(KEY) == 32
    assert derive_key("the server secret key, 32+ chars") == KEY
    assert derive_key("another server secret key, 32++") != KEY


# --------------------------------------------------------------------------- bots

CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
)
IPHONE_MAIL = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15"
GMAIL_PROXY = (
    "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
)


@pytest.mark.parametrize(
    ("kind", "agent", "ip", "reason"),
    [
        ("open", CHROME, "203.0.113.9", None),
        ("click", CHROME, "203.0.113.9", None),
        ("open", IPHONE_MAIL, "198.51.100.7", None),
        ("open", GMAIL_PROXY, "66.249.84.1", None),  # Gmail fetches when the user opens
        ("click", CHROME, "17.1.2.3", None),  # Apple's network clicks are people
        ("open", None, None, "empty-user-agent"),
        ("click", "   ", "203.0.113.9", "empty-user-agent"),
        ("open", "Mozilla/5.0", "198.51.100.7", "apple-mpp"),
        ("open", IPHONE_MAIL, "17.58.101.12", "apple-mpp"),
        ("open", IPHONE_MAIL, "::ffff:17.58.101.12", "apple-mpp"),
        ("click", "Mozilla/5.0", "203.0.113.9", "apple-mpp"),
        ("click", "Mozilla/5.0 (compatible; Barracuda Sentinel (EE))", None, "scanner"),
        ("click", "Mimecast-URL-Protect/1.0", None, "scanner"),
        ("click", "Proofpoint URL Defense", None, "scanner"),
        ("click", "Mozilla/4.0 (compatible; ms-office; MSOffice 16)", None, "scanner"),
        ("click", f"{CHROME} SafeLinks", None, "scanner"),
        ("click", CHROME.replace("Chrome/", "HeadlessChrome/"), None, "scanner"),
        ("click", "curl/8.5.0", None, "scanner"),
        ("click", "python-requests/2.32.0", None, "scanner"),
        (
            "click",
            "Mozilla/5.0 (compatible; Googlebot/2.1; +http://google.com/bot.html)",
            None,
            "crawler",
        ),
        ("click", "Mozilla/5.0 (Windows NT 6.1; WOW64) BingPreview/1.0b", None, "crawler"),
        ("click", "Slackbot-LinkExpanding 1.0", None, "crawler"),
        ("click", "SomeCrawler/3", None, "crawler"),
        ("open", "Mozilla/5.0 not-an-ip", "not-an-ip", None),
    ],
)
def test_bot_classification(
    kind: Kind, agent: str | None, ip: str | None, reason: str | None
) -> None:
    """Scanners, privacy proxies, crawlers and empty agents are bots; mail clients are not."""
    assert classify_client(kind, agent, ip) == reason
