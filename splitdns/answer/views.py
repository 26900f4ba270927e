"""Who is asking: admission (`allow`) and view selection, as pure functions of the address."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from splitdns.config.model import IPAddress, IPNetwork, View


def client_address(host: str) -> IPAddress:
    """The client's address as views see it: IPv4-mapped IPv6 (dual-stack sockets) is IPv4."""
    address = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_allowed(allow: Iterable[IPNetwork], client: IPAddress) -> bool:
    return any(client in net for net in allow)


def select_view(views: Iterable[View], client: IPAddress) -> View | None:
    """The first view whose clients include `client`; None means plain forwarding."""
    for view in views:
        if view.matches(client):
            return view
    return None


class Admission:
    """`allow` and the view for each client address, decided once: the chain and the
    server's cache-hit path ask both for every query, and a LAN has few clients."""

    def __init__(
        self, allow: tuple[IPNetwork, ...], views: tuple[View, ...], size: int = 4096
    ) -> None:
        self.allow = allow
        self.views = views
        self.size = size
        self._known: dict[IPAddress, tuple[bool, View | None]] = {}

    def decide(self, client: IPAddress) -> tuple[bool, View | None]:
        """(allowed, its view or None)."""
        known = self._known.get(client)
        if known is None:
            if len(self._known) >= self.size:
                self._known.clear()
            known = (is_allowed(self.allow, client), select_view(self.views, client))
            self._known[client] = known
        return known
