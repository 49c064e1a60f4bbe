"""Email address and header rules (pure).

Sources: RFC 5322 §2.1.1 (a line is at most 998 characters), §2.2 (header
fields never contain bare CR or LF: a CR/LF in a value would start a new
header, "header injection"), RFC 5321 §4.5.3.1 (length limits), and
email-validator for the address syntax (no DNS look-ups here: that is I/O).
"""

from __future__ import annotations

import functools
from email.utils import formataddr as _formataddr

import email_validator

MAX_SUBJECT_CHARS = 998
MAX_ADDRESS_FIELD_CHARS = 998
_FORBIDDEN = ("\r", "\n", "\x00")
_SPECIALS = frozenset('()<>[]:;@\\,"')


def has_line_break(value: str) -> bool:
    """True if ``value`` contains CR, LF or NUL (which would inject headers)."""
    return any(ch in value for ch in _FORBIDDEN)


@functools.lru_cache(maxsize=4096)  # pure and hot (every send); errors are not cached
def parse_mailbox(value: str) -> tuple[str, str]:
    """Parse ``addr`` or ``Display Name <addr>`` into (display name, normalized address).

    The domain is lower-cased and IDNA-normalized by email-validator; the local
    part is kept as given.

    Raises:
        ValueError: with a reason fit for ``details`` (line break, syntax, length).
    """
    if has_line_break(value):
        raise ValueError("must not contain line breaks")
    if len(value) > MAX_ADDRESS_FIELD_CHARS:
        raise ValueError(f"must be at most {MAX_ADDRESS_FIELD_CHARS} characters")
    name, addr = _split_mailbox(value.strip())
    try:
        checked = email_validator.validate_email(
            addr, check_deliverability=False, allow_smtputf8=True
        )
    except email_validator.EmailNotValidError as exc:
        raise ValueError(f"is not a valid email address: {exc}") from None
    return name, checked.normalized


def _split_mailbox(value: str) -> tuple[str, str]:
    """Split ``Name <addr>`` / ``addr`` without the lenient guessing of
    ``email.utils.parseaddr`` (which, before Python 3.12's ``strict`` mode,
    could read ``a@x.org)<b@y.org>`` as another address: CVE-2023-27043)."""
    if "<" not in value and ">" not in value:
        return "", value
    if value.count("<") != 1 or value.count(">") != 1 or not value.endswith(">"):
        raise ValueError("is not an email address (expected 'Name <addr>' or 'addr')")
    name, _, rest = value.partition("<")
    name = name.strip()
    if len(name) >= 2 and name[0] == name[-1] == '"':
        name = name[1:-1].replace('\\"', '"')
    elif any(ch in _SPECIALS for ch in name):
        # RFC 5322 §3.2.3: specials in a display name must be quoted.
        raise ValueError("display name with special characters must be quoted")
    addr = rest[:-1].strip()
    if not addr:
        raise ValueError("is not an email address")
    return name, addr


def format_mailbox(name: str, addr: str) -> str:
    """The header form of a mailbox (quotes the display name when needed)."""
    return _formataddr((name, addr)) if name else addr


def domain_of(addr: str) -> str:
    """The lower-cased domain part of a normalized address."""
    return addr.rsplit("@", 1)[1].lower()


def validate_subject(subject: str) -> str | None:
    """The reason ``subject`` is refused, or None when it is acceptable."""
    if has_line_break(subject):
        return "must not contain line breaks"
    if len(subject) > MAX_SUBJECT_CHARS:
        return f"must be at most {MAX_SUBJECT_CHARS} characters"
    return None
