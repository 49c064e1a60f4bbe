"""The ``commtunnel`` command line: administration commands, their JSON, their errors."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from commtunnel.cli import main
from commtunnel.client import Commtunnel
from commtunnel.domain.errors import UnauthorizedError
from commtunnel.domain.keys import Principal
from commtunnel.testing import MockProvider

ISO_MS_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """A database path in a fresh directory (the file does not exist yet)."""
    return tmp_path / "ct.db"


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


def authenticate(db: Path, key: str) -> Principal:
    """Authenticate ``key`` with a facade opened in process on the same database."""

    async def go() -> Principal:
        async with Commtunnel.open(db=db, email_provider=MockProvider()) as ct:
            return await ct.authenticate(key)

    return asyncio.run(go())


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
    assert ok_json(run(runner, db, "orgs", "list", "--json")) == [a, b]
    table = run(runner, db, "orgs", "list").stdout.splitlines()
    assert table[0].split() == ["ID", "NAME", "CREATED"]
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
    assert db.exists()


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
        ("templates", "list", "--org", "nope"),
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


def test_serve_without_http_extra_says_what_to_install(
    runner: CliRunner, db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without uvicorn installed, ``serve`` exits 1 with the pip command to run."""
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
