"""``commtunnel webhooks``: endpoints, secrets, test events, replay and refusals, via the CLI."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import pg
from commtunnel.cli import main
from commtunnel.client import Commtunnel
from commtunnel.testing import MockProvider

URL = "http://127.0.0.1:9/hook"
PUBLIC_URL = "https://1.1.1.1/hook"  # a literal public address: the guard needs no DNS
UNKNOWN_ID = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"
ISO_MS_Z = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
ENDPOINT_KEYS = {
    "id",
    "url",
    "description",
    "events",
    "enabled",
    "disabledAt",
    "disabledReason",
    "failingSince",
    "secretRotatedUntil",
    "createdAt",
    "updatedAt",
}


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """A database path in a fresh directory (the file does not exist yet)."""
    return pg.fresh_db(tmp_path / "ct.db")


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> CliRunner:
    """A runner in a scratch directory whose environment allows loopback webhook URLs."""
    for var in ("COMMTUNNEL_DB", "COMMTUNNEL_EMAIL_PROVIDER", "COMMTUNNEL_SECRET_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("COMMTUNNEL_WEBHOOKS_ALLOW_PRIVATE", "true")
    monkeypatch.chdir(tmp_path)
    return CliRunner()


def run(runner: CliRunner, db: Path, *args: str) -> Result:
    """Invoke ``commtunnel ARGS --db DB``; any exception other than an exit fails the test."""
    return runner.invoke(main, [*args, "--db", str(db)], catch_exceptions=False)


def hooks(runner: CliRunner, db: Path, command: str, *args: str) -> Result:
    """``commtunnel webhooks COMMAND --org acme ARGS``."""
    return run(runner, db, "webhooks", command, "--org", "acme", *args)


def ok_json(result: Result) -> Any:
    """The JSON a successful command printed on stdout."""
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def refused(result: Result, code: str) -> str:
    """Check exit 1 with ``error: ... (CODE)`` on stderr and nothing on stdout; the stderr."""
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    assert result.stderr.startswith("error: ")
    assert f"({code})" in result.stderr.splitlines()[0]
    return result.stderr


@pytest.fixture
def acme(runner: CliRunner, db: Path) -> dict[str, Any]:
    """The organization ``acme``, created through the CLI."""
    org: dict[str, Any] = ok_json(run(runner, db, "orgs", "create", "acme", "--json"))
    return org


@pytest.fixture
def endpoint(runner: CliRunner, db: Path, acme: dict[str, Any]) -> dict[str, Any]:
    """An endpoint of ``acme`` at :data:`URL`, every event, as ``create --json`` printed it."""
    created: dict[str, Any] = ok_json(hooks(runner, db, "create", URL, "--json"))
    return created


def signing_secrets(db: Path, org_id: str, endpoint_id: str) -> list[str]:
    """The secrets the server would sign with now, read in process from the same database."""

    async def go() -> list[str]:
        async with Commtunnel.open(db=db, email_provider=MockProvider()) as ct:
            stored = await ct.webhook_store.get_endpoint(org_id, endpoint_id)
            assert stored is not None
            return ct.webhooks.signing_secrets(stored, ct.clock.now())

    return asyncio.run(go())


# --------------------------------------------------------------------------- endpoints


def test_create_json_shows_the_endpoint_and_its_secret(
    runner: CliRunner, db: Path, acme: dict[str, Any]
) -> None:
    """``create --json`` prints one object: the API's endpoint shape plus the whsec_ secret."""
    result = hooks(runner, db, "create", URL, "--events", "sms_sent, email_sent", "--json")
    assert result.stdout.count("\n") == 1
    created = ok_json(result)
    assert set(created) == ENDPOINT_KEYS | {"secret"}
    assert created["secret"].startswith("whsec_")
    assert created["url"] == URL
    assert created["events"] == ["email_sent", "sms_sent"]
    assert created["enabled"] is True
    assert ISO_MS_Z.fullmatch(created["createdAt"])
    assert signing_secrets(db, acme["id"], created["id"]) == [created["secret"]]


def test_create_plain_prints_the_id_and_the_secret(
    runner: CliRunner, db: Path, acme: dict[str, Any]
) -> None:
    """Without --json, ``create`` prints the new id, then the secret with a store-it-now note."""
    result = hooks(runner, db, "create", URL)
    assert result.exit_code == 0, result.output
    first, second = result.stdout.splitlines()
    assert UUID.fullmatch(first)
    match = re.fullmatch(r"secret: (whsec_\S+)  \(shown once: store it now\)", second)
    assert match is not None
    assert signing_secrets(db, acme["id"], first) == [match[1]]


def test_create_disabled(runner: CliRunner, db: Path, acme: dict[str, Any]) -> None:
    """``--disabled`` creates the endpoint switched off, reason ``manual``."""
    created = ok_json(hooks(runner, db, "create", URL, "--disabled", "--json"))
    assert (created["enabled"], created["disabledReason"]) == (False, "manual")


def test_list_json_and_table_never_show_the_secret(
    runner: CliRunner, db: Path, endpoint: dict[str, Any]
) -> None:
    """``list`` shows the endpoints oldest first, as JSON and as a table, never the secret."""
    second = ok_json(hooks(runner, db, "create", PUBLIC_URL, "--events", "sms_sent", "--json"))
    listed = ok_json(hooks(runner, db, "list", "--json"))
    assert [e["id"] for e in listed] == [endpoint["id"], second["id"]]
    assert all(set(e) == ENDPOINT_KEYS for e in listed)
    assert listed[0] == {k: v for k, v in endpoint.items() if k != "secret"}

    table = hooks(runner, db, "list")
    assert table.exit_code == 0
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["ID", "STATE", "EVENTS", "URL"]
    assert [line.split() for line in lines[1:]] == [
        [endpoint["id"], "enabled", "all", URL],
        [second["id"], "enabled", "sms_sent", PUBLIC_URL],
    ]
    assert "whsec_" not in table.stdout


def test_list_of_an_org_without_endpoints(
    runner: CliRunner, db: Path, acme: dict[str, Any]
) -> None:
    """An organization without endpoints lists ``[]`` / ``(none)``."""
    assert ok_json(hooks(runner, db, "list", "--json")) == []
    assert hooks(runner, db, "list").stdout == "(none)\n"


def test_get_shows_one_endpoint_without_its_secret(
    runner: CliRunner, db: Path, endpoint: dict[str, Any]
) -> None:
    """``get`` prints the endpoint (JSON or one line), never the secret."""
    shown = ok_json(hooks(runner, db, "get", endpoint["id"], "--json"))
    assert shown == {k: v for k, v in endpoint.items() if k != "secret"}
    plain = hooks(runner, db, "get", endpoint["id"])
    assert plain.stdout.split() == [endpoint["id"], "enabled", "all", URL]


def test_update_disable_events_enable(
    runner: CliRunner, db: Path, endpoint: dict[str, Any]
) -> None:
    """``update`` changes only what is given: --disable, --events, --enable, --events all."""
    endpoint_id = endpoint["id"]
    off = ok_json(hooks(runner, db, "update", endpoint_id, "--disable", "--json"))
    assert (off["enabled"], off["disabledReason"]) == (False, "manual")
    assert off["events"] is None

    filtered = ok_json(
        hooks(runner, db, "update", endpoint_id, "--events", "email_sent,email_bounced", "--json")
    )
    assert filtered["events"] == ["email_bounced", "email_sent"]
    assert filtered["enabled"] is False

    plain = hooks(runner, db, "update", endpoint_id, "--enable")
    assert plain.exit_code == 0, plain.output
    assert plain.stdout.split() == [endpoint_id, "enabled", "email_bounced,email_sent", URL]
    on = ok_json(hooks(runner, db, "get", endpoint_id, "--json"))
    assert (on["enabled"], on["disabledAt"], on["disabledReason"]) == (True, None, None)

    every = ok_json(
        hooks(runner, db, "update", endpoint_id, "--events", "all", "--description", "d", "--json")
    )
    assert (every["events"], every["description"], every["url"]) == (None, "d", URL)


def test_rotate_secret_prints_a_new_secret(
    runner: CliRunner, db: Path, acme: dict[str, Any], endpoint: dict[str, Any]
) -> None:
    """``rotate-secret`` prints a new secret; both old and new sign during the grace period."""
    rotated = ok_json(hooks(runner, db, "rotate-secret", endpoint["id"], "--json"))
    assert set(rotated) == ENDPOINT_KEYS | {"secret"}
    assert rotated["secret"].startswith("whsec_")
    assert rotated["secret"] != endpoint["secret"]
    assert ISO_MS_Z.fullmatch(rotated["secretRotatedUntil"])
    assert signing_secrets(db, acme["id"], endpoint["id"]) == [
        rotated["secret"],
        endpoint["secret"],
    ]

    plain = hooks(runner, db, "rotate-secret", endpoint["id"])
    assert plain.exit_code == 0
    match = re.fullmatch(
        r"secret: (whsec_\S+)  \(the previous secret also signs until (\S+)\)\n", plain.stdout
    )
    assert match is not None
    assert match[1] != rotated["secret"]
    assert ISO_MS_Z.fullmatch(match[2])


def test_delete_then_get_is_not_found(
    runner: CliRunner, db: Path, endpoint: dict[str, Any]
) -> None:
    """``delete`` removes the endpoint: get and a second delete exit 1 with NOT_FOUND."""
    assert ok_json(hooks(runner, db, "delete", endpoint["id"], "--json")) == {
        "id": endpoint["id"],
        "deleted": True,
    }
    refused(hooks(runner, db, "get", endpoint["id"]), "NOT_FOUND")
    plain = hooks(runner, db, "delete", endpoint["id"])
    refused(plain, "NOT_FOUND")
    assert ok_json(hooks(runner, db, "list", "--json")) == []


def test_delete_plain_names_the_id(runner: CliRunner, db: Path, endpoint: dict[str, Any]) -> None:
    """Without --json, ``delete`` says which endpoint it deleted."""
    assert hooks(runner, db, "delete", endpoint["id"]).stdout == f"deleted {endpoint['id']}\n"


# --------------------------------------------------------------------------- deliveries


def test_test_queues_a_delivery_listed_by_deliveries(
    runner: CliRunner, db: Path, endpoint: dict[str, Any]
) -> None:
    """``test`` queues a webhook.test delivery that ``deliveries --json`` lists with attempts."""
    queued = ok_json(hooks(runner, db, "test", endpoint["id"], "--json"))
    assert queued["eventType"] == "webhook.test"
    assert queued["status"] == "PENDING"
    assert queued["endpointId"] == endpoint["id"]

    [listed] = ok_json(hooks(runner, db, "deliveries", "--json"))
    assert listed["id"] == queued["id"]
    assert listed["eventType"] == "webhook.test"
    assert listed["attempts"] == []
    assert ok_json(hooks(runner, db, "deliveries", "--endpoint", endpoint["id"], "--json")) == [
        listed
    ]

    plain = hooks(runner, db, "test", endpoint["id"])
    assert re.fullmatch(rf"queued test event {UUID.pattern}\n", plain.stdout)
    table = hooks(runner, db, "deliveries").stdout.splitlines()
    assert table[0].split() == ["ID", "EVENT", "STATUS", "ATTEMPTS", "LAST", "NEXT", "ERROR"]
    assert len(table) == 3
    assert table[2].split()[:5] == [queued["id"], "webhook.test", "PENDING", "0", "-"]


def test_deliveries_limit_and_filters(
    runner: CliRunner, db: Path, endpoint: dict[str, Any]
) -> None:
    """``--limit`` caps the listing (newest first); ``--endpoint``/``--message`` filter it."""
    ids = [ok_json(hooks(runner, db, "test", endpoint["id"], "--json"))["id"] for _ in range(3)]
    other = ok_json(hooks(runner, db, "create", URL, "--json"))
    assert [
        d["id"] for d in ok_json(hooks(runner, db, "deliveries", "--limit", "2", "--json"))
    ] == (ids[:0:-1])
    assert ok_json(hooks(runner, db, "deliveries", "--endpoint", other["id"], "--json")) == []
    assert ok_json(hooks(runner, db, "deliveries", "--message", UNKNOWN_ID, "--json")) == []
    refused(hooks(runner, db, "deliveries", "--endpoint", UNKNOWN_ID), "NOT_FOUND")
    assert hooks(runner, db, "deliveries", "--limit", "0").exit_code == 2
    assert hooks(runner, db, "deliveries", "--limit", "101").exit_code == 2


def test_replay_queues_a_new_delivery(
    runner: CliRunner, db: Path, endpoint: dict[str, Any]
) -> None:
    """``replay`` queues a new delivery of the same event, pointing at the original."""
    original = ok_json(hooks(runner, db, "test", endpoint["id"], "--json"))
    replay = ok_json(hooks(runner, db, "replay", original["id"], "--json"))
    assert replay["replayOf"] == original["id"]
    assert replay["eventId"] == original["eventId"]
    assert replay["id"] != original["id"]
    listed = ok_json(hooks(runner, db, "deliveries", "--json"))
    assert [(d["id"], d["replayOf"]) for d in listed] == [
        (replay["id"], original["id"]),
        (original["id"], None),
    ]
    plain = hooks(runner, db, "replay", original["id"])
    assert re.fullmatch(rf"queued replay {UUID.pattern}\n", plain.stdout)


def test_test_and_replay_refuse_a_disabled_endpoint(
    runner: CliRunner, db: Path, endpoint: dict[str, Any]
) -> None:
    """A disabled endpoint refuses ``test`` and ``replay`` with exit 1 and CONFLICT."""
    original = ok_json(hooks(runner, db, "test", endpoint["id"], "--json"))
    assert hooks(runner, db, "update", endpoint["id"], "--disable").exit_code == 0
    refused(hooks(runner, db, "test", endpoint["id"]), "CONFLICT")
    refused(hooks(runner, db, "replay", original["id"]), "CONFLICT")
    assert len(ok_json(hooks(runner, db, "deliveries", "--json"))) == 1


def test_replay_of_an_unknown_delivery(runner: CliRunner, db: Path, acme: dict[str, Any]) -> None:
    """``replay`` of a delivery id that does not exist exits 1 with NOT_FOUND."""
    refused(hooks(runner, db, "replay", UNKNOWN_ID), "NOT_FOUND")


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "args",
    [
        ("create", URL),
        ("list",),
        ("get", UNKNOWN_ID),
        ("update", UNKNOWN_ID, "--disable"),
        ("delete", UNKNOWN_ID),
        ("rotate-secret", UNKNOWN_ID),
        ("deliveries",),
        ("replay", UNKNOWN_ID),
        ("test", UNKNOWN_ID, "--json"),
    ],
)
def test_unknown_org_is_not_found(runner: CliRunner, db: Path, args: tuple[str, ...]) -> None:
    """Every webhooks command answers an unknown organization with exit 1 and NOT_FOUND."""
    command, *rest = args
    result = run(runner, db, "webhooks", command, "--org", "nope", *rest)
    assert result.exit_code == 1
    assert result.stderr == "error: No organization 'nope' (NOT_FOUND)\n"
    assert result.stdout == ""


@pytest.mark.parametrize(
    "command", ["get", "delete", "rotate-secret", "test", ("update", "--enable")]
)
def test_unknown_endpoint_is_not_found(
    runner: CliRunner, db: Path, acme: dict[str, Any], command: str | tuple[str, ...]
) -> None:
    """Commands on an endpoint id that does not exist exit 1 with NOT_FOUND."""
    name, *options = (command,) if isinstance(command, str) else command
    refused(hooks(runner, db, name, UNKNOWN_ID, *options), "NOT_FOUND")


def test_another_organizations_endpoint_is_not_found(
    runner: CliRunner, db: Path, endpoint: dict[str, Any]
) -> None:
    """An endpoint is invisible to another organization's commands."""
    assert run(runner, db, "orgs", "create", "globex").exit_code == 0
    result = run(runner, db, "webhooks", "get", "--org", "globex", endpoint["id"])
    refused(result, "NOT_FOUND")
    result = run(runner, db, "webhooks", "delete", "--org", "globex", endpoint["id"])
    refused(result, "NOT_FOUND")
    assert ok_json(hooks(runner, db, "get", endpoint["id"], "--json"))["id"] == endpoint["id"]


def test_update_without_an_option_is_a_usage_error(
    runner: CliRunner, db: Path, endpoint: dict[str, Any]
) -> None:
    """``update ID`` with nothing to change exits 2 and names the options."""
    result = hooks(runner, db, "update", endpoint["id"])
    assert result.exit_code == 2
    assert "--events" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1/", "http://169.254.169.254/", "http://localhost/"]
)
def test_private_url_is_refused_without_allow_private(
    runner: CliRunner,
    db: Path,
    acme: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    url: str,
) -> None:
    """Without COMMTUNNEL_WEBHOOKS_ALLOW_PRIVATE a private URL exits 1 WEBHOOK_URL_NOT_ALLOWED."""
    monkeypatch.delenv("COMMTUNNEL_WEBHOOKS_ALLOW_PRIVATE")
    stderr = refused(hooks(runner, db, "create", url), "WEBHOOK_URL_NOT_ALLOWED")
    assert "COMMTUNNEL_WEBHOOKS_ALLOW_PRIVATE" in stderr
    assert ok_json(hooks(runner, db, "list", "--json")) == []
    assert hooks(runner, db, "create", PUBLIC_URL).exit_code == 0


def test_update_to_a_private_url_is_refused_without_allow_private(
    runner: CliRunner, db: Path, acme: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``update --url`` to a private host is refused the same way; the URL stays."""
    monkeypatch.delenv("COMMTUNNEL_WEBHOOKS_ALLOW_PRIVATE")
    created = ok_json(hooks(runner, db, "create", PUBLIC_URL, "--json"))
    result = hooks(runner, db, "update", created["id"], "--url", "http://10.0.0.1/")
    refused(result, "WEBHOOK_URL_NOT_ALLOWED")
    assert ok_json(hooks(runner, db, "get", created["id"], "--json"))["url"] == PUBLIC_URL


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (("create", URL, "--events", "email_sent,email_nope"), "events"),
        (("create", URL, "--events", ""), "events"),
        (("create", "ftp://hooks.example.com/x"), "url"),
        (("create", "https://user:pw@hooks.example.com/x"), "url"),
        (("create", URL, "--description", "a" * 501), "description"),
    ],
)
def test_invalid_values_are_validation_errors(
    runner: CliRunner, db: Path, acme: dict[str, Any], args: tuple[str, ...], field: str
) -> None:
    """An unknown event type or a bad URL exits 1 with VALIDATION_ERROR naming the field."""
    stderr = refused(hooks(runner, db, *args), "VALIDATION_ERROR")
    assert f"  {field}: " in stderr or field in stderr.splitlines()[0]
    assert ok_json(hooks(runner, db, "list", "--json")) == []


def test_update_with_an_unknown_event_type(
    runner: CliRunner, db: Path, endpoint: dict[str, Any]
) -> None:
    """``update --events`` with an unknown type exits 1 with VALIDATION_ERROR; nothing changes."""
    refused(hooks(runner, db, "update", endpoint["id"], "--events", "bogus"), "VALIDATION_ERROR")
    assert ok_json(hooks(runner, db, "get", endpoint["id"], "--json"))["events"] is None
