"""Keyset pagination cursors for the message listings (pure: no I/O).

A listing is ordered newest first by ``(created_at DESC, id DESC)``; a page
ends at its last item, and the next page starts strictly after it. The
cursor handed to the caller carries that position and a fingerprint of the
filters the page was listed with, so that:

* a walk is stable under concurrent inserts: an item created after the walk
  began sorts before page 1 and is never seen; every item that existed when
  the walk began is seen exactly once (no offsets, so no duplicate or skip);
* a cursor used with other filters is refused rather than silently walking a
  different listing from an unrelated position.

The cursor is opaque to callers but not secret: it is base64url (no padding)
of a small JSON object. Forging one only moves the start of a walk inside the
caller's own organization, which ``createdBefore`` does anyway, so it is not
signed; a cursor that does not decode to exactly this shape is refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime

import attrs

from commtunnel.domain.messages import _aware

#: the cursor format's version, checked on decode.
CURSOR_VERSION = 1
#: hexadecimal characters of the filter fingerprint kept in a cursor.
FINGERPRINT_CHARS = 16
#: the longest cursor text decoded (a real one is about 150 characters).
MAX_CURSOR_CHARS = 512
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_HEX = re.compile(rf"[0-9a-f]{{{FINGERPRINT_CHARS}}}")


class CursorError(ValueError):
    """A cursor that cannot be used: the reason, fit for ``details.cursor``."""


@attrs.frozen(kw_only=True)
class Position:
    """Where a page ended: its last item's creation time and id.

    Attributes:
        created_at: the item's ``created_at`` (UTC, microseconds as stored).
        id: the item's id (a UUID string), the tie-breaker for equal times.
    """

    created_at: datetime = attrs.field(validator=_aware)
    id: str


def filters_fingerprint(listing: str, filters: Mapping[str, str | None]) -> str:
    """A short digest of a listing's name and its normalized filters.

    Args:
        listing: which listing (``messages``, ``emails``): a cursor of one is
            refused by the other.
        filters: filter name -> its normalized value (None: not filtered).
            Callers normalize first, so that equivalent spellings (``EMAIL``
            and ``email``, ``+02:00`` and ``Z``) give the same fingerprint.

    Returns:
        :data:`FINGERPRINT_CHARS` lower-case hexadecimal characters of a SHA-256.
    """
    canonical = json.dumps([listing, sorted(filters.items())], separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:FINGERPRINT_CHARS]


def encode_cursor(position: Position, fingerprint: str) -> str:
    """The opaque cursor for a walk that continues after ``position``.

    Args:
        position: the last item of the page just listed.
        fingerprint: :func:`filters_fingerprint` of the page's filters.

    Returns:
        base64url text without padding (safe in a query string as is).
    """
    at = position.created_at.astimezone(UTC).replace(tzinfo=None)
    payload = {
        "v": CURSOR_VERSION,
        "t": at.isoformat(timespec="microseconds") + "Z",
        "i": position.id,
        "f": fingerprint,
    }
    raw = json.dumps(payload, separators=(",", ":")).encode("ascii")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(text: str, fingerprint: str) -> Position:
    """The position a cursor continues after, if it was made for these filters.

    Args:
        text: the cursor as the caller sent it.
        fingerprint: :func:`filters_fingerprint` of the filters of this request.

    Returns:
        The position (UTC).

    Raises:
        CursorError: "is not a cursor from a previous page" (not base64url of
            the expected JSON object, another version, a bad time or id), or
            "was made for other filters; start again without a cursor".
    """
    malformed = CursorError("is not a cursor from a previous page")
    if not text or len(text) > MAX_CURSOR_CHARS or not text.isascii():
        raise malformed
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        payload = json.loads(raw.decode("ascii"))
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise malformed from None
    if not isinstance(payload, dict) or set(payload) != {"v", "t", "i", "f"}:
        raise malformed
    version, at, item_id, stored = payload["v"], payload["t"], payload["i"], payload["f"]
    if version != CURSOR_VERSION or not all(isinstance(v, str) for v in (at, item_id, stored)):
        raise malformed
    if not _UUID.fullmatch(item_id) or not _HEX.fullmatch(stored) or not at.endswith("Z"):
        raise malformed
    try:
        created_at = datetime.fromisoformat(at)
    except ValueError:
        raise malformed from None
    if created_at.tzinfo is None or created_at.utcoffset() != UTC.utcoffset(None):
        raise malformed
    if stored != fingerprint:
        raise CursorError("was made for other filters; start again without a cursor")
    return Position(created_at=created_at.astimezone(UTC), id=item_id)
