"""SQLite records of access control: organizations' IP allowlists and request limits, keys' limits.

The columns are ``orgs.ip_allowlist`` (a JSON array of CIDR strings, NULL for
any address), ``orgs.rate_limit`` and ``api_keys.rate_limit`` (``limits``
notation, NULL for the default), added by schema version 6.
:class:`SqliteAccessStore` shares the backend's connection, like the other
per-area stores.
"""

from __future__ import annotations

import json
from typing import Any

from commtunnel.backends.sqlite import BackendStore, fetch_all, fetch_one
from commtunnel.ports import KEEP, AccessPolicy, OrgAccess


def _allowlist(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(json.loads(text))


def _org_access(row: tuple[Any, ...]) -> OrgAccess:
    return OrgAccess(org_id=row[0], ip_allowlist=_allowlist(row[1]), rate_limit=row[2])


_ORG_ACCESS = "SELECT id, ip_allowlist, rate_limit FROM orgs"


class SqliteAccessStore(BackendStore):
    """Access settings on a SQLite backend (implements :class:`~commtunnel.ports.AccessStorage`).

    Args:
        backend: the backend whose connection this store uses.
    """

    async def access_policy(self, key_id: str) -> AccessPolicy | None:
        """The organization's allowlist and limit, and the key's limit (None: no such key)."""
        row = await self._backend.read(
            fetch_one,
            "SELECT o.ip_allowlist, o.rate_limit, k.rate_limit FROM api_keys k "
            "JOIN orgs o ON o.id = k.org_id WHERE k.id = ?",
            (key_id,),
        )
        if row is None:
            return None
        return AccessPolicy(
            ip_allowlist=_allowlist(row[0]), org_rate_limit=row[1], key_rate_limit=row[2]
        )

    async def get_org_access(self, org_id: str) -> OrgAccess | None:
        """One organization's settings (None: no such organization)."""
        row = await self._backend.read(fetch_one, f"{_ORG_ACCESS} WHERE id = ?", (org_id,))
        return None if row is None else _org_access(row)

    async def list_org_access(self) -> dict[str, OrgAccess]:
        """Every organization's settings, by organization id."""
        return {
            row[0]: _org_access(row) for row in await self._backend.read(fetch_all, _ORG_ACCESS)
        }

    async def set_org_access(
        self,
        org_id: str,
        *,
        ip_allowlist: tuple[str, ...] | object | None = KEEP,
        rate_limit: str | object | None = KEEP,
    ) -> bool:
        """Change one or both settings (None clears, :data:`~commtunnel.ports.KEEP` leaves it).

        Returns:
            False when there is no such organization.
        """
        sets: list[str] = []
        params: list[Any] = []
        if ip_allowlist is not KEEP:
            sets.append("ip_allowlist = ?")
            if isinstance(ip_allowlist, tuple):
                params.append(json.dumps(list(ip_allowlist)))
            else:
                params.append(None)
        if rate_limit is not KEEP:
            sets.append("rate_limit = ?")
            params.append(rate_limit)
        if not sets:
            return await self.get_org_access(org_id) is not None
        cursor = await self._backend.transaction(
            lambda c: c.execute(
                f"UPDATE orgs SET {', '.join(sets)} WHERE id = ?",  # noqa: S608 - fixed names
                (*params, org_id),
            )
        )
        return bool(cursor.rowcount)

    async def set_key_rate_limit(self, org_id: str, key_id: str, rate_limit: str | None) -> bool:
        """Set (None: clear) a key's own limit; False when the organization has no such key."""
        cursor = await self._backend.transaction(
            lambda c: c.execute(
                "UPDATE api_keys SET rate_limit = ? WHERE id = ? AND org_id = ?",
                (rate_limit, key_id, org_id),
            )
        )
        return bool(cursor.rowcount)

    async def key_rate_limits(self, org_id: str) -> dict[str, str]:
        """The keys of the organization that have their own limit: key id -> limit."""
        rows = await self._backend.read(
            fetch_all,
            "SELECT id, rate_limit FROM api_keys WHERE org_id = ? AND rate_limit IS NOT NULL",
            (org_id,),
        )
        return dict(rows)
