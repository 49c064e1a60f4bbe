"""``commtunnel suppressions``: list, add, remove, the events webhook token, and refusals."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import pg
from commtunnel.cli import main
from commtunnel.client import Commtunnel
from commtunnel.domain.errors import EmailRecipientSuppressedError
from commtunnel.testing import MockProvider

BOB = "bob@example.net"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return pg.fresh_db(tmp_path / "ct.db")


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> CliRunner:
    """A runner in a scratch directory with no COMMTUNNEL_* settings."""
    for var in ("COMMTUNNEL_DB", "COMMTUNNEL_EMAIL_PROVIDER", "COMMTUNNEL_PUBLIC_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    return CliRunner()


def sup(runner: CliRunner, db: Path, command: str, *args: str) -> Result:
    """``commtunnel suppressions COMMAND --org acme ARGS --db DB``."""
    return runner.invoke(
        main,
        ["suppressions", command, "--org", "acme", *args, "--db", str(db)],
        catch_exceptions=False,
    )


def ok_json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def refused(result: Result, code: str) -> None:
    """Exit 1, ``error: ... (CODE)`` on stderr, nothing on stdout."""
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    assert result.stderr.startswith("error: ") and f"({code})" in result.stderr


@pytest.fixture
def acme(runner: CliRunner, db: Path) -> None:
    assert runner.invoke(main, ["orgs", "create", "acme", "--db", str(db)]).exit_code == 0


@pytest.mark.usefixtures("acme")
def test_add_list_and_remove(runner: CliRunner, db: Path) -> None:
    """Added (origin cli) and listed as the API shows it; a send is refused; removed again."""
    added = ok_json(
        sup(runner, db, "add", "Bob <BOB@example.net>", "--reason", "complaint", "--json")
    )
    assert added["email"] == BOB and added["reason"] == "COMPLAINT" and added["created"] is True
    assert added["origin"] == "cli"
    again = sup(runner, db, "add", BOB)
    assert again.exit_code == 0 and "already on the list" in again.stdout
    expiring = ok_json(
        sup(runner, db, "add", "ann@example.net", "--expires-at", "2099-01-01T00:00:00Z", "--json")
    )
    assert expiring["expiresAt"] == "2099-01-01T00:00:00.000Z"

    listed = ok_json(sup(runner, db, "list", "--json"))
    assert sorted(s["email"] for s in listed) == ["ann@example.net", BOB]
    complaints = ok_json(sup(runner, db, "list", "--reason", "COMPLAINT", "--json"))
    assert [s["email"] for s in complaints] == [BOB]
    table = sup(runner, db, "list")
    assert table.stdout.splitlines()[0].split() == [
        "EMAIL",
        "REASON",
        "ORIGIN",
        "CREATED",
        "EXPIRES",
    ]
    assert "never" in table.stdout

    async def send() -> None:
        async with Commtunnel.open(db=db, email_provider=MockProvider(), org="acme") as ct:
            await ct.admin.add_sender(ct.org.id, "example.com")
            await ct.email.send(from_="a@example.com", to=BOB, subject="Hi", text="x")

    with pytest.raises(EmailRecipientSuppressedError):
        asyncio.run(send())

    assert ok_json(sup(runner, db, "remove", BOB, "--json")) == {"email": BOB, "suppressed": False}
    assert [s["email"] for s in ok_json(sup(runner, db, "list", "--json"))] == ["ann@example.net"]


@pytest.mark.usefixtures("acme")
def test_refusals(runner: CliRunner, db: Path) -> None:
    """Unknown address to remove, a bad address or expiry, an unknown org: exit 1 with the code."""
    refused(sup(runner, db, "remove", BOB), "NOT_FOUND")
    refused(sup(runner, db, "add", "not-an-address"), "VALIDATION_ERROR")
    refused(sup(runner, db, "add", BOB, "--expires-at", "2000-01-01T00:00:00Z"), "VALIDATION_ERROR")
    result = runner.invoke(
        main, ["suppressions", "list", "--org", "nobody", "--db", str(db)], catch_exceptions=False
    )
    refused(result, "NOT_FOUND")
    bad_reason = sup(runner, db, "add", BOB, "--reason", "LOST")
    assert bad_reason.exit_code == 2  # a usage error
    assert ok_json(sup(runner, db, "list", "--json")) == []


@pytest.mark.usefixtures("acme")
def test_webhook_token_is_printed_and_rotated(runner: CliRunner, db: Path) -> None:
    """The token alone on stdout (the URL on stderr), stable until --rotate."""
    first = sup(runner, db, "webhook-token")
    assert first.exit_code == 0
    token = first.stdout.strip()
    assert token.startswith("emt_")
    assert f"/v1/webhooks/email/events?token={token}" in first.stderr
    assert ok_json(sup(runner, db, "webhook-token", "--json")) == {"token": token}
    rotated = ok_json(sup(runner, db, "webhook-token", "--rotate", "--json"))["token"]
    assert rotated != token
