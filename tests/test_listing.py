"""Listing messages: filters, scopes, tenancy, keyset cursors, every refusal, over HTTP too."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

import pg
from app_client import ApiEnv, app_client, assert_error
from commtunnel import Commtunnel, Settings
from commtunnel.domain.delivery import ErrorCategory, ProviderResult
from commtunnel.domain.errors import InsufficientScopeError, ValidationError
from commtunnel.domain.keys import Principal
from commtunnel.domain.messages import Channel, Message, Status, WhatsAppContent
from commtunnel.domain.paging import (
    CursorError,
    Position,
    decode_cursor,
    encode_cursor,
    filters_fingerprint,
)
from commtunnel.ids import new_id
from commtunnel.ports import OutgoingEmail
from commtunnel.services.timeline import status_event
from commtunnel.testing import ManualClock, MockProvider
from commtunnel_http import create_app

pytestmark = pytest.mark.anyio

MESSAGES = "/v1/public/messages"
EMAILS = "/v1/public/emails"
PHONE = "+14155552671"
OTHER_PHONE = "+2348031234567"
ALL_READ = frozenset({"read:email", "read:sms", "read:whatsapp"})


@pytest.fixture
def settings() -> Settings:
    """The shared ``ct`` fixture's settings, with a platform SMS sender ID."""
    return Settings(embedded_worker=False, sms_default_sender_id="INFO")


@pytest.fixture
def provider() -> MockProvider:
    """The shared ``ct`` fixture's email provider: mail to ``Ada`` fails for good."""

    def handler(message: OutgoingEmail) -> ProviderResult:
        if message.content.to.endswith("<ada@example.org>"):
            return ProviderResult.permanent(ErrorCategory.REJECTED, "no such user")
        return ProviderResult.accepted("pm")

    return MockProvider(handler)


def reader(ct: Commtunnel, *scopes: str) -> Principal:
    return Principal(org_id=ct.org.id, scopes=frozenset(scopes))


async def email(ct: Commtunnel, to: str = "ada@example.org", subject: str = "Hi") -> str:
    result = await ct.email.send(from_="hi@example.com", to=to, subject=subject, text="Hello")
    return result.message.id


async def sms(ct: Commtunnel, to: str = PHONE) -> str:
    result = await ct.sms.send(to=to, sender_id="INFO", body="Hello")
    return result.message.id


async def whatsapp(ct: Commtunnel, to: str = PHONE, org_id: str | None = None) -> str:
    """A WhatsApp message accepted straight into storage (the channel needs a Graph line)."""
    now = ct.clock.now()
    message = Message(
        id=new_id(),
        org_id=org_id or ct.org.id,
        channel=Channel.WHATSAPP,
        status=Status.QUEUED,
        sandbox=False,
        email=None,
        whatsapp=WhatsAppContent(to=to, kind="text", body="Hello", phone_number_id="1"),
        created_at=now,
        updated_at=now,
    )
    event = status_event(message, Status.QUEUED, at=now)
    await ct.backend.accept(message, event, run_at=now, idempotency=None)
    return message.id


def ids(page: Any) -> list[str]:
    return [item.message.id for item in page.items]


async def walk(ct: Commtunnel, limit: int, **filters: Any) -> list[list[str]]:
    """Every page of the in-process messages listing, following cursors."""
    pages, cursor = [], None
    while True:
        page = await ct.listing.list_messages(
            reader(ct, *ALL_READ), limit=limit, cursor=cursor, **filters
        )
        pages.append(ids(page))
        if page.cursor is None:
            return pages
        cursor = page.cursor


# --------------------------------------------------------------------------- the cursor codec


def test_cursor_round_trip_keeps_the_exact_position() -> None:
    """A cursor decodes, with the same filters, to the microsecond and id it was made from."""
    at = datetime(2026, 3, 1, 10, 0, 0, 123456, tzinfo=UTC)
    position = Position(created_at=at, id="01a1fe4c-02c3-7e30-9d0e-05146a16b3f9")
    fingerprint = filters_fingerprint("messages", {"status": "SENT"})
    assert decode_cursor(encode_cursor(position, fingerprint), fingerprint) == position


@pytest.mark.parametrize(
    "payload",
    [
        {"v": 2, "t": "2026-01-01T12:00:00.000000Z", "i": "01a1fe4c-02c3-7e30-9d0e-05146a16b3f9"},
        {"v": 1, "t": "yesterday", "i": "01a1fe4c-02c3-7e30-9d0e-05146a16b3f9"},
        {"v": 1, "t": "2026-01-01T12:00:00.000000", "i": "01a1fe4c-02c3-7e30-9d0e-05146a16b3f9"},
        {"v": 1, "t": "2026-01-01T12:00:00.000000Z", "i": "'; DROP TABLE messages; --"},
        {"v": 1, "t": "2026-01-01T12:00:00.000000Z", "i": 7},
        {"v": 1, "t": "2026-01-01T12:00:00.000000Z"},
    ],
)
def test_a_forged_cursor_of_the_wrong_shape_is_refused(payload: dict[str, Any]) -> None:
    """Valid base64 of JSON that is not exactly a cursor is refused, not half-read."""
    fingerprint = filters_fingerprint("messages", {})
    if "i" in payload:
        payload = {**payload, "f": fingerprint}
    text = base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")
    with pytest.raises(CursorError, match="not a cursor"):
        decode_cursor(text, fingerprint)


@pytest.mark.parametrize("text", ["", "not base64!", "e30", "W10", "x" * 600, "é"])
def test_garbage_is_not_a_cursor(text: str) -> None:
    """Text that does not decode to a JSON object is refused."""
    with pytest.raises(CursorError, match="not a cursor"):
        decode_cursor(text, filters_fingerprint("messages", {}))


def test_a_cursor_made_for_other_filters_is_refused() -> None:
    """The fingerprint ties a cursor to its listing and filters."""
    position = Position(created_at=datetime(2026, 1, 1, tzinfo=UTC), id=new_id())
    cursor = encode_cursor(position, filters_fingerprint("messages", {"status": "SENT"}))
    for other in (
        filters_fingerprint("messages", {"status": "FAILED"}),
        filters_fingerprint("emails", {"status": "SENT"}),
    ):
        with pytest.raises(CursorError, match="other filters"):
            decode_cursor(cursor, other)


# --------------------------------------------------------------------------- the service


async def test_lists_every_channel_newest_first_with_attempts(ct: Commtunnel) -> None:
    """Items come newest first across channels, each with its attempts; ties go by id."""
    first = await email(ct)
    ct.clock.advance(1)  # type: ignore[attr-defined]
    second = await sms(ct)
    third = await whatsapp(ct)  # same instant as the SMS: the larger id is newer
    await ct.run_worker_until_idle()
    page = await ct.listing.list_messages(reader(ct, *ALL_READ))
    assert ids(page) == [*sorted([second, third], reverse=True), first]
    assert page.cursor is None
    by_id = {item.message.id: item for item in page.items}
    assert [a.number for a in by_id[first].attempts] == [1]
    assert by_id[first].attempts[0].provider == "mock"
    assert by_id[second].message.channel == Channel.SMS


async def test_filters_combine_with_and(ct: Commtunnel) -> None:
    """channel, status, createdAfter/Before (inclusive), to: each narrows, together they AND."""
    start = ct.clock.now()
    a = await email(ct, "Ada <ada@example.org>")
    ct.clock.advance(10)  # type: ignore[attr-defined]
    b = await email(ct, "bob@example.org")
    middle = ct.clock.now()
    ct.clock.advance(10)  # type: ignore[attr-defined]
    c = await sms(ct)
    d = await whatsapp(ct, OTHER_PHONE)
    await ct.run_worker_until_idle()
    everyone = reader(ct, *ALL_READ)
    listing = ct.listing

    async def listed(**filters: Any) -> set[str]:
        return set(ids(await listing.list_messages(everyone, **filters)))

    assert await listed(channel="email") == {a, b}
    assert await listed(channel="EMAIL") == {a, b}  # the seed's spelling
    assert await listed(status="failed") == {a, d}  # WhatsApp: no provider here, so FAILED
    assert await listed(status="failed", channel="email") == {a}
    assert await listed(status="SENT") == {b, c}
    assert await listed(created_after=middle.isoformat()) == {b, c, d}  # inclusive
    assert await listed(created_before=middle) == {a, b}  # inclusive, a datetime in process
    assert await listed(created_after=start, created_before=start) == {a}
    assert await listed(to="ADA@example.org") == {a}  # the addr-spec, whatever the case
    assert await listed(to="Someone Else <ada@EXAMPLE.org>") == {a}
    assert await listed(to="+1 (415) 555-2671") == {c}
    assert await listed(to=OTHER_PHONE, channel="whatsapp") == {d}
    assert await listed(to=OTHER_PHONE, channel="sms") == set()
    assert await listed(channel="email", status="SENT", created_before=middle) == {b}


async def test_an_address_inside_another_is_not_a_match(ct: Commtunnel) -> None:
    """``to`` compares whole addr-specs, not substrings."""
    await email(ct, "xada@example.org")
    await email(ct, "Ada <ada@example.org.evil>")
    page = await ct.listing.list_messages(reader(ct, *ALL_READ), to="ada@example.org")
    assert page.items == []


async def test_walks_pages_until_the_cursor_is_absent(ct: Commtunnel) -> None:
    """5 messages by 2: pages of 2, 2, 1; the last page has no cursor, nothing repeats."""
    made = [await email(ct, subject=str(i)) for i in range(5)]
    pages = await walk(ct, 2)
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [i for p in pages for i in p] == sorted(made, reverse=True)


async def test_a_full_last_page_has_no_cursor(ct: Commtunnel) -> None:
    """4 messages by 2: the second page is the last; no empty third page is offered."""
    for i in range(4):
        await email(ct, subject=str(i))
    assert [len(p) for p in await walk(ct, 2)] == [2, 2]


async def test_default_limit_is_20(ct: Commtunnel) -> None:
    """Without ``limit`` a page holds 20 messages."""
    for i in range(21):
        await email(ct, subject=str(i))
    page = await ct.listing.list_messages(reader(ct, *ALL_READ))
    assert len(page.items) == 20 and page.cursor is not None


async def test_a_cursor_walk_keeps_its_filters(ct: Commtunnel) -> None:
    """A filtered walk sees only matching messages on every page."""
    wanted = []
    for i in range(5):
        wanted.append(await email(ct, subject=str(i)))
        await sms(ct)
    pages = await walk(ct, 2, channel="email")
    assert [i for p in pages for i in p] == sorted(wanted, reverse=True)


async def test_only_the_callers_organization_is_listed(ct: Commtunnel) -> None:
    """Another organization's messages are never listed."""
    other = await ct.admin.ensure_org("other")
    await whatsapp(ct, org_id=other.id)
    mine = await whatsapp(ct)
    assert ids(await ct.listing.list_messages(reader(ct, *ALL_READ))) == [mine]
    theirs = Principal(org_id=other.id, scopes=ALL_READ)
    assert mine not in ids(await ct.listing.list_messages(theirs))


async def test_only_channels_the_key_reads_are_listed(ct: Commtunnel) -> None:
    """A key with read:sms lists SMS only; with read:email and read:whatsapp, those two."""
    e, s, w = await email(ct), await sms(ct), await whatsapp(ct)
    assert ids(await ct.listing.list_messages(reader(ct, "read:sms"))) == [s]
    two = await ct.listing.list_messages(reader(ct, "read:email", "read:whatsapp"))
    assert set(ids(two)) == {e, w}


async def test_email_listing_and_the_in_process_client(ct: Commtunnel) -> None:
    """``ct.email.list`` lists emails only, with filters and cursors."""
    first = await email(ct, subject="1")
    await sms(ct)
    second = await email(ct, subject="2")
    page = await ct.email.list(limit=1)
    assert ids(page) == [second] and page.cursor is not None
    rest = await ct.email.list(limit=1, cursor=page.cursor)
    assert ids(rest) == [first] and rest.cursor is None


async def test_no_read_scope_is_refused(ct: Commtunnel) -> None:
    """A key that reads no channel gets INSUFFICIENT_SCOPE, even with bad filters."""
    with pytest.raises(InsufficientScopeError) as caught:
        await ct.listing.list_messages(reader(ct, "send:email"), limit=0)
    assert caught.value.details == {"requiredScope": "read:email"}


@pytest.mark.parametrize(("scope", "channel"), [("read:email", "sms"), ("read:sms", "whatsapp")])
async def test_a_channel_the_key_cannot_read_is_refused(
    ct: Commtunnel, scope: str, channel: str
) -> None:
    """Filtering on a channel the key cannot read names the scope it lacks."""
    with pytest.raises(InsufficientScopeError) as caught:
        await ct.listing.list_messages(reader(ct, scope), channel=channel)
    assert caught.value.details == {"requiredScope": f"read:{channel}"}


async def test_the_email_listing_needs_read_email(ct: Commtunnel) -> None:
    """``list_emails`` with only read:sms is refused."""
    with pytest.raises(InsufficientScopeError):
        await ct.listing.list_emails(reader(ct, "read:sms"))


@pytest.mark.parametrize(
    ("filters", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"limit": "10"}, "limit"),
        ({"limit": True}, "limit"),
        ({"channel": "fax"}, "channel"),
        ({"status": "ACCEPTED_BY_PROVIDER"}, "status"),
        ({"created_after": "yesterday"}, "createdAfter"),
        ({"created_after": "2026-01-01T00:00:00"}, "createdAfter"),
        ({"created_before": "2026-01-01"}, "createdBefore"),
        ({"created_before": 1767225600}, "createdBefore"),
        (
            {"created_after": "2026-01-02T00:00:00Z", "created_before": "2026-01-01T00:00:00Z"},
            "createdBefore",
        ),
        ({"to": "not an address@"}, "to"),
        ({"to": "4155552671"}, "to"),
        ({"to": "   "}, "to"),
        ({"to": PHONE, "channel": "email"}, "to"),
        ({"to": "ada@example.org", "channel": "sms"}, "to"),
        ({"cursor": "garbage"}, "cursor"),
        ({"cursor": 12}, "cursor"),
    ],
)
async def test_each_bad_parameter_is_refused(
    ct: Commtunnel, filters: dict[str, Any], field: str
) -> None:
    """Every bad parameter is a VALIDATION_ERROR naming it."""
    with pytest.raises(ValidationError) as caught:
        await ct.listing.list_messages(reader(ct, *ALL_READ), **filters)
    assert set(caught.value.details) == {field}


async def test_every_bad_parameter_is_reported_at_once(ct: Commtunnel) -> None:
    """Several bad parameters: one error naming each."""
    with pytest.raises(ValidationError) as caught:
        await ct.listing.list_messages(
            reader(ct, *ALL_READ), limit=500, status="nope", created_after="x"
        )
    assert set(caught.value.details) == {"limit", "status", "createdAfter"}


async def test_a_cursor_with_other_filters_or_another_listing_is_refused(ct: Commtunnel) -> None:
    """A cursor is bound to the filters, the channels listed and the listing it came from."""
    for i in range(3):
        await email(ct, subject=str(i))
    everyone = reader(ct, *ALL_READ)
    page = await ct.listing.list_messages(everyone, status="QUEUED", limit=1)
    assert page.cursor is not None
    for call in (
        ct.listing.list_messages(everyone, status="SENT", limit=1, cursor=page.cursor),
        ct.listing.list_messages(everyone, limit=1, cursor=page.cursor),
        ct.listing.list_messages(reader(ct, "read:email"), status="QUEUED", cursor=page.cursor),
        ct.listing.list_emails(everyone, status="QUEUED", cursor=page.cursor),
    ):
        with pytest.raises(ValidationError) as caught:
            await call
        assert "other filters" in caught.value.details["cursor"]
    # Equivalent spellings are the same filters: the walk goes on.
    same = await ct.listing.list_messages(everyone, status="queued", limit=1, cursor=page.cursor)
    assert len(same.items) == 1


async def test_a_tampered_cursor_is_refused(ct: Commtunnel) -> None:
    """Changing one character of a real cursor makes it unusable (never a silent re-walk)."""
    for i in range(2):
        await email(ct, subject=str(i))
    everyone = reader(ct, *ALL_READ)
    cursor = (await ct.listing.list_messages(everyone, limit=1)).cursor
    assert cursor is not None
    tampered = cursor[:10] + ("A" if cursor[10] != "A" else "B") + cursor[11:]
    with pytest.raises(ValidationError) as caught:
        await ct.listing.list_messages(everyone, limit=1, cursor=tampered)
    assert set(caught.value.details) == {"cursor"}


# --------------------------------------------------------------------------- stability


operations = st.lists(
    st.one_of(
        st.tuples(st.just("insert"), st.sampled_from([0, 0, 1]), st.sampled_from(["a", "b"])),
        st.tuples(st.just("page"), st.integers(1, 4), st.just("")),
    ),
    max_size=30,
)


async def _walk_while_inserting(
    initial: list[tuple[int, str]], ops: list[tuple[str, int, str]], to: str | None
) -> None:
    clock = ManualClock()
    async with Commtunnel.open(
        db=":memory:",
        email_provider=MockProvider(),
        clock=clock,
        settings=Settings(embedded_worker=False),
    ) as ct:
        await ct.admin.add_sender(ct.org.id, "example.com")

        async def insert(advance: int, who: str) -> None:
            clock.advance(advance)
            await email(ct, f"{who}@example.org")

        for advance, who in initial:
            await insert(advance, who)
        filters: dict[str, Any] = {} if to is None else {"to": f"{to}@example.org"}
        everyone = reader(ct, *ALL_READ)
        at_start = set(ids(await ct.listing.list_messages(everyone, limit=100, **filters)))
        seen: list[Any] = []
        cursor: str | None = None
        done = False
        for kind, number, who in [*ops, *[("page", 3, "")] * 50]:
            if kind == "insert":
                await insert(number, who)
                continue
            if done:
                break
            page = await ct.listing.list_messages(everyone, limit=number, cursor=cursor, **filters)
            seen.extend(item.message for item in page.items)
            cursor = page.cursor
            done = cursor is None
        assert done
        seen_ids = [m.id for m in seen]
        assert len(seen_ids) == len(set(seen_ids)), "a message was listed twice"
        assert at_start <= set(seen_ids), "a message that existed at the start was skipped"
        order = [(m.created_at, m.id) for m in seen]
        assert order == sorted(order, reverse=True)
        if to is not None:
            assert all(m.email.to == f"{to}@example.org" for m in seen)


@hypothesis_settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.sampled_from([0, 1]), st.sampled_from(["a", "b"])), max_size=12),
    operations,
    st.sampled_from([None, "a"]),
)
def test_pagination_is_stable_under_concurrent_inserts(
    initial: list[tuple[int, str]], ops: list[tuple[str, int, str]], to: str | None
) -> None:
    """Inserts between page fetches never cause a duplicate, or skip a message that existed."""
    asyncio.run(_walk_while_inserting(initial, ops, to))


# --------------------------------------------------------------------------- over HTTP


@pytest.fixture
async def env(ct: Commtunnel) -> AsyncIterator[ApiEnv]:
    _, key = await ct.keys.create(ct.org.id, scopes=ALL_READ)
    async with app_client(create_app(ct)) as client:
        yield ApiEnv(ct=ct, client=client, key=key)


async def key_with(ct: Commtunnel, *scopes: str) -> str:
    _, key = await ct.keys.create(ct.org.id, scopes=frozenset(scopes))
    return key


async def test_http_items_have_their_channels_get_shape(env: ApiEnv) -> None:
    """Each item equals what ``GET /v1/public/<channel>/{id}`` answers, attempts included."""
    e, s = await email(env.ct), await sms(env.ct)
    await env.ct.run_worker_until_idle()
    r = await env.get(MESSAGES)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"items"}  # one page: no cursor at all, not a null
    items = {item["id"]: item for item in body["items"]}
    for path, message_id in ((f"{EMAILS}/{e}", e), (f"/v1/public/sms/{s}", s)):
        single = await env.get(path)
        assert single.status_code == 200
        assert items[message_id] == single.json()
    assert items[e]["attempts"][0]["provider"] == "mock"


async def test_http_walks_with_the_cursor(env: ApiEnv) -> None:
    """``cursor`` is present until the last page; filters and aliases work as query params."""
    made = [await email(env.ct, subject=str(i)) for i in range(3)]
    start = env.ct.clock.now().isoformat()
    r = await env.get(EMAILS, limit=2, after=start, status="QUEUED")
    assert r.status_code == 200, r.text
    first = r.json()
    assert len(first["items"]) == 2 and isinstance(first["cursor"], str)
    r = await env.get(
        EMAILS, limit="2", createdAfter=start, status="queued", cursor=first["cursor"]
    )
    second = r.json()
    assert "cursor" not in second
    listed = [i["id"] for i in first["items"] + second["items"]]
    assert listed == sorted(made, reverse=True)
    empty = await env.get(MESSAGES, to=PHONE, channel="", status="")
    assert empty.status_code == 200 and empty.json() == {"items": []}


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"createdAfter": "2026-13-01T00:00:00Z"}, "createdAfter"),
        ({"createdBefore": "2026-01-01T00:00:00"}, "createdBefore"),
        ({"status": "ACCEPTED_BY_PROVIDER"}, "status"),
        ({"channel": "telegram"}, "channel"),
        ({"to": "nobody"}, "to"),
        ({"cursor": "eyJub3QiOiJhIGN1cnNvciJ9"}, "cursor"),
        ({"after": "2026-01-01T00:00:00Z", "createdAfter": "2026-01-02T00:00:00Z"}, "createdAfter"),
        (
            {"before": "2026-01-01T00:00:00Z", "createdBefore": "2026-01-02T00:00:00Z"},
            "createdBefore",
        ),
    ],
)
async def test_http_refusals(env: ApiEnv, params: dict[str, str], field: str) -> None:
    """Each bad query parameter answers 400 VALIDATION_ERROR naming it."""
    details = assert_error(await env.get(MESSAGES, **params), 400, "VALIDATION_ERROR")
    assert set(details) == {field}


async def test_http_cursor_with_other_filters_is_refused(env: ApiEnv) -> None:
    """A cursor from one filter set, sent with another: 400 naming ``cursor``."""
    for i in range(2):
        await email(env.ct, subject=str(i))
    cursor = (await env.get(MESSAGES, limit=1)).json()["cursor"]
    details = assert_error(
        await env.get(MESSAGES, limit=1, channel="email", cursor=cursor), 400, "VALIDATION_ERROR"
    )
    assert "other filters" in details["cursor"]
    details = assert_error(await env.get(EMAILS, cursor=cursor), 400, "VALIDATION_ERROR")
    assert "other filters" in details["cursor"]


async def test_http_scope_refusals(env: ApiEnv) -> None:
    """No read scope, an unreadable channel, /emails without read:email: 403 naming the scope."""
    send_only = await key_with(env.ct, "send:email")
    sms_only = await key_with(env.ct, "read:sms")
    details = assert_error(await env.get(MESSAGES, key=send_only), 403, "INSUFFICIENT_SCOPE")
    assert details == {"requiredScope": "read:email"}
    details = assert_error(
        await env.get(MESSAGES, key=sms_only, channel="email"), 403, "INSUFFICIENT_SCOPE"
    )
    assert details == {"requiredScope": "read:email"}
    details = assert_error(await env.get(EMAILS, key=sms_only), 403, "INSUFFICIENT_SCOPE")
    assert details == {"requiredScope": "read:email"}
    assert (await env.get(MESSAGES, key=sms_only)).status_code == 200


async def test_http_without_a_key_is_unauthorized(env: ApiEnv) -> None:
    """Both listings answer 401 without a key."""
    for path in (MESSAGES, EMAILS):
        assert_error(await env.client.get(path), 401, "UNAUTHORIZED")


async def test_http_listing_is_scoped_to_the_organization(env: ApiEnv) -> None:
    """Another organization's key sees none of this organization's messages."""
    await email(env.ct)
    other = await env.ct.admin.ensure_org("other")
    _, key = await env.ct.keys.create(other.id, scopes=ALL_READ)
    r = await env.get(MESSAGES, key=key)
    assert r.status_code == 200 and r.json() == {"items": []}


async def test_listing_queries_use_the_indexes(ct: Commtunnel) -> None:
    """Every listing query walks an index of messages (no full scan, no sort of the table)."""
    from commtunnel.backends.sqlite_listing import listing_where
    from commtunnel.ports import MessageQuery

    base = {"org_id": ct.org.id, "limit": 21}
    after = Position(created_at=ct.clock.now(), id=new_id())
    for query in (
        MessageQuery(channels=frozenset(Channel), **base),
        MessageQuery(channels=frozenset({Channel.EMAIL}), after=after, **base),
        MessageQuery(
            channels=frozenset({Channel.SMS}),
            status=Status.SENT,
            created_after=ct.clock.now() - timedelta(days=1),
            **base,
        ),
        MessageQuery(channels=frozenset(Channel), to_address="a@example.org", **base),
        MessageQuery(channels=frozenset(Channel), to_phone=PHONE, **base),
    ):
        where, params = listing_where(query)
        if pg.BACKEND == "postgresql":
            # A table this small is read whole unless scans are priced out: then
            # only a missing index leaves a Seq Scan, and an unusable one a Sort.
            conn = ct.backend.conn
            conn.execute("SET enable_seqscan = off")
            plan = "\n".join(
                row[0]
                for row in conn.execute(
                    f"EXPLAIN SELECT id FROM messages WHERE {where} "
                    "ORDER BY created_at DESC, id DESC LIMIT ?",
                    [*params, 21],
                )
            )
            conn.execute("RESET enable_seqscan")
            assert "Index" in plan and "Seq Scan" not in plan, plan
            assert "Sort" not in plan, plan
            continue
        plan = " ".join(
            row[3]
            for row in ct.backend.conn.execute(
                f"EXPLAIN QUERY PLAN SELECT id FROM messages WHERE {where} "
                "ORDER BY created_at DESC, id DESC LIMIT ?",
                [*params, 21],
            )
        )
        assert "USING" in plan and "INDEX" in plan, plan
        assert "TEMP B-TREE" not in plan, plan
