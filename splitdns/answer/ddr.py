"""Discovery of Designated Resolvers (RFC 9462, RFC 9461): `_dns.resolver.arpa` SVCB.

Windows 11, iOS and macOS ask their DHCP-given resolver for `_dns.resolver.arpa` SVCB and move
to the encrypted endpoints it names. splitdns answers it itself, one record per `tls://` and
`https://` listener (alpn, port, dohpath, address hints), and never forwards it: an upstream's
answer would name the upstream's own encrypted resolver, and clients would bypass splitdns
(and its rewrites) for good. Without encrypted listeners the answer is NODATA. With
`resolver_name`, `_dns.NAME` SVCB gets the same records.
"""

from __future__ import annotations

import dns.rdata

from splitdns import wire
from splitdns.config.model import Config

DDR_NAME = "_dns.resolver.arpa"
TTL = 300
WILDCARDS = ("0.0.0.0", "::")


def records(config: Config) -> list[bytes]:
    """The SVCB record data naming each encrypted endpoint, in listen order."""
    target = f"{config.resolver_name}." if config.resolver_name else "."
    plain_hosts = [e.host for e in config.listen]
    out = []
    for priority, listener in enumerate(config.encrypted, start=1):
        hosts = [listener.host] if listener.host not in WILDCARDS else plain_hosts
        v4 = sorted({h for h in hosts if h not in WILDCARDS and ":" not in h})
        v6 = sorted({h for h in hosts if h not in WILDCARDS and ":" in h})
        params = ["alpn=dot" if listener.kind == "dot" else "alpn=h2,http/1.1"]
        params.append(f"port={listener.port}")
        if listener.kind == "doh":
            params.append(f'dohpath="{listener.path}{{?dns}}"')
        if v4:
            params.append("ipv4hint=" + ",".join(v4))
        if v6:
            params.append("ipv6hint=" + ",".join(v6))
        text = f"{priority} {target} {' '.join(params)}"
        rdata = dns.rdata.from_text("IN", "SVCB", text).to_wire()
        assert rdata is not None  # to_wire() without a file returns the bytes
        out.append(rdata)
    return out


def names(config: Config) -> frozenset[str]:
    """The names answered here: `_dns.resolver.arpa`, and `_dns.` + `resolver_name`."""
    own = {f"_dns.{config.resolver_name}"} if config.resolver_name else set()
    return frozenset({DDR_NAME, *own})


def answer(query: wire.Query, config: Config) -> bytes | None:
    """The local answer for the DDR names, or None for every other question."""
    q = query.question
    if q.name not in names(config) or q.qclass != wire.CLASS_IN:
        return None
    if q.qtype != wire.TYPE_SVCB or not config.encrypted:
        return wire.make_local_nodata(query, q.name, TTL)
    return wire.make_answer(query, [(wire.TYPE_SVCB, TTL, rdata) for rdata in records(config)])
