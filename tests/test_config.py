"""Settings: defaults <- environment <- flags, and the URLs derived from them."""

from __future__ import annotations

from pathlib import Path

import pytest

from commtunnel import Commtunnel, Settings
from commtunnel.testing import ManualClock, MockProvider, MockSmsProvider


def test_from_env_layers_defaults_environment_and_flags() -> None:
    """The environment overrides defaults, a flag overrides both; empty and None mean unset."""
    env = {"COMMTUNNEL_PORT": "9000", "COMMTUNNEL_HOST": "", "COMMTUNNEL_LEASE_SECONDS": "30"}
    settings = Settings.from_env(env, port=9100, lease_seconds=None)
    assert (settings.port, settings.host, settings.lease_seconds) == (9100, "127.0.0.1", 30.0)
    assert Settings.from_env({"COMMTUNNEL_EMBEDDED_WORKER": "off"}).embedded_worker is False
    schedule = Settings.from_env({"COMMTUNNEL_WEBHOOK_RETRY_SCHEDULE": "0, 5 ,300,"})
    assert schedule.webhook_retry_schedule == (0.0, 5.0, 300.0)


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("COMMTUNNEL_PORT", "http"),
        ("COMMTUNNEL_EMBEDDED_WORKER", "maybe"),
        ("COMMTUNNEL_WEBHOOK_RETRY_SCHEDULE", "5,10"),  # the first delay must be 0
        ("COMMTUNNEL_WEBHOOK_RETRY_SCHEDULE", "0,-5"),
        ("COMMTUNNEL_WEBHOOK_RETRY_SCHEDULE", "0,soon"),
        ("COMMTUNNEL_WEBHOOKS_ALLOW_PRIVATE", "perhaps"),
    ],
)
def test_from_env_names_the_variable_that_does_not_parse(var: str, value: str) -> None:
    """A value that does not parse is a ValueError naming its variable."""
    with pytest.raises(ValueError, match=f"^{var}: "):
        Settings.from_env({var: value})


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, "http://127.0.0.1:8025"),
        ({"host": "ct.internal", "port": 80}, "http://ct.internal:80"),
        ({"public_url": "https://ct.example.com/"}, "https://ct.example.com"),
    ],
)
def test_base_url_is_the_public_url_or_host_and_port(
    overrides: dict[str, object], expected: str
) -> None:
    """``base_url`` has no trailing slash; without a public URL it is where serve listens."""
    assert Settings(**overrides).base_url == expected  # type: ignore[arg-type]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("public_url", "callback"),
    [(None, None), ("https://ct.example.com/", "https://ct.example.com/v1/webhooks/sms/provider")],
)
async def test_sms_status_callback_follows_the_public_url(
    tmp_path: Path, public_url: str | None, callback: str | None
) -> None:
    """SMS providers get a receipt URL only when the server's public URL is known."""
    sms = MockSmsProvider()
    settings = Settings(embedded_worker=False, sms_default_sender_id="INFO", public_url=public_url)
    async with Commtunnel.open(
        db=tmp_path / "ct.db",
        email_provider=MockProvider(),
        sms_provider=sms,
        clock=ManualClock(),
        settings=settings,
    ) as ct:
        await ct.sms.send(to="+14155552671", sender_id="INFO", body="hi")
        assert await ct.run_worker_until_idle() == 1
    assert [s.status_callback_url for s in sms.sent] == [callback]
