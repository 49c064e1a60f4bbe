"""Open and click tracking: the HTML rewrite of a tracked email (pure, no I/O).

Every ``http``/``https`` link of the HTML part is pointed at the click URL
the caller makes and a 1x1 pixel is added at the end of the body; the rest
of the HTML source is kept byte for byte, so doctypes, conditional comments
and the author's quoting survive (:func:`rewrite_html`). selectolax (lexbor,
an HTML5 parser) decides which links a browser would see; a scanner of the
source finds where each one is written, and the two must agree, else the
document is rewritten through the parser's serialization instead.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from typing import Final

import attrs
from selectolax.lexbor import LexborHTMLParser

from commtunnel.domain.tracking import ClickTokenTooLongError, link_target

#: Links carrying this attribute are left as written (``<a data-ct-notrack href=...>``).
NO_TRACK_ATTRIBUTE: Final = "data-ct-notrack"


# ---------------------------------------------------------------------------- HTML

_DOCUMENT_MARKER: Final = re.compile(r"<(?:!doctype|html|head|body)(?=[\t\n\f\r />]|$)", re.I)


def _is_document(html: str) -> bool:
    """Whether the source is a whole document (kept whole) rather than a body fragment.

    Only a doctype or an ``<html>``, ``<head>`` or ``<body>`` tag counts:
    ``<header>`` or ``<heading-x>`` do not.
    """
    return _DOCUMENT_MARKER.search(html) is not None


# The source scan: a reading of the WHATWG HTML tokenizer that finds, with
# their positions in the source, the href values of <a>/<area> start tags
# and the </body> end tags, skipping what is not markup (comments, doctypes,
# processing instructions, CDATA, the text of <script>, <style>, <textarea>,
# <title> and the other raw-text elements). It never decides alone: the
# parser's reading is checked against it (see _rewrite_source).

_TAG_NAME: Final = re.compile(r"[^\t\n\f\r />]*")
# One step of the tokenizer's attribute states: separators ("/" not before
# ">" is ignored), then either the tag's ">" or one attribute with its value.
_ATTRIBUTE: Final = re.compile(
    r"[\t\n\f\r /]*"
    r"(?:(?P<close>>)|"
    r"(?P<name>[^\t\n\f\r />][^\t\n\f\r />=]*)"
    r"(?:[\t\n\f\r ]*(?P<eq>=)[\t\n\f\r ]*"
    r"(?:\"(?P<dq>[^\"]*)\"|'(?P<sq>[^']*)'"
    r"|(?P<uq>[^\t\n\f\r >\"'][^\t\n\f\r >]*)|(?P<open>[\"']))?"
    r")?)"
)
_COMMENT_END: Final = re.compile(r"--!?>")
_SCRIPT_TOKENS: Final = re.compile(r"<!--|-->|<(/?)script[\t\n\f\r />]", re.I)
_ASCII_LOWER: Final = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
#: Elements whose content is text up to their end tag (RAWTEXT and RCDATA).
_RAW_TEXT: Final = frozenset({"style", "xmp", "iframe", "noembed", "noframes", "textarea", "title"})
#: HTML start tags that end SVG/MathML content ("breakout" tags of the tree builder).
_BREAKOUT: Final = frozenset(
    {
        "b",
        "big",
        "blockquote",
        "body",
        "br",
        "center",
        "code",
        "dd",
        "div",
        "dl",
        "dt",
        "em",
        "embed",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "head",
        "hr",
        "i",
        "img",
        "li",
        "listing",
        "menu",
        "meta",
        "nobr",
        "ol",
        "p",
        "pre",
        "ruby",
        "s",
        "small",
        "span",
        "strong",
        "strike",
        "sub",
        "sup",
        "table",
        "tt",
        "u",
        "ul",
        "var",
    }
)
#: SVG/MathML elements whose content is parsed as HTML again.
_INTEGRATION_POINTS: Final = frozenset(
    {"foreignobject", "desc", "title", "mi", "mo", "mn", "ms", "mtext"}
)
_LINK_TAGS: Final = frozenset({"a", "area"})


@attrs.frozen
class _ValueSpan:
    """Where an attribute's value is written in the source.

    ``quote`` is ``"`` or ``'`` (the span is between the quotes), ``""``
    (unquoted), ``"="`` (``name=`` with nothing after) or ``"none"`` (a bare
    ``name``): for the last two the span is empty and a quoted value is inserted.
    """

    start: int
    end: int
    quote: str

    def render(self, value: str) -> str:
        """``value`` written for this span, escaped for its quoting."""
        escaped = value.replace("&", "&amp;")
        if self.quote == "'":
            return escaped.replace("'", "&#39;")
        if self.quote == "" and escaped and not any(c in escaped for c in "\t\n\f\r \"'=<>`"):
            return escaped
        quoted = '"' + escaped.replace('"', "&quot;") + '"'
        if self.quote == '"':
            return quoted[1:-1]
        return "=" + quoted if self.quote == "none" else quoted


@attrs.frozen
class _Tag:
    name: str
    attributes: dict[str, _ValueSpan]
    end: int
    self_closing: bool


@attrs.frozen
class _Scan:
    """What the source scan found.

    Attributes:
        links: the href value of each ``<a>``/``<area>`` start tag having one,
            in source order.
        body_end: where the last ``</body>`` end tag starts, None without one.
    """

    links: list[_ValueSpan]
    body_end: int | None


def _read_tag(html: str, start: int) -> _Tag | None:
    """The tag whose name starts at ``start``; None when the source ends inside it."""
    name_match = _TAG_NAME.match(html, start)
    if name_match is None:  # never: the pattern matches the empty string
        return None
    name = name_match.group().translate(_ASCII_LOWER)
    attributes: dict[str, _ValueSpan] = {}
    pos = name_match.end()
    while True:
        step = _ATTRIBUTE.match(html, pos)
        if step is None or step.group("open") is not None:
            return None  # end of input inside the tag: the parser drops it
        close = step.start("close")
        if close >= 0:
            self_closing = close > step.start() and html[close - 1] == "/"
            return _Tag(name, attributes, close + 1, self_closing)
        attribute = step.group("name").translate(_ASCII_LOWER)
        if attribute not in attributes:  # a repeated attribute is dropped
            attributes[attribute] = _value_span(step)
        pos = step.end()


def _value_span(step: re.Match[str]) -> _ValueSpan:
    for group, quote in (("dq", '"'), ("sq", "'"), ("uq", "")):
        if step.group(group) is not None:
            return _ValueSpan(step.start(group), step.end(group), quote)
    if step.group("eq") is not None:
        return _ValueSpan(step.end(), step.end(), "=")
    return _ValueSpan(step.end("name"), step.end("name"), "none")


def _gt_end(html: str, pos: int) -> int:
    """The end of a bogus comment or doctype: just after the next ``>``."""
    gt = html.find(">", pos)
    return len(html) if gt < 0 else gt + 1


def _markup_declaration_end(html: str, pos: int, *, cdata: bool) -> int:
    """The end of what starts with ``<!`` (``pos`` is just after it)."""
    if html.startswith("--", pos):  # a comment, conditional comments included
        pos += 2
        if html.startswith(">", pos):
            return pos + 1
        if html.startswith("->", pos):
            return pos + 2
        end = _COMMENT_END.search(html, pos)
        return len(html) if end is None else end.end()
    if cdata and html.startswith("[CDATA[", pos):  # only inside SVG/MathML
        end_cdata = html.find("]]>", pos + 7)
        return len(html) if end_cdata < 0 else end_cdata + 3
    return _gt_end(html, pos)  # a doctype, or a bogus comment


def _script_end(html: str, pos: int) -> int:
    """Where the text of a ``<script>`` ends (its end tag's ``<``), escapes included."""
    state = 0  # 0: script data, 1: escaped (after "<!--"), 2: double escaped
    while True:
        token = _SCRIPT_TOKENS.search(html, pos)
        if token is None:
            return len(html)
        text = token.group()
        if text == "<!--":
            state = state or 1
            pos = token.start() + 2  # its dashes may be those of a "-->"
        elif text == "-->":
            state = 0
            pos = token.end()
        elif token.group(1):  # </script
            if state != 2:
                return token.start()
            state, pos = 1, token.end()
        else:  # <script
            state = 2 if state == 1 else state
            pos = token.end()


_RAW_TEXT_ENDS: Final = {name: re.compile(rf"</{name}[\t\n\f\r />]", re.I) for name in _RAW_TEXT}


def _raw_text_end(html: str, pos: int, name: str) -> int:
    """Where the text of a raw-text element ends (its end tag's ``<``)."""
    end = _RAW_TEXT_ENDS[name].search(html, pos)
    return len(html) if end is None else end.start()


def _scan(html: str) -> _Scan:
    """Find the link href values and ``</body>`` end tags of the source, in order."""
    links: list[_ValueSpan] = []
    body_end: int | None = None
    foreign: list[str] = []  # open SVG/MathML elements (an approximation of the tree builder)
    length = len(html)
    pos = 0
    while (lt := html.find("<", pos)) >= 0 and lt + 1 < length:
        pos = lt + 1
        first = html[lt + 1]
        if first == "!":
            in_foreign = bool(foreign) and foreign[-1] not in _INTEGRATION_POINTS
            pos = _markup_declaration_end(html, lt + 2, cdata=in_foreign)
            continue
        if first == "?":  # <?xml ...?> and the like: a bogus comment
            pos = _gt_end(html, lt + 1)
            continue
        is_end = first == "/"
        start = lt + 2 if is_end else lt + 1
        if start >= length:
            break
        if not ("a" <= html[start] <= "z" or "A" <= html[start] <= "Z"):
            if is_end:  # "</>" is dropped, "</ ..." is a bogus comment
                pos = start + 1 if html[start] == ">" else _gt_end(html, start)
            continue  # else the "<" is text
        tag = _read_tag(html, start)
        if tag is None:
            break
        pos = tag.end
        if is_end:
            if tag.name == "body":
                body_end = lt
            if tag.name in ("p", "br"):
                foreign.clear()
            elif tag.name in foreign:
                del foreign[len(foreign) - 1 - foreign[::-1].index(tag.name) :]
            continue
        if foreign and foreign[-1] not in _INTEGRATION_POINTS:
            font_breakout = tag.name == "font" and bool(
                {"color", "face", "size"} & tag.attributes.keys()
            )
            if tag.name not in _BREAKOUT and not font_breakout:
                if tag.name in _LINK_TAGS and "href" in tag.attributes:
                    links.append(tag.attributes["href"])
                if not tag.self_closing:
                    foreign.append(tag.name)
                continue  # no raw text in SVG/MathML
            foreign.clear()
        if tag.name in _LINK_TAGS and "href" in tag.attributes:
            links.append(tag.attributes["href"])
        if tag.name in ("svg", "math"):
            if not tag.self_closing:
                foreign.append(tag.name)
        elif tag.name == "script":
            pos = _script_end(html, pos)
        elif tag.name in _RAW_TEXT:
            pos = _raw_text_end(html, pos, tag.name)
        elif tag.name == "plaintext":
            break  # the rest of the source is text
    return _Scan(links, body_end)


# The rewrite.

_LINK_SELECTOR: Final = "a[href], area[href]"
_PIXEL_STYLE: Final = "display:block;width:1px;height:1px;border:0;margin:0;padding:0"
_XHTML: Final = re.compile(r"<!doctype[^>]*xhtml", re.I)


def _pixel_attributes(open_url: str) -> tuple[tuple[str, str], ...]:
    return (
        ("src", open_url),
        ("width", "1"),
        ("height", "1"),
        ("alt", ""),
        ("border", "0"),
        ("style", _PIXEL_STYLE),
    )


def _pixel_markup(open_url: str, *, xhtml: bool) -> str:
    """The pixel's ``<img>`` (``<img ... />`` in an XHTML document)."""
    written = " ".join(
        f'{name}="{value.replace("&", "&amp;").replace(chr(34), "&quot;")}"'
        for name, value in _pixel_attributes(open_url)
    )
    return f"<img {written}{' /' if xhtml else ''}>"


def _links(tree: LexborHTMLParser) -> list[tuple[str | None, bool]]:
    """(href as decoded, has data-ct-notrack) of each link the parser found, in document order."""
    return [
        (node.attributes.get("href"), NO_TRACK_ATTRIBUTE in node.attributes)
        for node in tree.css(_LINK_SELECTOR)
    ]


def _pixel_count(tree: LexborHTMLParser, open_url: str) -> int:
    return sum(1 for node in tree.css("img") if node.attributes.get("src") == open_url)


def _substitute(html: str, replacements: list[tuple[int, int, str]]) -> str:
    """``html`` with each (start, end, text) replaced; spans in order, not overlapping."""
    parts: list[str] = []
    pos = 0
    for start, end, text in replacements:
        parts += (html[pos:start], text)
        pos = end
    parts.append(html[pos:])
    return "".join(parts)


def _probe(
    html: str, spans: dict[int, _ValueSpan], pixel: tuple[int, str] | None = None
) -> list[tuple[int | None, bool]]:
    """Which source tag made each link of the parsed source, found with markers.

    The source is parsed with the href value of each tag of ``spans`` (by
    number) replaced by a unique marker, and with the pixel if given (at,
    markup). Returns, for each link found, in document order, the number its
    marker names (None when its href is not a marker) and whether it has
    ``data-ct-notrack``.
    """
    prefix = f"ct-{secrets.token_hex(12)}-"
    replacements = [
        (span.start, span.end, span.render(f"{prefix}{number}")) for number, span in spans.items()
    ]
    if pixel is not None:
        replacements.append((pixel[0], pixel[0], pixel[1]))
        replacements.sort(key=lambda r: (r[0], r[1]))
    marked: list[tuple[int | None, bool]] = []
    for marker, notrack in _links(LexborHTMLParser(_substitute(html, replacements))):
        number = (marker or "").removeprefix(prefix)
        valid = marker is not None and number != marker and number.isdecimal()
        marked.append((int(number) if valid and int(number) in spans else None, notrack))
    return marked


def _source_links(html: str, scan: _Scan, found: list[tuple[str | None, bool]]) -> list[int] | None:
    """For each link the parser found, which scanned source tag made it; None if unsure.

    A tag can make several elements (the parser clones an ``<a>`` left open
    across a block) and the parser can reorder them (an ``<a>`` misplaced in
    a table goes before it). Every element must carry a marker, and all the
    elements of one tag must agree with the first reading.
    """
    marked = _probe(html, dict(enumerate(scan.links)))
    if len(marked) != len(found):
        return None
    tags: list[int] = []
    first_href: dict[int, str | None] = {}
    for (number, marked_notrack), (href, notrack) in zip(marked, found, strict=True):
        if number is None or marked_notrack != notrack:
            return None
        if first_href.setdefault(number, href) != href:
            return None
        tags.append(number)
    return tags


def _plan(
    found: list[tuple[str | None, bool]],
    tags: list[int],
    click_url: Callable[[int, str], str],
) -> list[str | None]:
    """The new href of each link the parser found (None: left as written).

    Indexes count the rewritten links from 0 in document order; links of one
    source tag share theirs. A link whose ``click_url`` raises
    :class:`ClickTokenTooLongError` is left as written and takes no index.
    """
    new_hrefs: dict[int, str | None] = {}
    plan: list[str | None] = []
    index = 0
    for (href, notrack), tag in zip(found, tags, strict=True):
        if tag not in new_hrefs:
            url = None if notrack else link_target(href)
            new_href = None
            if url is not None:
                try:
                    new_href = click_url(index, url)
                except ClickTokenTooLongError:
                    pass
                else:
                    index += 1
            new_hrefs[tag] = new_href
        plan.append(new_hrefs[tag])
    return plan


def _rewrite_source(
    html: str,
    *,
    scan: _Scan,
    tags: list[int],
    found: list[tuple[str | None, bool]],
    plan: list[str | None],
    open_url: str,
    pixels_before: int,
) -> str | None:
    """The source with the planned hrefs and the pixel written in; None if it does not parse so.

    The output is checked against a second marker probe that holds the pixel
    too (the pixel can make the parser clone an ``<a>`` left open before it):
    each of its links must carry the planned href of its source tag, or its
    original one, and there must be one more pixel than in the source.
    """
    old_values: dict[int, str | None] = {}
    new_values: dict[int, str] = {}
    for tag, (href, _), new_href in zip(tags, found, plan, strict=True):
        old_values[tag] = href
        if new_href is not None:
            new_values[tag] = new_href
    pixel = _pixel_markup(open_url, xhtml=_XHTML.search(html) is not None)
    at = len(html) if scan.body_end is None else scan.body_end
    replacements = [
        (span.start, span.end, span.render(new_values[number]))
        for number, span in enumerate(scan.links)
        if number in new_values
    ]
    replacements.append((at, at, pixel))
    replacements.sort(key=lambda r: (r[0], r[1]))
    out = _substitute(html, replacements)
    expected: list[tuple[str | None, bool]] = []
    for number, notrack in _probe(html, {n: scan.links[n] for n in old_values}, (at, pixel)):
        if number is None:
            return None
        expected.append((new_values.get(number, old_values[number]), notrack))
    tree = LexborHTMLParser(out)
    if _links(tree) != expected or _pixel_count(tree, open_url) != pixels_before + 1:
        return None
    return out


def _rewrite_tree(html: str, tree: LexborHTMLParser, plan: list[str | None], open_url: str) -> str:
    """The fallback: the planned hrefs and the pixel set in the tree, serialized."""
    for node, new_href in zip(tree.css(_LINK_SELECTOR), plan, strict=True):
        if new_href is not None:
            node.attrs["href"] = new_href
    pixel = tree.create_node("img")
    for name, value in _pixel_attributes(open_url):
        pixel.attrs[name] = value
    body = tree.body
    if body is not None:
        body.insert_child(pixel)
    elif tree.root is not None:  # a <frameset> document has no body
        tree.root.insert_child(pixel)
    if _is_document(html):
        return str(tree.html)
    head_html = tree.head.inner_html if tree.head is not None else ""
    body_html = body.inner_html if body is not None else ""
    return f"{head_html or ''}{body_html or ''}"


def rewrite_html(html: str, *, click_url: Callable[[int, str], str], open_url: str) -> str:
    """Rewrite an HTML part for tracking, changing nothing else of the source.

    Each ``<a href>`` and ``<area href>`` whose target :func:`link_target`
    accepts, and which has no ``data-ct-notrack`` attribute, gets
    ``click_url(index, url)`` as its ``href``; ``index`` counts the rewritten
    links from 0 in document order. A link for which ``click_url`` raises
    :class:`ClickTokenTooLongError` is left as written and takes no index. One
    1x1 ``<img>`` loading ``open_url`` is inserted just before the last
    ``</body>`` end tag, or at the end of the source when there is none (a
    fragment).

    The output is the source text with only those href values replaced
    (escaped for the value's quoting) and the pixel inserted: doctypes, XML
    prologs, comments (Outlook's conditional comments included), entity
    spelling and whitespace are kept byte for byte. The parser (lexbor) finds
    the links; a scan of the source finds where their href values are
    written; the two must agree, and the output must parse to the planned
    links plus the pixel. For a source where they do not (rare, broken
    markup), the output is the parser's serialization of the rewritten tree
    instead: whole for a document (a doctype, ``<html>``, ``<head>`` or
    ``<body>`` tag), else the fragment's content.

    Args:
        html: the HTML part as stored.
        click_url: (link index, target URL) -> the tracking URL for the link.
        open_url: the pixel's URL.

    Returns:
        The tracked HTML.
    """
    tree = LexborHTMLParser(html)
    found = _links(tree)
    scan = _scan(html)
    tags = _source_links(html, scan, found)
    plan = _plan(found, tags if tags is not None else list(range(len(found))), click_url)
    if tags is not None:
        out = _rewrite_source(
            html,
            scan=scan,
            tags=tags,
            found=found,
            plan=plan,
            open_url=open_url,
            pixels_before=_pixel_count(tree, open_url),
        )
        if out is not None:
            return out
    return _rewrite_tree(html, tree, plan, open_url)
