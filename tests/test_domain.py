"""Pure domain rules: status machine, address rules, retry policy, keys."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from commtunnel.domain import email as rules
from commtunnel.domain import keys
from commtunnel.domain.delivery import ErrorCategory, Outcome, ProviderResult, RetryPolicy
from commtunnel.domain.errors import InvalidTransitionError, ValidationError
from commtunnel.domain.events import parse_timestamp
from commtunnel.domain.messages import (
    TRANSITIONS,
    Channel,
    Message,
    Status,
    can_transition,
    check_transition,
    event_for,
    receipt_allowed_from,
)
from commtunnel.domain.whatsapp import StatusUpdate, message_content


def test_happy_path_transitions_are_allowed() -> None:
    """QUEUED -> PROCESSING -> SENT -> DELIVERED is a legal path."""
    path = [Status.QUEUED, Status.PROCESSING, Status.SENT, Status.DELIVERED]
    for a, b in itertools.pairwise(path):
        check_transition(a, b)


@pytest.mark.parametrize(
    ("current", "new"),
    [
        (Status.SENT, Status.QUEUED),
        (Status.BOUNCED, Status.SENT),
        (Status.DELIVERED, Status.PROCESSING),
        (Status.QUEUED, Status.SENT),
        (Status.READ, Status.DELIVERED),
    ],
)
def test_backward_or_skipping_transitions_are_refused(current: Status, new: Status) -> None:
    """The machine refuses moves that go backwards or skip PROCESSING."""
    with pytest.raises(InvalidTransitionError) as info:
        check_transition(current, new)
    assert info.value.details == {"from": str(current), "to": str(new)}


@given(st.sampled_from(list(Status)), st.sampled_from(list(Status)))
def test_can_transition_matches_table(a: Status, b: Status) -> None:
    """can_transition agrees with the TRANSITIONS table for every pair."""
    assert can_transition(a, b) == (b in TRANSITIONS[a])


def test_terminal_statuses_lead_nowhere_but_retry() -> None:
    """BOUNCED and READ are dead ends; FAILED only re-queues (explicit retry)."""
    assert TRANSITIONS[Status.BOUNCED] == frozenset()
    assert TRANSITIONS[Status.READ] == frozenset()
    assert TRANSITIONS[Status.FAILED] == frozenset({Status.QUEUED})


def test_event_names_follow_the_vocabulary() -> None:
    """Events are <channel>_<what happened>."""
    assert event_for(Channel.EMAIL, Status.SENT) == "email_sent"
    assert event_for(Channel.SMS, Status.RETRYING) == "sms_retrying"
    assert event_for(Channel.WHATSAPP, Status.READ) == "whatsapp_read"


@pytest.mark.parametrize(
    ("new", "allowed"),
    [
        (Status.DELIVERED, {Status.SENT}),
        (Status.READ, {Status.SENT, Status.DELIVERED}),
        (Status.FAILED, {Status.SENT}),
        (Status.BOUNCED, {Status.SENT, Status.DELIVERED}),
        (Status.SENT, set()),
        (Status.QUEUED, set()),
    ],
)
def test_receipts_move_forward_from_sent_only(new: Status, allowed: set[Status]) -> None:
    """A receipt moves a message the provider holds, forward along the status machine."""
    assert receipt_allowed_from(new) == allowed


@given(st.sampled_from(list(Status)))
def test_receipt_moves_are_transitions(new: Status) -> None:
    """Every move a receipt may make is a transition of the status machine."""
    for current in receipt_allowed_from(new):
        check_transition(current, new)


def test_naive_datetimes_are_rejected() -> None:
    """Models refuse naive datetimes."""
    with pytest.raises(ValueError, match="timezone-aware"):
        Message(
            id="x",
            org_id="o",
            channel=Channel.EMAIL,
            status=Status.QUEUED,
            sandbox=False,
            email=None,
            created_at=datetime(2026, 1, 1),
            updated_at=datetime(2026, 1, 1),
        )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("a@example.com", ("", "a@example.com")),
        ("Ann <a@example.com>", ("Ann", "a@example.com")),
        ('"Doe, Ann" <a@EXAMPLE.com>', ("Doe, Ann", "a@example.com")),
    ],
)
def test_parse_mailbox_accepts_plain_and_named(value: str, expected: tuple[str, str]) -> None:
    """Plain and display-name forms parse; the domain is lower-cased."""
    assert rules.parse_mailbox(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "not-an-address",
        "a@example.com\r\nBcc: victim@example.org",
        "a@example.com\nX: y",
        "a@x.org)<b@y.org>",
        "<>",
        "Ann <a@example.com",
        "a@",
    ],
)
def test_parse_mailbox_refuses_bad_and_injected(value: str) -> None:
    """Invalid addresses and CR/LF header injection are refused."""
    with pytest.raises(ValueError):  # noqa: PT011 - the reason text varies by cause
        rules.parse_mailbox(value)


def test_subject_limits() -> None:
    """Subjects over 998 characters or with line breaks are refused (RFC 5322 §2.1.1)."""
    assert rules.validate_subject("x" * 998) is None
    assert rules.validate_subject("x" * 999) is not None
    assert rules.validate_subject("Hi\r\nBcc: x@y.z") is not None


def test_retry_policy_grows_exponentially_within_jitter() -> None:
    """The n-th wait lies in [ceiling/2, ceiling] with ceiling = base * 2**(n-1), capped."""
    policy = RetryPolicy(max_attempts=10, base_delay=10, max_delay=100)
    rng = random.Random(1)
    for n, ceiling in [(1, 10), (2, 20), (3, 40), (4, 80), (5, 100), (9, 100)]:
        wait = policy.delay(n, rng)
        assert ceiling / 2 <= wait <= ceiling


def test_retry_policy_honours_retry_after_and_limit() -> None:
    """A provider's retry-after is a floor; attempts stop at max_attempts."""
    policy = RetryPolicy(max_attempts=3, base_delay=1, max_delay=2)
    assert policy.delay(1, random.Random(0), retry_after=120) == 120
    assert policy.should_retry(2)
    assert not policy.should_retry(3)


def test_provider_result_constructors_truncate() -> None:
    """Error messages are cut to 500 characters."""
    result = ProviderResult.transient(ErrorCategory.TIMEOUT, "x" * 900, retry_after=3)
    assert result.outcome == Outcome.TRANSIENT
    assert len(result.error_message or "") == 500
    assert result.retry_after == 3


def test_scopes_parse_and_refuse_unknown() -> None:
    """Scopes parse from comma or space lists; unknown ones are named."""
    assert keys.parse_scopes("send:email, read:email") == {"send:email", "read:email"}
    with pytest.raises(ValueError, match="send:fax"):
        keys.parse_scopes("send:email,send:fax")
    with pytest.raises(ValueError, match="at least one"):
        keys.parse_scopes("")


def test_key_format_and_hash() -> None:
    """Keys carry their environment prefix; the stored hash is not the key."""
    live = keys.format_key("s" * 43, test=False)
    test = keys.format_key("s" * 43, test=True)
    assert live.startswith("ct_live_") and test.startswith("ct_test_")
    assert keys.looks_like_key(live)
    assert not keys.looks_like_key("Bearer nope")
    assert keys.hash_key(live) != live and len(keys.hash_key(live)) == 64


def test_validation_error_lists_fields() -> None:
    """ValidationError.from_fields keeps every field's reason."""
    err = ValidationError.from_fields({"to": "is required", "subject": "too long"})
    assert err.details == {"to": "is required", "subject": "too long"}
    assert err.code == "VALIDATION_ERROR" and err.http_status == 400


def test_whatsapp_text_and_template_content() -> None:
    """A text carries its body; a template its name, language (en_US by default) and variables."""
    text = message_content(to="14155552671", body="hi", template=None)
    assert (text.to, text.kind, text.body) == ("+14155552671", "text", "hi")
    template = message_content(
        to="+14155552671", body=None, template={"name": "order_update", "variables": {"n": "42"}}
    )
    assert (template.kind, template.template_name, template.template_language) == (
        "template",
        "order_update",
        "en_US",
    )
    assert template.template_variables == {"n": "42"}


@pytest.mark.parametrize(
    ("fields", "problems"),
    [
        ({"to": "12", "body": "hi"}, {"to"}),
        ({"body": " "}, {"to", "body"}),
        ({"to": "+14155552671"}, {"body"}),
        ({"to": "+14155552671", "body": "x" * 4097}, {"body"}),
        ({"to": "+14155552671", "body": "hi", "template": {"name": "t"}}, {"template"}),
        ({"to": "+14155552671", "template": "order_update"}, {"template"}),
        (
            {"to": "+14155552671", "template": {"name": "Bad!", "language": "English", "x": 1}},
            {"template.name", "template.language", "template.x"},
        ),
        (
            {"to": "+14155552671", "template": {"name": "t", "variables": {"n": 1}}},
            {"template.variables"},
        ),
        (
            {"to": "+14155552671", "template": {"name": "t", "variables": "a"}},
            {"template.variables"},
        ),
    ],
)
def test_whatsapp_content_refusals(fields: dict[str, object], problems: set[str]) -> None:
    """Every bad field of a WhatsApp send is named at once."""
    with pytest.raises(ValidationError) as info:
        message_content(
            to=fields.get("to"), body=fields.get("body"), template=fields.get("template")
        )
    assert set(info.value.details) == problems


def test_whatsapp_opted_out_error_code() -> None:
    """A failed status carrying Graph error 131050 says the recipient opted out."""
    update = StatusUpdate(
        phone_number_id="1",
        provider_message_id="wamid.1",
        status=Status.FAILED,
        provider_status="failed",
        recipient_id=None,
        timestamp=datetime(2026, 1, 1, tzinfo=UTC),
        errors=[{"code": 131026, "title": None, "message": None, "details": None}],
    )
    assert update.recipient_opted_out is False
    opted = attrs.evolve(update, errors=[*update.errors, {"code": 131050, "title": "stopped"}])
    assert opted.recipient_opted_out is True


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("2026-01-01T13:00:00", "must include a timezone (e.g. Z or +02:00)"),
        ("next week", "must be an ISO 8601 date-time with a timezone, e.g. 2026-06-03T12:00:00Z"),
        (1767272400, "must be a string (an ISO 8601 date-time with a timezone)"),
    ],
)
def test_parse_timestamp_refuses_what_is_not_an_aware_iso_time(value: object, reason: str) -> None:
    """One parser for scheduledAt, expiresAt, listing bounds and the stats window."""
    with pytest.raises(ValidationError) as raised:
        parse_timestamp(value, "when")
    assert raised.value.details == {"when": reason}


def test_parse_timestamp_answers_utc() -> None:
    parsed = parse_timestamp("2026-06-03T14:00:00+02:00", "when")
    assert parsed == datetime(2026, 6, 3, 12, tzinfo=UTC) and parsed.tzinfo is UTC
