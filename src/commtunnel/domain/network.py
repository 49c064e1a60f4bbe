"""Who is calling, by network address, and whether that address may call (pure rules).

Two rules, used for every request made with an API key:

* :func:`client_address`: the caller's address. The TCP peer is the caller
  unless it is one of the operator's **trusted proxies**; then the
  ``X-Forwarded-For`` chain is read **from the right**, skipping trusted
  proxies, and the first address that is not one is the caller. Entries to
  the left of it were written by the caller itself and are never believed,
  so a client cannot spoof its address by sending the header (MDN,
  "X-Forwarded-For", *Selecting an IP address*; RFC 7239 section 8.3).
* :func:`is_allowed`: an organization's IP allowlist, a list of CIDR
  networks (``None``: any address). An IPv4 address written as IPv6
  (``::ffff:203.0.113.5``) is matched as the IPv4 address it is.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: the most networks one allowlist may hold.
MAX_ALLOWLIST_ENTRIES = 100


def _unmapped(address: IPAddress) -> IPAddress:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def parse_address(text: str) -> IPAddress | None:
    """An address as a socket peer or an ``X-Forwarded-For`` entry writes it.

    Accepts ``203.0.113.5``, ``203.0.113.5:4711``, ``2001:db8::1`` and
    ``[2001:db8::1]:4711`` (some proxies append the port); an IPv4-mapped
    IPv6 address becomes the IPv4 address.

    Returns:
        The address, or None when ``text`` is none (``unknown``, a hostname,
        an obfuscated RFC 7239 identifier, garbage).
    """
    text = text.strip()
    if text.startswith("["):
        end = text.find("]")
        text = text[1:end] if end > 0 else ""
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        return _unmapped(ipaddress.ip_address(text))
    except ValueError:
        return None


def parse_network(text: str) -> IPNetwork:
    """One CIDR network; a bare address is its own ``/32`` (``/128``).

    Host bits are cleared (``192.0.2.7/24`` is ``192.0.2.0/24``), as a
    firewall reads them.

    Raises:
        ValueError: not an IPv4 or IPv6 network (the message names ``text``).
    """
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ValueError(f"'{text.strip()}' is not an IP address or CIDR network") from None


def parse_networks(entries: Iterable[str]) -> tuple[IPNetwork, ...]:
    """Several networks (see :func:`parse_network`), blanks skipped, duplicates dropped.

    Returns:
        The networks in the order given.

    Raises:
        ValueError: an entry that is no network (the message names it).
    """
    networks: dict[IPNetwork, None] = {}
    for entry in entries:
        if entry.strip():
            networks[parse_network(entry)] = None
    return tuple(networks)


def parse_cidr_list(text: str | None) -> tuple[IPNetwork, ...]:
    """Comma-separated networks (``COMMTUNNEL_TRUSTED_PROXIES``); None or blank: none.

    Raises:
        ValueError: an entry that is no network.
    """
    return parse_networks((text or "").split(","))


def _within(address: IPAddress, networks: Iterable[IPNetwork]) -> bool:
    # ``in`` across IP versions is simply False.
    return any(address in network for network in networks)


def client_address(
    peer: str | None, forwarded_for: Sequence[str], trusted: Sequence[IPNetwork]
) -> IPAddress | None:
    """The caller's address, believing ``X-Forwarded-For`` only from trusted proxies.

    Args:
        peer: the TCP peer's host as the server reports it (None when unknown).
        forwarded_for: every ``X-Forwarded-For`` header of the request, in
            order (several headers are one comma-separated list, RFC 9110 5.3).
        trusted: the operator's proxies (``COMMTUNNEL_TRUSTED_PROXIES``).

    Returns:
        The peer when it is not a trusted proxy; else the rightmost chain
        entry that is not a trusted proxy; else (every hop is trusted, or an
        entry does not parse) the leftmost trusted hop reached, the farthest
        address that can be vouched for. None when the peer itself is no
        address.
    """
    address = parse_address(peer) if peer else None
    if address is None or not _within(address, trusted):
        return address
    hops = [entry for header in forwarded_for for entry in header.split(",")]
    for entry in reversed(hops):
        hop = parse_address(entry)
        if hop is None:
            break  # a trusted proxy wrote no address: stop at the last one it vouched for
        address = hop
        if not _within(hop, trusted):
            break
    return address


def is_allowed(address: IPAddress | None, allowlist: Sequence[IPNetwork] | None) -> bool:
    """Whether ``address`` may call under ``allowlist``.

    Args:
        address: the caller (:func:`client_address`); None when unknown.
        allowlist: the organization's networks; None allows any address.

    Returns:
        True with no allowlist; otherwise True only for a known address
        inside one of the networks.
    """
    if allowlist is None:
        return True
    return address is not None and _within(_unmapped(address), allowlist)
