"""Per-client query rate limits: a token bucket per address, bounded memory, LAN exempt.

Checked once per query before anything else (cache hits included), so a flooding client is
held back while everyone else is served. Clients in `exempt` (by default loopback and private
ranges: the LAN) are never limited.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from splitdns.answer.views import client_address, is_allowed
from splitdns.config.model import RateLimitSettings


class RateLimiter:
    def __init__(self, settings: RateLimitSettings, clock: Callable[[], float] = time.monotonic):
        self.settings = settings
        self.clock = clock
        self._buckets: dict[str, list[float]] = {}  # host -> [tokens, last refill time]
        self._exempt: dict[str, bool] = {}
        self.limited = 0

    def allow(self, host: str) -> bool:
        """Take one token for `host`; False when it has none left."""
        settings = self.settings
        if not settings.enabled:
            return True
        exempt = self._exempt.get(host)
        if exempt is None:
            exempt = is_allowed(settings.exempt, client_address(host))
            if len(self._exempt) >= settings.table_size:
                self._exempt.clear()
            self._exempt[host] = exempt
        if exempt:
            return True
        now = self.clock()
        bucket = self._buckets.get(host)
        if bucket is None:
            if len(self._buckets) >= settings.table_size:
                self._evict(now)
            bucket = self._buckets[host] = [settings.burst, now]
        tokens = min(settings.burst, bucket[0] + (now - bucket[1]) * settings.qps)
        bucket[1] = now
        if tokens < 1:
            bucket[0] = tokens
            self.limited += 1
            return False
        bucket[0] = tokens - 1
        return True

    def _evict(self, now: float) -> None:
        """Forget clients whose bucket has refilled (they lose nothing); if none, start over."""
        full = [
            host
            for host, (tokens, last) in self._buckets.items()
            if tokens + (now - last) * self.settings.qps >= self.settings.burst
        ]
        for host in full:
            del self._buckets[host]
        if len(self._buckets) >= self.settings.table_size:
            self._buckets.clear()

    def __len__(self) -> int:
        return len(self._buckets)
