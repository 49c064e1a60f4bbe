"""Signed URL tokens (tracking links, unsubscribe links): one way to sign and verify them.

A token is a JSON payload signed with HMAC-SHA256 by ``itsdangerous``
(``URLSafeSerializer``, key derivation ``hmac``), under a salt that differs
per kind of token, so that no kind is accepted as another. Tokens do not
expire: a link in an email must keep working.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TypeVar

from itsdangerous import BadData, URLSafeSerializer

from commtunnel.domain.errors import CommtunnelError

T = TypeVar("T")

#: the shortest key accepted, bytes (services derive keys with HKDF: 32 bytes).
MIN_KEY_BYTES = 32


def serializer(key: bytes, salt: str, *, what: str) -> URLSafeSerializer:
    """The serializer of one kind of token.

    Args:
        key: at least :data:`MIN_KEY_BYTES` random bytes.
        salt: the kind's salt (e.g. ``commtunnel.unsubscribe.v1``).
        what: the kind, for the error (``"a tracking key"``).

    Raises:
        ValueError: ``key`` is shorter than :data:`MIN_KEY_BYTES`.
    """
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"{what} must be at least {MIN_KEY_BYTES} bytes")
    return URLSafeSerializer(
        key,
        salt=salt,
        signer_kwargs={"key_derivation": "hmac", "digest_method": hashlib.sha256},
    )


def verify(
    signer: URLSafeSerializer,
    value: str,
    parse: Callable[[object], T],
    *,
    max_chars: int,
    invalid: CommtunnelError,
) -> T:
    """Verify ``value`` and ``parse`` its payload; every failure raises ``invalid``.

    Args:
        signer: the kind's :func:`serializer`.
        value: the token as received.
        parse: builds the record from the payload; raises ``ValueError`` for a
            payload of the wrong shape.
        max_chars: longer tokens are refused before any work.
        invalid: the refusal (its class gives the stable code).

    Raises:
        CommtunnelError: ``invalid``: empty, too long, not ASCII, tampered with,
            truncated, signed with another key or salt, or of the wrong shape.
    """
    if not value or len(value) > max_chars or not value.isascii():
        raise invalid
    try:
        # The signature is checked before the payload is decompressed or parsed.
        return parse(signer.loads(value))
    except (BadData, ValueError):
        raise invalid from None
