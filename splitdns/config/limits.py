"""The `limits:` section: what one device on the LAN may take of the server.

DNS is the one service a LAN cannot lose, and a LAN has devices nobody audits. These bounds
are the ones the most trusted servers keep (unbound's incoming-num-tcp, tcp-idle-timeout,
num-queries-per-thread; dnsdist's per-client connection cap and maximum connection duration;
BIND's tcp-clients and recursive-clients): one connection budget for TCP, DoT and DoH counted
from accept, each address's share of it, deadlines for a handshake, a request and a
connection's whole life, and a cap on queries waiting for an upstream (each may hold a socket).
`0` in a share means "a fair part of the total" (see `share`); the serve side sizes the
totals from the process's descriptor limit (limits/budgets.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from splitdns.config.tree import Node


@dataclass(frozen=True)
class LimitSettings:
    """Bounds on connections and queries in flight (every one counted in metrics)."""

    connections: int = 512  # TCP, DoT and DoH client connections together
    connections_per_client: int = 0  # 0: connections // 8 (at least 4)
    handshake_timeout: float = 5.0  # seconds for a TLS handshake (and a PROXY header)
    request_timeout: float = 5.0  # DoH: seconds for one request's headers and body
    connection_max_age: float = 600.0  # seconds; then closed when next idle
    streams_per_connection: int = 32  # queries in progress on one TCP/DoT/DoH connection
    buffered_per_connection: int = 131072  # bytes of unfinished DoH request bodies
    in_flight: int = 1024  # queries waiting for an upstream, all clients together
    in_flight_per_client: int = 0  # 0: in_flight // 4 (at least 16)
    raise_nofile: bool = True  # raise the soft descriptor limit to the hard one at start

    @property
    def client_connections(self) -> int:
        return self.connections_per_client or share(self.connections, 4)

    @property
    def client_in_flight(self) -> int:
        return self.in_flight_per_client or share(self.in_flight, 16, 4)


def share(total: int, floor: int, divisor: int = 8) -> int:
    """One address's default part of a budget (an eighth of the connections, a quarter of the
    queries in flight: a browser's page asks dozens of new names at once), never below
    `floor` nor above all."""
    return min(total, max(floor, total // divisor))


INT_KEYS = {
    "connections": (1, 1_000_000),
    "connections_per_client": (0, 1_000_000),
    "streams_per_connection": (1, 1000),
    "buffered_per_connection": (1024, 1 << 30),
    "in_flight": (1, 1_000_000),
    "in_flight_per_client": (0, 1_000_000),
}
SECONDS_KEYS = {
    "handshake_timeout": (0.5, 300.0),
    "request_timeout": (0.5, 300.0),
    "connection_max_age": (1.0, 86400.0 * 7),
}
KEYS = frozenset({*INT_KEYS, *SECONDS_KEYS, "raise_nofile"})


def parse_limits(node: Node, settings: LimitSettings) -> LimitSettings:
    """`limits:` over `settings` (which carries a top-level tcp_max_connections, if given)."""
    keys = node.mapping(KEYS)
    values: dict[str, object] = {}
    for key, (low, high) in INT_KEYS.items():
        if key in keys:
            values[key] = keys[key].integer(minimum=low, maximum=high)
    for key, (slow, shigh) in SECONDS_KEYS.items():
        if key in keys:
            values[key] = keys[key].number(minimum=slow, maximum=shigh)
    settings = replace(settings, **values)  # type: ignore[arg-type]
    if "raise_nofile" in keys:
        settings = replace(settings, raise_nofile=keys["raise_nofile"].boolean())
    for key, total in (
        ("connections_per_client", settings.connections),
        ("in_flight_per_client", settings.in_flight),
    ):
        if key in keys and getattr(settings, key) > total:
            raise keys[key].error(f"is above the total it is a share of ({total})")
    return settings
