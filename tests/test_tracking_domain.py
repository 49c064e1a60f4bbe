"""The pure tracking rules: the HTML rewrite, the signed tokens and the bot classification."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable
from typing import Any

import attrs
import pytest
from selectolax.lexbor import LexborHTMLParser

from commtunnel.domain.errors import InvalidTrackingTokenError
from commtunnel.domain.tracking import (
    MAX_TOKEN_CHARS,
    TRANSPARENT_GIF,
    ClickToken,
    ClickTokenTooLongError,
    Kind,
    OpenToken,
    TokenSigner,
    classify_client,
    link_target,
)
from commtunnel.domain.tracking_html import rewrite_html
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


PIXEL_TAG = re.compile(r'<img src="https://t\.example/v1/track/open\?t=OPEN"[^>]*>')
XHTML_DOCTYPE = (
    '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN" '
    '"http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd">'
)
HTML4_DOCTYPE = (
    '<!DOCTYPE HTML PUBLIC "-//W3C//DTD HTML 4.01 Transitional//EN" '
    '"http://www.w3.org/TR/html4/loose.dtd">'
)
MSO_OPEN = '<!--[if mso]><table role="presentation" width="600"><tr><td><![endif]-->'
MSO_CLOSE = "<!--[if mso]></td></tr></table><![endif]-->"


def without_pixel(out: str) -> tuple[str, int]:
    """``out`` without its one pixel ``<img>``, and where the pixel was."""
    [tag] = PIXEL_TAG.findall(out)
    at = out.index(tag)
    return out[:at] + out[at + len(tag) :], at


def restored(out: str, originals: list[str]) -> str:
    """``out`` without the pixel and with each rewritten href written back as in the source.

    ``originals[i]`` is the source text of the href value that got index ``i``.
    """
    source, _ = without_pixel(out)
    for index in reversed(range(len(originals))):  # c/10 before c/1
        source = source.replace(click_url(index, ""), originals[index])
    return source


@pytest.mark.parametrize("doctype", [XHTML_DOCTYPE, HTML4_DOCTYPE])
def test_legacy_doctypes_are_kept_exactly(doctype: str) -> None:
    """XHTML 1.0 and HTML 4.01 Transitional doctypes keep their identifiers (clients' modes)."""
    html = (
        f"{doctype}\n<html><head><title>Order</title></head>\n"
        '<body><a href="https://shop.example/">Shop</a>\n</body>\n</html>\n'
    )
    out = rewrite_html(html, click_url=click_url, open_url=OPEN_URL)
    assert out.startswith(f"{doctype}\n<html><head>")
    assert restored(out, ["https://shop.example/"]) == html
    source, at = without_pixel(out)
    assert source[at:] == "</body>\n</html>\n"
    assert hrefs(out) == [click_url(0, "")]


def test_an_xml_prolog_is_kept() -> None:
    """``<?xml ...?>`` stays as written (the parser alone would make it a comment)."""
    prolog = '<?xml version="1.0" encoding="UTF-8"?>'
    html = (
        f'{prolog}\n{XHTML_DOCTYPE}\n<html xmlns="http://www.w3.org/1999/xhtml">'
        '<head></head><body><a href="https://x.example/">x</a></body></html>'
    )
    out = rewrite_html(html, click_url=click_url, open_url=OPEN_URL)
    assert out.startswith(f"{prolog}\n{XHTML_DOCTYPE}\n")
    assert "<!--?xml" not in out
    assert restored(out, ["https://x.example/"]) == html
    assert PIXEL_TAG.search(out) is not None and PIXEL_TAG.findall(out)[0].endswith(" />")


@pytest.mark.parametrize(
    "html",
    [
        f'{MSO_OPEN}<div style="max-width:600px"><a href="https://x.example/">Shop</a></div>'
        f"{MSO_CLOSE}",
        f"{XHTML_DOCTYPE}<html><head>"
        "<!--[if gte mso 9]><xml><o:OfficeDocumentSettings><o:PixelsPerInch>96"
        "</o:PixelsPerInch></o:OfficeDocumentSettings></xml><![endif]--></head><body>"
        f'{MSO_OPEN}<!--[if mso]><v:roundrect href="https://x.example/" arcsize="10%">'
        "<w:anchorlock/><center>Shop</center></v:roundrect><![endif]-->"
        '<!--[if !mso]><!--><a href="https://x.example/">Shop</a><!--<![endif]-->'
        f"{MSO_CLOSE}</body></html>",
    ],
    ids=["fragment", "document"],
)
def test_outlook_conditional_comments_are_kept_byte_for_byte(html: str) -> None:
    """Opening and closing ``<!--[if mso]>`` comments survive, balanced, fragment or document."""
    out = rewrite_html(html, click_url=click_url, open_url=OPEN_URL)
    assert out.count(MSO_OPEN) == 1 and out.count(MSO_CLOSE) == 1
    assert out.index(MSO_OPEN) < out.index(click_url(0, "")) < out.index(MSO_CLOSE)
    assert restored(out, ["https://x.example/"]) == html
    assert hrefs(out) == [click_url(0, "")]  # hrefs inside comments are Outlook's, not links


@pytest.mark.parametrize(
    "html",
    [
        '<header><a href="https://x.example/">Shop</a></header><p>Hi</p>',
        # Ends inside a <textarea>: the pixel cannot go at the end, the parser's output is used.
        '<header><a href="https://x.example/">Shop</a></header><textarea>',
    ],
    ids=["source-kept", "serialized"],
)
def test_a_fragment_with_a_header_stays_a_fragment(html: str) -> None:
    """``<header>`` is not ``<head>``: no html/head/body wrapper is added to the fragment."""
    out = rewrite_html(html, click_url=click_url, open_url=OPEN_URL)
    assert out.startswith(f'<header><a href="{click_url(0, "")}">Shop</a></header>')
    assert "<html" not in out and "<head>" not in out and "<body" not in out
    assert len(pixels(out)) == 1


def test_only_the_hrefs_and_the_pixel_change() -> None:
    """Removing the pixel and writing the old hrefs back gives the source, byte for byte."""
    seen: list[tuple[int, str]] = []

    def record(index: int, url: str) -> str:
        seen.append((index, url))
        return click_url(index, url)

    html = (
        f"{XHTML_DOCTYPE}\r\n<html>\n<head>\n"
        '<meta http-equiv="Content-Type" content="text/html; charset=UTF-8" />\n'
        "<title>Your order &amp; <a href='https://title.example/'></title>\n"
        '<style type="text/css">a[href^="https://"] { color: #1a73e8; }</style>\n'
        '<script type="application/ld+json">{"url": "<a href=\\"https://ld.example/\\">"}'
        "</script>\n</head>\n<BODY bgcolor=#ffffff>\n"
        '<!-- <a href="https://commented.example/">old link</a> -->\n'
        "<table cellpadding=0 cellspacing=0><tr><td align=center>"
        '<a href="https://shop.example/o?id=1&amp;ref=mail" target=_blank>Order</a> '
        "<A HREF='http://blog.example/news'>News</A> "
        "<a class=btn href=https://cdn.example/p/1>Product</a> "
        '<a href="  https://spaced.example/x \n">Spaced</a> '
        '<a href="mailto:help@shop.example">Mail</a> '
        '<a data-ct-notrack href="https://unsubscribe.example/u">Unsubscribe</a>'
        '<map name=m><area shape=rect coords="0,0,1,1" href="https://map.example/"></map>'
        "</td></tr></table>\n<br/><img src=logo.png alt=''>\n</BODY>\n</html>\n"
    )
    out = rewrite_html(html, click_url=record, open_url=OPEN_URL)
    assert seen == [
        (0, "https://shop.example/o?id=1&ref=mail"),
        (1, "http://blog.example/news"),
        (2, "https://cdn.example/p/1"),
        (3, "https://spaced.example/x"),
        (4, "https://map.example/"),
    ]
    originals = [
        "https://shop.example/o?id=1&amp;ref=mail",
        "http://blog.example/news",
        "https://cdn.example/p/1",
        "  https://spaced.example/x \n",
        "https://map.example/",
    ]
    assert restored(out, originals) == html
    source, at = without_pixel(out)
    assert source[at:] == "</BODY>\n</html>\n"


def test_an_a_left_open_across_a_block_is_one_link() -> None:
    """The parser clones an ``<a>`` left open in a ``<p>``: the source's one tag gets one index."""
    seen: list[tuple[int, str]] = []

    def record(index: int, url: str) -> str:
        seen.append((index, url))
        return click_url(index, url)

    html = (
        '<p><a href="https://x.example/"><div>Shop</div></a></p><a href="https://y.example/">y</a>'
    )
    out = rewrite_html(html, click_url=record, open_url=OPEN_URL)
    assert seen == [(0, "https://x.example/"), (1, "https://y.example/")]
    assert restored(out, ["https://x.example/", "https://y.example/"]) == html
    assert hrefs(out) == [click_url(0, ""), click_url(0, ""), click_url(1, "")]


def test_hrefs_are_escaped_for_their_quoting() -> None:
    """``&amp;`` is decoded in the target; the new value is escaped for ", ' or no quotes."""
    targets: list[str] = []

    def record(index: int, url: str) -> str:
        targets.append(url)
        return f"https://t.example/c?i={index}&q=\"'"

    html = (
        '<a href="https://a.example/?x=1&amp;y=2">a</a> '
        "<a href='https://b.example/?x=1&amp;y=2'>b</a> "
        "<a href=https://c.example/?x=1&amp;y=2>c</a>"
    )
    out = rewrite_html(html, click_url=record, open_url=OPEN_URL)
    assert targets == [f"https://{host}.example/?x=1&y=2" for host in "abc"]
    source, _ = without_pixel(out)
    assert source == (
        '<a href="https://t.example/c?i=0&amp;q=&quot;\'">a</a> '
        "<a href='https://t.example/c?i=1&amp;q=\"&#39;'>b</a> "
        '<a href="https://t.example/c?i=2&amp;q=&quot;\'">c</a>'
    )
    assert hrefs(out) == [f"https://t.example/c?i={i}&q=\"'" for i in range(3)]


LONG_URL = (
    "https://x.example/" + base64.urlsafe_b64encode(hashlib.shake_256(b"x").digest(15_000)).decode()
)


def test_a_click_token_too_long_to_be_read_is_not_made() -> None:
    """Signing a URL whose token would exceed MAX_TOKEN_CHARS raises ClickTokenTooLongError."""
    signer = TokenSigner(KEY)
    token = ClickToken(org_id="org-1", message_id="msg-1", link_index=0, url=LONG_URL)
    with pytest.raises(ClickTokenTooLongError):
        signer.sign_click(token)
    shorter = attrs.evolve(token, url=LONG_URL[:10_000])
    assert len(signer.sign_click(shorter)) <= MAX_TOKEN_CHARS


def test_a_link_too_long_for_a_token_is_left_as_written() -> None:
    """That link stays untracked and takes no index; the links after it are still rewritten."""
    signer = TokenSigner(KEY)

    def signed(index: int, url: str) -> str:
        token = ClickToken(org_id="org-1", message_id="msg-1", link_index=index, url=url)
        return f"https://t.example/c?t={signer.sign_click(token)}"

    html = f'<a href="{LONG_URL}">long</a> <a href="https://short.example/">short</a>'
    out = rewrite_html(html, click_url=signed, open_url=OPEN_URL)
    assert out.startswith(f'<a href="{LONG_URL}">long</a> <a href="https://t.example/c?t=')
    [long_href, short_href] = hrefs(out)
    assert long_href == LONG_URL
    assert short_href is not None
    clicked = signer.read_click(short_href.removeprefix("https://t.example/c?t="))
    assert (clicked.link_index, clicked.url) == (0, "https://short.example/")


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
