"""SMS channel rules (pure): encoding and segments, numbers, sender IDs, OTP, keywords.

Sources:

- 3GPP TS 23.038 §6.2.1 (GSM 7-bit default alphabet), §6.2.1.1 (its
  extension table, reached through ESC 0x1B) and §6.2.3 (UCS2).
- 3GPP TS 23.040 §9.2.3.24 (TP-User-Data: 140 octets, i.e. 160 septets or
  70 UCS-2 units), §9.2.3.24.1 (concatenation header: 6 octets of UDH, leaving
  153 septets or 67 units per part) and §9.1.2.5 (address fields: an
  alphanumeric originator is at most 11 characters packed in 7-bit).
- ITU-T E.164 (international numbers: ``+``, country code, at most 15 digits),
  checked with ``phonenumbers`` (libphonenumber's metadata).
- CTIA Messaging Principles and Best Practices and common carrier practice for
  the STOP / START / HELP keywords of inbound (MO) messages.
- SMPP v3.4 Appendix B (the ``stat`` words of delivery receipts).

Every refusal is a :class:`~commtunnel.domain.errors.ValidationError` naming
the wire field (camelCase) and the reason.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable

import attrs
import phonenumbers

from commtunnel.domain.errors import ValidationError
from commtunnel.domain.messages import Status

# 3GPP TS 23.038 §6.2.1, in table order 0x00..0x7F; ESC (0x1B) is left out
# because it is the escape to the extension table, never a character of text.
_GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅå"
    "Δ_ΦΓΛΩΠΨΣΘΞÆæßÉ"  # 0x10..0x1F without ESC
    " !\"#¤%&'()*+,-./"
    "0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
# 3GPP TS 23.038 §6.2.1.1: each costs ESC + its code, two septets.
_GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")

GSM7_SINGLE_SEPTETS = 160
"""Septets in a one-part GSM-7 message (140 octets, 3GPP TS 23.040 §9.2.3.24)."""
GSM7_PART_SEPTETS = 153
"""Septets per part of a concatenated GSM-7 message (6-octet UDH, TS 23.040 §9.2.3.24.1)."""
UCS2_SINGLE_UNITS = 70
"""UTF-16 code units in a one-part UCS-2 message (140 octets / 2)."""
UCS2_PART_UNITS = 67
"""UTF-16 code units per part of a concatenated UCS-2 message ((140 - 6) octets / 2)."""

MAX_BODY_CHARACTERS = 1600
"""Longest ``body`` accepted, in characters (Python ``str`` length; the public API contract)."""


class SmsEncoding(enum.StrEnum):
    """The data coding of a short message (3GPP TS 23.038 §4)."""

    GSM7 = "GSM7"
    UCS2 = "UCS2"


@attrs.frozen(kw_only=True)
class SegmentInfo:
    """How a body is encoded and how many parts it is sent in.

    Attributes:
        encoding: GSM-7 or UCS-2.
        segments: number of SMS parts (at least 1, even for an empty body).
        units: encoded length: septets for GSM-7 (an extension character
            counts 2), UTF-16 code units for UCS-2 (a character outside the
            BMP counts 2).
        characters: ``len(body)``, in Python characters (code points).
    """

    encoding: SmsEncoding
    segments: int
    units: int
    characters: int


def _gsm7_costs(body: str) -> list[int] | None:
    """Septets per character, or None when a character is outside GSM-7."""
    costs: list[int] = []
    for ch in body:
        if ch in _GSM7_BASIC:
            costs.append(1)
        elif ch in _GSM7_EXTENSION:
            costs.append(2)
        else:
            return None
    return costs


def _count_parts(costs: Iterable[int], per_part: int) -> int:
    """Parts needed when each character's units stay together in one part."""
    parts, used = 1, 0
    for cost in costs:
        if used + cost > per_part:
            parts, used = parts + 1, 0
        used += cost
    return parts


def analyse(body: str, *, force_unicode: bool = False) -> SegmentInfo:
    """Choose the encoding of ``body`` and count its SMS parts.

    GSM-7 is used when every character is in the default alphabet or its
    extension table (3GPP TS 23.038 §6.2.1, §6.2.1.1); otherwise UCS-2
    (§6.2.3), counted in UTF-16 code units as handsets decode it. A message
    fits in one part up to 160 septets / 70 units; longer ones are split in
    parts of 153 septets / 67 units (3GPP TS 23.040 §9.2.3.24.1). A part
    never ends between an ESC and its extension character, nor between the
    two halves of a surrogate pair: that character moves to the next part.

    Args:
        body: the message text.
        force_unicode: send as UCS-2 even if GSM-7 would do (``sendType`` 2).

    Returns:
        The encoding, parts, encoded units and characters. An empty body is
        one part of 0 units (``validate_body`` refuses it separately).
    """
    costs = None if force_unicode else _gsm7_costs(body)
    if costs is not None:
        encoding, single, per_part = SmsEncoding.GSM7, GSM7_SINGLE_SEPTETS, GSM7_PART_SEPTETS
    else:
        costs = [2 if ord(ch) > 0xFFFF else 1 for ch in body]
        encoding, single, per_part = SmsEncoding.UCS2, UCS2_SINGLE_UNITS, UCS2_PART_UNITS
    units = sum(costs)
    segments = 1 if units <= single else _count_parts(costs, per_part)
    return SegmentInfo(encoding=encoding, segments=segments, units=units, characters=len(body))


def _invalid(field: str, reason: str) -> ValidationError:
    return ValidationError.from_fields({field: reason})


def _required_str(value: object, field: str) -> str:
    """``value`` when it is a string; the first two refusals every text field shares."""
    if value is None:
        raise _invalid(field, "is required")
    if not isinstance(value, str):
        raise _invalid(field, "must be a string")
    return value


def validate_body(body: object) -> str:
    """Check the ``body`` of an SMS.

    Args:
        body: the wire value; a string with some non-whitespace text, at most
            :data:`MAX_BODY_CHARACTERS` (1600) characters (Python ``str``
            length, the public API contract).

    Returns:
        The body, unchanged (surrounding whitespace is kept).

    Raises:
        ValidationError: on ``body`` when missing, not a string, blank or too long.
    """
    body = _required_str(body, "body")
    if not body.strip():
        raise _invalid("body", "must not be empty")
    if len(body) > MAX_BODY_CHARACTERS:
        raise _invalid("body", f"must be at most {MAX_BODY_CHARACTERS} characters")
    return body


# What people type around a number; letters (vanity numbers) are not accepted.
_PHONE_CHARS = re.compile(r"\+?[0-9 ().\-/]+")


def normalise_e164(raw: object, *, field: str = "to", plus_optional: bool = False) -> str:
    """Parse an international phone number into E.164 form.

    The number must carry its country code, after ``+`` or the ``00``
    international prefix; there is no default region. Spaces, dashes, dots,
    slashes and parentheses are ignored (``"+1 (415) 555-2671"``).

    Args:
        raw: the wire value.
        field: the wire field name used in the error (``to`` unless told).
        plus_optional: also read a string of digits alone as ``+`` and those
            digits (``"14155552671"``), the form carriers' MO webhooks and
            Meta's Graph API use.

    Returns:
        ``+`` and at most 15 digits (ITU-T E.164), e.g. ``"+2348012345678"``.

    Raises:
        ValidationError: on ``field``: missing, not a string, "must start with
            + and a country code", "not a phone number", or "not a valid
            number for its country" (libphonenumber metadata).
    """
    text = _required_str(raw, field).strip()
    if plus_optional and text.isdigit():
        text = "+" + text
    elif text.startswith("00"):
        text = "+" + text[2:]
    if not text.startswith("+"):
        raise _invalid(field, "must start with + and a country code")
    if not _PHONE_CHARS.fullmatch(text):
        raise _invalid(field, "not a phone number")
    try:
        number = phonenumbers.parse(text, None)
    except phonenumbers.NumberParseException:
        raise _invalid(field, "not a phone number") from None
    if not phonenumbers.is_valid_number(number):
        raise _invalid(field, "not a valid number for its country")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


MAX_ALPHANUMERIC_SENDER = 11
"""Characters in an alphanumeric sender ID (3GPP TS 23.040 §9.1.2.5: 10 octets of 7-bit)."""
MAX_NUMERIC_SENDER = 16
"""Digits in a numeric sender ID (the public API contract)."""

_ALNUM_SENDER = re.compile(r"[A-Za-z0-9 ]+")
_NUMERIC_SENDER = re.compile(r"\+?[0-9]+")


def validate_sender_id(value: object) -> str:
    """Check a ``senderId``: alphanumeric (<= 11) or numeric (<= 16 digits).

    Alphanumeric: ASCII letters, digits and spaces, at least one letter, at
    most 11 characters (3GPP TS 23.040 §9.1.2.5, an alphanumeric originator
    packed in 7-bit). Numeric (short or long code): digits only, at most 16,
    optionally after a ``+`` which is not counted.

    Args:
        value: the wire value; surrounding whitespace is ignored.

    Returns:
        The sender ID, stripped.

    Raises:
        ValidationError: on ``senderId`` when missing, empty, too long or
            with other characters.
    """
    sender = _required_str(value, "senderId").strip()
    if not sender:
        raise _invalid("senderId", "must not be empty")
    if _NUMERIC_SENDER.fullmatch(sender):
        if len(sender.lstrip("+")) > MAX_NUMERIC_SENDER:
            raise _invalid(
                "senderId", f"a numeric sender ID is at most {MAX_NUMERIC_SENDER} digits"
            )
        return sender
    if not _ALNUM_SENDER.fullmatch(sender) or not any(ch.isalpha() for ch in sender):
        raise _invalid(
            "senderId",
            "must be letters, digits and spaces with at least one letter, or only digits",
        )
    if len(sender) > MAX_ALPHANUMERIC_SENDER:
        raise _invalid(
            "senderId",
            f"an alphanumeric sender ID is at most {MAX_ALPHANUMERIC_SENDER} characters",
        )
    return sender


MIN_BRAND_CHARACTERS = 3
MAX_BRAND_CHARACTERS = 20
# ASCII only so that the OTP text built around it always stays GSM-7.
_BRAND = re.compile(r"[A-Za-z0-9 .&\-]+")


def validate_brand_name(value: object) -> str:
    """Check an OTP ``brandName``: 3-20 characters once stripped (public API contract).

    Allowed: ASCII letters, digits, space, ``.``, ``-`` and ``&``, with at
    least one letter or digit; all are in the GSM-7 default alphabet, so the
    OTP text stays one GSM-7 part.

    Args:
        value: the wire value.

    Returns:
        The brand name, stripped.

    Raises:
        ValidationError: on ``brandName`` when missing, too short, too long
            or with other characters.
    """
    brand = _required_str(value, "brandName").strip()
    if not MIN_BRAND_CHARACTERS <= len(brand) <= MAX_BRAND_CHARACTERS:
        raise _invalid(
            "brandName",
            f"must be {MIN_BRAND_CHARACTERS} to {MAX_BRAND_CHARACTERS} characters",
        )
    if not _BRAND.fullmatch(brand) or not any(ch.isalnum() for ch in brand):
        raise _invalid(
            "brandName", "must be letters, digits, spaces, '.', '-' or '&' with a letter or digit"
        )
    return brand


class OtpPurpose(enum.StrEnum):
    """Why an OTP is sent; it chooses the wording of the message."""

    LOGIN = "LOGIN"
    PHONE_VERIFICATION = "PHONE_VERIFICATION"
    PASSWORD_RESET = "PASSWORD_RESET"  # noqa: S105 - a purpose name, not a secret


def parse_purpose(value: object) -> OtpPurpose:
    """Read the OTP ``purpose``.

    Args:
        value: the wire value: one of the :class:`OtpPurpose` names, exactly
            (upper case), or None for the default.

    Returns:
        The purpose; ``PHONE_VERIFICATION`` when absent.

    Raises:
        ValidationError: on ``purpose``, listing the allowed values.
    """
    if value is None:
        return OtpPurpose.PHONE_VERIFICATION
    if isinstance(value, str) and value in OtpPurpose.__members__:
        return OtpPurpose(value)
    allowed = ", ".join(p.value for p in OtpPurpose)
    raise _invalid("purpose", f"must be one of {allowed}")


_OTP_CODE = re.compile(r"[0-9]{4,8}")


def validate_otp_code(value: object) -> str:
    """Check an ``otpCode``: a string of 4 to 8 ASCII digits (public API contract).

    A JSON number is refused: it would lose leading zeros (``0042``).

    Args:
        value: the wire value; no whitespace is stripped.

    Returns:
        The code, unchanged.

    Raises:
        ValidationError: on ``otpCode`` when missing, not a string or not 4-8 digits.
    """
    if isinstance(value, int | float):
        raise _invalid("otpCode", "must be a string of digits, not a number (keeps leading zeros)")
    value = _required_str(value, "otpCode")
    if not _OTP_CODE.fullmatch(value):
        raise _invalid("otpCode", "must be 4 to 8 digits (0-9)")
    return value


class SendType(enum.IntEnum):
    """The ``sendType`` of an SMS send (public API contract)."""

    NORMAL = 0
    FLASH = 1  # class 0: shown on screen, not stored (3GPP TS 23.038 §4)
    UNICODE = 2  # forces UCS-2


def parse_send_type(value: object) -> SendType:
    """Read ``sendType``.

    Args:
        value: the wire value: the integer 0, 1 or 2, or None for the default.
            Booleans and strings (``"1"``) are refused, not coerced.

    Returns:
        The send type; ``NORMAL`` when absent.

    Raises:
        ValidationError: on ``sendType``.
    """
    if value is None:
        return SendType.NORMAL
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return SendType(value)
        except ValueError:
            pass
    raise _invalid("sendType", "must be 0 (normal), 1 (flash) or 2 (unicode)")


_OTP_TEMPLATES = {
    OtpPurpose.LOGIN: "Your {brand} login code is {code}. Do not share it.",
    OtpPurpose.PHONE_VERIFICATION: "Your {brand} verification code is {code}. Do not share it.",
    OtpPurpose.PASSWORD_RESET: (
        "Your {brand} password reset code is {code}. "
        "If you did not ask for it, ignore this message."
    ),
}


def otp_body(brand: str, code: str, purpose: OtpPurpose) -> str:
    """The text of an OTP message.

    The brand and code are checked again (:func:`validate_brand_name`,
    :func:`validate_otp_code`) so the result is always GSM-7 and one part:
    at most 20 + 8 characters around a fixed ASCII sentence, well under 160
    septets.

    Args:
        brand: the approved brand name (3-20 characters).
        code: the code, 4-8 digits.
        purpose: chooses the wording.

    Returns:
        E.g. ``"Your ACME login code is 123456. Do not share it."``.

    Raises:
        ValidationError: on ``brandName`` or ``otpCode`` if they break their rules.
    """
    checked_brand = validate_brand_name(brand)
    checked_code = validate_otp_code(code)
    return _OTP_TEMPLATES[OtpPurpose(purpose)].format(brand=checked_brand, code=checked_code)


def otp_sender_id(brand: str, *, default: str | None) -> str:
    """The sender ID an OTP goes out under: the brand when it can be one.

    An alphanumeric sender ID holds at most 11 characters (3GPP TS 23.040
    §9.1.2.5) while a brand may have 20; a longer brand is named in the text
    only, and the message is sent from the platform default sender ID, or from
    the brand's first 11 ASCII letters and digits when there is no default.

    Args:
        brand: the approved brand name (3-20 characters).
        default: the platform default sender ID, or None.

    Returns:
        E.g. ``"Acme"``; ``"INFO"`` or ``"AcmeHolding"`` for ``"Acme Holdings Bank"``.
    """
    try:
        return validate_sender_id(brand)
    except ValidationError:
        if default:
            return default
        alphanumeric = "".join(ch for ch in brand if ch.isascii() and ch.isalnum())
        return alphanumeric[:MAX_ALPHANUMERIC_SENDER]


class Keyword(enum.StrEnum):
    """What an inbound (MO) keyword asks for."""

    STOP = "STOP"
    START = "START"
    HELP = "HELP"


_KEYWORDS = {
    **dict.fromkeys(
        ("stop", "stopall", "unsubscribe", "cancel", "end", "quit", "revoke", "optout"),
        Keyword.STOP,
    ),
    **dict.fromkeys(("start", "unstop", "yes"), Keyword.START),
    **dict.fromkeys(("help", "info"), Keyword.HELP),
}


def classify_keyword(text: str) -> Keyword | None:
    """The keyword an inbound message is, if the whole message is one.

    Case and surrounding whitespace are ignored; anything else in the message
    means it is not a keyword (``"STOP PLEASE"`` is None). Vocabulary (CTIA
    Messaging Principles and Best Practices, common carrier practice): STOP,
    STOPALL, UNSUBSCRIBE, CANCEL, END, QUIT, REVOKE, OPTOUT -> STOP; START,
    UNSTOP, YES -> START; HELP, INFO -> HELP.

    Args:
        text: the MO message body.

    Returns:
        The keyword, or None.
    """
    return _KEYWORDS.get(text.strip().casefold())


_CODE_IN_TEXT = re.compile(r"(?<![0-9])[0-9]{4,8}(?![0-9])")


def redact_otp_body(body: str) -> str:
    """The OTP text with its code replaced by ``*`` of the same length (for reads).

    A one-time passcode is a secret of the person it was sent to: the API
    returns what was sent so support can see it, but never the code.

    Args:
        body: a text built by :func:`otp_body`.

    Returns:
        The same text with every run of 4-8 digits masked.
    """
    return _CODE_IN_TEXT.sub(lambda match: "*" * len(match.group(0)), body)


# Receipt words from carriers and aggregators (SMPP v3.4 Appendix B ``stat``
# values, and the usual JSON spellings) -> the status they mean.
RECEIPT_WORDS: dict[str, Status] = {
    "DELIVERED": Status.DELIVERED,
    "DELIVRD": Status.DELIVERED,
    "FAILED": Status.FAILED,
    "UNDELIV": Status.FAILED,
    "UNDELIVERED": Status.FAILED,
    "REJECTD": Status.FAILED,
    "REJECTED": Status.FAILED,
    "EXPIRED": Status.FAILED,
    "EXPIRD": Status.FAILED,
    "SENT": Status.SENT,
    "ACCEPTD": Status.SENT,
    "ACCEPTED": Status.SENT,
    "ENROUTE": Status.SENT,
    "BUFFERED": Status.SENT,
}


def parse_receipt_status(value: object) -> tuple[str, Status]:
    """Read the ``status`` of a delivery receipt (DLR).

    Args:
        value: the wire value: a word of :data:`RECEIPT_WORDS` in any case,
            surrounding whitespace ignored (``"delivrd"``, ``" UNDELIV "``).

    Returns:
        (the word upper-cased, the status it means: SENT, DELIVERED or FAILED).

    Raises:
        ValidationError: on ``status``, listing the known words.
    """
    word = value.strip().upper() if isinstance(value, str) else None
    if word is None or word not in RECEIPT_WORDS:
        raise _invalid("status", f"must be one of {', '.join(sorted(RECEIPT_WORDS))}")
    return word, RECEIPT_WORDS[word]
