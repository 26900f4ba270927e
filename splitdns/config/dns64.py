"""A view's `dns64:` (RFC 6147): the NAT64 prefix AAAA answers are made with, and what the
split horizon does for synthesized addresses.

    dns64: true                       # the well-known prefix 64:ff9b::/96
    dns64:
      prefix: 2001:db8:64::/96        # a network-specific prefix: 32, 40, 48, 56, 64 or 96 bits
      exclude: ["::ffff:0:0/96"]      # AAAA answers in these do not count (RFC 6147 5.1.4)
      servers: {192.168.1.2: "fd00::2"}   # a rewritten IPv4 target's own IPv6 address
      upstream_prefixes: ["64:ff9b::/96"] # where an upstream doing DNS64 synthesizes (its AAAA
                                          # there embed public addresses: made again here);
                                          # serve also discovers them (RFC 7050) at start

The well-known prefix must never embed a non-global IPv4 address (RFC 6052 section 3.1: NAT64
gateways refuse it), so with it a name rewritten to a private address gets the server's own
IPv6 address from `servers`, or NODATA; a network-specific prefix may embed it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace

import yaml

from splitdns.config.tree import Node

WKP = ipaddress.IPv6Network("64:ff9b::/96")
PREFIX_LENGTHS = (32, 40, 48, 56, 64, 96)  # RFC 6052 section 2.2
DEFAULT_EXCLUDE = (ipaddress.IPv6Network("::ffff:0:0/96"),)
KEYS = frozenset({"prefix", "exclude", "servers", "upstream_prefixes"})


@dataclass(frozen=True)
class Dns64:
    prefix: ipaddress.IPv6Network = WKP
    exclude: tuple[ipaddress.IPv6Network, ...] = DEFAULT_EXCLUDE
    servers: tuple[tuple[ipaddress.IPv4Address, ipaddress.IPv6Address], ...] = field(default=())
    upstream_prefixes: tuple[ipaddress.IPv6Network, ...] = (WKP,)

    @property
    def synthetic(self) -> tuple[ipaddress.IPv6Network, ...]:
        """AAAA answers inside these were made by a DNS64 (ours, or an upstream's): none of
        them is "usable" (RFC 6147 5.1.4); the answer is made again from the view's A."""
        return (self.prefix, *self.upstream_prefixes, *self.exclude)

    @property
    def well_known(self) -> bool:
        return self.prefix == WKP

    def server_for(self, internal: ipaddress.IPv4Address) -> ipaddress.IPv6Address | None:
        for v4, v6 in self.servers:
            if v4 == internal:
                return v6
        return None


def parse_dns64(node: Node) -> Dns64 | None:
    """`dns64: true|false` or the mapping above; None when off."""
    if not isinstance(node.raw, yaml.MappingNode):
        return Dns64() if node.boolean() else None
    keys = node.mapping(KEYS)
    settings = Dns64()
    if "prefix" in keys:
        settings = replace(settings, prefix=prefix_of(keys["prefix"]))
    if "exclude" in keys:
        excluded = tuple(_v6_network(item) for item in keys["exclude"].items(allow_scalar=True))
        settings = replace(settings, exclude=excluded)
    if "upstream_prefixes" in keys:
        items = keys["upstream_prefixes"].items(allow_scalar=True)
        settings = replace(settings, upstream_prefixes=tuple(prefix_of(i) for i in items))
    if "servers" in keys:
        pairs = []
        for key, value in keys["servers"].string_mapping():
            try:
                v4 = ipaddress.IPv4Address(key.strip())
                v6 = ipaddress.IPv6Address(value.text().strip())
            except ValueError:
                raise value.error(
                    f"{key}: {value.text()!r}: give an IPv4 address (a rewrite target) and its "
                    "IPv6 address"
                ) from None
            pairs.append((v4, v6))
        settings = replace(settings, servers=tuple(pairs))
    return settings


def _v6_network(node: Node) -> ipaddress.IPv6Network:
    try:
        return ipaddress.IPv6Network(node.text().strip(), strict=True)
    except ValueError:
        raise node.error(f"{node.text()!r} is not an IPv6 network") from None


def prefix_of(node: Node) -> ipaddress.IPv6Network:
    text = node.text().strip()
    try:
        prefix = ipaddress.IPv6Network(text, strict=True)
    except ValueError:
        raise node.error(f"{text!r} is not an IPv6 prefix (like 64:ff9b::/96)") from None
    if prefix.prefixlen not in PREFIX_LENGTHS:
        raise node.error(
            f"/{prefix.prefixlen} is not an RFC 6052 prefix length (32, 40, 48, 56, 64 or 96)"
        )
    if prefix.prefixlen == 96 and prefix.network_address.packed[8] != 0:
        raise node.error("bits 64-71 of a NAT64 prefix must be zero (RFC 6052 section 2.2)")
    return prefix


def synthesize(prefix: ipaddress.IPv6Network, v4: ipaddress.IPv4Address) -> ipaddress.IPv6Address:
    """RFC 6052 section 2.2: the IPv4 address embedded at the prefix's length, the octet at
    bits 64-71 ("u") left zero, the suffix zero."""
    head = prefix.network_address.packed[: prefix.prefixlen // 8]
    embedded = bytearray(head)
    for octet in v4.packed:
        if len(embedded) == 8:
            embedded.append(0)  # the u octet
        embedded.append(octet)
    embedded += bytes(16 - len(embedded))
    return ipaddress.IPv6Address(bytes(embedded))


def extract(prefix: ipaddress.IPv6Network, v6: ipaddress.IPv6Address) -> ipaddress.IPv4Address:
    """The IPv4 address a synthesized one embeds (the inverse of `synthesize`)."""
    raw = v6.packed
    octets = [raw[i] for i in range(prefix.prefixlen // 8, 16) if i != 8][:4]
    return ipaddress.IPv4Address(bytes(octets))


def reverse_v6(name: str) -> ipaddress.IPv6Address | None:
    """The address a full ip6.arpa name (32 nibbles) stands for; None for anything else."""
    labels = name.split(".")
    if len(labels) != 34 or labels[-2:] != ["ip6", "arpa"]:
        return None
    nibbles = labels[:32]
    if any(len(n) != 1 or n not in "0123456789abcdef" for n in nibbles):
        return None
    return ipaddress.IPv6Address(int("".join(reversed(nibbles)), 16))


#: RFC 7050 section 2.2: the well-known IPv4 addresses of ipv4only.arpa.
WELL_KNOWN_V4 = (ipaddress.IPv4Address("192.0.0.170"), ipaddress.IPv4Address("192.0.0.171"))


def prefix_from_probe(v6: ipaddress.IPv6Address) -> ipaddress.IPv6Network | None:
    """RFC 7050 section 3: the NAT64 prefix an AAAA answer for ipv4only.arpa was made with,
    found by where a well-known address sits in it (the longest prefix that fits)."""
    for length in reversed(PREFIX_LENGTHS):
        candidate = ipaddress.IPv6Network((int(v6) >> (128 - length) << (128 - length), length))
        if (
            extract(candidate, v6) in WELL_KNOWN_V4
            and synthesize(candidate, extract(candidate, v6)) == v6
        ):
            return candidate
    return None


def embeds_non_global(v4: ipaddress.IPv4Address) -> bool:
    """RFC 6052 section 3.1: addresses the well-known prefix must not embed."""
    return not v4.is_global
