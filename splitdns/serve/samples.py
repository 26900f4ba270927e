"""The last hour in 10-second samples, for the dashboard's plots: read off the counters the
server keeps anyway (web/metrics.py's Counts, the cache's stats, the upstream histograms), so
answering a query costs nothing more. 360 samples of a few numbers each.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from splitdns.upstream.transport import LATENCY_BUCKETS

INTERVAL = 10.0
KEPT = 360  # an hour
#: the plot's outcome groups: what a person asks ("was it cached? rewritten? did it fail?")
GROUPS = {
    "cached": "cached",
    "stale": "cached",
    "forwarded": "forwarded",
    "local": "forwarded",
    "rewritten": "rewritten",
    "filtered": "rewritten",
    "refused": "refused",
    "servfail": "servfail",
    "formerr": "other",
    "notimp": "other",
}
SERIES = ("cached", "forwarded", "rewritten", "refused", "servfail", "other")


@dataclass(slots=True)
class Sample:
    """One interval: when it ended (unix time), queries per group, cache hits and misses, and
    per upstream (exchanges, seconds in total, histogram slots) in that interval."""

    at: float
    seconds: float
    queries: dict[str, int]
    hits: int
    misses: int
    upstreams: dict[str, list[float]] = field(default_factory=dict)


@dataclass(slots=True)
class Totals:
    """The counters as they stood at the last sample (differences make the next one)."""

    queries: dict[str, int]
    hits: int
    misses: int
    upstreams: dict[str, list[float]]
    at: float


class History:
    """The ring of samples for one server; `take` reads the counters, `run` every INTERVAL."""

    def __init__(self, server: Callable[[], Any], clock: Callable[[], float] = time.time) -> None:
        self.server = server
        self.clock = clock
        self.samples: deque[Sample] = deque(maxlen=KEPT)
        self.last: Totals | None = None  # read when sampling starts (the server is made)

    def _totals(self) -> Totals:
        srv = self.server()
        queries = dict.fromkeys(SERIES, 0)
        for (_, _, outcome), n in list(srv.counts.queries.items()):
            group = GROUPS.get(outcome, "other")
            queries[group] += n
        stats = srv.cache.stats
        stats_of_upstreams = getattr(srv.upstreams, "stats", None)  # (a test's stand-in has none)
        known = stats_of_upstreams.latency if stats_of_upstreams is not None else {}
        latency = {name: list(slots) for name, slots in known.items()}
        return Totals(queries, stats.hits, stats.misses, latency, self.clock())

    def take(self) -> Sample:
        """The interval since the last sample (a counter that went back, as after a cache
        replaced by a reload, counts from zero)."""
        now = self._totals()
        before = self.last or now
        upstreams = {}
        for name, slots in now.upstreams.items():
            old = before.upstreams.get(name, [0.0] * len(slots))
            upstreams[name] = [max(0.0, a - b) for a, b in zip(slots, old, strict=True)]
        sample = Sample(
            now.at,
            max(0.001, now.at - before.at),
            {k: max(0, now.queries[k] - before.queries[k]) for k in SERIES},
            _grown(now.hits, before.hits),
            _grown(now.misses, before.misses),
            upstreams,
        )
        self.samples.append(sample)
        self.last = now
        return sample

    async def run(self) -> None:
        self.last = self._totals()
        while True:
            await asyncio.sleep(INTERVAL)
            self.take()

    def series(self) -> dict[str, Any]:
        """Columns for the plots: time, queries per second by group, hit ratio, and each
        upstream's mean latency in milliseconds (None where nothing was asked)."""
        samples = list(self.samples)
        names = sorted({n for s in samples for n in s.upstreams})
        out: dict[str, Any] = {"interval": INTERVAL, "time": [round(s.at, 1) for s in samples]}
        out["qps"] = {k: [round(s.queries[k] / s.seconds, 2) for s in samples] for k in SERIES}
        out["hit_ratio"] = [
            round(s.hits / (s.hits + s.misses), 4) if s.hits + s.misses else None for s in samples
        ]
        out["latency_ms"] = {
            name: [_mean_ms(s.upstreams.get(name)) for s in samples] for name in names
        }
        return out

    def percentiles(self, name: str, window: int = 30) -> tuple[float | None, float | None]:
        """(p50, p99) in milliseconds of `name`'s exchanges in the last `window` samples (five
        minutes), else over its whole life; None when it was never asked."""
        slots: list[float] | None = None
        for sample in list(self.samples)[-window:]:
            got = sample.upstreams.get(name)
            if got is not None:
                slots = got if slots is None else [a + b for a, b in zip(slots, got, strict=True)]
        if slots is None or not slots[-2]:
            slots = self.server().upstreams.stats.latency.get(name)
        if not slots or not slots[-2]:
            return None, None
        return quantile_ms(slots, 0.5), quantile_ms(slots, 0.99)


def quantile_ms(slots: list[float], q: float) -> float:
    """The q-quantile of a histogram (slots per bucket, then count and sum), interpolated in
    its bucket as Prometheus's histogram_quantile does; past the last bound: that bound."""
    total = slots[-2]
    rank = q * total
    seen = 0.0
    lower = 0.0
    for bound, n in zip(LATENCY_BUCKETS, slots, strict=False):
        if n and seen + n >= rank:
            return round((lower + (bound - lower) * (rank - seen) / n) * 1000, 3)
        seen += n
        lower = bound
    return round(LATENCY_BUCKETS[-1] * 1000, 3)


def _mean_ms(slots: list[float] | None) -> float | None:
    if not slots or not slots[-2]:
        return None
    return round(slots[-1] / slots[-2] * 1000, 3)


def _grown(now: int, before: int) -> int:
    return now - before if now >= before else now
