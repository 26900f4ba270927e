"""Dynamic public addresses: `from: {follow: NAME}` or `from: {interface: IFACE}`.

A followed name is resolved through the configured upstreams and again when its TTL runs out
(at least every second, at most every hour); an interface's IPv4 address is read every
INTERFACE_POLL seconds. A change is applied like a reload (the view's cached answers are
dropped) and logged; until the first address is known the rule rewrites nothing.
"""

from __future__ import annotations

import asyncio
import fcntl
import ipaddress
import logging
import socket
import struct
from collections.abc import Callable
from dataclasses import replace

from splitdns import wire
from splitdns.config.model import Config, Rule
from splitdns.config.nat import NatSettings
from splitdns.upstream.forwarder import Forwarder
from splitdns.upstream.transport import UpstreamFailure

log = logging.getLogger(__name__)

MIN_WAIT, MAX_WAIT, RETRY = 1.0, 3600.0, 10.0
INTERFACE_POLL = 10.0
SIOCGIFADDR = 0x8915


def source_key(rule: Rule) -> str | None:
    """What a dynamic rule tracks: "dns:NAME" or "if:IFACE" (None for a literal `from`)."""
    if rule.follow:
        return f"dns:{rule.follow}"
    if rule.interface:
        return f"if:{rule.interface}"
    return None


def followed(config: Config) -> set[str]:
    return {k for v in config.views for r in v.rules if (k := source_key(r)) is not None}


def interface_address(name: str) -> ipaddress.IPv4Address:
    """The interface's (first) IPv4 address, by ioctl: no subprocess, works as nobody."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            raw = fcntl.ioctl(sock.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
        except OSError as exc:
            raise ValueError(f"interface {name}: {exc.strerror or exc}") from None
    return ipaddress.IPv4Address(raw[20:24])


async def resolve_a(upstreams: Forwarder, name: str) -> tuple[ipaddress.IPv4Address, int]:
    """The first A record for `name` (through CNAMEs) and its TTL."""
    query = wire.parse_query(wire.make_query(name, wire.TYPE_A))
    reply = await upstreams.resolve(query)
    for record in reply.message.section(wire.ANSWER):
        if record.rtype == wire.TYPE_A and record.rdlength == 4:
            address = ipaddress.IPv4Address(
                reply.data[record.rdata_offset : record.rdata_offset + 4]
            )
            ttl = struct.unpack_from("!I", reply.data, record.ttl_offset)[0]
            return address, ttl
    raise ValueError(f"{name} has no A record")


def with_address(config: Config, key: str, address: ipaddress.IPv4Address) -> Config:
    """The config with every rule tracking `key` pointed at `address`."""
    source = ipaddress.ip_network(f"{address}/32")
    views = tuple(
        replace(
            view,
            rules=tuple(
                replace(r, source=source, active=True) if source_key(r) == key else r
                for r in view.rules
            ),
        )
        for view in config.views
    )
    return replace(config, views=views)


def carry_over(old: Config, new: Config) -> Config:
    """Keep what followed names resolved to across a reload of the file."""
    known = {
        source_key(r): r.source.network_address
        for v in old.views
        for r in v.rules
        if source_key(r) and r.active
    }
    for name in followed(new):
        if current(new, name) is not None:  # the new config already knows (a follow update)
            continue
        address = known.get(name)
        if isinstance(address, ipaddress.IPv4Address):
            new = with_address(new, name, address)
    return new


def current(config: Config, key: str) -> ipaddress.IPv4Address | None:
    for view in config.views:
        for rule in view.rules:
            if source_key(rule) == key and rule.active:
                address = rule.source.network_address
                return address if isinstance(address, ipaddress.IPv4Address) else None
    return None


async def follow_forever(
    config: Callable[[], Config],
    upstreams: Callable[[], Forwarder],
    apply: Callable[[Config], object],
) -> None:
    """Re-resolve followed names as their TTLs expire; runs until cancelled.

    Handed the running config, the current upstreams and the server's reload (callbacks, so
    this module needs nothing of the server), it applies each change like a reload.
    """
    while True:
        wait = MAX_WAIT
        for key in sorted(followed(config())):
            kind, _, name = key.partition(":")
            try:
                if kind == "dns":
                    address, ttl = await resolve_a(upstreams(), name)
                else:
                    address, ttl = interface_address(name), int(INTERFACE_POLL)
            except (UpstreamFailure, ValueError, wire.WireError) as exc:
                previous = current(config(), key)
                state = f"keeping {previous}" if previous else "its rules rewrite nothing yet"
                log.warning("follow: cannot resolve %s (%s); %s", name, exc, state)
                wait = min(wait, RETRY)
                continue
            previous = current(config(), key)
            if previous != address:
                apply(with_address(config(), key, address))
                log.info("follow: %s is now %s (was %s)", name, address, previous or "unresolved")
            wait = min(wait, max(MIN_WAIT, float(ttl)))
        await asyncio.sleep(wait if followed(config()) else RETRY)


async def resolved_nat(config: Config) -> NatSettings | None:
    """The `nat:` section with a dynamic `public` replaced by its current address.

    Raises ValueError (or UpstreamFailure) when the address cannot be found.
    """
    nat = config.nat
    if nat is None or not nat.dynamic:
        return nat
    if nat.public_follow:
        ups = Forwarder(config)
        try:
            address, _ = await resolve_a(ups, nat.public_follow)
        finally:
            await ups.aclose()
    else:
        address = interface_address(nat.public_interface or "")
    return replace(nat, public=address)
