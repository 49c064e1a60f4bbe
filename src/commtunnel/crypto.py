"""Encryption of secrets at rest (tenant access tokens), with the ``cryptography`` package.

A :class:`SecretBox` derives a Fernet key (AES-128-CBC + HMAC-SHA256,
https://github.com/fernet/spec) from ``COMMTUNNEL_SECRET_KEY`` with HKDF-SHA256
(RFC 5869), so any long random string works as the setting. Rotating the
setting makes stored secrets unreadable: set them again after a rotation.
"""

from __future__ import annotations

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from commtunnel.domain.errors import InternalError

_INFO = b"commtunnel secrets v1"


def derive_key(secret: str, info: bytes) -> bytes:
    """A 32-byte key for one use of ``COMMTUNNEL_SECRET_KEY`` (HKDF-SHA256, RFC 5869, no salt).

    Args:
        secret: the server's secret (any length; 32+ random bytes recommended).
        info: names the use; different ``info`` gives unrelated keys from one secret.
    """
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(
        secret.encode("utf-8")
    )


class SecretBox:
    """Encrypts and decrypts short secrets with a key derived from the server's secret.

    Args:
        secret_key: ``COMMTUNNEL_SECRET_KEY``; at least 16 characters (use 32+ random bytes).

    Raises:
        ValueError: the secret key is too short to be a key.
    """

    def __init__(self, secret_key: str) -> None:
        if len(secret_key) < 16:
            raise ValueError("COMMTUNNEL_SECRET_KEY must be at least 16 characters")
        self._fernet = Fernet(base64.urlsafe_b64encode(derive_key(secret_key, _INFO)))

    def encrypt(self, plaintext: str) -> str:
        """The Fernet token (URL-safe base64 text) for ``plaintext``."""
        return self._fernet.encrypt(plaintext.encode("utf-8")).decode("ascii")

    def decrypt(self, token: str) -> str:
        """The plaintext of a token made by :meth:`encrypt`.

        Raises:
            InternalError: the token was made with another key or altered.
        """
        try:
            return self._fernet.decrypt(token.encode("ascii")).decode("utf-8")
        except InvalidToken:
            raise InternalError(
                "A stored secret cannot be decrypted: was COMMTUNNEL_SECRET_KEY changed?"
            ) from None


def fingerprint(secret: str) -> str:
    """A short SHA-256 hex prefix identifying a secret without revealing it (16 characters)."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()[:16]
