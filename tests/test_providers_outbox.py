"""The outbox provider: one .eml file per message, written atomically."""

from __future__ import annotations

import email
import email.policy
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from commtunnel.domain.delivery import ErrorCategory, Outcome
from commtunnel.domain.errors import NotFoundError, ProviderConfigError
from commtunnel.domain.messages import EmailContent, SmsContent
from commtunnel.ports import EmailProvider, OutgoingEmail, OutgoingSms, SmsProvider
from commtunnel.providers import load_provider
from commtunnel.providers.mime import build_mime
from commtunnel.providers.outbox import OutboxProvider
from commtunnel.testing import ManualClock


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


MESSAGE_ID = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"


def outgoing(
    *,
    message_id: str = MESSAGE_ID,
    subject: str = "Welcome",
    text: str | None = "Hi",
    html: str | None = "<p>Hi</p>",
) -> OutgoingEmail:
    content = EmailContent(
        from_addr="Shop <shop@example.com>",
        to="Bob <bob@example.com>",
        subject=subject,
        text=text,
        html=html,
        message_id_header=f"<{message_id}@mail.commtunnel.test>",
    )
    return OutgoingEmail(
        message_id=message_id,
        org_id="org-1",
        content=content,
        created_at=datetime(2026, 1, 1, 12, tzinfo=UTC),
    )


@pytest.mark.anyio
async def test_send_writes_the_mime_message_to_message_id_eml(tmp_path: Path) -> None:
    """send_email writes build_mime's bytes to <dir>/<message_id>.eml and reports the Message-ID."""
    provider = OutboxProvider(tmp_path, clock=ManualClock())
    email_ = outgoing(html=None)  # single part: no random boundary, so the bytes are stable
    result = await provider.send_email(email_)
    assert result.outcome is Outcome.ACCEPTED
    assert result.provider_message_id == f"{MESSAGE_ID}@mail.commtunnel.test"
    written = (tmp_path / f"{MESSAGE_ID}.eml").read_bytes()
    msg = email.message_from_bytes(written, policy=email.policy.default)
    assert msg["Subject"] == "Welcome"
    assert msg["Message-ID"] == email_.content.message_id_header
    assert written == build_mime(email_)


@pytest.mark.anyio
async def test_missing_directory_is_created(tmp_path: Path) -> None:
    """A directory that does not exist yet (nested) is created on the first send."""
    target = tmp_path / "a" / "b" / "outbox"
    provider = OutboxProvider(target, clock=ManualClock())
    result = await provider.send_email(outgoing())
    assert result.outcome is Outcome.ACCEPTED
    assert (target / f"{MESSAGE_ID}.eml").is_file()


@pytest.mark.anyio
async def test_directory_removed_after_first_send_is_created_again(tmp_path: Path) -> None:
    """If the directory disappears between sends, the next send recreates it."""
    target = tmp_path / "outbox"
    provider = OutboxProvider(target, clock=ManualClock())
    await provider.send_email(outgoing())
    (target / f"{MESSAGE_ID}.eml").unlink()
    target.rmdir()
    result = await provider.send_email(outgoing(message_id="second"))
    assert result.outcome is Outcome.ACCEPTED
    assert (target / "second.eml").is_file()


@pytest.mark.anyio
async def test_resend_replaces_the_file_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    """Sending the same message again replaces its file; only the .eml files remain."""
    provider = OutboxProvider(tmp_path, clock=ManualClock())
    await provider.send_email(outgoing(subject="first"))
    await provider.send_email(outgoing(subject="second"))
    await provider.send_email(outgoing(message_id="other"))
    names = sorted(p.name for p in tmp_path.iterdir())  # noqa: ASYNC240 (test inspection)
    assert names == sorted(["other.eml", f"{MESSAGE_ID}.eml"])
    msg = email.message_from_bytes((tmp_path / f"{MESSAGE_ID}.eml").read_bytes())
    assert msg["Subject"] == "second"


@pytest.mark.anyio
async def test_os_error_is_a_transient_provider_outage(tmp_path: Path) -> None:
    """When the directory cannot be written (here: it is a file), the result is transient."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    provider = OutboxProvider(blocker, clock=ManualClock())
    result = await provider.send_email(outgoing())
    assert result.outcome is Outcome.TRANSIENT
    assert result.error_category is ErrorCategory.PROVIDER_OUTAGE
    assert result.error_message is not None
    assert "cannot write" in result.error_message


@pytest.mark.anyio
async def test_unsafe_message_id_is_refused_without_writing(tmp_path: Path) -> None:
    """A message id that could escape the directory is a permanent REJECTED, nothing written."""
    outbox = tmp_path / "outbox"
    provider = OutboxProvider(outbox, clock=ManualClock())
    result = await provider.send_email(outgoing(message_id="../escaped"))
    assert result.outcome is Outcome.PERMANENT
    assert result.error_category is ErrorCategory.REJECTED
    assert list(tmp_path.iterdir()) == []  # noqa: ASYNC240 (test inspection)


@pytest.mark.anyio
async def test_unbuildable_message_is_permanently_rejected(tmp_path: Path) -> None:
    """A message with no body cannot be built: permanent REJECTED, not an exception."""
    provider = OutboxProvider(tmp_path, clock=ManualClock())
    result = await provider.send_email(outgoing(text=None, html=None))
    assert result.outcome is Outcome.PERMANENT
    assert result.error_category is ErrorCategory.REJECTED


@pytest.mark.anyio
async def test_is_an_email_provider_usable_as_async_context_manager(tmp_path: Path) -> None:
    """OutboxProvider satisfies the EmailProvider protocol and works in ``async with``."""
    async with OutboxProvider(tmp_path, clock=ManualClock()) as provider:
        assert isinstance(provider, EmailProvider)
        assert provider.name == "outbox"
        result = await provider.send_email(outgoing())
    assert result.outcome is Outcome.ACCEPTED


@pytest.mark.parametrize(
    ("url", "relative"),
    [
        ("outbox:relative/path", "relative/path"),
        ("outbox://./outbox", "outbox"),
        ("outbox://./deep/er", "deep/er"),
        ("outbox:", "outbox"),
        ("outbox://", "outbox"),
        ("outbox:with%20space", "with space"),
    ],
)
def test_from_url_relative_forms_resolve_against_cwd(
    url: str, relative: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Relative outbox URLs (and the empty one, meaning ./outbox) resolve against the cwd."""
    monkeypatch.chdir(tmp_path)
    provider = OutboxProvider.from_url(url, clock=ManualClock())
    assert provider.directory == tmp_path / relative
    assert provider.directory.is_absolute()


@pytest.mark.parametrize("authority", ["", "localhost"])
def test_from_url_absolute_form(authority: str, tmp_path: Path) -> None:
    """outbox:///abs/path (or outbox://localhost/abs/path) names an absolute directory."""
    provider = OutboxProvider.from_url(f"outbox://{authority}{tmp_path}/out", clock=ManualClock())
    assert provider.directory == tmp_path / "out"


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("outbox://mailhost/var/out", "authority"),
        ("outbox:///var/out?fsync=true", "no options"),
        ("outbox:out#frag", "no options"),
        ("smtp:///var/out", "expected an outbox"),
    ],
)
def test_from_url_rejects_bad_urls(url: str, reason: str) -> None:
    """Remote authorities, options, fragments and other schemes are refused with a reason."""
    with pytest.raises(ValueError, match=reason):
        OutboxProvider.from_url(url, clock=ManualClock())


def test_load_provider_finds_outbox_through_the_entry_point(tmp_path: Path) -> None:
    """load_provider('outbox:///...') returns an OutboxProvider for that directory."""
    provider = load_provider(f"outbox://{tmp_path}", clock=ManualClock())
    assert isinstance(provider, OutboxProvider)
    assert provider.directory == tmp_path


def test_load_provider_wraps_outbox_url_errors() -> None:
    """A bad outbox URL through load_provider becomes ProviderConfigError."""
    with pytest.raises(ProviderConfigError, match="authority"):
        load_provider("outbox://mailhost/x", clock=ManualClock())


# --------------------------------------------------------------------------- SMS


def outgoing_sms(
    *, message_id: str = MESSAGE_ID, body: str = "Votre code : 123456 €", attempt: int = 1
) -> OutgoingSms:
    content = SmsContent(
        sender_id="ACME",
        to="+2348012345678",
        body=body,
        send_type=2,
        encoding="UCS2",
        segments=1,
        flow="OTP",
        purpose="LOGIN",
    )
    return OutgoingSms(
        message_id=message_id,
        org_id="org-1",
        content=content,
        created_at=datetime(2026, 1, 1, 12, 30, 5, 123456, tzinfo=UTC),
        attempt_number=attempt,
        status_callback_url="https://ct.example.com/v1/webhooks/sms/provider",
    )


@pytest.mark.anyio
async def test_send_sms_writes_message_id_sms_json(tmp_path: Path) -> None:
    """send_sms writes <dir>/<message_id>.sms.json with the documented fields, UTF-8."""
    provider = OutboxProvider(tmp_path, clock=ManualClock())
    result = await provider.send_sms(outgoing_sms(attempt=2))
    assert result.outcome is Outcome.ACCEPTED
    assert result.provider_message_id == f"outbox-{MESSAGE_ID}"
    written = json.loads((tmp_path / f"{MESSAGE_ID}.sms.json").read_text(encoding="utf-8"))
    assert written == {
        "id": MESSAGE_ID,
        "orgId": "org-1",
        "from": "ACME",
        "to": "+2348012345678",
        "body": "Votre code : 123456 €",
        "encoding": "UCS2",
        "segments": 1,
        "sendType": 2,
        "flow": "OTP",
        "purpose": "LOGIN",
        "createdAt": "2026-01-01T12:30:05.123Z",
        "attemptNumber": 2,
    }


@pytest.mark.anyio
async def test_sms_and_email_share_the_directory_and_resends_replace(tmp_path: Path) -> None:
    """One outbox serves both channels; a resent SMS replaces its file, no temporary file left."""
    provider = OutboxProvider(tmp_path / "outbox", clock=ManualClock())
    await provider.send_email(outgoing())
    await provider.send_sms(outgoing_sms(body="first"))
    await provider.send_sms(outgoing_sms(body="second"))
    names = sorted(p.name for p in (tmp_path / "outbox").iterdir())
    assert names == [f"{MESSAGE_ID}.eml", f"{MESSAGE_ID}.sms.json"]
    written = json.loads((tmp_path / "outbox" / f"{MESSAGE_ID}.sms.json").read_bytes())
    assert written["body"] == "second"


@pytest.mark.anyio
async def test_sms_with_unsafe_message_id_is_refused_without_writing(tmp_path: Path) -> None:
    """An SMS id that could escape the directory is a permanent REJECTED, nothing written."""
    provider = OutboxProvider(tmp_path / "outbox", clock=ManualClock())
    result = await provider.send_sms(outgoing_sms(message_id="../escaped"))
    assert (result.outcome, result.error_category) == (Outcome.PERMANENT, ErrorCategory.REJECTED)
    assert list(tmp_path.iterdir()) == []  # noqa: ASYNC240 (test inspection)


@pytest.mark.anyio
async def test_sms_write_failure_is_a_transient_provider_outage(tmp_path: Path) -> None:
    """When the SMS file cannot be written (the directory is a file), the result is transient."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    provider = OutboxProvider(blocker, clock=ManualClock())
    result = await provider.send_sms(outgoing_sms())
    assert (result.outcome, result.error_category) == (
        Outcome.TRANSIENT,
        ErrorCategory.PROVIDER_OUTAGE,
    )


def test_outbox_has_no_status_callbacks(tmp_path: Path) -> None:
    """parse_status_callback always raises NotFoundError: the outbox sends no receipts."""
    provider = OutboxProvider(tmp_path, clock=ManualClock())
    with pytest.raises(NotFoundError):
        provider.parse_status_callback(url="https://x/cb", headers={}, body=b"MessageSid=SM1")


@pytest.mark.anyio
async def test_one_outbox_url_is_an_sms_provider_too(tmp_path: Path) -> None:
    """load_provider('outbox://...') gives a provider that satisfies both ports."""
    provider = load_provider(f"outbox://{tmp_path}", clock=ManualClock())
    assert isinstance(provider, EmailProvider)
    assert isinstance(provider, SmsProvider)
    result = await provider.send_sms(outgoing_sms())
    assert result.outcome is Outcome.ACCEPTED
    assert (tmp_path / f"{MESSAGE_ID}.sms.json").is_file()
