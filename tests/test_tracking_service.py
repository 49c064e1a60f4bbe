"""TrackingService in process: the delivery hook, the key, the events of hits, preview and stats."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import attrs
import pytest
from selectolax.lexbor import LexborHTMLParser

import pg
from commtunnel import Commtunnel, Settings
from commtunnel.domain.delivery import ErrorCategory, ProviderResult
from commtunnel.domain.errors import InvalidTrackingTokenError
from commtunnel.domain.messages import EmailContent, Message, Status
from commtunnel.domain.tracking import ClickToken, OpenToken
from commtunnel.ports import OutgoingEmail
from commtunnel.services.dispatch import Dispatcher
from commtunnel.services.tracking import TrackingService
from commtunnel.testing import ManualClock, MockProvider

pytestmark = pytest.mark.anyio

HTML = '<p>Hi <a href="https://shop.example/o?id=1&amp;x=2">order</a></p>'
BASE: dict[str, Any] = {
    "from_": "shop@example.com",
    "to": "ann@example.org",
    "subject": "Hi",
    "html": HTML,
}
CHROME = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/124.0 Safari/537.36"


@pytest.fixture
def provider() -> MockProvider:
    """A provider that fails the first attempt transiently, then accepts."""
    answers = [ProviderResult.transient(ErrorCategory.PROVIDER_OUTAGE, "421 busy")]

    def answer(email: OutgoingEmail) -> ProviderResult:
        return answers.pop() if answers else ProviderResult.accepted("ok")

    return MockProvider(answer)


async def deliver(ct: Commtunnel, clock: ManualClock) -> None:
    """Run the worker until idle, then again after the longest backoff."""
    await ct.run_worker_until_idle()
    clock.advance(ct.settings.retry_max_delay)
    await ct.run_worker_until_idle()


async def test_provider_gets_tracked_html_and_the_stored_message_keeps_the_original(
    ct: Commtunnel, provider: MockProvider, clock: ManualClock
) -> None:
    """Each attempt hands over rewritten HTML (the same each time); storage keeps the source."""
    sent = await ct.email.send(**BASE, text="Hi, see https://shop.example/o", tracking=True)
    await deliver(ct, clock)
    assert [e.attempt_number for e in provider.sent] == [1, 2]
    first, second = (e.content for e in provider.sent)
    assert first == second  # deterministic tokens: a retry carries the same links
    assert first.text == "Hi, see https://shop.example/o"
    base = ct.settings.base_url
    tree = LexborHTMLParser(first.html or "")
    [href] = [a.attributes.get("href") or "" for a in tree.css("a")]
    assert href.startswith(f"{base}/v1/track/click?t=")
    [pixel] = [i.attributes.get("src") or "" for i in tree.css("img")]
    assert pixel.startswith(f"{base}/v1/track/open?t=")
    stored = await ct.email.get(sent.message.id)
    assert stored.message.status == Status.SENT
    assert stored.message.email is not None and stored.message.email.html == HTML


async def test_untracked_and_text_only_emails_are_handed_over_as_stored(ct: Commtunnel) -> None:
    """Without tracking, or without an HTML part, prepare_email returns the stored content."""
    plain = (await ct.email.send(**BASE)).message
    text_only = (await ct.email.send(**{**BASE, "html": None}, text="Hello", tracking=True)).message
    for message in (plain, text_only):
        assert await ct.tracking.prepare_email(message) is message.email


async def test_a_failing_hook_is_a_transient_attempt(ct: Commtunnel, clock: ManualClock) -> None:
    """If prepare_email raises, the attempt is RETRYING (UNKNOWN) and nothing is sent."""
    provider = MockProvider()

    async def broken(message: Message) -> EmailContent:
        raise RuntimeError("no key")

    dispatcher = Dispatcher(
        ct.backend,
        provider,
        clock,
        lease_seconds=60,
        send_timeout=5,
        prepare_email=broken,
    )
    sent = await ct.email.send(**BASE, tracking=True)
    assert await dispatcher.run_until_idle() == 1
    status = await ct.email.get(sent.message.id)
    assert status.message.status == Status.RETRYING
    assert status.attempts[0].error_category == "UNKNOWN"
    assert provider.sent == []


# --------------------------------------------------------------------------- the key


async def test_services_on_one_database_share_the_server_made_key(ct: Commtunnel) -> None:
    """Without COMMTUNNEL_SECRET_KEY, every service on the storage signs with one stored key."""
    token = OpenToken(org_id=ct.org.id, message_id="m")
    other = TrackingService(ct.backend, ct.clock, base_url="https://x.example")
    signed = (await ct.tracking.signer()).sign_open(token)
    assert (await other.signer()).read_open(signed) == token


async def test_the_configured_secret_key_signs_and_another_refuses(
    tmp_path: Path, clock: ManualClock
) -> None:
    """With a secret key, tokens verify wherever the key is set and nowhere else."""
    secret = "a configured secret key of 32+ chars"
    settings = Settings(embedded_worker=False, secret_key=secret)
    async with Commtunnel.open(
        db=pg.fresh_db(tmp_path / "a.db"), clock=clock, settings=settings
    ) as a:
        token = ClickToken(org_id="o", message_id="m", link_index=0, url="https://x.example/")
        signed = (await a.tracking.signer()).sign_click(token)
        same_key = TrackingService(a.backend, clock, base_url="", secret_key=secret)
        assert (await same_key.signer()).read_click(signed) == token
        server_made = TrackingService(a.backend, clock, base_url="")
        with pytest.raises(InvalidTrackingTokenError):
            (await server_made.signer()).read_click(signed)


# --------------------------------------------------------------------------- hits


async def test_concurrent_first_opens_record_exactly_one_first(
    ct: Commtunnel, clock: ManualClock
) -> None:
    """Opens of one message arriving together: one event says first, the others do not."""
    message = (await ct.email.send(**BASE, tracking=True)).message
    token = (await ct.tracking.signer()).sign_open(
        OpenToken(org_id=message.org_id, message_id=message.id)
    )
    events = await asyncio.gather(
        *(ct.tracking.record_open(token, user_agent=CHROME, client_ip=None) for _ in range(5))
    )
    assert sorted(e.details["first"] for e in events if e is not None) == [
        False,
        False,
        False,
        False,
        True,
    ]


async def test_a_scanner_that_opens_first_leaves_first_to_the_person(ct: Commtunnel) -> None:
    """A bot's open is never first, and does not stop the person's later open from being first."""
    message = (await ct.email.send(**BASE, tracking=True)).message
    token = (await ct.tracking.signer()).sign_open(
        OpenToken(org_id=message.org_id, message_id=message.id)
    )
    bot = await ct.tracking.record_open(token, user_agent="Mozilla/5.0", client_ip="17.58.1.2")
    person = await ct.tracking.record_open(token, user_agent=CHROME, client_ip=None)
    again = await ct.tracking.record_open(token, user_agent=CHROME, client_ip=None)
    assert bot is not None and person is not None and again is not None
    assert (bot.details["isBot"], bot.details["first"]) == (True, False)
    assert (person.details["first"], again.details["first"]) == (True, False)
    assert person.status == message.status  # the message's status as of the open


async def test_a_token_cannot_record_into_another_organization(ct: Commtunnel) -> None:
    """A valid token naming the message under another organization records nothing."""
    message = (await ct.email.send(**BASE, tracking=True)).message
    token = (await ct.tracking.signer()).sign_open(
        OpenToken(org_id="another-org", message_id=message.id)
    )
    assert await ct.tracking.record_open(token, user_agent=CHROME, client_ip=None) is None
    assert [e.type for e in await ct.email.timeline(message.id)] == ["email_queued"]


async def test_long_user_agents_are_cut_to_512_characters(ct: Commtunnel) -> None:
    """The event keeps at most 512 characters of the User-Agent header."""
    message = (await ct.email.send(**BASE, tracking=True)).message
    token = (await ct.tracking.signer()).sign_open(
        OpenToken(org_id=message.org_id, message_id=message.id)
    )
    event = await ct.tracking.record_open(token, user_agent=CHROME * 20, client_ip=None)
    assert event is not None and event.details["userAgent"] == (CHROME * 20)[:512]


# --------------------------------------------------------------------------- preview and stats


async def test_preview_says_tracking_applies_only_with_an_html_part(ct: Commtunnel) -> None:
    """trackingEnabled is asked-for and an HTML part; the previewed HTML is as written."""
    with_html = await ct.email.preview(subject="S", html=HTML, tracking=True)
    assert with_html.tracking is True and with_html.html == HTML
    assert (await ct.email.preview(subject="S", text="t", tracking=True)).tracking is False
    assert (await ct.email.preview(subject="S", html=HTML)).tracking is False


async def test_stats_leave_bots_out_unless_asked(ct: Commtunnel, clock: ManualClock) -> None:
    """Opens by a person and by a scanner: 1 by default, 2 with include_bots; unique per email."""
    start = clock.now()
    messages = [(await ct.email.send(**BASE, tracking=True)).message for _ in range(2)]
    signer = await ct.tracking.signer()
    for message, agent in ((messages[0], CHROME), (messages[0], CHROME), (messages[1], "")):
        token = signer.sign_open(OpenToken(org_id=message.org_id, message_id=message.id))
        await ct.tracking.record_open(token, user_agent=agent, client_ip=None)
    humans = await ct.email.stats(start=start, end=clock.advance(1))
    assert (humans.opens, humans.unique_opens, humans.clicks) == (2, 1, 0)
    everyone = await ct.email.stats(start=start, end=clock.now(), include_bots=True)
    assert (everyone.opens, everyone.unique_opens, everyone.include_bots) == (3, 2, True)
    assert attrs.evolve(everyone, include_bots=False, opens=2, unique_opens=1) == humans
