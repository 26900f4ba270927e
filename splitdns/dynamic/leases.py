"""DHCP lease files read into names: dnsmasq's (and OpenWrt's /tmp/dhcp.leases, the same).

A device names itself (DHCP option 12), so the name is sanitised before it is served: one
label of letters, digits and '-' (a dot, a '*', a '_' or anything else drops the lease's
name: no label injection, no wildcard), lower-cased; expired leases are left out. Two
devices claiming one name: the one that held it keeps it (else the first in the file); a
name `hosts` or an UPDATE already gives is never taken (store.owner decides at answer time:
updates win over leases).
"""

from __future__ import annotations

import ipaddress
import logging
import re
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)

_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
MAX_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Lease:
    name: str  # one label, sanitised
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    client: str  # MAC (v4) or IAID/DUID (v6): whose the name is
    expires: int  # unix time; 0: never


def clean_label(claimed: str) -> str | None:
    """The device's own name as one safe label, or None when it cannot be one."""
    label = claimed.strip().lower()
    return label if _LABEL.fullmatch(label) else None


def read_dnsmasq(text: str, now: float | None = None) -> list[Lease]:
    """`EXPIRY MAC IP HOSTNAME CLIENT-ID` lines (IPv4), then after a `duid` line
    `EXPIRY IAID IPV6 HOSTNAME CLIENT-ID` (IPv6); `*` for no name. Unreadable lines are
    skipped (a file being rewritten is read again on its next change)."""
    now = time.time() if now is None else now
    leases: list[Lease] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 4 or fields[0] == "duid":
            continue
        try:
            expires = int(fields[0])
            address = ipaddress.ip_address(fields[2])
        except ValueError:
            continue
        if expires and expires < now:
            continue
        label = clean_label(fields[3]) if fields[3] != "*" else None
        if label is None:
            continue
        leases.append(Lease(label, address, fields[1].lower(), expires))
    return leases


def assign(leases: list[Lease], before: dict[str, str]) -> dict[str, list[Lease]]:
    """Each name's leases (a device may hold an IPv4 and IPv6 lease under one name); a name
    two devices claim goes to the one in `before` (name -> client), else the first."""
    owners: dict[str, str] = {}
    for lease in leases:
        current = owners.get(lease.name)
        if current is None:
            owners[lease.name] = lease.client
        elif current != lease.client:
            if before.get(lease.name) == lease.client:
                owners[lease.name] = lease.client
            log.info("lease name %s claimed by %s and %s: %s keeps it", lease.name, current,
                     lease.client, owners[lease.name])  # fmt: skip
    named: dict[str, list[Lease]] = {}
    for lease in leases:
        if owners.get(lease.name) == lease.client:
            named.setdefault(lease.name, []).append(lease)
    return named
