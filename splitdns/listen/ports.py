"""Who holds a port, and what to tell a user whose listen address cannot be bound.

`serve` and `doctor` say the same thing about a taken or privileged port: which process holds
it (from /proc, no tools needed), and the fix that fits (systemd-resolved's stub listener, the
capability for ports below 1024, another --listen).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from splitdns.config.model import Endpoint

RESOLVED_FIX = (
    "set DNSStubListener=no in /etc/systemd/resolved.conf and restart systemd-resolved "
    "(or listen on the LAN address only)"
)


class BindError(OSError):
    """A listen address that cannot be bound, with the address, transport and the fix."""

    def __str__(self) -> str:
        return str(self.strerror)


def port_owner(port: int, proto: str = "udp") -> tuple[str, int] | None:
    """(command name, pid) of the process holding a UDP or TCP port, from /proc; None if
    unknown (another user's process is invisible without root)."""
    hex_port = f"{port:04X}"
    inodes: set[str] = set()
    for table in (f"/proc/net/{proto}", f"/proc/net/{proto}6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[1].endswith(":" + hex_port):
                inodes.add(fields[9])
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    return Path(f"/proc/{pid}/comm").read_text().strip(), int(pid)
        except OSError:
            continue
    return None


def command_line(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def is_splitdns(pid: int) -> bool:
    """Whether the process is a `splitdns serve` (the console script or python -m)."""
    argv = command_line(pid)
    return "serve" in argv and any(Path(a).name == "splitdns" for a in argv[:3])


def bind_problem(endpoint: Endpoint, transport: str, exc: OSError) -> BindError:
    """The error `serve` prints when a listen address cannot be bound: what, why, the fix."""
    what = f"cannot listen on {endpoint} ({transport}): {exc.strerror or exc}"
    if exc.errno == errno.EACCES:
        fix = (
            "ports below 1024 need root (splitdns binds, then becomes `user`) or "
            "CAP_NET_BIND_SERVICE (the systemd unit and the container grant it); or pass "
            f"--listen {endpoint.host}:5353 for an unprivileged port"
        )
    elif exc.errno == errno.EADDRINUSE:
        owner = port_owner(endpoint.port, "udp" if transport == "udp" else "tcp")
        who = f"{owner[0]} (pid {owner[1]})" if owner else "another process"
        fix = f"the port is taken by {who}"
        if owner and owner[0].startswith("systemd-resolve"):
            fix += f": {RESOLVED_FIX}"
        elif owner and is_splitdns(owner[1]):
            fix += ": splitdns is already running there"
        else:
            fix += "; stop it, or pass --listen with another address or port"
    elif exc.errno == errno.EADDRNOTAVAIL:
        fix = "no interface of this host has that address (ip -brief address shows them)"
    else:
        fix = "check the address in `listen:` or --listen"
    return BindError(exc.errno or 0, f"{what}; {fix}")
