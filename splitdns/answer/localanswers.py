"""Answers from a view's `hosts`: authoritative, never forwarded, with matching PTRs."""

from __future__ import annotations

import ipaddress

from splitdns import wire
from splitdns.config.model import IPAddress, View

ANY = 255


def reverse_address(name: str) -> IPAddress | None:
    """The address a reverse name stands for (`2.1.0.192.in-addr.arpa`), or None."""
    if name.endswith(".in-addr.arpa"):
        parts = name[: -len(".in-addr.arpa")].split(".")
        if len(parts) != 4 or not all(p.isdigit() and len(p) <= 3 for p in parts):
            return None
        try:
            return ipaddress.IPv4Address(".".join(reversed(parts)))
        except ValueError:
            return None
    if name.endswith(".ip6.arpa"):
        nibbles = name[: -len(".ip6.arpa")].split(".")
        if len(nibbles) != 32 or not all(len(n) == 1 and n in "0123456789abcdef" for n in nibbles):
            return None
        return ipaddress.IPv6Address(int("".join(reversed(nibbles)), 16))
    return None


def answer(query: wire.Query, view: View) -> bytes | None:
    """A bare answer when `hosts` covers the question, else None (forward it)."""
    q = query.question
    if q.qclass != wire.CLASS_IN or not len(view.hosts):
        return None
    ttl = view.hosts_ttl
    if q.qtype == wire.TYPE_PTR:
        address = reverse_address(q.name)
        if address is not None:
            names = view.hosts.names_for(address)
            if names:
                return wire.make_answer(
                    query, [(wire.TYPE_PTR, ttl, wire.encode_name(n)) for n in names]
                )
    addresses = view.hosts.lookup(q.name)
    if addresses is None:
        return None
    rrs: list[tuple[int, int, bytes]] = []
    for address in addresses:
        rtype = wire.TYPE_A if address.version == 4 else wire.TYPE_AAAA
        if q.qtype in (rtype, ANY):
            rrs.append((rtype, ttl, address.packed))
    return wire.make_answer(query, rrs)
