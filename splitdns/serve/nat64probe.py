"""RFC 7050: whether the upstreams do DNS64, and with which prefix.

An upstream doing DNS64 answers AAAA with addresses inside its NAT64 prefix that embed the
public IPv4 address: the views that rewrite that address make such answers again from the
internal one (or remove them). Asked quietly (upstream/plain.ask_once): a probe that fails
marks no upstream down and counts nowhere.
"""

from __future__ import annotations

import logging
from ipaddress import IPv6Address, IPv6Network

from splitdns import wire
from splitdns.config.dns64 import prefix_from_probe
from splitdns.config.model import Config
from splitdns.upstream.plain import ask_once

log = logging.getLogger(__name__)


async def discover(config: Config) -> tuple[IPv6Network, ...] | None:
    """RFC 7050: ask the upstreams for ipv4only.arpa AAAA; an upstream doing DNS64 answers
    with its own NAT64 prefix, whose AAAA answers embed public addresses (the DNS64 views
    make them again from their rewritten A). Once, at start; logged."""
    query = wire.parse_query(wire.make_query("ipv4only.arpa", wire.TYPE_AAAA))
    plain = [u for u in config.upstreams if u.scheme == "dns" and not u.needs_bootstrap]
    reply = None
    for spec in plain:  # asked quietly: a probe that fails marks no upstream down
        reply = await ask_once(spec.host, spec.port, query, min(config.timeout, 2.0))
        if reply is not None:
            break
    if reply is None:
        log.info("NAT64 prefix discovery (RFC 7050): no answer from the plain upstreams")
        return None
    data, message = reply
    found: list[IPv6Network] = []
    for record in message.records:
        if record.section == wire.ANSWER and record.rtype == wire.TYPE_AAAA:
            raw = data[record.rdata_offset : record.rdata_offset + record.rdlength]
            prefix = prefix_from_probe(IPv6Address(raw))
            if prefix is not None and prefix not in found:
                found.append(prefix)
    if found:
        log.info(
            "NAT64 prefix discovered from the upstreams (RFC 7050): %s; their AAAA answers "
            "there that embed a public address a view rewrites are made again (or removed)",
            ", ".join(map(str, found)),
        )
    else:
        log.info("NAT64 prefix discovery (RFC 7050): the upstreams do no DNS64")
    return tuple(found)
