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
(RFC 5322 §2.1.1).

Transfer encoding per body part (always ``charset="utf-8"``):

* ``7bit`` when the text is ASCII with no line over 998 characters and no NUL;
* ``quoted-printable`` when it is mostly ASCII (fewer than 1 in 6 bytes
  non-ASCII) or has long lines, readable and compact;
* ``base64`` otherwise (mostly non-Latin scripts), which is then smaller.
"""

from __future__ import annotations

import re
from email.charset import BASE64, QP, Charset
from email.header import Header
from email.message import Message
from email.policy import compat32
from email.utils import format_datetime, formataddr, getaddresses
from typing import TYPE_CHECKING

import email_validator

from commtunnel.domain.email import has_line_break
from commtunnel.ports import OutgoingEmail

__all__ = ["build_mime", "envelope_recipients", "envelope_sender"]

#: the header name carrying Commtunnel's own message id (the bare UUID).
COMMTUNNEL_ID_HEADER = "X-Commtunnel-Message-Id"

# compat32 with CRLF line endings: SMTP DATA and .eml files both want CRLF.
_POLICY = compat32.clone(linesep="\r\n")


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


def _mailboxes(value: str) -> list[tuple[str, str]]:
    """(display name, ASCII address) pairs of a ``From``/``To`` header value."""
    if has_line_break(value):
        raise ValueError("address header must not contain line breaks")
    pairs = getaddresses([value])
    if not pairs:
        raise ValueError(f"no email address found in {value!r}")
    return [(name, _ascii_address(addr)) for name, addr in pairs]


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
    ``X-Commtunnel-Message-Id`` (``email.message_id``). Body: ``text/plain``,
    ``text/html``, or ``multipart/alternative`` (text first, then html) when
    both are set; UTF-8 in 7bit, quoted-printable or base64 (see the module
    docstring). No output line is longer than 998 octets.

    Args:
        email: the email to render.

    Returns:
        The message bytes (ASCII only).

    Raises:
        ValueError: neither text nor html is set, a header value contains a
            line break, or an address cannot be written in ASCII.
    """
    content = email.content
    if has_line_break(content.message_id_header):
        raise ValueError("Message-ID must not contain line breaks")
    if content.text is not None and content.html is not None:
        msg = _Message(policy=_POLICY)
        msg["Content-Type"] = "multipart/alternative"  # the generator adds the boundary
        msg["MIME-Version"] = "1.0"
        for part in (_text_part(content.text, "plain"), _text_part(content.html, "html")):
            del part["MIME-Version"]  # only the top-level entity carries it
            msg.attach(part)
    elif content.text is not None:
        msg = _text_part(content.text, "plain")
    elif content.html is not None:
        msg = _text_part(content.html, "html")
    else:
        raise ValueError("an email needs a text or an html body")
    msg["From"] = _address_header(content.from_addr)
    msg["To"] = _address_header(content.to)
    msg["Subject"] = _subject_header(content.subject)
    msg["Date"] = format_datetime(email.created_at)
    msg["Message-ID"] = content.message_id_header
    msg[COMMTUNNEL_ID_HEADER] = email.message_id
    return msg.as_bytes(policy=_POLICY)
