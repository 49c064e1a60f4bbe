"""The email send/read use cases through the in-process facade."""

from __future__ import annotations

from datetime import timedelta

import pytest

from commtunnel import Commtunnel
from commtunnel.domain.errors import (
    IdempotencyKeyInUseError,
    IdempotencyKeyReusedError,
    InsufficientScopeError,
    NotFoundError,
    SenderNotVerifiedError,
    ValidationError,
)
from commtunnel.domain.keys import Principal
from commtunnel.domain.messages import Status
from commtunnel.testing import ManualClock, MockProvider

pytestmark = pytest.mark.anyio

BASE = {
    "from_": "Shop <shop@example.com>",
    "to": "ann@example.org",
    "subject": "Hi",
    "text": "Hello",
}


async def test_send_queues_with_stable_message_id(ct: Commtunnel) -> None:
    """A send is QUEUED with a Message-ID at the sender's domain and an email_queued event."""
    result = await ct.email.send(**BASE)
    message = result.message
    assert message.status == Status.QUEUED and not result.duplicate
    assert message.email is not None
    assert message.email.message_id_header == f"<{message.id}@example.com>"
    events = await ct.email.timeline(message.id)
    assert [(e.type, e.status) for e in events] == [("email_queued", Status.QUEUED)]


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"to": "nope"}, "to"),
        ({"to": ""}, "to"),
        ({"from_": "x"}, "from"),
        ({"subject": "x" * 999}, "subject"),
        ({"subject": "Hi\r\nBcc: evil@example.net"}, "subject"),
        ({"to": "a@example.org\r\nBcc: evil@example.net"}, "to"),
        ({"text": None}, "html"),
        ({"subject": None}, "subject"),
        ({"tracking": "yes"}, "tracking"),
        ({"variables": [1]}, "variables"),
        ({"html": 5}, "html"),
    ],
)
async def test_send_refuses_invalid_fields(ct: Commtunnel, override: dict, field: str) -> None:
    """Each invalid field is named in details, and nothing is stored."""
    with pytest.raises(ValidationError) as info:
        await ct.email.send(**{**BASE, **override})
    assert field in info.value.details
    assert await ct.backend.pending_job_count() == 0


async def test_unverified_sender_is_refused(ct: Commtunnel) -> None:
    """A from address outside the verified senders answers SENDER_NOT_VERIFIED."""
    with pytest.raises(SenderNotVerifiedError) as info:
        await ct.email.send(**{**BASE, "from_": "boss@elsewhere.com"})
    assert info.value.http_status == 403


async def test_template_send_renders_variables(ct: Commtunnel) -> None:
    """A templateId renders subject, html and text with liquid variables."""
    template = await ct.admin.add_template(
        ct.org.id,
        name="welcome",
        subject="Hi {{ name }}",
        html="<p>{{ name }}</p>",
        text="Yo {{ name }}",
    )
    result = await ct.email.send(
        from_="shop@example.com",
        to="ann@example.org",
        template_id=template.id,
        variables={"name": "Ann"},
    )
    email = result.message.email
    assert email is not None
    assert (email.subject, email.html, email.text) == ("Hi Ann", "<p>Ann</p>", "Yo Ann")
    assert email.template_id == template.id


async def test_unknown_template_is_a_validation_error(ct: Commtunnel) -> None:
    """An unknown templateId is refused with details.templateId."""
    with pytest.raises(ValidationError) as info:
        await ct.email.send(from_="shop@example.com", to="a@example.org", template_id="nope")
    assert info.value.details == {"templateId": "unknown template"}


async def test_template_syntax_checked_on_add(ct: Commtunnel) -> None:
    """A template that does not parse is refused when stored."""
    with pytest.raises(ValidationError) as info:
        await ct.admin.add_template(ct.org.id, name="bad", subject="x", html="{% if %}", text=None)
    assert "html" in info.value.details


async def test_rendered_subject_with_line_break_is_refused(ct: Commtunnel) -> None:
    """Variables cannot inject headers through a template subject."""
    template = await ct.admin.add_template(
        ct.org.id, name="t", subject="Hi {{ name }}", html="x", text=None
    )
    with pytest.raises(ValidationError):
        await ct.email.send(
            from_="shop@example.com",
            to="a@example.org",
            template_id=template.id,
            variables={"name": "x\r\nBcc: evil@example.net"},
        )


async def test_scopes_are_enforced(ct: Commtunnel) -> None:
    """A principal without send:email or read:email is refused naming the scope."""
    reader = ct.email_for(Principal(org_id=ct.org.id, scopes=frozenset({"read:email"})))
    with pytest.raises(InsufficientScopeError) as info:
        await reader.send(**BASE)
    assert info.value.details == {"requiredScope": "send:email"}
    sender = ct.email_for(Principal(org_id=ct.org.id, scopes=frozenset({"send:email"})))
    sent = await sender.send(**BASE)
    with pytest.raises(InsufficientScopeError):
        await sender.get(sent.message.id)


async def test_other_org_sees_not_found(ct: Commtunnel) -> None:
    """Another organization's message answers NotFound, like a missing one."""
    sent = await ct.email.send(**BASE)
    other = await ct.admin.create_org("other")
    stranger = ct.email_for(Principal(org_id=other.id, scopes=frozenset({"read:email"})))
    with pytest.raises(NotFoundError):
        await stranger.get(sent.message.id)
    with pytest.raises(NotFoundError):
        await stranger.timeline(sent.message.id)


async def test_idempotent_replay_and_reuse(ct: Commtunnel) -> None:
    """Same key + payload replays; another payload answers IDEMPOTENCY_KEY_REUSED."""
    first = await ct.email.send(**BASE, idempotency_key="order-1")
    again = await ct.email.send(**BASE, idempotency_key="order-1")
    assert again.duplicate and again.message.id == first.message.id
    with pytest.raises(IdempotencyKeyReusedError):
        await ct.email.send(**{**BASE, "subject": "Other"}, idempotency_key="order-1")
    assert await ct.backend.pending_job_count() == 1


async def test_refused_request_does_not_burn_the_key(ct: Commtunnel) -> None:
    """A request refused by validation stores nothing, so the corrected retry is accepted."""
    with pytest.raises(ValidationError):
        await ct.email.send(**{**BASE, "to": "broken"}, idempotency_key="k")
    with pytest.raises(SenderNotVerifiedError):
        await ct.email.send(**{**BASE, "from_": "x@elsewhere.com"}, idempotency_key="k")
    ok = await ct.email.send(**BASE, idempotency_key="k")
    assert not ok.duplicate


async def test_key_in_flight_answers_409(ct: Commtunnel) -> None:
    """While a key's first request is in flight, a second one is refused with 409."""
    with (
        ct.emails._in_flight.hold(ct.org.id, "busy"),
        pytest.raises(IdempotencyKeyInUseError) as info,
    ):
        await ct.email.send(**BASE, idempotency_key="busy")
    assert info.value.http_status == 409
    assert not (await ct.email.send(**BASE, idempotency_key="busy")).duplicate


async def test_key_expires_after_retention(ct: Commtunnel, clock: ManualClock) -> None:
    """After the retention window the same key creates a new message."""
    first = await ct.email.send(**BASE, idempotency_key="k")
    clock.advance(ct.settings.idempotency_retention + 1)
    later = await ct.email.send(**BASE, idempotency_key="k")
    assert not later.duplicate and later.message.id != first.message.id


@pytest.mark.parametrize("key", ["", " ", "x" * 256, "a\nb"])
async def test_malformed_keys_are_refused(ct: Commtunnel, key: str) -> None:
    """Empty, over-long or control-character keys are a validation error."""
    with pytest.raises(ValidationError) as info:
        await ct.email.send(**BASE, idempotency_key=key)
    assert "idempotencyKey" in info.value.details


async def test_preview_renders_without_queueing(ct: Commtunnel) -> None:
    """Preview renders liquid and stores nothing."""
    rendered = await ct.email.preview(
        subject="Hi {{ n }}", html="<b>{{ n }}</b>", variables={"n": 3}
    )
    assert (rendered.subject, rendered.html, rendered.text) == ("Hi 3", "<b>3</b>", None)
    assert await ct.backend.pending_job_count() == 0
    with pytest.raises(ValidationError):
        await ct.email.preview()


async def test_stats_count_statuses_and_events(
    ct: Commtunnel, clock: ManualClock, provider: MockProvider
) -> None:
    """Stats count messages by status and events by type within the window."""
    start = clock.now()
    for _ in range(3):
        await ct.email.send(**BASE)
    await ct.run_worker_until_idle()
    stats = await ct.email.stats(start=start, end=start + timedelta(hours=1))
    assert stats.total == 3
    assert stats.by_status == {"SENT": 3}
    assert stats.events["email_sent"] == 3 and stats.events["email_queued"] == 3
    empty = await ct.email.stats(start=start + timedelta(hours=1), end=start + timedelta(hours=2))
    assert empty.total == 0
    with pytest.raises(ValidationError):
        await ct.email.stats(start=start, end=start)


async def test_stats_window_refusals(ct: Commtunnel, clock: ManualClock) -> None:
    """Naive datetimes and windows over 366 days are refused, naming the parameter."""
    start = clock.now()
    with pytest.raises(ValidationError) as info:
        await ct.email.stats(start=start.replace(tzinfo=None), end=start + timedelta(days=1))
    assert set(info.value.details) == {"start"}
    with pytest.raises(ValidationError) as info:
        await ct.email.stats(start=start, end=start + timedelta(days=367))
    assert info.value.details == {"end": "window must be at most 366 days"}
    assert (await ct.email.stats(start=start, end=start + timedelta(days=366))).total == 0


async def test_preview_names_the_part_that_fails_to_render(ct: Commtunnel) -> None:
    """An inline source that is not valid liquid is refused on its own field."""
    with pytest.raises(ValidationError) as info:
        await ct.email.preview(subject="Hi", html="{% if %}", text="{{ n | nope }}")
    assert set(info.value.details) == {"html", "text"}
    with pytest.raises(ValidationError) as info:
        await ct.email.preview(html=5)
    assert info.value.details == {"html": "must be a string"}


async def test_runaway_template_is_stopped(ct: Commtunnel) -> None:
    """A template that loops without bound fails to render instead of hanging the server."""
    template = await ct.admin.add_template(
        ct.org.id,
        name="loop",
        subject="s",
        html="{% for i in (1..100000000) %}x{% endfor %}",
        text=None,
    )
    with pytest.raises(ValidationError) as info:
        await ct.email.send(from_="shop@example.com", to="a@example.org", template_id=template.id)
    assert "variables" in info.value.details


async def test_verified_domain_covers_addresses_not_subdomains(ct: Commtunnel) -> None:
    """A verified domain covers its addresses (any case) but not its subdomains."""
    assert not (await ct.email.send(**{**BASE, "from_": "Sales@EXAMPLE.com"})).duplicate
    with pytest.raises(SenderNotVerifiedError):
        await ct.email.send(**{**BASE, "from_": "a@mail.example.com"})
    await ct.admin.add_sender(ct.org.id, "Boss@Elsewhere.com")
    assert not (await ct.email.send(**{**BASE, "from_": "boss@elsewhere.com"})).duplicate
    with pytest.raises(SenderNotVerifiedError):
        await ct.email.send(**{**BASE, "from_": "other@elsewhere.com"})
