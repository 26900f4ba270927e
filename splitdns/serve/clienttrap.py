"""Detects the container trap: every query arriving from one address, the host's gateway.

Behind a docker/podman bridge network with published ports (or docker's userland proxy, or a
NAT in front of the server), every client's query arrives from the bridge gateway. Views then
cannot tell LAN clients apart and the rewrite silently applies to nobody or everybody. Over a
window of real traffic this notices the pattern and logs one clear warning saying what to do.
The check costs one comparison per query and stops for good once two sources were seen.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

WINDOW_SECONDS = 30.0  # decide after this long...
WINDOW_QUERIES = 200  # ...or this many queries, whichever comes first
MIN_QUERIES = 20  # too little traffic proves nothing


def default_gateways(proc: Path = Path("/proc/net")) -> set[str]:
    """The next hops of this host's default routes (IPv4 and IPv6), from /proc."""
    found: set[str] = set()
    try:
        for line in (proc / "route").read_text().splitlines()[1:]:
            fields = line.split()
            if len(fields) > 2 and fields[1] == "00000000" and fields[2] != "00000000":
                found.add(str(ipaddress.IPv4Address(bytes.fromhex(fields[2])[::-1])))
    except OSError:
        pass
    try:
        for line in (proc / "ipv6_route").read_text().splitlines():
            fields = line.split()
            if len(fields) > 4 and fields[1] == "00" and int(fields[4], 16):
                found.add(str(ipaddress.IPv6Address(bytes.fromhex(fields[4]))))
    except (OSError, ValueError):
        pass
    return found


class ClientTrap:
    """Fed every query's source address; warns at most once."""

    def __init__(
        self,
        views_configured: bool,
        clock: Callable[[], float] = time.monotonic,
        gateways: Callable[[], set[str]] = default_gateways,
    ) -> None:
        self.views_configured = views_configured
        self.clock = clock
        self.gateways = gateways
        self.done = False
        self.source: str | None = None
        self.count = 0
        self.started = 0.0

    def saw(self, host: str) -> None:
        if self.source is None:
            self.source, self.started = host, self.clock()
        elif host != self.source:
            self.done = True  # two clients: addresses are real enough
            return
        self.count += 1
        if self.count >= WINDOW_QUERIES or (
            self.count >= MIN_QUERIES and self.clock() - self.started >= WINDOW_SECONDS
        ):
            self.done = True
            self._judge(host)

    def _judge(self, host: str) -> None:
        address = ipaddress.ip_address(host.split("%")[0])
        mapped = getattr(address, "ipv4_mapped", None)
        if mapped is not None:
            address = mapped
        if str(address) in self.gateways():
            why = f"{address}, this host's gateway"
        elif self.views_configured and not address.is_loopback:
            why = f"{address} alone"
        else:
            return
        log.warning(
            "all %d queries so far came from %s: splitdns is probably behind a bridge network, "
            "a proxy or NAT that hides client addresses, so views cannot tell clients apart. "
            "Run it with host networking (compose: network_mode: host) or its own LAN address "
            "(macvlan); see README 'Run it on your LAN'.",
            self.count,
            why,
        )
