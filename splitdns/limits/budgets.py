"""Descriptors: raise the soft NOFILE limit, and size the budgets to fit under it.

Each client connection holds one descriptor and each query waiting for an upstream may hold
another (a fresh socket per question). systemd's default soft limit is 1024, so the budgets
as configured (512 connections + 1024 queries) could exhaust it, and then every client's miss
fails. At start the soft limit goes up to the hard one (as unbound and dnsmasq do); when the
result is still too small for the configured budgets, both are scaled down to fit, keeping a
reserve for listeners, upstream TCP/DoT connections, files and logs, and the startup log says
so (`check` prints the same figures).
"""

from __future__ import annotations

import logging
import resource
from dataclasses import dataclass, replace

from splitdns.config.limits import LimitSettings

log = logging.getLogger(__name__)

RESERVE = 96  # descriptors kept out of the budgets: listeners, upstream connections, files
USABLE = 0.85  # of what is left after the reserve, the part the two budgets may hold


@dataclass(frozen=True)
class Budgets:
    """The limits in force: the configured ones, scaled to the descriptor limit."""

    connections: int
    connections_per_client: int
    in_flight: int
    in_flight_per_client: int
    nofile: int
    scaled: bool

    def describe(self) -> str:
        shrunk = " (scaled down to fit the descriptor limit)" if self.scaled else ""
        return (
            f"{self.connections} connections ({self.connections_per_client} per client), "
            f"{self.in_flight} queries in flight ({self.in_flight_per_client} per client), "
            f"NOFILE {self.nofile}{shrunk}"
        )


def raise_nofile() -> int:
    """Raise the soft descriptor limit to the hard one; returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:  # a container may forbid it
            log.warning("could not raise the descriptor limit from %d to %d: %s", soft, hard, exc)
    if soft == resource.RLIM_INFINITY:
        return 1 << 20
    return soft


def hard_nofile() -> int:
    """The limit raise_nofile would reach (the hard one)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return 1 << 20 if hard == resource.RLIM_INFINITY else hard


def current_nofile() -> int:
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 1 << 20 if soft == resource.RLIM_INFINITY else soft


def size(limits: LimitSettings, nofile: int) -> Budgets:
    """The budgets for `limits` under a soft descriptor limit of `nofile`."""
    room = max(16, int((nofile - RESERVE) * USABLE))
    connections, in_flight = limits.connections, limits.in_flight
    scaled = connections + in_flight > room
    if scaled:
        factor = room / (connections + in_flight)
        connections = max(4, int(connections * factor))
        in_flight = max(8, int(in_flight * factor))
    fitted = replace(limits, connections=connections, in_flight=in_flight)
    return Budgets(
        connections,
        min(connections, limits.connections_per_client or fitted.client_connections),
        in_flight,
        min(in_flight, limits.in_flight_per_client or fitted.client_in_flight),
        nofile,
        scaled,
    )
