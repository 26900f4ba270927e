"""The DNS-rebinding guard: private addresses in answers from public upstreams are removed.

A rebinding attack makes a name the attacker controls (evil.example) resolve to a LAN address
after a browser has loaded the attacker's page, so the page's scripts talk to the router or
the NAS as if same-origin. The guard removes A/AAAA records in private, loopback, link-local
and unspecified ranges from upstream answers, except for names the LAN legitimately answers
with private addresses: the domains routed to LAN upstreams (`upstreams.domains`), the names
the config owns (`hosts`, rule `names`), and the `rebinding_guard.allow` list. splitdns's own
rewrites happen after the guard, so rewritten (private) answers are never affected.
"""

from __future__ import annotations

import ipaddress

import dns.message
import dns.rrset

from splitdns import wire
from splitdns.config.model import Config
from splitdns.config.upstreams import in_domain

PRIVATE_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "::/128",
        "::1/128",
        "::ffff:0:0/96",  # IPv4-mapped: checked again as IPv4 below
        "fc00::/7",
        "fe80::/10",
    )
)


def is_private(rdata: bytes) -> bool:
    """Whether A (4 octets) or AAAA (16 octets) record data is a LAN-only address."""
    address = ipaddress.ip_address(rdata)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in PRIVATE_NETWORKS)


def exempt_domains(config: Config) -> tuple[str, ...]:
    """Where private answers are expected: allow list, LAN-routed domains, owned names."""
    owned = [name for view in config.views for name in view.hosts.exact]
    owned += [pattern.suffix for view in config.views for pattern, _ in view.hosts.wildcards]
    for view in config.views:
        for rule in view.rules:
            owned += [pattern.suffix for pattern in rule.names]
    routed = [domain for domain, _ in config.forwarding.domains]
    return tuple(dict.fromkeys([*config.rebinding.allow, *routed, *owned]))


class Guard:
    """Finds and removes private addresses from one answer."""

    def __init__(self, config: Config) -> None:
        self.enabled = config.rebinding.enabled
        self.exempt = exempt_domains(config)

    def applies_to(self, name: str) -> bool:
        return self.enabled and not any(in_domain(name, d) for d in self.exempt)

    def filter(self, data: bytes, message: wire.Message) -> tuple[bytes, int] | None:
        """The answer without its private addresses and how many went, or None if none."""
        private = [
            r
            for r in message.section(wire.ANSWER)
            if r.rtype in (wire.TYPE_A, wire.TYPE_AAAA)
            and r.rdlength in (4, 16)
            and is_private(data[r.rdata_offset : r.rdata_offset + r.rdlength])
        ]
        if not private:
            return None
        return without(data, private), len(private)


def without(data: bytes, drop: list[wire.Record]) -> bytes:
    """`data` without the given answer records. Rare (an attack or a misconfigured public
    name), so dnspython rebuilds the message: cutting bytes out would break any compression
    pointer aimed past the cut."""
    doomed = {(r.name, r.rtype, data[r.rdata_offset : r.rdata_offset + r.rdlength]) for r in drop}
    parsed = dns.message.from_wire(data)
    answer = []
    for rrset in parsed.answer:
        owner = rrset.name.to_text(omit_final_dot=True).lower()
        kept = [r for r in rrset if (owner, int(rrset.rdtype), r.to_digestable()) not in doomed]
        if kept:
            answer.append(dns.rrset.from_rdata_list(rrset.name, rrset.ttl, kept))
    parsed.answer = answer
    return bytes(parsed.to_wire())
