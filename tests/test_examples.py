"""The runnable examples under ``examples/`` work as documented."""

from __future__ import annotations

import re
import subprocess
import sys
from email import message_from_bytes
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(*args: str) -> str:
    """Run ``examples/send_email.py ARGS`` with this interpreter; return its stdout."""
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "send_email.py"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return done.stdout


def test_send_email_example_delivers_to_the_outbox(tmp_path: Path) -> None:
    """Both facades accept, deliver (SENT) and leave one .eml each with the right headers."""
    out = run_example(str(tmp_path))
    ids = re.findall(r"^(?:async|sync): accepted ([0-9a-f-]{36}) \(status QUEUED", out, re.M)
    assert len(ids) == 2
    assert out.count("final status SENT") == 2
    assert "async: timeline email_queued -> email_processing -> email_sent" in out
    for message_id, subject in zip(ids, ("Welcome to Acme", "Your receipt"), strict=True):
        eml = tmp_path / "outbox" / f"{message_id}.eml"
        assert f"eml {eml}" in out
        parsed = message_from_bytes(eml.read_bytes())
        assert parsed["Subject"] == subject
        assert parsed["Message-ID"].startswith(f"<{message_id}@")


def test_send_email_example_is_idempotent_on_rerun(tmp_path: Path) -> None:
    """A second run on the same directory replays the async send (same id, duplicate)."""
    first = run_example(str(tmp_path))
    second = run_example(str(tmp_path))
    first_id = re.search(r"async: accepted (\S+)", first)
    second_id = re.search(r"async: accepted (\S+) \(status SENT, duplicate True\)", second)
    assert first_id is not None
    assert second_id is not None
    assert first_id.group(1) == second_id.group(1)


def test_send_email_example_in_a_temporary_directory() -> None:
    """Without an argument the example runs in a temporary directory it removes."""
    out = run_example()
    tmp = re.search(r"lived in (\S+), removed now", out)
    assert tmp is not None
    assert not Path(tmp.group(1)).exists()
