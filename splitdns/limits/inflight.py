"""The cap on queries in flight: what bounds upstream sockets, and so descriptors.

Every query that goes past the cache may hold an upstream socket (a fresh random port per
question, RFC 5452) until its answer comes. A client flooding new names would otherwise open
one socket per question until the process runs out of descriptors and every other client's
miss fails. So each query past the cache takes a slot here and gives it back when answered:
all clients together hold at most `total`, one address at most `per_client`. A client over its
share is the one that waits: its new questions are dropped (UDP; the stub retries) or get
SERVFAIL (streams) while its own earlier ones are answered, and nobody else notices.

Many addresses, each within its share, could still fill the pool together (a dozen devices
asking a silent domain). So half the pool is a reserve: an address already holding HEAVY
slots gets none of it, and a light client (a phone asking its next name) always finds one.
The share is per address, not per /24 or /64: on a LAN those prefixes hold every device, so a
prefix share would make one device's flood everybody's. Counted by reason for /metrics
(client_share, reserve, full).
"""

from __future__ import annotations

from collections import Counter

HEAVY = 16  # slots an address may hold and still be given one of the reserve


class InFlight:
    """Slots for queries past the cache, per address and in all."""

    __slots__ = ("by_host", "count", "per_client", "refused", "total")

    def __init__(self, total: int, per_client: int) -> None:
        self.total = total
        self.per_client = per_client
        self.count = 0
        self.by_host: dict[str, int] = {}
        self.refused: Counter[str] = Counter()  # client_share | full

    def take(self, host: str, shared: bool = False) -> bool:
        """A slot for one of `host`'s queries; False (counted) when it must not be asked.
        `shared`: the sender speaks for many clients (a trusted ECS sender): no share."""
        held = self.by_host.get(host, 0)
        if held >= self.per_client and not shared:
            self.refused["client_share"] += 1
            return False
        if self.count >= self.total:
            self.refused["full"] += 1
            return False
        if held >= HEAVY and self.count >= self.total - self.total // 2 and not shared:
            self.refused["reserve"] += 1
            return False
        self.by_host[host] = held + 1
        self.count += 1
        return True

    def give_back(self, host: str) -> None:
        held = self.by_host.get(host)
        if held is None:  # (nothing held: a bug elsewhere must not drive the count negative)
            return
        if held > 1:
            self.by_host[host] = held - 1
        else:
            del self.by_host[host]
        self.count -= 1
