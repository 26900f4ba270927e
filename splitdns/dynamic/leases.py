"""DHCP lease files read into names: dnsmasq's (and OpenWrt's /tmp/dhcp.leases, the same),
Kea's memfile CSV (DHCPv4 and DHCPv6) and ISC dhcpd's dhcpd.leases.

A device names itself (DHCP option 12), so the name is sanitised before it is served: one
label of letters, digits and '-' (a dot, a '*', a '_' or anything else drops the lease's
name: no label injection, no wildcard), lower-cased; expired leases are left out. Two
devices claiming one name: the one that held it keeps it (else the first in the file); a
name `hosts` or an UPDATE already gives is never taken (store.owner decides at answer time:
updates win over leases).
"""

from __future__ import annotations

import calendar
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


def read_kea_csv(text: str, now: float | None = None) -> list[Lease]:
    """Kea's memfile (kea-leases4.csv, kea-leases6.csv): an append log with a header line;
    the last line for an address wins; a lease released (valid_lifetime 0), declined or
    reclaimed (state != 0), or expired is gone. Kea writes the host name qualified: its
    first label is the device's."""
    now = time.time() if now is None else now
    lines = text.splitlines()
    if not lines:
        return []
    header = [h.strip() for h in lines[0].split(",")]
    if "address" not in header or "hostname" not in header or "expire" not in header:
        return []
    column = {name: i for i, name in enumerate(header)}
    owner = "hwaddr" if "hwaddr" in column and "duid" not in column else "duid"
    latest: dict[str, list[str]] = {}
    for line in lines[1:]:
        fields = line.split(",")
        if len(fields) >= len(header):
            latest[fields[column["address"]]] = fields
    leases = []
    for address_text, fields in latest.items():
        try:
            address = ipaddress.ip_address(address_text)
            expires = int(fields[column["expire"]])
            lifetime = int(fields[column["valid_lifetime"]]) if "valid_lifetime" in column else 1
            state = int(fields[column["state"]] or 0) if "state" in column else 0
        except ValueError:
            continue
        if lifetime == 0 or state != 0 or (expires and expires < now):
            continue
        label = clean_label(fields[column["hostname"]].split(".")[0])
        if label is not None:
            client = fields[column[owner]].lower() if owner in column else address_text
            leases.append(Lease(label, address, client, expires))
    return leases


_BLOCK = re.compile(r"lease\s+([0-9a-fA-F.:]+)\s*\{(.*?)\}", re.S)


def read_dhcpd(text: str, now: float | None = None) -> list[Lease]:
    """ISC dhcpd's dhcpd.leases: `lease ADDRESS { ... }` blocks, the last for an address wins;
    only `binding state active` ones whose `ends` (UTC) is still ahead, named by their
    `client-hostname`."""
    now = time.time() if now is None else now
    latest: dict[str, str] = {}
    for match in _BLOCK.finditer(text):
        latest[match.group(1)] = match.group(2)
    leases = []
    for address_text, body in latest.items():
        state = re.search(r"^\s*binding state (\w+);", body, re.M)
        name = re.search(r'client-hostname "([^"]*)";', body)
        mac = re.search(r"hardware ethernet ([0-9a-fA-F:]+);", body)
        ends = re.search(r"ends \d (\d{4}/\d{2}/\d{2} \d{2}:\d{2}:\d{2});", body)
        if state is None or state.group(1) != "active" or name is None:
            continue
        try:
            address = ipaddress.ip_address(address_text)
            expires = (
                int(calendar.timegm(time.strptime(ends.group(1), "%Y/%m/%d %H:%M:%S")))
                if ends
                else 0
            )
        except ValueError:
            continue
        if expires and expires < now:
            continue
        label = clean_label(name.group(1))
        if label is not None:
            leases.append(
                Lease(label, address, mac.group(1).lower() if mac else address_text, expires)
            )
    return leases


READERS = {"dnsmasq": read_dnsmasq, "kea": read_kea_csv, "dhcpd": read_dhcpd}


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
