"""Who is asking: admission (`allow`) and view selection, as pure functions of the address."""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable, Iterable

from splitdns.config.model import IPAddress, IPNetwork, View

log = logging.getLogger(__name__)

REFUSAL_LOG_EVERY = 60.0  # seconds between log lines for one refused address a view names


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
        self,
        allow: tuple[IPNetwork, ...],
        views: tuple[View, ...],
        size: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.allow = allow
        self.views = views
        self.size = size
        self.clock = clock
        self._known: dict[IPAddress, tuple[bool, View | None]] = {}
        self._told: dict[IPAddress, float] = {}  # refused addresses a view names: last logged

    def refused_in_view(self, client: IPAddress, view: View) -> None:
        """A client the mapping puts in a view but not in `allow` was refused: a mistake in
        the mapping, logged once per address and minute (`check` warns about it too)."""
        now = self.clock()
        if now - self._told.get(client, -REFUSAL_LOG_EVERY) < REFUSAL_LOG_EVERY:
            return
        if len(self._told) >= self.size:
            self._told.clear()
        self._told[client] = now
        log.warning(
            "refused %s: view %s names it, but it is outside allow (%s); add it to allow",
            client,
            view.name,
            ", ".join(map(str, self.allow)),
        )

    def decide(self, client: IPAddress) -> tuple[bool, View | None]:
        """(allowed, its view or None)."""
        known = self._known.get(client)
        if known is None:
            if len(self._known) >= self.size:
                self._known.clear()
            known = (is_allowed(self.allow, client), select_view(self.views, client))
            self._known[client] = known
        return known
