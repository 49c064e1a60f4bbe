"""SMS rules: GSM-7/UCS-2 segments against an independent reference, and the validators."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from commtunnel.domain import sms
from commtunnel.domain.errors import ValidationError
from commtunnel.domain.messages import Status
from commtunnel.domain.sms import Keyword, OtpPurpose, SegmentInfo, SendType, SmsEncoding

# --- Reference: 3GPP TS 23.038 §6.2.1 written out by code position -----------------------

ESC = 0x1B
_ROWS = {
    0x00: [
        "@",
        "\N{POUND SIGN}",
        "$",
        "\N{YEN SIGN}",
        "\N{LATIN SMALL LETTER E WITH GRAVE}",
        "\N{LATIN SMALL LETTER E WITH ACUTE}",
        "\N{LATIN SMALL LETTER U WITH GRAVE}",
        "\N{LATIN SMALL LETTER I WITH GRAVE}",
        "\N{LATIN SMALL LETTER O WITH GRAVE}",
        "\N{LATIN CAPITAL LETTER C WITH CEDILLA}",
        "\N{LINE FEED}",
        "\N{LATIN CAPITAL LETTER O WITH STROKE}",
        "\N{LATIN SMALL LETTER O WITH STROKE}",
        "\N{CARRIAGE RETURN}",
        "\N{LATIN CAPITAL LETTER A WITH RING ABOVE}",
        "\N{LATIN SMALL LETTER A WITH RING ABOVE}",
    ],
    0x10: [
        "\N{GREEK CAPITAL LETTER DELTA}",
        "_",
        "\N{GREEK CAPITAL LETTER PHI}",
        "\N{GREEK CAPITAL LETTER GAMMA}",
        "\N{GREEK CAPITAL LETTER LAMDA}",
        "\N{GREEK CAPITAL LETTER OMEGA}",
        "\N{GREEK CAPITAL LETTER PI}",
        "\N{GREEK CAPITAL LETTER PSI}",
        "\N{GREEK CAPITAL LETTER SIGMA}",
        "\N{GREEK CAPITAL LETTER THETA}",
        "\N{GREEK CAPITAL LETTER XI}",
        None,  # ESC: the escape to the extension table, not text
        "\N{LATIN CAPITAL LETTER AE}",
        "\N{LATIN SMALL LETTER AE}",
        "\N{LATIN SMALL LETTER SHARP S}",
        "\N{LATIN CAPITAL LETTER E WITH ACUTE}",
    ],
    0x20: [*' !"#', "\N{CURRENCY SIGN}", *"%&'()*+,-./"],
    0x30: [chr(c) for c in range(ord("0"), ord("9") + 1)] + list(":;<=>?"),
    0x40: ["\N{INVERTED EXCLAMATION MARK}"] + [chr(c) for c in range(ord("A"), ord("Z") + 1)],
    0x5B: [
        "\N{LATIN CAPITAL LETTER A WITH DIAERESIS}",
        "\N{LATIN CAPITAL LETTER O WITH DIAERESIS}",
        "\N{LATIN CAPITAL LETTER N WITH TILDE}",
        "\N{LATIN CAPITAL LETTER U WITH DIAERESIS}",
        "\N{SECTION SIGN}",
    ],
    0x60: ["\N{INVERTED QUESTION MARK}"] + [chr(c) for c in range(ord("a"), ord("z") + 1)],
    0x7B: [
        "\N{LATIN SMALL LETTER A WITH DIAERESIS}",
        "\N{LATIN SMALL LETTER O WITH DIAERESIS}",
        "\N{LATIN SMALL LETTER N WITH TILDE}",
        "\N{LATIN SMALL LETTER U WITH DIAERESIS}",
        "\N{LATIN SMALL LETTER A WITH GRAVE}",
    ],
}
REF_BASIC: dict[str, int] = {
    ch: start + i for start, row in _ROWS.items() for i, ch in enumerate(row) if ch is not None
}
# 3GPP TS 23.038 §6.2.1.1, character -> code after ESC.
REF_EXTENSION: dict[str, int] = {
    "\N{FORM FEED}": 0x0A,
    "^": 0x14,
    "{": 0x28,
    "}": 0x29,
    "\\": 0x2F,
    "[": 0x3C,
    "~": 0x3D,
    "]": 0x3E,
    "|": 0x40,
    "\N{EURO SIGN}": 0x65,
}


def ref_septets(body: str) -> list[int] | None:
    """The septet stream of ``body`` (ESC before extension codes), or None if not GSM-7."""
    out: list[int] = []
    for ch in body:
        if ch in REF_BASIC:
            out.append(REF_BASIC[ch])
        elif ch in REF_EXTENSION:
            out.extend([ESC, REF_EXTENSION[ch]])
        else:
            return None
    return out


def ref_utf16_units(body: str) -> list[int]:
    """``body`` as big-endian UTF-16 code units."""
    data = body.encode("utf-16-be", "surrogatepass")
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]


def ref_pack(units: list[int], single: int, per_part: int, holds_next: set[int]) -> list[list[int]]:
    """Split a unit stream into parts; a part never ends on a unit in ``holds_next``."""
    if len(units) <= single:
        return [units]
    parts: list[list[int]] = []
    current: list[int] = []
    for unit in units:
        if len(current) == per_part or (len(current) == per_part - 1 and unit in holds_next):
            parts.append(current)
            current = []
        current.append(unit)
    parts.append(current)
    return parts


HIGH_SURROGATES = set(range(0xD800, 0xDC00))


def ref_analyse(body: str, *, force_unicode: bool = False) -> SegmentInfo:
    """The reference: build the encoded stream explicitly, then pack it part by part."""
    septets = None if force_unicode else ref_septets(body)
    if septets is not None:
        parts = ref_pack(septets, 160, 153, {ESC})
        return SegmentInfo(
            encoding=SmsEncoding.GSM7, segments=len(parts), units=len(septets), characters=len(body)
        )
    units = ref_utf16_units(body)
    parts = ref_pack(units, 70, 67, HIGH_SURROGATES)
    return SegmentInfo(
        encoding=SmsEncoding.UCS2, segments=len(parts), units=len(units), characters=len(body)
    )


GSM_BASIC_CHARS = sorted(REF_BASIC)
GSM_EXT_CHARS = sorted(REF_EXTENSION)
gsm_char = st.one_of(st.sampled_from(GSM_BASIC_CHARS), st.sampled_from(GSM_EXT_CHARS))
any_char = st.characters(exclude_categories=["Cs"])
astral = st.characters(min_codepoint=0x1F300, max_codepoint=0x1FAFF)
mixed_char = st.one_of(st.sampled_from(GSM_BASIC_CHARS + GSM_EXT_CHARS), any_char, astral)


def _near_boundaries(
    char: st.SearchStrategy[str], filler: str, boundaries: list[int]
) -> st.SearchStrategy[str]:
    """Random text, or random text placed just before a part boundary inside a long body."""
    around = st.tuples(
        st.sampled_from(boundaries),
        st.integers(min_value=0, max_value=3),  # how far short of the boundary it starts
        st.text(alphabet=char, min_size=1, max_size=12),
        st.integers(min_value=0, max_value=12),  # filler after it, to cross the 1-part limit
    ).map(lambda t: filler * (t[0] - t[1]) + t[2] + filler * t[3])
    return st.one_of(st.text(alphabet=char, max_size=700), around)


gsm_text = _near_boundaries(gsm_char, "a", [153, 160, 306, 459])
mixed_text = _near_boundaries(mixed_char, "ç", [67, 70, 134, 201])


# --- The reference itself ----------------------------------------------------------------


def test_reference_table_has_127_distinct_characters() -> None:
    """The written-out default alphabet is 128 positions minus ESC, all distinct."""
    assert len(REF_BASIC) == 127
    assert sorted(REF_BASIC.values()) == [c for c in range(128) if c != ESC]


@settings(max_examples=300)
@given(gsm_text)
def test_reference_parts_rebuild_the_stream(body: str) -> None:
    """The reference packing keeps every septet, fills parts to 153 and never ends one on ESC."""
    septets = ref_septets(body)
    assert septets is not None
    parts = ref_pack(septets, 160, 153, {ESC})
    assert [s for part in parts for s in part] == septets
    if len(parts) > 1:
        assert all(0 < len(p) <= 153 and p[-1] != ESC for p in parts)


# --- analyse against the reference -------------------------------------------------------


@settings(max_examples=300)
@given(gsm_text)
def test_gsm_text_matches_reference(body: str) -> None:
    """GSM-7 bodies: encoding, septets and parts equal the reference computation."""
    info = sms.analyse(body)
    assert info == ref_analyse(body)
    assert info.encoding is SmsEncoding.GSM7


@settings(max_examples=300)
@given(mixed_text)
def test_mixed_text_matches_reference(body: str) -> None:
    """Any text (emoji included): encoding, units and parts equal the reference."""
    assert sms.analyse(body) == ref_analyse(body)


@settings(max_examples=300)
@given(mixed_text)
def test_force_unicode_matches_ucs2_reference(body: str) -> None:
    """force_unicode counts UTF-16 units even for GSM-7-only text."""
    info = sms.analyse(body, force_unicode=True)
    assert info == ref_analyse(body, force_unicode=True)
    assert info.encoding is SmsEncoding.UCS2


def _across_a_boundary(
    char: st.SearchStrategy[str], filler: str, per_part: int
) -> st.SearchStrategy[tuple[int, str]]:
    """(start, body): random text placed just before the end of part one, then a part of filler."""
    return st.tuples(
        st.integers(min_value=1, max_value=3),
        st.text(alphabet=char, min_size=1, max_size=8),
    ).map(
        lambda t: (
            per_part - t[0],
            filler * (per_part - t[0]) + t[1] + filler * (per_part + 2),
        )
    )


@settings(max_examples=60)
@given(
    st.one_of(
        _across_a_boundary(gsm_char, "a", 153),
        _across_a_boundary(mixed_char, "ç", 67),
    )
)
def test_every_prefix_across_a_boundary_matches_reference(case: tuple[int, str]) -> None:
    """Growing a body one character at a time past a part boundary tracks the reference.

    A character pushed to the next part only changes the count when a later
    part fills up, so every prefix is compared, not just the whole body.
    """
    start, body = case
    for end in range(start, len(body) + 1):
        assert sms.analyse(body[:end]) == ref_analyse(body[:end]), end


def test_module_alphabet_equals_reference() -> None:
    """Every reference character is GSM-7 for the module, at the reference cost."""
    for ch in REF_BASIC:
        assert sms.analyse(ch) == SegmentInfo(
            encoding=SmsEncoding.GSM7, segments=1, units=1, characters=1
        ), repr(ch)
    for ch in REF_EXTENSION:
        assert sms.analyse(ch).units == 2, repr(ch)
    assert sms.analyse("\x1b").encoding is SmsEncoding.UCS2


# --- analyse: boundaries -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "segments", "units"),
    [
        ("a" * 160, 1, 160),
        ("a" * 161, 2, 161),
        ("a" * 306, 2, 306),
        ("a" * 307, 3, 307),
        ("", 1, 0),
    ],
)
def test_gsm_boundaries(body: str, segments: int, units: int) -> None:
    """160 septets fit one part; 161 take two; 153 per part after that."""
    info = sms.analyse(body)
    assert (info.encoding, info.segments, info.units) == (SmsEncoding.GSM7, segments, units)


def test_extension_character_is_not_split_across_parts() -> None:
    """A euro at septet 153 would straddle the boundary, so it moves to part two."""
    body = "a" * 152 + "€" + "a" * 152  # 152 + 2 + 152 = 306 septets
    info = sms.analyse(body)
    assert info.units == 306
    # Packing septets blindly would give 2 parts; the pushed pair leaves 1 septet over.
    assert info.segments == 3


def test_extension_character_that_fits_stays() -> None:
    """A euro at septets 152-153 fits exactly in part one."""
    info = sms.analyse("a" * 151 + "€" + "a" * 153)
    assert (info.units, info.segments) == (306, 2)


def test_euro_costs_two_septets() -> None:
    """Extension characters cost ESC + code."""
    assert sms.analyse("€").units == 2
    assert sms.analyse("a" * 80 + "€" * 40).segments == 1  # 80 + 80 = 160 septets
    assert sms.analyse("a" * 81 + "€" * 40).segments == 2  # 161 septets
    assert sms.analyse("€" * 40).units == 80


def test_euro_pushes_a_single_part_message_over() -> None:
    """159 basic septets plus a euro is 161 septets: two parts."""
    info = sms.analyse("a" * 159 + "€")
    assert (info.units, info.segments) == (161, 2)


def test_small_c_cedilla_is_not_gsm7_but_capital_is() -> None:
    """The default alphabet has Ç (0x09) but not ç."""
    assert sms.analyse("Ça va").encoding is SmsEncoding.GSM7
    assert sms.analyse("ça va").encoding is SmsEncoding.UCS2


@pytest.mark.parametrize(
    ("body", "segments"),
    [("é" * 70 + "ç", 2), ("ç" * 70, 1), ("ç" * 71, 2), ("ç" * 134, 2), ("ç" * 135, 3)],
)
def test_ucs2_boundaries(body: str, segments: int) -> None:
    """70 units fit one part; 71 take two; 67 per part after that."""
    info = sms.analyse(body)
    assert info.encoding is SmsEncoding.UCS2
    assert info.segments == segments


def test_emoji_costs_two_units() -> None:
    """A character outside the BMP is a surrogate pair: two UTF-16 units, one character."""
    info = sms.analyse("😀")
    assert info == SegmentInfo(encoding=SmsEncoding.UCS2, segments=1, units=2, characters=1)
    assert sms.analyse("😀" * 35).segments == 1
    assert sms.analyse("😀" * 35 + "a").segments == 2


def test_surrogate_pair_is_not_split_at_unit_67() -> None:
    """An emoji at units 67-68 moves whole to part two."""
    body = "ç" * 66 + "😀" + "ç" * 66  # 66 + 2 + 66 = 134 units
    info = sms.analyse(body)
    assert info.units == 134
    assert info.segments == 3  # blind packing would give 2


def test_force_unicode_on_gsm_text() -> None:
    """sendType 2: plain ASCII is counted in UCS-2 units."""
    info = sms.analyse("a" * 71, force_unicode=True)
    assert (info.encoding, info.units, info.segments) == (SmsEncoding.UCS2, 71, 2)
    assert sms.analyse("a" * 71).segments == 1


# --- body --------------------------------------------------------------------------------


def test_body_accepted_up_to_1600_characters() -> None:
    """A 1600-character body is accepted and returned unchanged."""
    body = " " + "x" * 1599
    assert sms.validate_body(body) == body


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "is required"),
        (42, "must be a string"),
        ("", "must not be empty"),
        (" \n\t", "must not be empty"),
        ("x" * 1601, "must be at most 1600 characters"),
    ],
)
def test_body_refused(value: object, reason: str) -> None:
    """Missing, non-string, blank and over-long bodies are refused on ``body``."""
    with pytest.raises(ValidationError) as caught:
        sms.validate_body(value)
    assert caught.value.details == {"body": reason}


# --- E.164 -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("+2348012345678", "+2348012345678"),
        ("+1 (415) 555-2671", "+14155552671"),
        ("  +44 20 7946 0958 ", "+442079460958"),
        ("0044 20 7946 0958", "+442079460958"),
    ],
)
def test_e164_accepted(raw: str, expected: str) -> None:
    """International numbers with + or 00 are normalised to E.164."""
    assert sms.normalise_e164(raw) == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("4155552671", "must start with + and a country code"),
        ("08012345678", "must start with + and a country code"),
        ("+1-800-FLOWERS", "not a phone number"),
        ("+", "not a phone number"),
        ("+999 123", "not a phone number"),
        ("+1 123 456 7890", "not a valid number for its country"),
        ("+44 20 79", "not a valid number for its country"),
        (None, "is required"),
        (14155552671, "must be a string"),
    ],
)
def test_e164_refused(raw: object, reason: str) -> None:
    """Local, malformed and impossible numbers are refused with the reason."""
    with pytest.raises(ValidationError) as caught:
        sms.normalise_e164(raw)
    assert caught.value.details == {"to": reason}


def test_e164_error_names_the_given_field() -> None:
    """The field argument names the error's field."""
    with pytest.raises(ValidationError) as caught:
        sms.normalise_e164("123", field="phoneNumber")
    assert set(caught.value.details) == {"phoneNumber"}


def test_e164_digits_alone_only_when_the_plus_is_optional() -> None:
    """Carriers and Meta write numbers without the +: read so only when asked."""
    assert sms.normalise_e164(" 14155552671 ", plus_optional=True) == "+14155552671"
    assert sms.normalise_e164("+1 415 555 2671", plus_optional=True) == "+14155552671"
    with pytest.raises(ValidationError) as caught:
        sms.normalise_e164("14155552671")
    assert caught.value.details == {"to": "must start with + and a country code"}
    with pytest.raises(ValidationError) as caught:
        sms.normalise_e164("0044207946", field="sms_from", plus_optional=True)
    assert caught.value.details == {"sms_from": "not a phone number"}


# --- sender ID ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["ACME", "Acme Bank 1", "A" * 11, "1" * 16, "+" + "1" * 16, "12345", "+2348012"]
)
def test_sender_id_accepted(value: str) -> None:
    """Alphanumeric up to 11 and numeric up to 16 digits are accepted."""
    assert sms.validate_sender_id(f" {value} ") == value


@pytest.mark.parametrize(
    "value",
    [
        "A" * 12,
        "Acme Bank 12",
        "1" * 17,
        "+" + "1" * 17,
        "",
        "   ",
        "ACME!",
        "Café",
        "12 34",
        "+",
        "AC-ME",
        None,
        12345,
    ],
)
def test_sender_id_refused(value: object) -> None:
    """Too long, empty and other characters are refused on ``senderId``."""
    with pytest.raises(ValidationError) as caught:
        sms.validate_sender_id(value)
    assert set(caught.value.details) == {"senderId"}


# --- brand name --------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["ABC", "B" * 20, "Acme & Co.", "x-pay", "  Acme  "])
def test_brand_accepted(value: str) -> None:
    """3 to 20 allowed characters are accepted, stripped."""
    assert sms.validate_brand_name(value) == value.strip()


@pytest.mark.parametrize("value", ["AB", "B" * 21, "  AB  ", "Acme!", "Café", "...", None, 7])
def test_brand_refused(value: object) -> None:
    """Too short, too long, odd characters and non-strings are refused on ``brandName``."""
    with pytest.raises(ValidationError) as caught:
        sms.validate_brand_name(value)
    assert set(caught.value.details) == {"brandName"}


# --- OTP ---------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["1234", "0042", "12345678"])
def test_otp_code_accepted(value: str) -> None:
    """4 to 8 ASCII digits are accepted as given (leading zeros kept)."""
    assert sms.validate_otp_code(value) == value


@pytest.mark.parametrize("value", ["123", "123456789", "12a4", "", " 1234", "1234\n", "١٢٣٤", None])
def test_otp_code_refused(value: object) -> None:
    """3 or 9 digits, non-digits (Arabic-Indic too) and whitespace are refused."""
    with pytest.raises(ValidationError) as caught:
        sms.validate_otp_code(value)
    assert set(caught.value.details) == {"otpCode"}


def test_otp_code_as_number_refused_with_reason() -> None:
    """A JSON number is refused because it would lose leading zeros."""
    with pytest.raises(ValidationError) as caught:
        sms.validate_otp_code(123456)
    assert "leading zeros" in caught.value.details["otpCode"]


def test_purpose_default_and_values() -> None:
    """None is PHONE_VERIFICATION; each name parses to its member."""
    assert sms.parse_purpose(None) is OtpPurpose.PHONE_VERIFICATION
    for purpose in OtpPurpose:
        assert sms.parse_purpose(purpose.value) is purpose


@pytest.mark.parametrize("value", ["SIGNUP", "login", "", 1])
def test_unknown_purpose_lists_allowed(value: object) -> None:
    """An unknown purpose is refused with the allowed values in the reason."""
    with pytest.raises(ValidationError) as caught:
        sms.parse_purpose(value)
    reason = caught.value.details["purpose"]
    assert all(p.value in reason for p in OtpPurpose)


@pytest.mark.parametrize(
    ("purpose", "expected"),
    [
        (OtpPurpose.LOGIN, "Your ACME login code is 123456. Do not share it."),
        (OtpPurpose.PHONE_VERIFICATION, "Your ACME verification code is 123456. Do not share it."),
    ],
)
def test_otp_body_wording(purpose: OtpPurpose, expected: str) -> None:
    """The OTP text names the brand, the code and the purpose."""
    assert sms.otp_body("ACME", "123456", purpose) == expected


@given(
    brand=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9 .&\-]{2,19}", fullmatch=True),
    code=st.from_regex(r"[0-9]{4,8}", fullmatch=True),
    purpose=st.sampled_from(OtpPurpose),
)
def test_otp_body_is_one_gsm7_part(brand: str, code: str, purpose: OtpPurpose) -> None:
    """Any valid brand and code give a single GSM-7 part containing the code."""
    brand = brand.strip()
    if len(brand) < 3:
        brand = brand.ljust(3, "X")
    text = sms.otp_body(brand, code, purpose)
    info = sms.analyse(text)
    assert (info.encoding, info.segments) == (SmsEncoding.GSM7, 1)
    assert f" {code}." in text and brand in text


def test_otp_wording_differs_per_purpose() -> None:
    """Each purpose has its own sentence."""
    texts = {sms.otp_body("ACME", "1234", p) for p in OtpPurpose}
    assert len(texts) == len(OtpPurpose)


def test_otp_body_rechecks_inputs() -> None:
    """A brand outside the rules cannot reach the message text."""
    with pytest.raises(ValidationError):
        sms.otp_body("Ça ç", "1234", OtpPurpose.LOGIN)


# --- sendType ----------------------------------------------------------------------------


def test_send_type_values() -> None:
    """None is NORMAL; 0, 1, 2 parse to their members."""
    assert sms.parse_send_type(None) is SendType.NORMAL
    assert [sms.parse_send_type(v) for v in (0, 1, 2)] == [
        SendType.NORMAL,
        SendType.FLASH,
        SendType.UNICODE,
    ]


@pytest.mark.parametrize("value", [3, -1, "1", True, False, 1.0])
def test_send_type_refused(value: object) -> None:
    """Out-of-range numbers, strings, booleans and floats are refused on ``sendType``."""
    with pytest.raises(ValidationError) as caught:
        sms.parse_send_type(value)
    assert set(caught.value.details) == {"sendType"}


# --- keywords ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "keyword"),
    [
        ("STOP", Keyword.STOP),
        ("  stop \n", Keyword.STOP),
        ("StopAll", Keyword.STOP),
        ("unsubscribe", Keyword.STOP),
        ("CANCEL", Keyword.STOP),
        ("end", Keyword.STOP),
        ("Quit", Keyword.STOP),
        ("revoke", Keyword.STOP),
        ("OPTOUT", Keyword.STOP),
        ("start", Keyword.START),
        ("UNSTOP", Keyword.START),
        ("Yes", Keyword.START),
        ("help", Keyword.HELP),
        ("\tINFO", Keyword.HELP),
    ],
)
def test_keywords_recognised(text: str, keyword: Keyword) -> None:
    """The whole message, in any case and padding, is the keyword."""
    assert sms.classify_keyword(text) is keyword


@pytest.mark.parametrize("text", ["STOP PLEASE", "please stop", "STOP!", "st op", "", "hello"])
def test_non_keywords(text: str) -> None:
    """Anything beyond the bare keyword is not a keyword."""
    assert sms.classify_keyword(text) is None


def test_redact_otp_body_masks_the_code_only() -> None:
    """Reads mask the OTP code but keep the rest of the text, brand digits included."""
    from commtunnel.domain.sms import OtpPurpose, otp_body, redact_otp_body

    body = otp_body("Acme 24", "0123456", OtpPurpose.LOGIN)
    redacted = redact_otp_body(body)
    assert "0123456" not in redacted
    assert "*******" in redacted
    assert "Acme 24" in redacted  # short digit runs (a brand's) are kept
    assert len(redacted) == len(body)


@pytest.mark.parametrize(
    ("brand", "default", "expected"),
    [
        ("Acme", None, "Acme"),
        ("Acme", "INFO", "Acme"),
        ("Acme Holdings Bank", "INFO", "INFO"),
        ("Acme Holdings Bank", None, "AcmeHolding"),
        ("A.B & C-D Company", None, "ABCDCompany"),
    ],
)
def test_otp_sender_id(brand: str, default: str | None, expected: str) -> None:
    """A brand that is a valid sender ID is one; else the default, or its first 11 alnum."""
    assert sms.otp_sender_id(brand, default=default) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("DELIVRD", ("DELIVRD", Status.DELIVERED)),
        (" delivered ", ("DELIVERED", Status.DELIVERED)),
        ("undeliv", ("UNDELIV", Status.FAILED)),
        ("EXPIRED", ("EXPIRED", Status.FAILED)),
        ("enroute", ("ENROUTE", Status.SENT)),
    ],
)
def test_receipt_words(value: str, expected: tuple[str, object]) -> None:
    """SMPP stat words and JSON spellings, in any case, read as SENT, DELIVERED or FAILED."""
    assert sms.parse_receipt_status(value) == expected


@pytest.mark.parametrize("value", [None, "", "GREAT", 2, "DELIVERED!"])
def test_unknown_receipt_word_is_refused(value: object) -> None:
    """Anything else is refused on ``status``, listing the known words."""
    with pytest.raises(ValidationError) as caught:
        sms.parse_receipt_status(value)
    assert set(caught.value.details) == {"status"}
    assert "DELIVRD" in caught.value.details["status"]
