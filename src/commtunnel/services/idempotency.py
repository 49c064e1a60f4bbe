"""Idempotency keys: validation, request fingerprints, and the in-flight registry.

The guarantee (one message per key) comes from the storage's unique
constraint on (organization, key). This module adds what a caller sees
around it: a clear 400 for a malformed key, a fingerprint so that the same
key with another payload answers 422, and a registry of keys whose first
request is still being processed in this process, so a concurrent retry
answers 409 ``IDEMPOTENCY_KEY_IN_USE`` instead of waiting.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from commtunnel.domain.errors import IdempotencyKeyInUseError, ValidationError

MAX_KEY_CHARS = 255


def validate_key(key: str | None, *, field: str = "idempotencyKey") -> str | None:
    """Check a key's shape: 1..255 printable characters, or None (no key).

    Raises:
        ValidationError: empty, too long, or containing control characters.
    """
    if key is None:
        return None
    if not isinstance(key, str) or not key.strip():
        raise ValidationError.from_fields({field: "must be a non-empty string"})
    if len(key) > MAX_KEY_CHARS:
        raise ValidationError.from_fields({field: f"must be at most {MAX_KEY_CHARS} characters"})
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in key):
        raise ValidationError.from_fields({field: "must not contain control characters"})
    return key


def fingerprint(endpoint: str, payload: dict[str, Any]) -> str:
    """SHA-256 hex of the endpoint and the canonical JSON of the payload."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(f"{endpoint}\n{canonical}".encode()).hexdigest()


class InFlight:
    """Keys whose first request is still being processed in this process."""

    def __init__(self) -> None:
        self._active: set[tuple[str, str]] = set()

    @contextmanager
    def hold(self, org_id: str, key: str | None) -> Iterator[None]:
        """Mark (org, key) in flight for the ``with`` block.

        Raises:
            IdempotencyKeyInUseError: the key is already in flight.
        """
        if key is None:
            yield
            return
        token = (org_id, key)
        if token in self._active:
            raise IdempotencyKeyInUseError(
                "A request with this idempotency key is still being processed; retry shortly",
                details={"idempotencyKey": key},
            )
        self._active.add(token)
        try:
            yield
        finally:
            self._active.discard(token)
