"""Identifiers: UUIDv7 (time-ordered), so ids sort in creation order (RFC 9562 §5.7)."""

from __future__ import annotations

import uuid6


def new_id() -> str:
    """A new UUIDv7 as its canonical 36-character string."""
    return str(uuid6.uuid7())
