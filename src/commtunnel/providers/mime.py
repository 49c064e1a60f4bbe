"""Build the RFC 5322 bytes of an :class:`~commtunnel.ports.OutgoingEmail`.

Shared by the ``outbox`` and ``smtp`` providers (and free for plugins to use).

Why ``compat32`` (the legacy API under the ``email.mime`` classes) and not
``email.message.EmailMessage`` with ``policy.default``: building the same 2 KB
multipart/alternative message measured, in one run, ~1.43 ms with
``EmailMessage``, ~0.42 ms with the ``email.mime`` classes and ~0.39 ms with
this module (``../shared/PERFORMANCE.md`` found the same ~3.5x ratio). Message
building can cost more than the SMTP exchange, so we take the cheap path with a
little care: ``compat32`` neither encodes non-ASCII headers nor refuses CR/LF on
its own, so this module RFC 2047-encodes the subject and display names itself
(:class:`email.header.Header`), refuses line breaks in header values, and
chooses each part's transfer encoding so no output line exceeds 998 octets
(RFC 5322 §2.1.1). The message tree is then written without the generator
(``_flatten``, byte for byte the same output, see the comment there), which
brought the 2 KB multipart message from ~0.39 ms to ~0.1 ms; parsed addresses
are cached.

Transfer encoding per body part (always ``charset="utf-8"``):

* ``7bit`` when the text is ASCII with no line over 998 characters and no NUL;
* ``quoted-printable`` when it is mostly ASCII (fewer than 1 in 6 bytes
  non-ASCII) or has long lines, readable and compact;
* ``base64`` otherwise (mostly non-Latin scripts), which is then smaller.
"""

from __future__ import annotations

import functools
import re
import secrets
import sys
from email.charset import BASE64, QP, Charset
from email.header import Header
from email.message import Message
from email.policy import compat32
from email.utils import format_datetime, formataddr, getaddresses
from typing import TYPE_CHECKING

import email_validator

from commtunnel.domain.email import has_line_break
from commtunnel.domain.suppressions import list_unsubscribe_headers
from commtunnel.ports import OutgoingEmail

__all__ = ["build_mime", "envelope_recipients", "envelope_sender"]

#: the header name carrying Commtunnel's own message id (the bare UUID).
COMMTUNNEL_ID_HEADER = "X-Commtunnel-Message-Id"

# compat32 with CRLF line endings: SMTP DATA and .eml files both want CRLF.
_POLICY = compat32.clone(linesep="\r\n")
_ALTERNATIVE = "multipart/alternative"


def _charset(body_encoding: int | None) -> Charset:
    cs = Charset("utf-8")
    # typeshed says int, but the stdlib itself uses None for "no transfer encoding".
    cs.body_encoding = body_encoding  # type: ignore[assignment]
    return cs


_UTF8_7BIT = _charset(None)
_UTF8_QP = _charset(QP)
_UTF8_B64 = _charset(BASE64)

# A line longer than 998 characters, or a NUL: either rules out 7bit (RFC 2045 §2.7).
_NOT_7BIT_SAFE = re.compile(r"[^\r\n]{999}|\x00")
# A run the compat32 folder cannot break: it would leave a header line over 998 octets.
_UNFOLDABLE = re.compile(r"\S{900}")


def _body_charset(text: str) -> Charset:
    """Pick the cheapest correct transfer encoding for one text part."""
    if text.isascii():
        return _UTF8_QP if _NOT_7BIT_SAFE.search(text) else _UTF8_7BIT
    data = text.encode("utf-8")
    non_ascii = len(data) - len(data.decode("ascii", "ignore"))
    # QP spends 3 octets per non-ASCII byte, base64 4/3 per byte: QP wins below ~1/6.
    return _UTF8_QP if non_ascii * 6 < len(data) else _UTF8_B64


# Header values are str, or Header for RFC 2047-encoded ones (generic only in typeshed).
if TYPE_CHECKING:
    _Message = Message[str, str | Header]
else:
    _Message = Message


def _text_part(text: str, subtype: str) -> _Message:
    part = _Message(policy=_POLICY)
    part["Content-Type"] = f"text/{subtype}"
    part.set_payload(text, _body_charset(text))  # adds charset, MIME-Version and the CTE
    return part


def _ascii_address(addr: str) -> str:
    """``addr`` with an internationalized domain turned into its IDNA (``xn--``) form.

    Raises:
        ValueError: the address is empty, or its local part is not ASCII
            (that needs SMTPUTF8, which Commtunnel does not use).
    """
    if not addr:
        raise ValueError("no email address found")
    if addr.isascii():
        return addr
    try:
        checked = email_validator.validate_email(
            addr, check_deliverability=False, allow_smtputf8=True
        )
    except email_validator.EmailNotValidError as exc:
        raise ValueError(f"invalid email address {addr!r}: {exc}") from None
    if checked.ascii_email is None:
        raise ValueError(
            f"address {addr!r} has a non-ASCII local part, which needs SMTPUTF8 (not supported)"
        )
    return checked.ascii_email


# A worker sends the same From (and often the same To) again and again, and each
# send parses it three times (envelope sender, recipients, header): cache the
# pure parse. The cached value is a tuple, so no caller can change it; errors are
# not cached (lru_cache stores only returned values).
@functools.lru_cache(maxsize=1024)
def _mailboxes(value: str) -> tuple[tuple[str, str], ...]:
    """(display name, ASCII address) pairs of a ``From``/``To`` header value."""
    if has_line_break(value):
        raise ValueError("address header must not contain line breaks")
    pairs = getaddresses([value])
    if not pairs:
        raise ValueError(f"no email address found in {value!r}")
    return tuple((name, _ascii_address(addr)) for name, addr in pairs)


@functools.lru_cache(maxsize=1024)
def _address_header(value: str) -> str:
    """A ``From``/``To`` value with non-ASCII display names RFC 2047-encoded."""
    return ", ".join(formataddr((name, addr), charset="utf-8") for name, addr in _mailboxes(value))


def _subject_header(subject: str) -> str | Header:
    if has_line_break(subject):
        raise ValueError("subject must not contain line breaks")
    # Plain printable ASCII is folded at spaces by compat32. Anything else (non-ASCII,
    # control characters, edge whitespace a parser would strip, a word too long to
    # fold, text that would read as an encoded word) is RFC 2047-encoded instead.
    if (
        subject.isascii()
        and subject.isprintable()
        and subject == subject.strip()
        and "=?" not in subject
        and not _UNFOLDABLE.search(subject)
    ):
        return subject
    return Header(subject, "utf-8", header_name="Subject")


def envelope_sender(email: OutgoingEmail) -> str:
    """The SMTP envelope sender (``MAIL FROM``) of ``email``.

    Args:
        email: the email to send; its ``from_addr`` may be ``addr`` or ``Name <addr>``.

    Returns:
        The bare address, with an internationalized domain in IDNA form.

    Raises:
        ValueError: no address, a line break, or a non-ASCII local part.
    """
    return _mailboxes(email.content.from_addr)[0][1]


def envelope_recipients(email: OutgoingEmail) -> list[str]:
    """The SMTP envelope recipients (``RCPT TO``) of ``email``.

    Args:
        email: the email to send; its ``to`` may be ``addr``, ``Name <addr>``
            or a comma-separated list of those.

    Returns:
        The bare addresses in header order, internationalized domains in IDNA form.

    Raises:
        ValueError: no address, a line break, or a non-ASCII local part.
    """
    return [addr for _name, addr in _mailboxes(email.content.to)]


def build_mime(email: OutgoingEmail) -> bytes:
    """The RFC 5322 message for ``email``, with CRLF line endings.

    Headers: ``From``, ``To``, ``Subject`` (RFC 2047 when not plain ASCII),
    ``Date`` (from ``email.created_at``), ``Message-ID`` (exactly
    ``email.content.message_id_header``), ``MIME-Version`` and
    ``X-Commtunnel-Message-Id`` (``email.message_id``), and when
    ``email.content.unsubscribe_url`` is set ``List-Unsubscribe: <url>`` and
    ``List-Unsubscribe-Post: List-Unsubscribe=One-Click`` (RFC 2369, RFC
    8058 one-click unsubscribe). Body: ``text/plain``,
    ``text/html``, or ``multipart/alternative`` (text first, then html) when
    both are set; UTF-8 in 7bit, quoted-printable or base64 (see the module
    docstring). No output line is longer than 998 octets.

    The bytes are exactly what the ``compat32`` generator writes for
    :func:`_message`'s tree (with another random boundary), written directly
    (see "Fast output" below).

    Args:
        email: the email to render.

    Returns:
        The message bytes (ASCII only).

    Raises:
        ValueError: neither text nor html is set, a header value contains a
            line break, or an address cannot be written in ASCII.
    """
    bodies = _bodies(email)
    headers = _headers(email)
    if len(bodies) == 1:
        ((text, subtype),) = bodies
        cte, body = _encoded(text)
        # set_charset() adds MIME-Version, then rewrites Content-Type (moving it after).
        fields = [
            b"MIME-Version: 1.0\r\n",
            f'Content-Type: text/{subtype}; charset="utf-8"\r\n'.encode("ascii"),
            f"Content-Transfer-Encoding: {cte}\r\n".encode("ascii"),
        ]
    else:
        parts = [_part(text, subtype) for text, subtype in bodies]
        boundary = _boundary(parts)
        dash = f"--{boundary}".encode("ascii")
        # After the generator's set_boundary() the value is too long for one line,
        # and compat32 folds it at the "; ".
        fields = [f'Content-Type: {_ALTERNATIVE};\r\n boundary="{boundary}"\r\n'.encode("ascii")]
        fields.append(b"MIME-Version: 1.0\r\n")
        body = b"".join(
            [dash, b"\r\n", parts[0], b"\r\n", dash, b"\r\n", parts[1], b"\r\n", dash, b"--\r\n"]
        )
    fields += [_header_field(name, value) for name, value in headers]
    fields += [b"\r\n", body]
    return b"".join(fields)


def _bodies(email: OutgoingEmail) -> list[tuple[str, str]]:
    """(text, MIME subtype) of each part, text first; checks the Message-ID too."""
    content = email.content
    if has_line_break(content.message_id_header):
        raise ValueError("Message-ID must not contain line breaks")
    bodies = [(content.text, "plain"), (content.html, "html")]
    present = [(text, subtype) for text, subtype in bodies if text is not None]
    if not present:
        raise ValueError("an email needs a text or an html body")
    return present


def _headers(email: OutgoingEmail) -> list[tuple[str, str | Header]]:
    """The header fields after the MIME ones, in order, with checked and encoded values."""
    content = email.content
    headers: list[tuple[str, str | Header]] = [
        ("From", _address_header(content.from_addr)),
        ("To", _address_header(content.to)),
        ("Subject", _subject_header(content.subject)),
        ("Date", format_datetime(email.created_at)),
        ("Message-ID", content.message_id_header),
        (COMMTUNNEL_ID_HEADER, email.message_id),
    ]
    if content.unsubscribe_url is not None:
        headers += list_unsubscribe_headers(content.unsubscribe_url)
    return headers


def _message(email: OutgoingEmail) -> _Message:
    """The same message as a ``compat32`` tree: the reference :func:`build_mime` follows.

    ``_message(email).as_bytes(policy=_POLICY)`` equals ``build_mime(email)``
    byte for byte, the random boundary aside (a Hypothesis test checks it).
    """
    bodies = _bodies(email)
    headers = _headers(email)
    if len(bodies) == 2:
        msg = _Message(policy=_POLICY)
        msg["Content-Type"] = _ALTERNATIVE  # the generator adds the boundary
        msg["MIME-Version"] = "1.0"
        for text, subtype in bodies:
            part = _text_part(text, subtype)
            del part["MIME-Version"]  # only the top-level entity carries it
            msg.attach(part)
    else:
        msg = _text_part(*bodies[0])
    for name, value in headers:
        msg[name] = value
    return msg


# ---------------------------------------------------------------------------- fast output
#
# ``msg.as_bytes()`` on the tree of ``_message`` runs the compat32 generator:
# every header goes through ``email.header.Header``, a new regex is compiled per
# message to check the random boundary, and building the tree (``set_payload``,
# ``set_charset``, ``set_param``) costs as much again. That was ~0.3 ms of a
# 2 KB message. ``build_mime`` writes the same bytes directly: the MIME headers
# have fixed values; a header that needs no folding (printable ASCII, at most
# 78 octets with its name) is written as ``Name: value``, any other goes
# through the policy's own ``fold_binary`` (what the generator calls); bodies
# are encoded by the same ``Charset`` objects ``set_payload`` would use, and get
# CRLF line endings as the generator's ``_write_lines`` gives them.

_LINE_BREAK = re.compile(r"\r\n|\r|\n")  # the generator's NLCRE
# compat32's max_line_length: the generator folds a header line longer than this.
_MAX_HEADER_LINE = 78
# Generator._make_boundary's shape: 15 '=' + 19 digits + '=='.
_BOUNDARY_DIGITS = len(repr(sys.maxsize - 1))


def _header_field(name: str, value: str | Header) -> bytes:
    """One header field as the compat32 generator writes it, CRLF included."""
    if (
        isinstance(value, str)
        and len(name) + 2 + len(value) <= _MAX_HEADER_LINE
        and value.isascii()
        and value.isprintable()
    ):
        return f"{name}: {value}\r\n".encode("ascii")
    # typeshed types the value as str; compat32 folds Header values too (as the generator does).
    return _POLICY.fold_binary(name, value)  # type: ignore[arg-type]


def _encoded(text: str) -> tuple[str, bytes]:
    """(Content-Transfer-Encoding, body bytes with CRLF) of one text part."""
    charset = _body_charset(text)
    if charset is _UTF8_7BIT:  # text is ASCII: set_payload keeps it as it is
        cte, body = "7bit", text
    else:
        cte = str(charset.get_body_encoding())
        body = charset.body_encode(text.encode("utf-8"))
    return cte, _LINE_BREAK.sub("\r\n", body).encode("ascii")


def _part(text: str, subtype: str) -> bytes:
    """One text part of a multipart/alternative message (headers and body)."""
    cte, body = _encoded(text)
    head = (
        f'Content-Type: text/{subtype}; charset="utf-8"\r\nContent-Transfer-Encoding: {cte}\r\n\r\n'
    )
    return head.encode("ascii") + body


def _boundary(body_parts: list[bytes]) -> str:
    """A boundary shaped like the generator's, found in none of ``body_parts``."""
    while True:
        token = secrets.randbelow(sys.maxsize)
        boundary = f"{'=' * 15}{token:0{_BOUNDARY_DIGITS}d}=="
        # Stricter than the generator (which only rejects whole "--boundary" lines).
        marker = f"--{boundary}".encode("ascii")
        if not any(marker in part for part in body_parts):
            return boundary
