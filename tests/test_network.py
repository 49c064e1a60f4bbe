"""The pure network rules: the caller's address behind proxies, and IP allowlists."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from commtunnel.domain.network import (
    client_address,
    is_allowed,
    parse_address,
    parse_cidr_list,
    parse_network,
    parse_networks,
)

PROXIES = parse_cidr_list("10.0.0.0/8, fd00::/8")
ip = ipaddress.ip_address


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("203.0.113.5", "203.0.113.5"),
        (" 203.0.113.5 ", "203.0.113.5"),
        ("203.0.113.5:4711", "203.0.113.5"),
        ("2001:db8::1", "2001:db8::1"),
        ("[2001:db8::1]:4711", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("::ffff:203.0.113.5", "203.0.113.5"),
    ],
)
def test_parse_address_reads_the_forms_proxies_write(text: str, expected: str) -> None:
    """Bare, with a port, bracketed IPv6 and IPv4-mapped IPv6 all give the address."""
    assert parse_address(text) == ip(expected)


@pytest.mark.parametrize("text", ["", "unknown", "_hidden", "example.com", "300.1.1.1", "[::1"])
def test_parse_address_is_none_for_what_is_no_address(text: str) -> None:
    """Hostnames, RFC 7239 obfuscated identifiers and garbage are no address."""
    assert parse_address(text) is None


def test_parse_network_reads_cidrs_and_bare_addresses() -> None:
    """A bare address is a /32 (/128); host bits are cleared as a firewall reads them."""
    assert str(parse_network("203.0.113.5")) == "203.0.113.5/32"
    assert str(parse_network("2001:db8::1")) == "2001:db8::1/128"
    assert str(parse_network(" 192.0.2.7/24 ")) == "192.0.2.0/24"


@pytest.mark.parametrize("text", ["", "10.0.0.0/33", "office", "10.0.0.0/8/8"])
def test_parse_network_refuses_what_is_no_network(text: str) -> None:
    """An entry that is no network raises ValueError naming it."""
    with pytest.raises(ValueError, match="is not an IP address or CIDR network"):
        parse_network(text)


def test_parse_networks_skips_blanks_and_duplicates_in_order() -> None:
    """Blank entries vanish, a repeated network (after normalizing) counts once."""
    networks = parse_networks(["198.51.100.0/24", " ", "10.0.0.0/8", "198.51.100.9/24"])
    assert [str(n) for n in networks] == ["198.51.100.0/24", "10.0.0.0/8"]


def test_parse_cidr_list_reads_the_setting() -> None:
    """None and blank are no networks; a bad entry names itself."""
    assert parse_cidr_list(None) == ()
    assert parse_cidr_list(" , ") == ()
    assert [str(n) for n in PROXIES] == ["10.0.0.0/8", "fd00::/8"]
    with pytest.raises(ValueError, match=r"'proxy\.local'"):
        parse_cidr_list("10.0.0.0/8,proxy.local")


# --------------------------------------------------------------------------- client_address


def test_untrusted_peer_is_the_caller_whatever_it_forwards() -> None:
    """A peer that is no trusted proxy is the caller: its X-Forwarded-For is a spoof."""
    assert client_address("203.0.113.5", ["198.51.100.7"], PROXIES) == ip("203.0.113.5")
    assert client_address("203.0.113.5", ["198.51.100.7"], ()) == ip("203.0.113.5")


def test_trusted_peer_hands_over_to_the_rightmost_untrusted_hop() -> None:
    """Behind trusted proxies the caller is the rightmost entry that is no trusted proxy."""
    chain = ["1.1.1.1, 198.51.100.7, 10.0.0.9"]
    assert client_address("10.0.0.2", chain, PROXIES) == ip("198.51.100.7")


def test_several_forwarded_for_headers_are_one_list() -> None:
    """Repeated X-Forwarded-For headers are read as one comma-separated list, in order."""
    headers = ["1.1.1.1", "198.51.100.7", "10.0.0.9"]
    assert client_address("10.0.0.2", headers, PROXIES) == ip("198.51.100.7")


def test_all_trusted_hops_give_the_leftmost() -> None:
    """When every hop is a trusted proxy, the leftmost one is the farthest that is vouched for."""
    assert client_address("10.0.0.2", ["10.1.1.1, 10.0.0.9"], PROXIES) == ip("10.1.1.1")
    assert client_address("10.0.0.2", [], PROXIES) == ip("10.0.0.2")


def test_an_unparsable_hop_stops_the_walk_at_the_last_trusted_one() -> None:
    """A hop that is no address is not believed, nor anything to its left."""
    chain = ["198.51.100.7, unknown, 10.0.0.9"]
    assert client_address("10.0.0.2", chain, PROXIES) == ip("10.0.0.9")


def test_ipv6_proxies_and_mapped_addresses() -> None:
    """IPv6 trusted proxies work; an IPv4-mapped peer is its IPv4 address."""
    assert client_address("fd00::2", ["[2001:db8::7]:443"], PROXIES) == ip("2001:db8::7")
    assert client_address("::ffff:10.0.0.2", ["198.51.100.7"], PROXIES) == ip("198.51.100.7")


def test_an_unknown_peer_is_no_address() -> None:
    """No peer, or a peer name that is no address (a test client), gives None."""
    assert client_address(None, ["198.51.100.7"], PROXIES) is None
    assert client_address("testclient", ["198.51.100.7"], PROXIES) is None


_v4 = st.ip_addresses(v=4)
_public = _v4.filter(lambda a: a not in PROXIES[0])


@given(real=_public, spoofed=st.lists(st.one_of(_v4.map(str), st.text(max_size=12)), max_size=5))
def test_spoofed_prefixes_never_change_the_caller(
    real: ipaddress.IPv4Address, spoofed: list[str]
) -> None:
    """Whatever a client writes into X-Forwarded-For, the proxy's appended hop decides."""
    own = ",".join(s.replace(",", "") for s in spoofed)
    header = f"{own}, {real}" if own else str(real)
    assert client_address("10.0.0.2", [header, "10.0.0.9"], PROXIES) == real
    assert client_address(str(real), [header], PROXIES) == real


# --------------------------------------------------------------------------- is_allowed


def test_no_allowlist_allows_any_address_even_an_unknown_one() -> None:
    """Without an allowlist every caller may call."""
    assert is_allowed(ip("203.0.113.5"), None)
    assert is_allowed(None, None)


def test_allowlist_admits_only_addresses_inside_it() -> None:
    """Inside one of the networks passes; outside, or unknown, does not."""
    allowlist = parse_networks(["198.51.100.0/24", "2001:db8::/32"])
    assert is_allowed(ip("198.51.100.7"), allowlist)
    assert is_allowed(ip("2001:db8::7"), allowlist)
    assert not is_allowed(ip("203.0.113.5"), allowlist)
    assert not is_allowed(ip("2001:db9::7"), allowlist)
    assert not is_allowed(None, allowlist)


def test_mapped_address_matches_its_ipv4_network() -> None:
    """An IPv4-mapped IPv6 address is matched as the IPv4 address it is."""
    allowlist = parse_networks(["198.51.100.0/24"])
    assert is_allowed(ip("::ffff:198.51.100.7"), allowlist)


@given(address=_v4, prefix=st.integers(min_value=0, max_value=32))
def test_an_address_is_inside_any_network_made_from_it(
    address: ipaddress.IPv4Address, prefix: int
) -> None:
    """``a/n`` (host bits cleared) always contains ``a``, for every prefix length."""
    assert is_allowed(address, parse_networks([f"{address}/{prefix}"]))
