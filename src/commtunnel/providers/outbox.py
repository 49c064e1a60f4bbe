"""The ``outbox`` provider: every message becomes one file in a directory.

The embedded default for email and SMS (``../shared/DESIGN.md``, "Defaults
and scale"): nothing leaves the machine, and a developer can see what was
"sent". One ``outbox:`` URL serves both channels, in the same directory:

- an email is written to ``<message_id>.eml`` (open it in any mail client);
- an SMS is written to ``<message_id>.sms.json``, a UTF-8 JSON object with the
  fields ``id orgId from to body encoding segments sendType flow purpose
  createdAt attemptNumber`` (``from`` is the sender ID, ``createdAt`` is UTC
  ISO 8601 with milliseconds and ``Z``).

Files are written atomically (a temporary file in the same directory, then
:func:`os.replace`), so a reader never sees half a message and a retried send
simply replaces the file. The outbox has no delivery receipts: nothing calls
back, so :meth:`OutboxProvider.parse_status_callback` always refuses.

URL forms accepted by :meth:`OutboxProvider.from_url`:

==========================  ===========================================================
``outbox:///abs/path``      an absolute directory (``outbox://localhost/abs/path`` too)
``outbox:rel/path``         a directory relative to the current working directory
``outbox://./rel/path``     the same, written with an authority of ``.``
``outbox:``, ``outbox://``  ``./outbox`` (the default directory)
==========================  ===========================================================

Relative paths are resolved against the working directory when the URL is
parsed. Percent-escapes in the path are decoded. No query options are accepted.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import unquote, urlsplit

from commtunnel.domain.delivery import ErrorCategory, ProviderResult
from commtunnel.domain.errors import NotFoundError
from commtunnel.domain.events import format_timestamp
from commtunnel.ports import Clock, DeliveryReceipt, OutgoingEmail, OutgoingSms
from commtunnel.providers import Closing
from commtunnel.providers.mime import build_mime

__all__ = ["DEFAULT_DIRECTORY", "OutboxProvider"]

#: where ``outbox:`` with no path writes, relative to the working directory.
DEFAULT_DIRECTORY = "outbox"

# Message ids are UUIDs; anything else must not be able to escape the directory.
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}")


class OutboxProvider(Closing):
    """A provider for email and SMS that writes ``.eml`` and ``.sms.json`` files.

    It implements both :class:`~commtunnel.ports.EmailProvider` and
    :class:`~commtunnel.ports.SmsProvider`.

    The write is done inline in the event loop, on purpose: writing a ~3 KB
    file (mkstemp, write, close, replace; no fsync) measured ~50-120 µs inline
    against ~170-280 µs through ``anyio.to_thread`` on the reference machine,
    and the thread hop buys nothing for files this small on a local disk. The
    file is not fsynced: the outbox is a development sink, and an fsync costs
    milliseconds per message on real disks. Files are readable by their owner
    only (``mkstemp``'s mode 0600): they hold private mail.

    Args:
        directory: where the files go; created on first send if missing.
        clock: the clock (kept for symmetry with other providers; unused here).

    Attributes:
        name: ``"outbox"``, recorded on every attempt.
        directory: the target directory.
    """

    name = "outbox"

    def __init__(self, directory: Path, *, clock: Clock) -> None:
        self.directory = Path(directory)
        self._clock = clock

    @classmethod
    def from_url(cls, url: str, *, clock: Clock) -> OutboxProvider:
        """Build the provider from an ``outbox:`` URL (forms in the module docstring).

        Args:
            url: e.g. ``outbox:///var/mail/out`` or ``outbox:outbox``.
            clock: the clock to hand to the provider.

        Returns:
            The provider writing to the absolute directory the URL names.

        Raises:
            ValueError: wrong scheme, an authority other than empty, ``localhost``
                or ``.``, or any query/fragment.
        """
        parts = urlsplit(url)
        if parts.scheme.lower() != "outbox":
            raise ValueError(f"expected an outbox: URL, got scheme {parts.scheme!r}")
        if parts.query or parts.fragment:
            raise ValueError("outbox: URLs take no options (no '?' or '#')")
        path = unquote(parts.path)
        if parts.netloc == ".":
            path = "./" + path.lstrip("/")
        elif parts.netloc not in ("", "localhost"):
            raise ValueError(
                f"outbox: URL authority must be empty or '.', got {parts.netloc!r} "
                "(use outbox:///abs/path or outbox:relative/path)"
            )
        if path in ("", "./"):
            path = DEFAULT_DIRECTORY
        return cls(Path(path).absolute(), clock=clock)

    def __repr__(self) -> str:
        return f"OutboxProvider(directory={str(self.directory)!r})"

    async def send_email(self, email: OutgoingEmail) -> ProviderResult:
        """Write ``email`` to ``<directory>/<message_id>.eml``, replacing any earlier copy.

        Args:
            email: the email to write.

        Returns:
            Accepted with ``provider_message_id`` = the ``Message-ID`` without
            angle brackets; transient ``PROVIDER_OUTAGE`` when the file cannot
            be written (disk full, permissions); permanent ``REJECTED`` when the
            message cannot be built or its id is not a safe file name.
        """
        if not _SAFE_NAME.fullmatch(email.message_id):
            return ProviderResult.permanent(
                ErrorCategory.REJECTED, f"message id {email.message_id!r} is not a safe file name"
            )
        try:
            data = build_mime(email)
        except ValueError as exc:
            return ProviderResult.permanent(ErrorCategory.REJECTED, f"cannot build message: {exc}")
        failure = self._write(self.directory / f"{email.message_id}.eml", data)
        if failure is not None:
            return failure
        return ProviderResult.accepted(email.content.message_id_header.strip().strip("<>"))

    async def send_sms(self, sms: OutgoingSms) -> ProviderResult:
        """Write ``sms`` to ``<directory>/<message_id>.sms.json``, replacing any earlier copy.

        Args:
            sms: the SMS to write (fields of the file in the module docstring).

        Returns:
            Accepted with ``provider_message_id`` = ``outbox-<message_id>``;
            transient ``PROVIDER_OUTAGE`` when the file cannot be written;
            permanent ``REJECTED`` when the message id is not a safe file name.
        """
        if not _SAFE_NAME.fullmatch(sms.message_id):
            return ProviderResult.permanent(
                ErrorCategory.REJECTED, f"message id {sms.message_id!r} is not a safe file name"
            )
        content = sms.content
        record = {
            "id": sms.message_id,
            "orgId": sms.org_id,
            "from": content.sender_id,
            "to": content.to,
            "body": content.body,
            "encoding": content.encoding,
            "segments": content.segments,
            "sendType": content.send_type,
            "flow": content.flow,
            "purpose": content.purpose,
            "createdAt": format_timestamp(sms.created_at),
            "attemptNumber": sms.attempt_number,
        }
        data = (json.dumps(record, ensure_ascii=False, indent=2) + "\n").encode("utf-8")
        failure = self._write(self.directory / f"{sms.message_id}.sms.json", data)
        if failure is not None:
            return failure
        return ProviderResult.accepted(f"outbox-{sms.message_id}")

    def parse_status_callback(
        self, *, url: str, headers: Mapping[str, str], body: bytes
    ) -> list[DeliveryReceipt]:
        """Refuse every status callback: the outbox sends none.

        Args:
            url: the URL the callback was POSTed to (unused).
            headers: request headers (unused).
            body: the raw request body (unused).

        Returns:
            Never returns.

        Raises:
            NotFoundError: always; the outbox has no signed status callbacks, so
                anything claiming to be one is answered like an unknown route.
        """
        raise NotFoundError("The outbox provider has no status callbacks")

    def _write(self, target: Path, data: bytes) -> ProviderResult | None:
        """Write ``data`` to ``target`` atomically; a transient failure, or None when written."""
        try:
            try:
                self._write_atomically(target, data)
            except FileNotFoundError:
                # The directory is missing (first send, or removed since): create it once.
                self.directory.mkdir(parents=True, exist_ok=True)
                self._write_atomically(target, data)
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            return ProviderResult.transient(
                ErrorCategory.PROVIDER_OUTAGE, f"cannot write {target}: {reason}"
            )
        return None

    def _write_atomically(self, target: Path, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, target)
        except BaseException:
            # Never leave a temporary file behind (a disk-full write, a cancelled task).
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    async def aclose(self) -> None:
        """Nothing to release: files are closed after each write."""
