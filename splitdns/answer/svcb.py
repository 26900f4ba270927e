"""HTTPS and SVCB records (RFC 9460): where their address hints sit, and removing some of them.

The walk has already had dnspython parse each record (a malformed one is refused, never guessed
at), so the SvcParams can be stepped through as (key, length, value) to find the hint values.
Rewriting a hint patches its 4 or 16 bytes in place; every other parameter (alpn, port, ech,
mandatory, keys splitdns does not know) stays byte-for-byte. Removing hints changes lengths,
so that message is rebuilt by dnspython.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable
from dataclasses import dataclass

import dns.message
import dns.rdata
import dns.rdatatype
import dns.rdtypes.svcbbase as svcbbase

from splitdns import wire

IPV4HINT, IPV6HINT = 4, 6
HINT_NAMES = {IPV4HINT: "ipv4hint", IPV6HINT: "ipv6hint"}
TYPES = frozenset({wire.TYPE_SVCB, wire.TYPE_HTTPS})


@dataclass(frozen=True, slots=True)
class Hint:
    """One address inside an ipv4hint or ipv6hint value: where it sits in the message."""

    key: int
    offset: int
    address: ipaddress.IPv4Address | ipaddress.IPv6Address


def target_and_hints(data: bytes, record: wire.Record) -> tuple[str, list[Hint]]:
    """The record's TargetName ("" for the root, i.e. the owner itself) and its hint addresses."""
    end = record.rdata_offset + record.rdlength
    target, pos = wire.read_name(data, record.rdata_offset + 2)
    hints: list[Hint] = []
    while pos + 4 <= end:
        key, length = struct.unpack_from("!HH", data, pos)
        pos += 4
        size = 4 if key == IPV4HINT else 16 if key == IPV6HINT else 0
        if size and length % size == 0:
            for at in range(pos, pos + length, size):
                raw = data[at : at + size]
                address = ipaddress.IPv4Address(raw) if size == 4 else ipaddress.IPv6Address(raw)
                hints.append(Hint(key, at, address))
        pos += length
    return target, hints


def remove_v6_hints(
    data: bytes, drop: Callable[[ipaddress.IPv6Address], bool]
) -> tuple[bytes, list[tuple[str, ipaddress.IPv6Address]], set[tuple[int, str, int]]]:
    """Take the ipv6hint addresses `drop` picks out of every HTTPS/SVCB record of the answer
    and additional sections. Returns the rebuilt message (or `data` unchanged), what went
    (owner, address), and the (section, owner, type) RRsets that changed (for their RRSIGs)."""
    parsed = dns.message.from_wire(data, ignore_trailing=True)
    removed: list[tuple[str, ipaddress.IPv6Address]] = []
    changed: set[tuple[int, str, int]] = set()
    for section, rrsets in ((wire.ANSWER, parsed.answer), (wire.ADDITIONAL, parsed.additional)):
        for rrset in rrsets:
            if int(rrset.rdtype) not in TYPES:
                continue
            owner = rrset.name.to_text(omit_final_dot=True).lower()
            owner = "" if owner == "@" else owner
            kept_rdatas = []
            for rdata in rrset:
                new, gone = _without(rdata, drop)
                removed += [(owner, a) for a in gone]
                kept_rdatas.append(new)
            if any(a is not b for a, b in zip(kept_rdatas, rrset, strict=True)):
                ttl = rrset.ttl
                rrset.clear()  # type: ignore[no-untyped-call]
                for rdata in kept_rdatas:
                    rrset.add(rdata, ttl)
                changed.add((section, owner, int(rrset.rdtype)))
    if not removed:
        return data, [], set()
    return bytes(parsed.to_wire()), removed, changed


def _without(
    rdata: dns.rdata.Rdata, drop: Callable[[ipaddress.IPv6Address], bool]
) -> tuple[dns.rdata.Rdata, list[ipaddress.IPv6Address]]:
    params = dict(rdata.params)  # type: ignore[attr-defined]
    hint = params.get(svcbbase.ParamKey.IPV6HINT)
    if hint is None:
        return rdata, []
    addresses = [ipaddress.IPv6Address(a) for a in hint.addresses]
    gone = [a for a in addresses if drop(a)]
    if not gone:
        return rdata, []
    kept = [str(a) for a in addresses if not drop(a)]
    if kept:
        params[svcbbase.ParamKey.IPV6HINT] = svcbbase.IPv6HintParam(kept)  # type: ignore[no-untyped-call]
    else:
        del params[svcbbase.ParamKey.IPV6HINT]
        mandatory = params.get(svcbbase.ParamKey.MANDATORY)
        if mandatory is not None and svcbbase.ParamKey.IPV6HINT in mandatory.keys:
            keys = [k for k in mandatory.keys if k != svcbbase.ParamKey.IPV6HINT]
            if keys:
                params[svcbbase.ParamKey.MANDATORY] = svcbbase.MandatoryParam(keys)  # type: ignore[no-untyped-call]
            else:
                del params[svcbbase.ParamKey.MANDATORY]
    return rdata.replace(params=params), gone
