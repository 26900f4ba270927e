"""What the server publishes for the operator's side: its counters and the tap's shape.

The query path writes these (a dict increment per answer, a tuple per answer while a
dashboard watches); the web side (web/metrics.py, web/livefeed.py, web/api.py) reads them and
never reaches into the server's internals. Kept here, below both, so neither imports the other.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from typing import Any

QTYPES = {
    1: "A",
    2: "NS",
    5: "CNAME",
    6: "SOA",
    12: "PTR",
    15: "MX",
    16: "TXT",
    28: "AAAA",
    33: "SRV",
    64: "SVCB",
    65: "HTTPS",
    255: "ANY",
}


RECENT_NAMES = 5


class Counts:
    """What the server counts as it answers (no locks: one event loop)."""

    def __init__(self) -> None:
        self.queries: Counter[tuple[str, str, str]] = Counter()
        self.rewrites: Counter[tuple[str, int, str]] = Counter()
        self.reloads: Counter[str] = Counter()
        self.proxy: Counter[str] = Counter()  # PROXY v2 headers: ok, local, missing, ...
        self.ecs: Counter[str] = Counter()  # ECS as the client: used, absent, ambiguous
        self.express: Counter[str] = Counter()  # UDP misses in the express lane: answered, handed
        # the last names each (view, rule) rewrote, for the dashboard: (unix time, the name as
        # text, or as the question's wire bytes from the express lane)
        self.recent: dict[tuple[str, int], deque[tuple[float, str | bytes]]] = {}

    def rewrote(self, view: str, rule: int, name: str | bytes) -> None:
        """Count one rewrite by `rule` of `view` and remember the name (rewrites come with
        misses, never on the cache-hit path)."""
        self.rewrites[(view, rule, "address")] += 1
        recent = self.recent.get((view, rule))
        if recent is None:
            recent = self.recent[(view, rule)] = deque(maxlen=RECENT_NAMES)
        recent.append((time.time(), name))

    def query(self, transport: str, qtype: int, outcome: str) -> None:
        self.queries[query_key(transport, qtype, outcome)] += 1


def query_key(transport: str, qtype: int, outcome: str) -> tuple[str, str, str]:
    """The labels one answered query is counted under (the express lane makes its few once)."""
    return transport, QTYPES.get(qtype, "other"), outcome


TAP_SIZE = 8192  # answers kept a tick (32 k a second); beyond, neither shown nor counted

#: (host, view, query bytes[, the stored rewrite's changes]) for a UDP cache hit, and
#: (host, view, query bytes, changes, transport) for a TCP or DoT one; (host, view,
#: query bytes, outcome, seconds,
#: [(old, new, rule)] with addresses as bytes, upstream) for the express lane's miss; (host,
#: view, name, qtype, outcome, seconds, changes, upstream, transport) from the chain
Tapped = tuple[Any, ...]
