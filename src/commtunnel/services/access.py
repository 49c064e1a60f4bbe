"""Access control for API-key requests: the organization's IP allowlist, then the request limit.

Every request made with an API key is checked, after the key itself, by
:meth:`AccessService.check`:

1. the caller's address (:func:`~commtunnel.domain.network.client_address`,
   believing ``X-Forwarded-For`` only from ``COMMTUNNEL_TRUSTED_PROXIES``)
   must be inside the organization's IP allowlist, if it has one: else
   403 ``IP_NOT_ALLOWED``; a refused request is not counted;
2. the request is counted for the key against its limit, the first set of
   the key's own, the organization's, and the server default
   (``COMMTUNNEL_RATE_LIMIT``, 100/minute): over it, 429 ``RATE_LIMITED``
   with ``Retry-After`` (the reference's "07 · rate limits": per API key,
   over a one-minute sliding window, reads and sends alike).

In-process callers (the facade's own principal, the CLI) have no key and are
never limited. The settings are managed by :meth:`AccessService.set_org_access`
and :meth:`AccessService.set_key_rate_limit` (``commtunnel orgs set``,
``commtunnel keys set-limit``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import limits

from commtunnel.domain import network
from commtunnel.domain.errors import IpNotAllowedError, NotFoundError, ValidationError
from commtunnel.domain.keys import Principal
from commtunnel.domain.network import IPAddress, IPNetwork
from commtunnel.ports import KEEP, AccessStorage, OrgAccess
from commtunnel.services.ratelimit import (
    Quota,
    RateLimiter,
    format_rate_limit,
    normalize_rate_limit,
    parse_rate_limit,
)


@functools.lru_cache(maxsize=1024)
def _networks(entries: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    return network.parse_networks(entries)


@functools.lru_cache(maxsize=256)
def _limit(text: str) -> limits.RateLimitItem:
    return parse_rate_limit(text)


def _checked_limit(rate_limit: str | None) -> str | None:
    if rate_limit is None:
        return None
    try:
        return normalize_rate_limit(rate_limit)
    except ValueError as exc:
        raise ValidationError.from_fields({"rateLimit": str(exc)}) from None


def _checked_allowlist(entries: Sequence[str] | None) -> tuple[str, ...] | None:
    if entries is None:
        return None
    try:
        networks = network.parse_networks(entries)
    except ValueError as exc:
        raise ValidationError.from_fields({"ipAllowlist": str(exc)}) from None
    if not networks:
        raise ValidationError.from_fields(
            {"ipAllowlist": "give at least one CIDR network (or clear it to allow any address)"}
        )
    if len(networks) > network.MAX_ALLOWLIST_ENTRIES:
        raise ValidationError.from_fields(
            {"ipAllowlist": f"at most {network.MAX_ALLOWLIST_ENTRIES} networks"}
        )
    return tuple(str(n) for n in networks)


class AccessService:
    """Checks API-key requests (IP allowlist, request limit) and manages those settings.

    Args:
        store: the organizations' and keys' settings.
        limiter: counts requests (in memory, or shared through Redis).
        default_rate_limit: the server default (``COMMTUNNEL_RATE_LIMIT``).
        trusted_proxies: comma-separated CIDRs whose ``X-Forwarded-For`` is
            believed (``COMMTUNNEL_TRUSTED_PROXIES``); None: none.

    Raises:
        ValueError: a default limit or a trusted proxy that does not parse
            (the message names the setting).
    """

    def __init__(
        self,
        store: AccessStorage,
        limiter: RateLimiter,
        *,
        default_rate_limit: str,
        trusted_proxies: str | None = None,
    ) -> None:
        self._store = store
        self.limiter = limiter
        try:
            self._default = parse_rate_limit(default_rate_limit)
        except ValueError as exc:
            raise ValueError(f"COMMTUNNEL_RATE_LIMIT: {exc}") from None
        try:
            self.trusted_proxies = network.parse_cidr_list(trusted_proxies)
        except ValueError as exc:
            raise ValueError(f"COMMTUNNEL_TRUSTED_PROXIES: {exc}") from None

    @property
    def default_rate_limit(self) -> str:
        """The server default limit, canonical (``100/minute``)."""
        return format_rate_limit(self._default)

    # ------------------------------------------------------------------ the check

    def client_address(self, peer: str | None, forwarded_for: Sequence[str]) -> IPAddress | None:
        """The caller's address (see :func:`~commtunnel.domain.network.client_address`).

        Args:
            peer: the TCP peer's host; None when the server does not know it.
            forwarded_for: the request's ``X-Forwarded-For`` headers, in order.
        """
        return network.client_address(peer, forwarded_for, self.trusted_proxies)

    async def check(self, principal: Principal, address: IPAddress | None) -> Quota | None:
        """Check the allowlist, then count the request against the key's limit.

        Args:
            principal: an authenticated caller.
            address: the caller's address (:meth:`client_address`), None when unknown.

        Returns:
            The key's :class:`~commtunnel.services.ratelimit.Quota` (refused or
            not: call :meth:`Quota.enforce`); None for a caller without a key,
            or when the limiter's storage cannot be reached.

        Raises:
            IpNotAllowedError: 403, the organization has an allowlist and the
                address is outside it, or unknown (``details.ip``).
        """
        if principal.api_key_id is None:
            return None
        policy = await self._store.access_policy(principal.api_key_id)
        if policy is None:
            return None
        allowlist = None if policy.ip_allowlist is None else _networks(policy.ip_allowlist)
        if not network.is_allowed(address, allowlist):
            shown = "an unknown address" if address is None else str(address)
            raise IpNotAllowedError(
                f"Requests from {shown} are not allowed for this organization",
                details={"ip": None if address is None else str(address)},
            )
        stored = policy.key_rate_limit or policy.org_rate_limit
        limit = self._default if stored is None else _limit(stored)
        return await self.limiter.hit(limit, "key", principal.api_key_id)

    async def admit(self, principal: Principal, address: IPAddress | None) -> Quota | None:
        """:meth:`check`, raising when the request is over the limit.

        Raises:
            IpNotAllowedError: as :meth:`check`.
            RateLimitedError: 429 with ``retry_after`` (seconds).
        """
        quota = await self.check(principal, address)
        if quota is not None:
            quota.enforce()
        return quota

    # ------------------------------------------------------------------ settings

    async def get_org_access(self, org_id: str) -> OrgAccess:
        """An organization's allowlist and limit.

        Raises:
            NotFoundError: no such organization.
        """
        access = await self._store.get_org_access(org_id)
        if access is None:
            raise NotFoundError("No such organization", details={"org": org_id})
        return access

    async def list_org_access(self) -> dict[str, OrgAccess]:
        """Every organization's allowlist and limit, by organization id."""
        return await self._store.list_org_access()

    async def set_org_access(
        self,
        org_id: str,
        *,
        ip_allowlist: Sequence[str] | object | None = KEEP,
        rate_limit: str | object | None = KEEP,
    ) -> OrgAccess:
        """Set or clear an organization's IP allowlist and/or request limit.

        Effective on the next request.

        Args:
            org_id: the organization.
            ip_allowlist: CIDR networks or addresses (stored normalized,
                ``192.0.2.7/24`` as ``192.0.2.0/24``); None allows any address;
                :data:`~commtunnel.ports.KEEP` leaves it.
            rate_limit: ``limits`` notation (stored canonical, ``100/minute``);
                None returns to the server default; ``KEEP`` leaves it.

        Returns:
            The settings now.

        Raises:
            ValidationError: ``ipAllowlist`` empty, over 100 networks or with
                an entry that is no network; ``rateLimit`` not a valid limit.
            NotFoundError: no such organization.
        """
        changes: dict[str, Any] = {}
        if ip_allowlist is not KEEP:
            if isinstance(ip_allowlist, str) or not isinstance(ip_allowlist, Sequence | None):
                raise ValidationError.from_fields({"ipAllowlist": "must be a list of networks"})
            changes["ip_allowlist"] = _checked_allowlist(ip_allowlist)
        if rate_limit is not KEEP:
            if not isinstance(rate_limit, str | None):
                raise ValidationError.from_fields({"rateLimit": "must be a string"})
            changes["rate_limit"] = _checked_limit(rate_limit)
        if not await self._store.set_org_access(org_id, **changes):
            raise NotFoundError("No such organization", details={"org": org_id})
        return await self.get_org_access(org_id)

    async def set_key_rate_limit(self, org_id: str, key_id: str, rate_limit: str | None) -> str:
        """Give one key its own request limit, or (None) return it to the organization's.

        Returns:
            The limit the key now has (canonical), whichever level it comes from.

        Raises:
            ValidationError: ``rateLimit`` not a valid limit.
            NotFoundError: the organization has no such key.
        """
        canonical = _checked_limit(rate_limit)
        if not await self._store.set_key_rate_limit(org_id, key_id, canonical):
            raise NotFoundError("No such API key", details={"keyId": key_id})
        return canonical or await self.org_rate_limit(org_id)

    async def org_rate_limit(self, org_id: str) -> str:
        """The limit of the organization's keys without one of their own (canonical).

        Returns:
            The organization's limit, else the server default.

        Raises:
            NotFoundError: no such organization.
        """
        return (await self.get_org_access(org_id)).rate_limit or self.default_rate_limit

    async def key_rate_limits(self, org_id: str) -> dict[str, str]:
        """The organization's keys that have their own limit: key id -> limit."""
        return await self._store.key_rate_limits(org_id)
