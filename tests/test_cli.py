"""The ``commtunnel`` command line: administration commands, their JSON, their errors."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sqlite3
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
from click.testing import CliRunner, Result

import pg
from commtunnel.backends import schema
from commtunnel.cli import main
from commtunnel.client import Commtunnel
from commtunnel.domain.errors import (
    SmsRecipientOptedOutError,
    SmsSenderIdNotApprovedError,
    UnauthorizedError,
    WebhookAuthError,
)
from commtunnel.domain.keys import ALL_SCOPES, Principal
from commtunnel.services.sms import OtpSendRequest, SmsSendRequest
from commtunnel.testing import MockProvider

T = TypeVar("T")

ISO_MS_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """A database path in a fresh directory (the file does not exist yet)."""
    return pg.fresh_db(tmp_path / "ct.db")


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> CliRunner:
    """A runner whose environment carries no COMMTUNNEL_* settings, in a scratch directory."""
    for var in ("COMMTUNNEL_DB", "COMMTUNNEL_EMAIL_PROVIDER"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    return CliRunner()


def run(runner: CliRunner, db: Path, *args: str, **kwargs: Any) -> Result:
    """Invoke ``commtunnel ARGS --db DB``; any exception other than an exit fails the test."""
    return runner.invoke(main, [*args, "--db", str(db)], catch_exceptions=False, **kwargs)


def ok_json(result: Result) -> Any:
    """The JSON a successful command printed on stdout."""
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def in_process(db: Path, action: Callable[[Commtunnel], Awaitable[T]]) -> T:
    """Run ``action`` with a facade opened in process on the same database."""

    async def go() -> T:
        async with Commtunnel.open(db=db, email_provider=MockProvider()) as ct:
            return await action(ct)

    return asyncio.run(go())


def authenticate(db: Path, key: str) -> Principal:
    """Authenticate ``key`` with a facade opened in process on the same database."""
    return in_process(db, lambda ct: ct.authenticate(key))


@pytest.fixture
def acme(runner: CliRunner, db: Path) -> dict[str, Any]:
    """The organization ``acme``, created through the CLI."""
    org: dict[str, Any] = ok_json(run(runner, db, "orgs", "create", "acme", "--json"))
    return org


# --------------------------------------------------------------------------- orgs


def test_orgs_create_json_is_one_object_with_id(runner: CliRunner, db: Path) -> None:
    """``orgs create --json`` prints exactly one JSON object: id, name, ISO createdAt."""
    result = run(runner, db, "orgs", "create", "acme", "--json")
    assert result.stdout.count("\n") == 1
    org = ok_json(result)
    assert set(org) == {"id", "name", "createdAt"}
    assert org["name"] == "acme"
    assert ISO_MS_Z.match(org["createdAt"])


def test_orgs_create_plain_names_the_id(runner: CliRunner, db: Path) -> None:
    """Without --json, the created organization's name and id are printed."""
    result = run(runner, db, "orgs", "create", "acme")
    assert result.exit_code == 0
    assert re.fullmatch(r"created organization acme \(id [0-9a-f-]{36}\)\n", result.stdout)


def test_orgs_list_shows_created_orgs(runner: CliRunner, db: Path) -> None:
    """``orgs list`` lists what was created, oldest first, as JSON and as a table."""
    a = ok_json(run(runner, db, "orgs", "create", "acme", "--json"))
    b = ok_json(run(runner, db, "orgs", "create", "globex", "--json"))
    unset = {"ipAllowlist": None, "rateLimit": None}  # any address, the server's limit
    assert ok_json(run(runner, db, "orgs", "list", "--json")) == [{**a, **unset}, {**b, **unset}]
    table = run(runner, db, "orgs", "list").stdout.splitlines()
    assert table[0].split() == ["ID", "NAME", "CREATED", "IP", "ALLOWLIST", "RATE", "LIMIT"]
    assert table[1].split()[-2:] == ["any", "default"]
    assert [line.split()[1] for line in table[1:]] == ["acme", "globex"]


def test_orgs_list_empty(runner: CliRunner, db: Path) -> None:
    """A fresh database lists no organization (admin commands create none by themselves)."""
    assert ok_json(run(runner, db, "orgs", "list", "--json")) == []
    assert run(runner, db, "orgs", "list").stdout == "(none)\n"


def test_duplicate_org_name_is_a_conflict(
    runner: CliRunner, db: Path, acme: dict[str, Any]
) -> None:
    """Creating a taken name exits 1 with the CONFLICT code on stderr and nothing on stdout."""
    result = run(runner, db, "orgs", "create", "acme", "--json")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == "error: An organization named 'acme' already exists (CONFLICT)\n"


def test_db_defaults_to_commtunnel_db_env(
    runner: CliRunner, db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --db, the database is COMMTUNNEL_DB."""
    monkeypatch.setenv("COMMTUNNEL_DB", str(db))
    result = runner.invoke(main, ["orgs", "create", "acme"], catch_exceptions=False)
    assert result.exit_code == 0
    listed = runner.invoke(main, ["orgs", "list"], catch_exceptions=False)
    assert "acme" in listed.stdout


def test_admin_commands_never_load_the_email_provider(
    runner: CliRunner, db: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An unusable provider URL does not stop administration, and no outbox is created."""
    monkeypatch.setenv("COMMTUNNEL_EMAIL_PROVIDER", "nosuchscheme://x")
    assert run(runner, db, "orgs", "create", "acme").exit_code == 0
    assert not (tmp_path / "outbox").exists()


def test_invalid_environment_is_a_usage_error(
    runner: CliRunner, db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A COMMTUNNEL_* variable that does not parse exits 2 and names the variable."""
    monkeypatch.setenv("COMMTUNNEL_LEASE_SECONDS", "soon")
    result = run(runner, db, "orgs", "list")
    assert result.exit_code == 2
    assert "COMMTUNNEL_LEASE_SECONDS" in result.stderr


# --------------------------------------------------------------------------- keys


def test_keys_create_json_shape_and_key_authenticates(
    runner: CliRunner, db: Path, acme: dict[str, Any]
) -> None:
    """``keys create --json`` prints the key once with its record; the key authenticates."""
    created = ok_json(
        run(
            runner,
            db,
            "keys",
            "create",
            "--org",
            "acme",
            "--scopes",
            "send:email,read:email",
            "--json",
        )
    )
    assert set(created) == {"id", "key", "orgId", "name", "scopes", "test", "createdAt"}
    assert created["key"].startswith("ct_live_")
    assert created["orgId"] == acme["id"]
    assert created["scopes"] == ["read:email", "send:email"]
    assert created["test"] is False
    assert ISO_MS_Z.match(created["createdAt"])
    principal = authenticate(db, created["key"])
    assert principal.org_id == acme["id"]
    assert principal.api_key_id == created["id"]
    assert principal.scopes == {"send:email", "read:email"}
    assert not principal.sandbox


def test_keys_create_test_key_with_name(runner: CliRunner, db: Path, acme: dict[str, Any]) -> None:
    """--test issues a ct_test_ sandbox key; --name labels it; the org may be named by id."""
    created = ok_json(
        run(
            runner, db, "keys", "create", "--org", acme["id"], "--scopes", "send:email",
            "--test", "--name", "ci", "--json",
        )
    )  # fmt: skip
    assert created["key"].startswith("ct_test_")
    assert created["test"] is True
    assert created["name"] == "ci"
    assert authenticate(db, created["key"]).sandbox


def test_keys_create_plain_prints_only_the_key_on_stdout(
    runner: CliRunner, db: Path, acme: dict[str, Any]
) -> None:
    """Without --json the key alone is stdout (KEY=$(...) works); the notice goes to stderr."""
    result = run(runner, db, "keys", "create", "--org", "acme", "--scopes", "send:email")
    assert result.exit_code == 0
    key = result.stdout.strip()
    assert re.fullmatch(r"ct_live_[A-Za-z0-9_-]{43}", key)
    assert "cannot be shown again" in result.stderr
    assert authenticate(db, key).org_id == acme["id"]


def test_keys_list_never_shows_the_key(runner: CliRunner, db: Path, acme: dict[str, Any]) -> None:
    """``keys list`` shows prefix, scopes and revocation, never the key itself."""
    created = ok_json(
        run(runner, db, "keys", "create", "--org", "acme", "--scopes", "read:email", "--json")
    )
    listed = ok_json(run(runner, db, "keys", "list", "--org", "acme", "--json"))
    assert [k["id"] for k in listed] == [created["id"]]
    entry = listed[0]
    assert "key" not in entry
    assert created["key"].startswith(entry["prefix"])
    assert len(entry["prefix"]) < len(created["key"]) // 2
    assert entry["scopes"] == ["read:email"]
    assert entry["revoked"] is False
    assert entry["revokedAt"] is None
    table = run(runner, db, "keys", "list", "--org", "acme").stdout
    assert created["key"] not in table
    assert entry["prefix"] in table


def test_keys_revoke_then_authenticate_fails(
    runner: CliRunner, db: Path, acme: dict[str, Any]
) -> None:
    """A revoked key no longer authenticates, and listings show it revoked."""
    created = ok_json(
        run(runner, db, "keys", "create", "--org", "acme", "--scopes", "send:email", "--json")
    )
    result = run(runner, db, "keys", "revoke", "--org", "acme", created["id"])
    assert result.exit_code == 0
    assert result.stdout == f"revoked key {created['id']}\n"
    with pytest.raises(UnauthorizedError, match="revoked"):
        authenticate(db, created["key"])
    (entry,) = ok_json(run(runner, db, "keys", "list", "--org", "acme", "--json"))
    assert entry["revoked"] is True
    assert ISO_MS_Z.match(entry["revokedAt"])


def test_keys_revoke_unknown_key(runner: CliRunner, db: Path, acme: dict[str, Any]) -> None:
    """Revoking a key the organization does not have exits 1 with NOT_FOUND."""
    result = run(runner, db, "keys", "revoke", "--org", "acme", "nope")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: No such API key (NOT_FOUND)\n")


def test_keys_of_another_org_cannot_be_revoked(
    runner: CliRunner, db: Path, acme: dict[str, Any]
) -> None:
    """A key is revoked only through its own organization."""
    created = ok_json(
        run(runner, db, "keys", "create", "--org", "acme", "--scopes", "send:email", "--json")
    )
    run(runner, db, "orgs", "create", "globex")
    assert run(runner, db, "keys", "revoke", "--org", "globex", created["id"]).exit_code == 1
    assert authenticate(db, created["key"]).org_id == acme["id"]


@pytest.mark.parametrize("scopes", ["send:emale", "send:email,admin", ","])
def test_bad_scopes_are_a_usage_error(
    runner: CliRunner, db: Path, acme: dict[str, Any], scopes: str
) -> None:
    """Unknown or missing scopes exit 2 naming --scopes, and create no key."""
    result = run(runner, db, "keys", "create", "--org", "acme", "--scopes", scopes)
    assert result.exit_code == 2
    assert "Invalid value for '--scopes'" in result.stderr
    assert ok_json(run(runner, db, "keys", "list", "--org", "acme", "--json")) == []


@pytest.mark.parametrize(
    "args",
    [
        ("keys", "create", "--org", "nope", "--scopes", "send:email"),
        ("keys", "list", "--org", "nope"),
        ("keys", "revoke", "--org", "nope", "some-id"),
        ("senders", "add", "--org", "nope", "example.com"),
        ("senders", "list", "--org", "nope"),
        ("templates", "add", "--org", "nope", "--name", "w", "--subject", "s"),
        ("templates", "list", "--org", "nope"),
        ("orgs", "set", "--org", "nope", "--otp-ignores-opt-out", "true"),
        ("sms", "token", "--org", "nope"),
        ("sms", "token", "--org", "nope", "--rotate", "--json"),
        ("sms", "sender-ids", "request", "--org", "nope", "ACME"),
        ("sms", "sender-ids", "list", "--org", "nope"),
        ("sms", "sender-ids", "requests", "--org", "nope"),
        ("sms", "opt-outs", "list", "--org", "nope"),
        ("sms", "opt-outs", "add", "--org", "nope", "+14155550123"),
        ("sms", "opt-outs", "remove", "--org", "nope", "+14155550123"),
        ("sms", "inbound", "--org", "nope"),
        ("whatsapp", "line", "--org", "nope", "--json"),
    ],
)
def test_unknown_org_is_not_found(runner: CliRunner, db: Path, args: tuple[str, ...]) -> None:
    """Every --org command answers an unknown organization with exit 1 and NOT_FOUND."""
    result = run(runner, db, *args)
    assert result.exit_code == 1
    assert result.stderr == "error: No organization 'nope' (NOT_FOUND)\n"
    assert result.stdout == ""


# --------------------------------------------------------------------------- senders


def test_senders_add_and_list(runner: CliRunner, db: Path, acme: dict[str, Any]) -> None:
    """Senders are normalized, returned with their id, and listed."""
    domain = ok_json(run(runner, db, "senders", "add", "--org", "acme", "Example.COM", "--json"))
    assert set(domain) == {"id", "orgId", "value", "createdAt"}
    assert domain["value"] == "example.com"
    assert domain["orgId"] == acme["id"]
    plain = run(runner, db, "senders", "add", "--org", "acme", "ops@other.org")
    assert plain.exit_code == 0
    assert plain.stdout.startswith("verified sender ops@other.org (id ")
    listed = ok_json(run(runner, db, "senders", "list", "--org", "acme", "--json"))
    assert [s["value"] for s in listed] == ["example.com", "ops@other.org"]
    assert "example.com" in run(runner, db, "senders", "list", "--org", "acme").stdout


def test_invalid_sender_is_a_validation_error(
    runner: CliRunner, db: Path, acme: dict[str, Any]
) -> None:
    """A value that is neither an address nor a domain exits 1 with the field's reason."""
    result = run(runner, db, "senders", "add", "--org", "acme", "not a domain")
    assert result.exit_code == 1
    first, *reasons = result.stderr.splitlines()
    assert first == "error: Validation failed: sender (VALIDATION_ERROR)"
    assert reasons
    assert reasons[0].startswith("  sender: 'not a domain'")
    assert "Traceback" not in result.output


# --------------------------------------------------------------------------- templates


def test_templates_add_and_list(
    runner: CliRunner, db: Path, acme: dict[str, Any], tmp_path: Path
) -> None:
    """A template is stored from files and printed whole, id included."""
    (tmp_path / "w.html").write_text("<p>Hi {{ name }}</p>", encoding="utf-8")
    (tmp_path / "w.txt").write_text("Hi {{ name }}", encoding="utf-8")
    created = ok_json(
        run(
            runner, db, "templates", "add", "--org", "acme", "--name", "welcome",
            "--subject", "Welcome {{ name }}", "--html", str(tmp_path / "w.html"),
            "--text", str(tmp_path / "w.txt"), "--json",
        )
    )  # fmt: skip
    assert created["name"] == "welcome"
    assert created["orgId"] == acme["id"]
    assert created["subject"] == "Welcome {{ name }}"
    assert created["html"] == "<p>Hi {{ name }}</p>"
    assert created["text"] == "Hi {{ name }}"
    assert ISO_MS_Z.match(created["createdAt"])
    assert ISO_MS_Z.match(created["updatedAt"])
    assert ok_json(run(runner, db, "templates", "list", "--org", "acme", "--json")) == [created]
    assert "welcome" in run(runner, db, "templates", "list", "--org", "acme").stdout


def test_template_file_missing_is_a_usage_error(
    runner: CliRunner, db: Path, acme: dict[str, Any]
) -> None:
    """A missing --html file exits 2 naming the option and the file."""
    result = run(
        runner, db, "templates", "add", "--org", "acme", "--name", "w", "--subject", "s",
        "--html", "missing.html",
    )  # fmt: skip
    assert result.exit_code == 2
    assert "Invalid value for '--html'" in result.stderr
    assert "missing.html" in result.stderr


def test_template_syntax_error_is_a_validation_error(
    runner: CliRunner, db: Path, acme: dict[str, Any], tmp_path: Path
) -> None:
    """A liquid syntax error exits 1 with VALIDATION_ERROR naming the part."""
    (tmp_path / "bad.html").write_text("{% if %}", encoding="utf-8")
    result = run(
        runner, db, "templates", "add", "--org", "acme", "--name", "w", "--subject", "s",
        "--html", str(tmp_path / "bad.html"),
    )  # fmt: skip
    assert result.exit_code == 1
    assert result.stderr.startswith("error: Validation failed: html (VALIDATION_ERROR)\n  html: ")


def test_template_needs_a_body(runner: CliRunner, db: Path, acme: dict[str, Any]) -> None:
    """Neither --html nor --text exits 1 with VALIDATION_ERROR."""
    result = run(runner, db, "templates", "add", "--org", "acme", "--name", "w", "--subject", "s")
    assert result.exit_code == 1
    assert "(VALIDATION_ERROR)" in result.stderr


# --------------------------------------------------------------------------- serve / worker


def test_worker_with_unknown_provider_scheme(runner: CliRunner, db: Path) -> None:
    """``worker`` with a provider URL no plugin handles exits 1 with PROVIDER_CONFIG_ERROR."""
    result = run(runner, db, "worker", "--email-provider", "nosuchscheme://u:secret@host")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: No provider for scheme 'nosuchscheme'")
    assert "(PROVIDER_CONFIG_ERROR)" in result.stderr
    assert "secret" not in result.output


def test_serve_with_unknown_provider_scheme(runner: CliRunner, db: Path) -> None:
    """``serve`` refuses a provider URL no plugin handles before it listens (exit 1)."""
    result = run(
        runner, db, "serve", "--port", "0", "--email-provider", "nosuchscheme://u:secret@h"
    )
    assert result.exit_code == 1
    assert "(PROVIDER_CONFIG_ERROR)" in result.stderr
    assert "secret" not in result.output
    assert "listening" not in result.stdout


@pytest.mark.parametrize(
    "args", [("orgs", "list"), ("worker",), ("serve", "--port", "0")], ids=lambda a: a[0]
)
def test_unusable_line_map_is_a_configuration_error(
    runner: CliRunner, db: Path, monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...]
) -> None:
    """A WHATSAPP_LINE_MAP that is no map exits 2 naming it, in every command, no traceback."""
    monkeypatch.setenv("WHATSAPP_LINE_MAP", "garbage")
    result = run(runner, db, *args)
    assert result.exit_code == 2
    assert "invalid configuration: WHATSAPP_LINE_MAP entry 'garbage'" in result.stderr
    assert result.stdout == ""


def test_unopenable_database_is_an_error(runner: CliRunner, tmp_path: Path) -> None:
    """A --db that SQLite cannot open (here a directory) exits 1 with ``error: database: ``."""
    result = run(runner, tmp_path, "orgs", "list")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: database: ")
    assert result.stdout == ""


def test_serve_without_http_extra_says_what_to_install(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without uvicorn installed, ``serve`` exits 1 with the pip command to run (no file made)."""
    db = tmp_path / "never.db"
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # makes `import uvicorn` fail
    result = run(runner, db, "serve")
    assert result.exit_code == 1
    assert "pip install 'commtunnel[http]'" in result.stderr
    assert not db.exists()


def test_importing_the_cli_loads_no_web_framework() -> None:
    """``import commtunnel.cli`` imports neither commtunnel_http, Starlette nor uvicorn."""
    code = (
        "import sys, commtunnel.cli; "
        "print(sorted(m for m in sys.modules "
        "if m.split('.')[0] in {'commtunnel_http', 'starlette', 'uvicorn'}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    assert out.stdout.strip() == "[]"


def test_python_dash_m_commtunnel(db: Path) -> None:
    """``python -m commtunnel`` is the same command (help and a real subcommand)."""
    help_out = subprocess.run(
        [sys.executable, "-m", "commtunnel", "--help"],
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    assert help_out.stdout.startswith("Usage: commtunnel ")
    created = subprocess.run(
        [sys.executable, "-m", "commtunnel", "orgs", "create", "acme", "--db", str(db), "--json"],
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    assert json.loads(created.stdout)["name"] == "acme"


def test_version(runner: CliRunner) -> None:
    """``--version`` prints the installed package version."""
    result = runner.invoke(main, ["--version"])
    assert result.exit_code == 0
    assert re.search(r"\d+\.\d+", result.stdout)


# --------------------------------------------------------------------------- sms


REQUEST_KEYS = {
    "id", "organizationId", "senderId", "flow", "status", "reason",
    "reviewReason", "reviewedBy", "reviewedAt", "createdAt",
}  # fmt: skip


def as_org(org: dict[str, Any]) -> Principal:
    """An in-process principal of the organization (CLI-created) with every scope."""
    return Principal(org_id=org["id"], scopes=ALL_SCOPES)


def request_sender_id(runner: CliRunner, db: Path, *args: str) -> dict[str, Any]:
    """``sms sender-ids request --org acme ARGS --json``, which must succeed."""
    created: dict[str, Any] = ok_json(
        run(runner, db, "sms", "sender-ids", "request", "--org", "acme", *args, "--json")
    )
    return created


def test_sms_token_json_is_created_once(runner: CliRunner, db: Path, acme: dict[str, Any]) -> None:
    """``sms token --json`` prints {"token": ...}, the same one on every call, owned by the org."""
    result = run(runner, db, "sms", "token", "--org", "acme", "--json")
    assert result.stdout.count("\n") == 1
    first = ok_json(result)
    assert set(first) == {"token"}
    assert first["token"].startswith("smst_")
    assert ok_json(run(runner, db, "sms", "token", "--org", "acme", "--json")) == first
    owner = in_process(db, lambda ct: ct.sms_service.org_for_token(first["token"]))
    assert owner == acme["id"]


def test_sms_token_rotate_replaces_it(runner: CliRunner, db: Path, acme: dict[str, Any]) -> None:
    """``--rotate`` prints a new token; the old one no longer opens the webhooks."""
    old = ok_json(run(runner, db, "sms", "token", "--org", "acme", "--json"))["token"]
    new = ok_json(run(runner, db, "sms", "token", "--org", "acme", "--rotate", "--json"))["token"]
    assert new != old
    assert ok_json(run(runner, db, "sms", "token", "--org", "acme", "--json")) == {"token": new}
    assert in_process(db, lambda ct: ct.sms_service.org_for_token(new)) == acme["id"]
    with pytest.raises(WebhookAuthError):
        in_process(db, lambda ct: ct.sms_service.org_for_token(old))


def test_sms_token_plain_prints_the_urls_it_guards(
    runner: CliRunner, db: Path, acme: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --json the token alone is stdout; the three webhook URLs go to stderr."""
    monkeypatch.setenv("COMMTUNNEL_PUBLIC_URL", "https://ct.example.com/")
    result = run(runner, db, "sms", "token", "--org", "acme")
    assert result.exit_code == 0
    token = result.stdout.strip()
    assert re.fullmatch(r"smst_[A-Za-z0-9_-]{43}", token)
    for route in ("inbound", "dlr", "inbound-opt-out"):
        assert f"https://ct.example.com/v1/webhooks/sms/{route}?token={token}\n" in result.stderr


def test_sms_token_urls_default_to_host_and_port(
    runner: CliRunner, db: Path, acme: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a public URL the webhook URLs use the configured host and port."""
    for var in ("COMMTUNNEL_PUBLIC_URL", "COMMTUNNEL_HOST", "COMMTUNNEL_PORT"):
        monkeypatch.delenv(var, raising=False)
    result = run(runner, db, "sms", "token", "--org", "acme")
    assert result.exit_code == 0
    assert "http://127.0.0.1:8025/v1/webhooks/sms/dlr?token=smst_" in result.stderr


def test_sender_id_request_json_shape(runner: CliRunner, db: Path, acme: dict[str, Any]) -> None:
    """A request prints one object: id, organization, value, flow, PENDING, reason, createdAt."""
    created = request_sender_id(runner, db, "ACME", "--reason", "order updates")
    assert set(created) == REQUEST_KEYS
    assert created["organizationId"] == acme["id"]
    assert created["senderId"] == "ACME"
    assert created["flow"] == "STANDARD"
    assert created["status"] == "PENDING"
    assert created["reason"] == "order updates"
    assert created["reviewedAt"] is None
    assert ISO_MS_Z.match(created["createdAt"])
    plain = run(
        runner, db, "sms", "sender-ids", "request", "--org", "acme", "Acme OTP", "--flow", "otp"
    )
    assert plain.exit_code == 0
    assert plain.stdout.startswith("requested OTP sender ID Acme OTP (request id ")


def test_sender_id_request_approve_then_listed_and_usable(
    runner: CliRunner, db: Path, acme: dict[str, Any]
) -> None:
    """Request -> review --approve -> listed as approved, and sends from it are accepted."""
    send = SmsSendRequest(to="+14155550123", sender_id="ACME", body="Your order shipped")
    with pytest.raises(SmsSenderIdNotApprovedError):
        in_process(db, lambda ct: ct.sms_service.send(as_org(acme), send))
    created = request_sender_id(runner, db, "ACME")
    assert ok_json(run(runner, db, "sms", "sender-ids", "list", "--org", "acme", "--json")) == []
    pending = ok_json(
        run(runner, db, "sms", "sender-ids", "requests", "--status", "PENDING", "--json")
    )
    assert pending == [created]
    reviewed = ok_json(
        run(
            runner,
            db,
            "sms",
            "sender-ids",
            "review",
            created["id"],
            "--approve",
            "--reason",
            "checked",
            "--json",
        )
    )
    assert set(reviewed) == REQUEST_KEYS
    assert reviewed["id"] == created["id"]
    assert reviewed["status"] == "APPROVED"
    assert reviewed["reviewReason"] == "checked"
    assert reviewed["reason"] is None
    assert ISO_MS_Z.match(reviewed["reviewedAt"])
    listed = ok_json(run(runner, db, "sms", "sender-ids", "list", "--org", "acme", "--json"))
    assert listed == [reviewed]
    assert (
        ok_json(
            run(runner, db, "sms", "sender-ids", "list", "--org", "acme", "--flow", "OTP", "--json")
        )
        == []
    )
    table = run(runner, db, "sms", "sender-ids", "list", "--org", "acme").stdout.splitlines()
    assert table[0].split()[:3] == ["ID", "ORG", "SENDER"]
    assert table[1].split()[:5] == [created["id"], "acme", "ACME", "STANDARD", "APPROVED"]
    accepted = in_process(db, lambda ct: ct.sms_service.send(as_org(acme), send))
    assert accepted.message.sms is not None
    assert accepted.message.sms.sender_id == "ACME"


def test_sender_id_review_plain_and_reject(
    runner: CliRunner, db: Path, acme: dict[str, Any]
) -> None:
    """A rejected request is never listed as approved; the plain output names the decision."""
    created = request_sender_id(runner, db, "Acme OTP", "--flow", "OTP")
    result = run(runner, db, "sms", "sender-ids", "review", created["id"], "--reject")
    assert result.exit_code == 0
    assert result.stdout == f"rejected OTP sender ID Acme OTP (request id {created['id']})\n"
    assert ok_json(run(runner, db, "sms", "sender-ids", "list", "--org", "acme", "--json")) == []
    (rejected,) = ok_json(
        run(runner, db, "sms", "sender-ids", "requests", "--org", "acme", "--json")
    )
    assert rejected["status"] == "REJECTED"
    assert rejected["reviewedBy"] == "cli"


def test_sender_id_review_twice_is_a_conflict(
    runner: CliRunner, db: Path, acme: dict[str, Any]
) -> None:
    """A second review exits 1 with CONFLICT and leaves the first decision in place."""
    created = request_sender_id(runner, db, "ACME")
    assert run(runner, db, "sms", "sender-ids", "review", created["id"], "--approve").exit_code == 0
    again = run(runner, db, "sms", "sender-ids", "review", created["id"], "--reject", "--json")
    assert again.exit_code == 1
    assert again.stdout == ""
    assert again.stderr.startswith(
        "error: This request was already reviewed (APPROVED) (CONFLICT)\n"
    )
    (listed,) = ok_json(run(runner, db, "sms", "sender-ids", "list", "--org", "acme", "--json"))
    assert listed["status"] == "APPROVED"


def test_sender_id_review_unknown_request(runner: CliRunner, db: Path) -> None:
    """Reviewing a request that does not exist exits 1 with NOT_FOUND."""
    result = run(runner, db, "sms", "sender-ids", "review", "nope", "--approve")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: No sender ID request with this id (NOT_FOUND)\n")


def test_sender_id_review_needs_a_decision(
    runner: CliRunner, db: Path, acme: dict[str, Any]
) -> None:
    """Neither --approve nor --reject is a usage error (exit 2) and reviews nothing."""
    created = request_sender_id(runner, db, "ACME")
    result = run(runner, db, "sms", "sender-ids", "review", created["id"])
    assert result.exit_code == 2
    assert "--approve or --reject" in result.stderr
    (still,) = ok_json(run(runner, db, "sms", "sender-ids", "requests", "--json"))
    assert still["status"] == "PENDING"


@pytest.mark.parametrize(
    ("value", "flow"),
    [
        ("bad id!", "STANDARD"),
        ("TWELVECHARSX", "STANDARD"),
        ("12345678901234567", "STANDARD"),
        ("ab", "OTP"),
    ],
)
def test_invalid_sender_id_is_a_validation_error(
    runner: CliRunner, db: Path, acme: dict[str, Any], value: str, flow: str
) -> None:
    """A sender ID or OTP brand breaking its rule exits 1 naming senderId; nothing is stored."""
    result = run(runner, db, "sms", "sender-ids", "request", "--org", "acme", value, "--flow", flow)
    assert result.exit_code == 1
    first, *reasons = result.stderr.splitlines()
    assert first == "error: Validation failed: senderId (VALIDATION_ERROR)"
    assert reasons[0].startswith("  senderId: ")
    assert ok_json(run(runner, db, "sms", "sender-ids", "requests", "--json")) == []


def test_duplicate_sender_id_request_is_a_conflict(
    runner: CliRunner, db: Path, acme: dict[str, Any]
) -> None:
    """The same value and flow cannot be requested while one is pending (CONFLICT)."""
    request_sender_id(runner, db, "ACME")
    result = run(runner, db, "sms", "sender-ids", "request", "--org", "acme", "acme")
    assert result.exit_code == 1
    assert "(CONFLICT)" in result.stderr


def test_sender_id_requests_of_every_org_or_one(
    runner: CliRunner, db: Path, acme: dict[str, Any]
) -> None:
    """Without --org every organization's requests are listed; --org and --status narrow it."""
    ok_json(run(runner, db, "orgs", "create", "globex", "--json"))
    mine = request_sender_id(runner, db, "ACME")
    theirs = ok_json(
        run(runner, db, "sms", "sender-ids", "request", "--org", "globex", "GLOBEX", "--json")
    )
    every = ok_json(run(runner, db, "sms", "sender-ids", "requests", "--json"))
    assert [r["id"] for r in every] == [mine["id"], theirs["id"]]
    only = ok_json(run(runner, db, "sms", "sender-ids", "requests", "--org", "globex", "--json"))
    assert only == [theirs]
    assert (
        ok_json(run(runner, db, "sms", "sender-ids", "requests", "--status", "approved", "--json"))
        == []
    )
    table = run(runner, db, "sms", "sender-ids", "requests").stdout.splitlines()
    assert [line.split()[1:3] for line in table[1:]] == [["acme", "ACME"], ["globex", "GLOBEX"]]


def test_opt_outs_add_list_remove(runner: CliRunner, db: Path, acme: dict[str, Any]) -> None:
    """Numbers are normalised to E.164, added once, listed, and removed."""
    added = ok_json(
        run(runner, db, "sms", "opt-outs", "add", "--org", "acme", "+1 415-555-0123", "--json")
    )
    assert added == {"phone": "+14155550123", "optedOut": True, "created": True}
    again = ok_json(
        run(runner, db, "sms", "opt-outs", "add", "--org", "acme", "+14155550123", "--json")
    )
    assert again == {"phone": "+14155550123", "optedOut": True, "created": False}
    (listed,) = ok_json(run(runner, db, "sms", "opt-outs", "list", "--org", "acme", "--json"))
    assert set(listed) == {"phone", "source", "createdAt"}
    assert listed["phone"] == "+14155550123"
    assert listed["source"] == "cli"
    assert ISO_MS_Z.match(listed["createdAt"])
    assert "+14155550123" in run(runner, db, "sms", "opt-outs", "list", "--org", "acme").stdout
    removed = ok_json(
        run(runner, db, "sms", "opt-outs", "remove", "--org", "acme", "+14155550123", "--json")
    )
    assert removed == {"phone": "+14155550123", "optedOut": False}
    assert ok_json(run(runner, db, "sms", "opt-outs", "list", "--org", "acme", "--json")) == []
    gone = run(runner, db, "sms", "opt-outs", "remove", "--org", "acme", "+14155550123")
    assert gone.exit_code == 1
    assert gone.stderr.startswith("error: This number is not on the opt-out list (NOT_FOUND)\n")


def test_opt_out_blocks_sends_of_that_org_only(
    runner: CliRunner, db: Path, acme: dict[str, Any]
) -> None:
    """A number opted out through the CLI is refused for the organization's sends."""
    created = request_sender_id(runner, db, "ACME")
    run(runner, db, "sms", "sender-ids", "review", created["id"], "--approve")
    run(runner, db, "sms", "opt-outs", "add", "--org", "acme", "+14155550123")
    send = SmsSendRequest(to="+14155550123", sender_id="ACME", body="hello")
    with pytest.raises(SmsRecipientOptedOutError):
        in_process(db, lambda ct: ct.sms_service.send(as_org(acme), send))


@pytest.mark.parametrize("phone", ["12345", "not a phone", "+1", "+999123456789"])
@pytest.mark.parametrize("action", ["add", "remove"])
def test_bad_phone_is_refused(
    runner: CliRunner, db: Path, acme: dict[str, Any], phone: str, action: str
) -> None:
    """A number that is not valid E.164 exits non-zero with VALIDATION_ERROR; nothing changes."""
    result = run(runner, db, "sms", "opt-outs", action, "--org", "acme", phone, "--json")
    assert result.exit_code == 1
    assert "VALIDATION_ERROR" in result.output
    assert result.stderr.startswith("error: Validation failed: phone (VALIDATION_ERROR)\n  phone: ")
    assert result.stdout == ""
    assert ok_json(run(runner, db, "sms", "opt-outs", "list", "--org", "acme", "--json")) == []


def test_sms_inbound_lists_mo_messages(runner: CliRunner, db: Path, acme: dict[str, Any]) -> None:
    """MO messages received on the org's webhook are listed newest first, as JSON and a table."""
    token = ok_json(run(runner, db, "sms", "token", "--org", "acme", "--json"))["token"]
    assert ok_json(run(runner, db, "sms", "inbound", "--org", "acme", "--json")) == []
    assert run(runner, db, "sms", "inbound", "--org", "acme").stdout == "(none)\n"

    async def receive(ct: Commtunnel) -> None:
        for text in ("Is my order late?", "STOP"):
            payload = {"sms_from": "14155550123", "sms_to": "12345", "sms_message": text}
            await ct.sms_service.receive_inbound(token, payload)

    in_process(db, receive)
    listed = ok_json(run(runner, db, "sms", "inbound", "--org", "acme", "--json"))
    assert [m["body"] for m in listed] == ["STOP", "Is my order late?"]
    first = listed[1]
    assert set(first) == {"id", "organizationId", "from", "to", "body", "keyword", "createdAt"}
    assert first["organizationId"] == acme["id"]
    assert first["from"] == "+14155550123"
    assert first["to"] == "12345"
    assert first["keyword"] is None
    assert listed[0]["keyword"] == "STOP"
    table = run(runner, db, "sms", "inbound", "--org", "acme").stdout.splitlines()
    assert table[0].split() == ["ID", "FROM", "TO", "KEYWORD", "RECEIVED", "BODY"]
    assert table[2].endswith("Is my order late?")
    (opted,) = ok_json(run(runner, db, "sms", "opt-outs", "list", "--org", "acme", "--json"))
    assert opted["source"] == "inbound_keyword"


def test_orgs_set_otp_ignores_opt_out(runner: CliRunner, db: Path, acme: dict[str, Any]) -> None:
    """``orgs set --otp-ignores-opt-out`` prints the org with the setting, and OTP obeys it."""
    brand = request_sender_id(runner, db, "Acme", "--flow", "OTP")
    run(runner, db, "sms", "sender-ids", "review", brand["id"], "--approve")
    run(runner, db, "sms", "opt-outs", "add", "--org", "acme", "+14155550123")
    otp = OtpSendRequest(to="+14155550123", brand_name="Acme", otp_code="123456")
    with pytest.raises(SmsRecipientOptedOutError):
        in_process(db, lambda ct: ct.sms_service.send_otp(as_org(acme), otp))
    updated = ok_json(
        run(runner, db, "orgs", "set", "--org", "acme", "--otp-ignores-opt-out", "true", "--json")
    )
    assert updated == {**acme, "otpIgnoresOptOut": True, "ipAllowlist": None, "rateLimit": None}
    sent = in_process(db, lambda ct: ct.sms_service.send_otp(as_org(acme), otp))
    assert sent.message.sms is not None
    assert sent.message.sms.flow == "OTP"
    plain = run(runner, db, "orgs", "set", "--org", "acme", "--otp-ignores-opt-out", "false")
    assert plain.exit_code == 0
    assert plain.stdout == (
        f"organization acme (id {acme['id']}): otp-ignores-opt-out false, "
        "ip-allowlist any, rate-limit default\n"
    )
    org = in_process(db, lambda ct: ct.admin.get_org("acme"))
    assert org.otp_ignores_opt_out is False


@pytest.mark.parametrize("args", [(), ("--otp-ignores-opt-out", "maybe")])
def test_orgs_set_usage_errors(
    runner: CliRunner, db: Path, acme: dict[str, Any], args: tuple[str, ...]
) -> None:
    """Nothing to set, or a value that is not a boolean, exits 2."""
    result = run(runner, db, "orgs", "set", "--org", "acme", *args)
    assert result.exit_code == 2
    assert result.stdout == ""


def test_keys_create_accepts_the_sms_scopes(
    runner: CliRunner, db: Path, acme: dict[str, Any]
) -> None:
    """The new SMS scopes are accepted by ``keys create`` and carried by the key."""
    scopes = "send:sms,read:sms,sender_ids:request,platform:admin,opt_outs:manage"
    created = ok_json(
        run(runner, db, "keys", "create", "--org", "acme", "--scopes", scopes, "--json")
    )
    assert created["scopes"] == sorted(scopes.split(","))
    assert authenticate(db, created["key"]).scopes == set(scopes.split(","))


def test_sms_commands_never_load_the_sms_provider(
    runner: CliRunner, db: Path, acme: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unusable SMS provider URL does not stop SMS administration."""
    monkeypatch.setenv("COMMTUNNEL_SMS_PROVIDER", "nosuchscheme://u:secret@host")
    assert run(runner, db, "sms", "token", "--org", "acme", "--json").exit_code == 0
    assert run(runner, db, "sms", "sender-ids", "request", "--org", "acme", "ACME").exit_code == 0


def test_opt_outs_list_prints_every_page(runner: CliRunner, db: Path, acme: dict[str, Any]) -> None:
    """The listing walks the service's pages (100 at most each) and prints every number."""
    phones = [f"+1415555{n:04d}" for n in range(105)]

    async def fill(ct: Commtunnel) -> None:
        for phone in phones:
            await ct.sms_service.opt_out(acme["id"], phone, source="api")

    in_process(db, fill)
    listed = ok_json(run(runner, db, "sms", "opt-outs", "list", "--org", "acme", "--json"))
    assert sorted(o["phone"] for o in listed) == phones


# --------------------------------------------------------------------------- WhatsApp line

SECRET_KEY = "a-long-random-secret-key-for-tests"
WA_TOKEN = "EAAtenant-token-9876543210"
WA_PNID = "200000000000001"
WA_ENV = (
    "COMMTUNNEL_SECRET_KEY",
    "WHATSAPP_CLOUD_API_ENABLED",
    "WHATSAPP_ACCESS_TOKEN",
    "WHATSAPP_PHONE_NUMBER_ID",
    "WHATSAPP_GRAPH_BASE_URL",
)


@pytest.fixture
def wa_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """An environment like the server's: channel on, a platform line, a secret key."""
    for var in WA_ENV:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("COMMTUNNEL_SECRET_KEY", SECRET_KEY)
    monkeypatch.setenv("WHATSAPP_CLOUD_API_ENABLED", "true")
    monkeypatch.setenv("WHATSAPP_PHONE_NUMBER_ID", "106540352242922")
    monkeypatch.setenv("WHATSAPP_ACCESS_TOKEN", "EAAplatform-token-0123456789")
    return monkeypatch


def line(runner: CliRunner, db: Path, *args: str, **kwargs: Any) -> Result:
    return run(runner, db, "whatsapp", "line", "--org", "acme", *args, **kwargs)


def test_whatsapp_line_shows_the_platform_default(
    runner: CliRunner, db: Path, acme: dict[str, Any], wa_env: pytest.MonkeyPatch
) -> None:
    """Without change flags the line is shown: the platform default, no own token."""
    assert ok_json(line(runner, db, "--json")) == {
        "whatsappPhoneNumberId": None,
        "usesPlatformDefault": True,
        "platformLineConfigured": True,
        "hasOwnAccessToken": False,
        "state": "ACTIVE",
    }
    plain = line(runner, db)
    assert plain.exit_code == 0
    assert plain.stdout == (
        "organization acme: the platform default line, the platform's access token, state ACTIVE\n"
    )


def test_whatsapp_line_set_is_used_and_never_printed(
    runner: CliRunner, db: Path, acme: dict[str, Any], wa_env: pytest.MonkeyPatch
) -> None:
    """Setting the id and token prints the line without the token; sends then use them."""
    result = line(runner, db, "--phone-number-id", WA_PNID, "--access-token", WA_TOKEN, "--json")
    assert ok_json(result) == {
        "whatsappPhoneNumberId": WA_PNID,
        "usesPlatformDefault": False,
        "platformLineConfigured": True,
        "hasOwnAccessToken": True,
        "state": "ACTIVE",
    }
    assert WA_TOKEN not in result.output
    plain = line(runner, db)
    assert plain.stdout == (
        f"organization acme: phone number id {WA_PNID}, its own access token, state ACTIVE\n"
    )
    resolved = in_process(db, lambda ct: ct.whatsapp_service.resolve_line(acme["id"]))
    assert (resolved.phone_number_id, resolved.access_token) == (WA_PNID, WA_TOKEN)
    stored = in_process(db, lambda ct: ct.whatsapp_store.get_line(acme["id"]))
    assert stored is not None
    assert stored.access_token_enc is not None
    assert WA_TOKEN not in stored.access_token_enc  # encrypted at rest


def test_whatsapp_line_clear_flags_restore_the_default(
    runner: CliRunner, db: Path, acme: dict[str, Any], wa_env: pytest.MonkeyPatch
) -> None:
    """--clear-phone-number-id and --clear-access-token put the organization back on the default."""
    ok_json(line(runner, db, "--phone-number-id", WA_PNID, "--access-token", WA_TOKEN, "--json"))
    cleared = ok_json(line(runner, db, "--clear-access-token", "--json"))
    assert (cleared["whatsappPhoneNumberId"], cleared["hasOwnAccessToken"]) == (WA_PNID, False)
    cleared = ok_json(line(runner, db, "--clear-phone-number-id", "--json"))
    assert (cleared["usesPlatformDefault"], cleared["whatsappPhoneNumberId"]) == (True, None)


def test_whatsapp_line_token_from_stdin(
    runner: CliRunner, db: Path, acme: dict[str, Any], wa_env: pytest.MonkeyPatch
) -> None:
    """``--access-token -`` reads the token from stdin (kept out of the shell history)."""
    result = line(runner, db, "--access-token", "-", "--json", input=f"{WA_TOKEN}\n")
    assert ok_json(result)["hasOwnAccessToken"] is True
    resolved = in_process(db, lambda ct: ct.whatsapp_service.resolve_line(acme["id"]))
    assert resolved.access_token == WA_TOKEN


def test_whatsapp_line_in_use_by_another_org(
    runner: CliRunner, db: Path, acme: dict[str, Any], wa_env: pytest.MonkeyPatch
) -> None:
    """A phone number id another organization holds exits 1 with its code."""
    ok_json(run(runner, db, "orgs", "create", "globex", "--json"))
    ok_json(line(runner, db, "--phone-number-id", WA_PNID, "--json"))
    result = run(runner, db, "whatsapp", "line", "--org", "globex", "--phone-number-id", WA_PNID)
    assert result.exit_code == 1
    assert "(WHATSAPP_PHONE_NUMBER_ID_IN_USE)" in result.stderr
    assert result.stdout == ""


def test_whatsapp_line_token_needs_the_secret_key(
    runner: CliRunner, db: Path, acme: dict[str, Any], wa_env: pytest.MonkeyPatch
) -> None:
    """Without COMMTUNNEL_SECRET_KEY a token is refused (exit 1) and nothing is stored."""
    wa_env.delenv("COMMTUNNEL_SECRET_KEY")
    result = line(runner, db, "--access-token", WA_TOKEN)
    assert result.exit_code == 1
    assert "(SECRET_KEY_NOT_CONFIGURED)" in result.stderr
    assert WA_TOKEN not in result.output
    assert ok_json(line(runner, db, "--json"))["hasOwnAccessToken"] is False


@pytest.mark.parametrize(
    ("args", "exit_code", "message"),
    [
        (("--phone-number-id", WA_PNID, "--clear-phone-number-id"), 2, "not both"),
        (("--access-token", WA_TOKEN, "--clear-access-token"), 2, "not both"),
        (("--phone-number-id", "not-digits"), 1, "(VALIDATION_ERROR)"),
        (("--access-token", "short"), 1, "(VALIDATION_ERROR)"),
    ],
)
def test_whatsapp_line_bad_flags(
    runner: CliRunner,
    db: Path,
    acme: dict[str, Any],
    wa_env: pytest.MonkeyPatch,
    args: tuple[str, ...],
    exit_code: int,
    message: str,
) -> None:
    """Contradicting flags are usage errors (2); bad values are validation errors (1)."""
    result = line(runner, db, *args)
    assert result.exit_code == exit_code
    assert message in result.stderr
    assert result.stdout == ""
    assert ok_json(line(runner, db, "--json"))["usesPlatformDefault"] is True


def test_admin_commands_never_load_the_whatsapp_provider(
    runner: CliRunner, db: Path, acme: dict[str, Any], wa_env: pytest.MonkeyPatch
) -> None:
    """An unusable WHATSAPP_GRAPH_BASE_URL does not stop administration."""
    wa_env.setenv("WHATSAPP_GRAPH_BASE_URL", "not a url")
    assert line(runner, db, "--json").exit_code == 0
    assert run(runner, db, "orgs", "list", "--json").exit_code == 0


def test_short_secret_key_is_a_configuration_error(
    runner: CliRunner, db: Path, acme: dict[str, Any], wa_env: pytest.MonkeyPatch
) -> None:
    """A COMMTUNNEL_SECRET_KEY too short to be a key exits 2 naming it, without a traceback."""
    wa_env.setenv("COMMTUNNEL_SECRET_KEY", "short")
    result = line(runner, db, "--json")
    assert result.exit_code == 2
    assert "invalid configuration: COMMTUNNEL_SECRET_KEY" in result.stderr


@contextlib.contextmanager
def empty_database(tmp_path: Path) -> Iterator[str]:
    """A database with no Commtunnel tables: a new file, or a new PostgreSQL schema."""
    if pg.BACKEND == "sqlite":
        yield str(tmp_path / "empty.db")
    else:
        with pg.pg_schema("migrate") as url:
            yield url


def test_migrate_check_reports_pending_then_migrate_applies_them(
    runner: CliRunner, tmp_path: Path
) -> None:
    with empty_database(tmp_path) as db:
        before = run(runner, db, "migrate", "--check", "--json")
        assert before.exit_code == 1
        expected = 7 if pg.BACKEND == "sqlite" else 2  # PostgreSQL starts at version 6
        assert json.loads(before.stdout) == {
            "version": 0,
            "latest": schema.LATEST_VERSION,
            "pending": expected,
        }
        applied = run(runner, db, "migrate")
        assert applied.exit_code == 0
        assert applied.stdout == f"schema version {schema.LATEST_VERSION} of 7 (up to date)\n"
        after = run(runner, db, "migrate", "--check")
        assert after.exit_code == 0


def test_migrate_refuses_a_database_of_a_newer_commtunnel(runner: CliRunner, db: Path) -> None:
    assert run(runner, db, "migrate").exit_code == 0
    newer = "INSERT INTO schema_version (version, applied_at) VALUES (99, 't')"
    if pg.BACKEND == "sqlite":
        with contextlib.closing(sqlite3.connect(db)) as conn, conn:
            conn.execute(newer)
    else:
        with psycopg.connect(str(db)) as server:
            server.execute(newer)
    for args in (("migrate",), ("migrate", "--check")):
        refused = run(runner, db, *args)
        assert refused.exit_code == 1
        assert "(SCHEMA_TOO_NEW)" in refused.stderr
