"""build_mime and the envelope helpers: headers, MIME structure, encodings, limits."""

from __future__ import annotations

import email
import email.policy
import email.utils
import re
from datetime import UTC, datetime, timedelta, timezone
from email.message import EmailMessage

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from commtunnel.domain.messages import EmailContent
from commtunnel.ports import OutgoingEmail
from commtunnel.providers import mime
from commtunnel.providers.mime import build_mime, envelope_recipients, envelope_sender

CREATED = datetime(2026, 3, 4, 5, 6, 7, 890000, tzinfo=UTC)


def outgoing(
    *,
    subject: str = "Your order has shipped",
    text: str | None = "Hello Bob,\nyour order is on its way.\n",
    html: str | None = "<p>Hello Bob,<br>your order is on its way.</p>",
    to: str = "Bob <bob@example.com>",
    from_addr: str = "Shop <shop@example.com>",
    message_id: str = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
    created_at: datetime = CREATED,
) -> OutgoingEmail:
    content = EmailContent(
        from_addr=from_addr,
        to=to,
        subject=subject,
        text=text,
        html=html,
        message_id_header=f"<{message_id}@mail.commtunnel.test>",
    )
    return OutgoingEmail(
        message_id=message_id, org_id="org-1", content=content, created_at=created_at
    )


def parse(raw: bytes) -> EmailMessage:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def lines(raw: bytes) -> list[bytes]:
    assert raw.endswith(b"\r\n") or not raw.endswith(b"\n")
    return raw.split(b"\r\n")


def body_of(msg: EmailMessage, subtype: str) -> str:
    part = msg.get_body((subtype,))
    assert part is not None, f"no text/{subtype} part"
    content = part.get_content()
    assert isinstance(content, str)
    return content.replace("\r\n", "\n")  # the parser keeps the wire's CRLF in bodies


def test_multipart_alternative_has_text_then_html() -> None:
    """With text and html, the message is multipart/alternative: text/plain first, then html."""
    msg = parse(build_mime(outgoing()))
    assert msg.get_content_type() == "multipart/alternative"
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert all(p.get_content_charset() == "utf-8" for p in parts)
    assert body_of(msg, "plain") == "Hello Bob,\nyour order is on its way.\n"
    assert body_of(msg, "html").rstrip("\n") == "<p>Hello Bob,<br>your order is on its way.</p>"


def test_headers_are_all_present_with_their_values() -> None:
    """From, To, Subject, Date, Message-ID, MIME-Version and X-Commtunnel-Message-Id are set."""
    msg = parse(build_mime(outgoing()))
    assert msg["From"] == "Shop <shop@example.com>"
    assert msg["To"] == "Bob <bob@example.com>"
    assert msg["Subject"] == "Your order has shipped"
    assert msg["Message-ID"] == "<0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b@mail.commtunnel.test>"
    assert msg["MIME-Version"] == "1.0"
    assert msg["X-Commtunnel-Message-Id"] == "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"


def test_mime_version_only_on_the_top_level_entity() -> None:
    """The body parts of a multipart message do not repeat MIME-Version."""
    raw = build_mime(outgoing())
    assert raw.count(b"MIME-Version:") == 1


def test_message_id_is_copied_exactly() -> None:
    """The Message-ID header is the stored value byte for byte, never regenerated."""
    email_ = outgoing()
    raw = build_mime(email_)
    assert f"\r\nMessage-ID: {email_.content.message_id_header}\r\n".encode() in raw


@pytest.mark.parametrize(
    "created_at",
    [CREATED, datetime(2026, 7, 1, 23, 59, 59, tzinfo=timezone(timedelta(hours=-7)))],
)
def test_date_header_is_created_at_in_rfc5322_form(created_at: datetime) -> None:
    """Date is email.utils.format_datetime(created_at) and parses back to that instant."""
    msg = parse(build_mime(outgoing(created_at=created_at)))
    assert msg["Date"] == email.utils.format_datetime(created_at)
    assert email.utils.parsedate_to_datetime(msg["Date"]) == created_at.replace(microsecond=0)


def test_text_only_is_a_single_text_plain_part() -> None:
    """Without html, the message itself is text/plain (no multipart wrapper)."""
    msg = parse(build_mime(outgoing(html=None)))
    assert msg.get_content_type() == "text/plain"
    assert not msg.is_multipart()
    assert body_of(msg, "plain") == "Hello Bob,\nyour order is on its way.\n"


def test_html_only_is_a_single_text_html_part() -> None:
    """Without text, the message itself is text/html."""
    msg = parse(build_mime(outgoing(text=None)))
    assert msg.get_content_type() == "text/html"
    assert not msg.is_multipart()
    assert "<br>your order" in body_of(msg, "html")


def test_no_body_is_refused() -> None:
    """An email with neither text nor html cannot be built."""
    with pytest.raises(ValueError, match="text or an html body"):
        build_mime(outgoing(text=None, html=None))


def test_output_uses_crlf_and_is_ascii() -> None:
    """Every line ends with CRLF (no bare CR or LF) and the bytes are 7-bit ASCII."""
    raw = build_mime(outgoing(subject="Grüße", text="Zoë\nline two\rline three", html="<p>é</p>"))
    stripped = raw.replace(b"\r\n", b"")
    assert b"\r" not in stripped
    assert b"\n" not in stripped
    assert raw.isascii()


def test_non_ascii_subject_is_rfc2047_encoded_and_round_trips() -> None:
    """A non-ASCII subject is written as encoded words and decodes to the original text."""
    subject = "Grüße aus Köln — 東京 🚀"
    raw = build_mime(outgoing(subject=subject))
    assert b"Subject: =?utf-8?" in raw
    assert parse(raw)["Subject"] == subject


def test_non_ascii_display_names_round_trip() -> None:
    """Non-ASCII display names in From and To are encoded and decode back; addresses unchanged."""
    raw = build_mime(
        outgoing(from_addr="Zoë Müller <zoe@example.com>", to="Jürgen <j@example.org>")
    )
    msg = parse(raw)
    assert msg["From"].addresses[0].display_name == "Zoë Müller"
    assert msg["From"].addresses[0].addr_spec == "zoe@example.com"
    assert msg["To"].addresses[0].display_name == "Jürgen"
    assert msg["To"].addresses[0].addr_spec == "j@example.org"


def test_display_name_with_comma_stays_one_mailbox() -> None:
    """A display name with a comma is quoted, so To still holds exactly one address."""
    msg = parse(build_mime(outgoing(to='"Smith, John" <john@example.com>')))
    addresses = msg["To"].addresses
    assert len(addresses) == 1
    assert addresses[0].display_name == "Smith, John"


def test_long_html_line_is_wrapped_below_998_octets() -> None:
    """An html body with a 5000-character line is encoded so no line exceeds 998 octets."""
    html = "<p>" + "word " * 1000 + "</p>"
    raw = build_mime(outgoing(html=html))
    assert max(len(line) for line in lines(raw)) <= 998
    assert body_of(parse(raw), "html").rstrip("\n") == html


def test_long_unbroken_ascii_subject_stays_within_line_limit() -> None:
    """A 998-character subject without spaces is encoded so its header lines fit in 998 octets."""
    subject = "x" * 998
    raw = build_mime(outgoing(subject=subject))
    assert max(len(line) for line in lines(raw)) <= 998
    assert parse(raw)["Subject"] == subject


def test_long_ascii_subject_with_spaces_is_folded() -> None:
    """A long plain subject is folded at spaces (no line over 78 octets) and unfolds unchanged."""
    subject = " ".join(["shipment"] * 60)
    raw = build_mime(outgoing(subject=subject))
    header_lines = raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    assert max(len(line) for line in header_lines) <= 78
    assert parse(raw)["Subject"] == subject


@pytest.mark.parametrize(
    ("text", "encoding"),
    [
        ("plain short ascii\n", "7bit"),
        ("a" * 1200, "quoted-printable"),  # ASCII, but a line too long for 7bit
        ("Grüße, Zoë! " + "mostly plain text " * 10, "quoted-printable"),
        ("東京の天気は晴れです。" * 20, "base64"),
    ],
)
def test_transfer_encoding_fits_the_text(text: str, encoding: str) -> None:
    """7bit for short ASCII, quoted-printable for mostly-ASCII or long lines, base64 otherwise."""
    msg = parse(build_mime(outgoing(text=text, html=None)))
    assert msg["Content-Transfer-Encoding"] == encoding
    assert body_of(msg, "plain").rstrip("\n") == text.rstrip("\n")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("subject", "Hello\r\nBcc: victim@example.com"),
        ("from_addr", "a@example.com\nBcc: victim@example.com"),
        ("to", "b@example.com\r\nX-Evil: 1"),
    ],
)
def test_line_breaks_in_header_values_are_refused(field: str, value: str) -> None:
    """CR/LF in a header value raises ValueError instead of injecting headers."""
    with pytest.raises(ValueError, match="line breaks"):
        build_mime(outgoing(**{field: value}))


def test_envelope_sender_is_the_bare_address() -> None:
    """envelope_sender strips the display name from From."""
    assert envelope_sender(outgoing(from_addr="Shop Team <shop@example.com>")) == "shop@example.com"
    assert envelope_sender(outgoing(from_addr="shop@example.com")) == "shop@example.com"


def test_envelope_recipients_are_bare_addresses_in_order() -> None:
    """envelope_recipients lists every To address without display names, in header order."""
    email_ = outgoing(to='bob@example.com, "Smith, Ann" <ann@example.org>, Zoë <zoe@example.net>')
    assert envelope_recipients(email_) == ["bob@example.com", "ann@example.org", "zoe@example.net"]


def test_internationalized_domain_becomes_idna_in_envelope_and_header() -> None:
    """A Unicode domain is written in its xn-- form in the envelope and in To."""
    email_ = outgoing(to="Hans <hans@bücher.example>")
    assert envelope_recipients(email_) == ["hans@xn--bcher-kva.example"]
    assert parse(build_mime(email_))["To"].addresses[0].addr_spec == "hans@xn--bcher-kva.example"


def test_non_ascii_local_part_is_refused() -> None:
    """An address whose local part is not ASCII needs SMTPUTF8, which is refused clearly."""
    with pytest.raises(ValueError, match="SMTPUTF8"):
        envelope_recipients(outgoing(to="jürgen@example.com"))


def test_missing_address_is_refused() -> None:
    """A To value with no address in it raises ValueError."""
    with pytest.raises(ValueError, match="no email address"):
        envelope_recipients(outgoing(to="Nobody <>"))


_header_text = st.text(
    alphabet=st.characters(exclude_categories=("Cs", "Cc")), min_size=0, max_size=998
)
_body_text = st.one_of(
    st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=2000),
    st.text(alphabet="ab =.\r\n\t", max_size=2000),
)


@settings(max_examples=150, deadline=None)
@given(subject=_header_text)
def test_any_subject_round_trips_within_line_limits(subject: str) -> None:
    """Any subject without control characters decodes back exactly, in lines of <= 998 octets."""
    raw = build_mime(outgoing(subject=subject, html=None))
    assert max(len(line) for line in lines(raw)) <= 998
    assert parse(raw)["Subject"] == subject


@settings(max_examples=150, deadline=None)
@given(text=_body_text, html=_body_text)
def test_any_bodies_round_trip_within_line_limits(text: str, html: str) -> None:
    """Any text/html bodies decode back (line endings normalized), in lines of <= 998 octets."""
    raw = build_mime(outgoing(text=text, html=html))
    assert max(len(line) for line in lines(raw)) <= 998

    def norm(value: str) -> str:
        return value.replace("\r\n", "\n").replace("\r", "\n").rstrip("\n")

    msg = parse(raw)
    assert norm(body_of(msg, "plain")) == norm(text)
    assert norm(body_of(msg, "html")) == norm(html)


# --------------------------------------------------------------------------- fast output

_BOUNDARY = re.compile(rb"={15}\d{19}==(?:\.\d+)?")
_name_text = st.text(alphabet=st.characters(exclude_categories=("Cs", "Cc")), max_size=40)
_short_ascii = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80)


def _generator_output(email_: OutgoingEmail) -> bytes:
    """What the compat32 generator writes for the same message tree (the reference)."""
    return mime._message(email_).as_bytes(policy=mime._POLICY)


@settings(max_examples=500, deadline=None)
@given(
    subject=st.one_of(_short_ascii, _header_text),
    text=st.one_of(st.none(), _body_text),
    html=st.one_of(st.none(), _body_text),
    from_name=_name_text,
    to_names=st.lists(_name_text, min_size=1, max_size=3),
    created_at=st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
    ),
    message_id=st.one_of(st.uuids().map(str), _short_ascii.filter(lambda v: v.strip() == v)),
)
def test_fast_output_equals_the_generator_byte_for_byte(
    subject: str,
    text: str | None,
    html: str | None,
    from_name: str,
    to_names: list[str],
    created_at: datetime,
    message_id: str,
) -> None:
    """build_mime writes exactly what ``as_bytes`` would, the random MIME boundary aside."""
    assume(text is not None or html is not None)
    to = ", ".join(
        email.utils.formataddr((name, f"user{n}@example.com")) for n, name in enumerate(to_names)
    )
    from_addr = email.utils.formataddr((from_name, "shop@example.com"))
    email_ = outgoing(
        subject=subject,
        text=text,
        html=html,
        to=to,
        from_addr=from_addr,
        message_id=message_id,
        created_at=created_at,
    )
    try:
        reference = _generator_output(email_)
    except ValueError as exc:
        with pytest.raises(ValueError, match=re.escape(str(exc))):
            build_mime(email_)  # the same refusal
        return
    assert _BOUNDARY.sub(b"B", build_mime(email_)) == _BOUNDARY.sub(b"B", reference)


def test_fast_output_folds_long_headers_like_the_generator() -> None:
    """A 78-octet header line is written as is; one octet more is folded as compat32 folds it."""
    fits = "x" * (78 - len("Subject: "))
    for subject in (fits, fits + "y", "a " * 40, "Größe " * 20):
        email_ = outgoing(subject=subject, html=None)
        assert build_mime(email_) == _generator_output(email_)
    assert f"Subject: {fits}\r\n".encode() in build_mime(outgoing(subject=fits, html=None))


def test_multipart_boundary_never_occurs_in_the_parts() -> None:
    """The boundary is shaped like the generator's and absent from the part texts."""
    raw = build_mime(outgoing(text="--=============== not a boundary", html="<p>x</p>"))
    match = _BOUNDARY.search(raw)
    assert match is not None
    boundary = match.group()
    assert raw.count(b"--" + boundary) == 3  # two delimiters and the close delimiter
    assert b'Content-Type: multipart/alternative;\r\n boundary="' + boundary + b'"\r\n' in raw


def test_a_boundary_found_in_a_part_is_drawn_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """When the first random boundary occurs in a part's text, another one is drawn."""
    taken = f"{'=' * 15}{7:019d}=="
    draws = iter([7, 8])
    monkeypatch.setattr(mime.secrets, "randbelow", lambda _n: next(draws))
    raw = build_mime(outgoing(text=f"--{taken}", html="<p>x</p>"))
    boundary = f"{'=' * 15}{8:019d}==".encode()
    assert b'boundary="' + boundary + b'"' in raw
    assert raw.count(b"--" + boundary) == 3
    assert next(draws, None) is None  # both draws were used


def test_address_parsing_is_cached_and_immutable() -> None:
    """Parsed mailboxes are cached as tuples: repeated sends parse a From value once."""
    mime._mailboxes.cache_clear()
    first = mime._mailboxes("Shop <shop@example.com>, bob@example.org")
    again = mime._mailboxes("Shop <shop@example.com>, bob@example.org")
    assert first is again
    assert first == (("Shop", "shop@example.com"), ("", "bob@example.org"))
    assert mime._mailboxes.cache_info().hits == 1
    with pytest.raises(ValueError, match="no email address"):
        mime._mailboxes("")  # errors are raised every time, never cached
