"""The public test helpers in ``commtunnel.testing`` keep their own promises."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from commtunnel.domain.delivery import ErrorCategory, ProviderResult
from commtunnel.domain.errors import NotFoundError
from commtunnel.ports import OutgoingEmail
from commtunnel.testing import EPOCH, ManualClock, MockProvider, MockSmsProvider


def test_manual_clock_moves_only_when_told() -> None:
    """``advance`` and ``set`` move now and monotonic together; nothing else moves them."""
    clock = ManualClock()
    assert (clock.now(), clock.monotonic()) == (EPOCH, 0.0)
    assert clock.advance(1.5) == EPOCH + timedelta(seconds=1.5)
    clock.set(EPOCH + timedelta(seconds=10))
    assert (clock.now(), clock.monotonic()) == (EPOCH + timedelta(seconds=10), 10.0)


def test_manual_clock_refusals() -> None:
    """A naive start, a negative step and a jump into the past are refused; time stays put."""
    with pytest.raises(ValueError, match="timezone-aware"):
        ManualClock(datetime(2026, 1, 1))  # naive on purpose
    clock = ManualClock()
    with pytest.raises(ValueError, match="forward"):
        clock.advance(-1)
    with pytest.raises(ValueError, match="forward"):
        clock.set(EPOCH - timedelta(seconds=1))
    assert clock.now() == EPOCH


@pytest.mark.anyio
async def test_mock_providers_accept_with_counted_ids_and_record() -> None:
    """Without a handler every item is accepted as ``<prefix>-<n>`` and kept in ``sent``."""
    email, sms = MockProvider(), MockSmsProvider()
    email_items = [object(), object()]
    sms_item = object()
    results = [await email.send_email(item) for item in email_items]  # type: ignore[arg-type]
    assert [r.provider_message_id for r in results] == ["mock-1", "mock-2"]
    assert (await sms.send_sms(sms_item)).provider_message_id == "mock-sms-1"  # type: ignore[arg-type]
    assert email.sent == email_items
    assert sms.sent == [sms_item]
    assert (email.name, sms.name) == ("mock", "mock-sms")


@pytest.mark.anyio
@pytest.mark.parametrize("is_async", [False, True])
async def test_mock_provider_answers_with_its_handler(is_async: bool) -> None:
    """A sync or async handler's result is what the provider answers; the item is still kept."""
    refused = ProviderResult.permanent(ErrorCategory.REJECTED, "no")

    def sync_handler(_email: OutgoingEmail) -> ProviderResult:
        return refused

    async def async_handler(_email: OutgoingEmail) -> ProviderResult:
        return refused

    provider = MockProvider(async_handler if is_async else sync_handler, name="esp")
    item = object()
    assert await provider.send_email(item) is refused  # type: ignore[arg-type]
    assert provider.sent == [item]
    assert provider.name == "esp"


@pytest.mark.anyio
async def test_mock_sms_provider_handler_close_and_no_callbacks() -> None:
    """The SMS mock uses its handler, records closing, and has no status callbacks."""
    provider = MockSmsProvider(lambda _sms: ProviderResult.transient(ErrorCategory.TIMEOUT, "t"))
    result = await provider.send_sms(object())  # type: ignore[arg-type]
    assert result.error_category == ErrorCategory.TIMEOUT
    with pytest.raises(NotFoundError):
        provider.parse_status_callback(url="/x", headers={}, body=b"")
    assert not provider.closed
    await provider.aclose()
    assert provider.closed
