"""API keys: issue, authenticate, revoke, and scope checks; inbound webhook tokens."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from commtunnel.domain import keys
from commtunnel.domain.errors import (
    InsufficientScopeError,
    NotFoundError,
    UnauthorizedError,
    ValidationError,
    WebhookAuthError,
)
from commtunnel.domain.keys import ApiKey, Principal
from commtunnel.ids import new_id
from commtunnel.ports import Clock, Storage


def require(principal: Principal, scope: str, *alternatives: str) -> None:
    """Check that the principal carries ``scope`` or one of the ``alternatives``.

    Raises:
        InsufficientScopeError: it carries none of them (``details.requiredScope``
            names ``scope``).
    """
    if not any(principal.has(s) for s in (scope, *alternatives)):
        raise InsufficientScopeError(scope)


# An organization's inbound webhooks (SMS ``smst_``, email events ``emt_``) are
# authenticated by a per-organization token in the URL's ``?token=``.

#: Characters of a webhook token looked up at most (real ones are a prefix and 43).
MAX_WEBHOOK_TOKEN_CHARACTERS = 200


def new_webhook_token(prefix: str) -> str:
    """A fresh inbound webhook token: ``prefix`` and 43 URL-safe characters (256 random bits)."""
    return prefix + secrets.token_urlsafe(32)


async def org_for_webhook_token(token: Any, lookup: Callable[[str], Awaitable[str | None]]) -> str:
    """The organization holding an inbound webhook token.

    Args:
        token: the ``?token=`` query parameter, untrusted (None when absent).
        lookup: the storage query from token to organization id (None: no holder).

    Raises:
        WebhookAuthError: 401, no token, one over :data:`MAX_WEBHOOK_TOKEN_CHARACTERS`
            characters, or one no organization holds (one message for all).
    """
    if isinstance(token, str) and 0 < len(token) <= MAX_WEBHOOK_TOKEN_CHARACTERS:
        org_id = await lookup(token)
        if org_id is not None:
            return org_id
    raise WebhookAuthError("Missing or invalid webhook token")


class KeyService:
    """Issues and checks API keys.

    Args:
        storage: where key hashes live.
        clock: creation and revocation times.
    """

    def __init__(self, storage: Storage, clock: Clock) -> None:
        self._storage = storage
        self._clock = clock

    async def create(
        self, org_id: str, *, scopes: frozenset[str], test: bool = False, name: str = ""
    ) -> tuple[ApiKey, str]:
        """Issue a key for an organization.

        Args:
            org_id: the owning organization.
            scopes: granted scopes (see :class:`commtunnel.domain.keys.Scope`).
            test: True for a ``ct_test_`` sandbox key.
            name: a label for people.

        Returns:
            (the stored record, the key itself). The key is not stored and
            cannot be shown again.

        Raises:
            ValidationError: unknown or missing scopes.
        """
        try:
            scopes = keys.parse_scopes(sorted(scopes))
        except ValueError as exc:
            raise ValidationError.from_fields({"scopes": str(exc)}) from None
        secret = keys.format_key(secrets.token_urlsafe(32), test=test)
        record = ApiKey(
            id=new_id(),
            org_id=org_id,
            name=name,
            key_hash=keys.hash_key(secret),
            display=secret[: keys.DISPLAY_CHARS],
            scopes=scopes,
            test=test,
            created_at=self._clock.now(),
        )
        await self._storage.create_api_key(record)
        return record, secret

    async def authenticate(self, token: str | None) -> Principal:
        """The principal for a bearer token.

        Raises:
            UnauthorizedError: missing, malformed, unknown or revoked key.
        """
        if not token:
            raise UnauthorizedError("Missing API key: send 'Authorization: Bearer <key>'")
        if not keys.looks_like_key(token):
            raise UnauthorizedError("Invalid API key")
        record = await self._storage.get_api_key_by_hash(keys.hash_key(token))
        if record is None:
            raise UnauthorizedError("Invalid API key")
        if record.revoked_at is not None:
            raise UnauthorizedError("This API key has been revoked")
        return Principal(
            org_id=record.org_id, scopes=record.scopes, sandbox=record.test, api_key_id=record.id
        )

    async def revoke(self, org_id: str, key_id: str) -> None:
        """Revoke a key at once (the next request with it answers 401).

        Raises:
            NotFoundError: no such key in the organization.
        """
        if not await self._storage.revoke_api_key(org_id, key_id, self._clock.now()):
            raise NotFoundError("No such API key", details={"keyId": key_id})

    async def list(self, org_id: str) -> list[ApiKey]:
        """Keys of an organization (records only; keys are never stored)."""
        return await self._storage.list_api_keys(org_id)
