"""Access settings from the command line: ``orgs set`` allowlist and limit, ``keys set-limit``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import pg
from commtunnel.cli import main


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A database path in a scratch directory, with no COMMTUNNEL_* settings around."""
    for var in ("COMMTUNNEL_DB", "COMMTUNNEL_RATE_LIMIT", "COMMTUNNEL_REDIS_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    return pg.fresh_db(tmp_path / "ct.db")


def run(db: Path, *args: str) -> Result:
    """``commtunnel ARGS --db DB``; an exception other than an exit fails the test."""
    return CliRunner().invoke(main, [*args, "--db", str(db)], catch_exceptions=False)


def ok_json(result: Result) -> Any:
    """The JSON a successful command printed."""
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture
def acme(db: Path) -> dict[str, Any]:
    """The organization ``acme``."""
    org: dict[str, Any] = ok_json(run(db, "orgs", "create", "acme", "--json"))
    return org


def test_orgs_set_allowlist_and_limit_then_list_shows_them(db: Path, acme: dict[str, Any]) -> None:
    """``orgs set`` stores normalized CIDRs and a canonical limit; ``orgs list`` shows both."""
    updated = ok_json(
        run(
            db,
            *("orgs", "set", "--org", "acme", "--json"),
            *("--ip-allowlist", "198.51.100.7/24, 2001:db8::/32"),
            *("--rate-limit", "500 per minute"),
        )
    )
    assert updated["ipAllowlist"] == ["198.51.100.0/24", "2001:db8::/32"]
    assert updated["rateLimit"] == "500/minute"
    assert updated["otpIgnoresOptOut"] is False
    (listed,) = ok_json(run(db, "orgs", "list", "--json"))
    assert listed == {**acme, "ipAllowlist": updated["ipAllowlist"], "rateLimit": "500/minute"}
    table = run(db, "orgs", "list").stdout.splitlines()
    assert table[1].split()[-2:] == ["198.51.100.0/24,2001:db8::/32", "500/minute"]


def test_orgs_set_any_and_default_clear_the_settings(db: Path, acme: dict[str, Any]) -> None:
    """``--ip-allowlist any`` removes the allowlist; ``--rate-limit default`` the org's limit."""
    run(
        db, "orgs", "set", "--org", "acme", "--ip-allowlist", "10.0.0.0/8", "--rate-limit", "5/hour"
    )
    plain = run(db, "orgs", "set", "--org", "acme", "--ip-allowlist", "any")
    assert plain.stdout == (
        f"organization acme (id {acme['id']}): otp-ignores-opt-out false, "
        "ip-allowlist any, rate-limit 5/hour\n"
    )
    cleared = ok_json(run(db, "orgs", "set", "--org", "acme", "--rate-limit", "DEFAULT", "--json"))
    assert (cleared["ipAllowlist"], cleared["rateLimit"]) == (None, None)


@pytest.mark.parametrize(
    ("option", "value", "field"),
    [
        ("--ip-allowlist", "office-network", "ipAllowlist"),
        ("--ip-allowlist", ",", "ipAllowlist"),
        ("--rate-limit", "lots/minute", "rateLimit"),
        ("--rate-limit", "0/minute", "rateLimit"),
    ],
)
def test_orgs_set_refuses_bad_values(
    db: Path, acme: dict[str, Any], option: str, value: str, field: str
) -> None:
    """A value that is no network list or no limit exits 1 with VALIDATION_ERROR, nothing set."""
    result = run(db, "orgs", "set", "--org", "acme", option, value, "--otp-ignores-opt-out", "true")
    assert result.exit_code == 1
    assert "(VALIDATION_ERROR)" in result.stderr
    assert field in result.stderr
    (listed,) = ok_json(run(db, "orgs", "list", "--json"))
    assert (listed["ipAllowlist"], listed["rateLimit"]) == (None, None)


def test_orgs_set_with_nothing_to_set_is_a_usage_error(db: Path, acme: dict[str, Any]) -> None:
    """No option at all exits 2 naming the options."""
    result = run(db, "orgs", "set", "--org", "acme")
    assert result.exit_code == 2
    assert "--rate-limit" in result.stderr


def test_keys_set_limit_and_keys_list(db: Path, acme: dict[str, Any]) -> None:
    """A key's own limit shows in ``keys list``; ``default`` returns it to the org's."""
    created = ok_json(
        run(db, "keys", "create", "--org", "acme", "--scopes", "read:email", "--json")
    )
    (listed,) = ok_json(run(db, "keys", "list", "--org", "acme", "--json"))
    assert (listed["rateLimit"], listed["effectiveRateLimit"]) == (None, "100/minute")
    own = ok_json(
        run(db, "keys", "set-limit", "--org", "acme", created["id"], "1000/hour", "--json")
    )
    assert own == {"id": created["id"], "rateLimit": "1000/hour", "effectiveRateLimit": "1000/hour"}
    table = run(db, "keys", "list", "--org", "acme").stdout.splitlines()
    assert "RATE LIMIT" in table[0]
    assert "1000/hour" in table[1]
    run(db, "orgs", "set", "--org", "acme", "--rate-limit", "50/minute")
    plain = run(db, "keys", "set-limit", "--org", "acme", created["id"], "default")
    assert plain.stdout == f"key {created['id']}: rate-limit 50/minute (inherited)\n"
    (listed,) = ok_json(run(db, "keys", "list", "--org", "acme", "--json"))
    assert (listed["rateLimit"], listed["effectiveRateLimit"]) == (None, "50/minute")


def test_keys_set_limit_refusals(db: Path, acme: dict[str, Any]) -> None:
    """Another organization's or an unknown key is NOT_FOUND; a bad limit VALIDATION_ERROR."""
    ok_json(run(db, "orgs", "create", "globex", "--json"))
    theirs = ok_json(
        run(db, "keys", "create", "--org", "globex", "--scopes", "read:email", "--json")
    )
    unknown = run(db, "keys", "set-limit", "--org", "acme", theirs["id"], "5/minute")
    assert unknown.exit_code == 1
    assert "(NOT_FOUND)" in unknown.stderr
    bad = run(db, "keys", "set-limit", "--org", "globex", theirs["id"], "5 a minute")
    assert bad.exit_code == 1
    assert "(VALIDATION_ERROR)" in bad.stderr
    missing_org = run(db, "keys", "set-limit", "--org", "nope", theirs["id"], "5/minute")
    assert missing_org.exit_code == 1
    assert "(NOT_FOUND)" in missing_org.stderr
