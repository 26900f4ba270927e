"""Prometheus metrics: plain counters on the hot path, turned into metric families at scrape.

Incrementing a dict entry costs far less than a labelled prometheus_client Counter, and the
cache-hit path counts every answer. Labels are all low-cardinality and server-controlled: a
fixed set of query types plus "other", outcomes, transports, configured upstreams, view names
and rule indexes; never a client-controlled string. Served at /metrics (web/app.py).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from splitdns.serve.published import Counts
from splitdns.upstream.transport import LATENCY_BUCKETS
from splitdns.web.livefeed import LiveFeed

log = logging.getLogger(__name__)


def _by_result(name: str, documentation: str, counter: Counter[str]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=["result"])
    for result, n in sorted(counter.items()):
        family.add_metric([result], n)
    return family


class SplitdnsCollector(Collector):
    """Reads the server's counters at scrape time (`server` is looked up anew on each scrape)."""

    def __init__(self, server: Callable[[], object], feed: LiveFeed) -> None:
        self.feed = feed
        self.server = server

    def collect(self) -> Iterator[Metric]:
        srv = self.server()
        counts: Counts = srv.counts  # type: ignore[attr-defined]
        queries = CounterMetricFamily(
            "splitdns_queries", "Queries answered", labels=["transport", "qtype", "outcome"]
        )
        for (transport, qtype, outcome), n in sorted(counts.queries.items()):
            queries.add_metric([transport, qtype, outcome], n)
        yield queries
        rewrites = CounterMetricFamily(
            "splitdns_rewrites",
            "Addresses rewritten (or removed by aaaa: drop), by view, rule and where they sat",
            labels=["view", "rule", "record"],
        )
        for (view, rule, record), n in sorted(counts.rewrites.items()):
            label = str(rule) if rule >= 0 else ("aaaa_drop" if rule == -1 else "dns64")
            rewrites.add_metric([view, label, record], n)
        yield rewrites
        yield _by_result(
            "splitdns_proxy_headers",
            "PROXY v2 headers: ok, local (the proxy itself), missing or malformed from a trusted "
            "proxy, untrusted (a header from anyone else); all but ok/local are dropped",
            counts.proxy,
        )
        yield _by_result(
            "splitdns_ecs_clients",
            "Queries from trusted_ecs senders: used (a /32 or /128 named the client), absent "
            "(the sender is the client), ambiguous (a shorter prefix: REFUSED)",
            counts.ecs,
        )
        yield _by_result(
            "splitdns_express_lane",
            "UDP cache misses the express lane took: answered (by itself) or handed (to the "
            "chain, after asking upstream: unusual replies, failures)",
            counts.express,
        )
        yield from _limit_families(srv)
        yield from _dynamic_families(srv)
        handshakes = CounterMetricFamily(
            "splitdns_tls_handshakes",
            "TLS handshakes of DoT and DoH clients: full, or resumed (a session ticket or ID)",
            labels=["transport", "kind"],
        )
        encrypted = getattr(srv, "encrypted", None)
        for (transport, kind), n in sorted(getattr(encrypted, "handshakes", {}).items()):
            handshakes.add_metric([transport, kind], n)
        yield handshakes
        yield GaugeMetricFamily(
            "splitdns_dashboard_streams",
            "Live query streams open on the dashboard (while none is, nothing is tapped)",
            value=len(self.feed.subscribers),
        )
        reloads = CounterMetricFamily("splitdns_config_reloads", "Reloads", labels=["result"])
        for result in ("ok", "rejected"):
            reloads.add_metric([result], counts.reloads[result])
        yield reloads
        stats = srv.upstreams.stats  # type: ignore[attr-defined]
        latency = HistogramMetricFamily(
            "splitdns_upstream_seconds", "Upstream exchange latency", labels=["upstream"]
        )
        for upstream, slots in sorted(stats.latency.items()):
            cumulative, buckets = 0.0, []
            for bound, n in zip(LATENCY_BUCKETS, slots, strict=False):
                cumulative += n
                buckets.append((repr(bound), cumulative))
            buckets.append(("+Inf", slots[-2]))
            latency.add_metric([upstream], buckets, slots[-1])
        yield latency
        errors = CounterMetricFamily(
            "splitdns_upstream_errors", "Upstream failures", labels=["upstream", "kind"]
        )
        for (upstream, kind), n in sorted(stats.errors_by.items()):
            errors.add_metric([upstream, kind], n)
        yield errors
        answered = CounterMetricFamily(
            "splitdns_upstream_answers", "Upstream replies used", labels=["upstream"]
        )
        for upstream, n in sorted(stats.answered.items()):
            answered.add_metric([upstream], n)
        yield answered
        up = GaugeMetricFamily(
            "splitdns_upstream_up", "1 in rotation, 0 resting after failures", labels=["upstream"]
        )
        srtt = GaugeMetricFamily(
            "splitdns_upstream_srtt_seconds", "Smoothed round-trip time", labels=["upstream"]
        )
        for upstream, in_rotation, rtt in srv.upstreams.upstream_health():  # type: ignore[attr-defined]
            up.add_metric([upstream], 1 if in_rotation else 0)
            if rtt is not None:
                srtt.add_metric([upstream], rtt)
        yield up
        yield srtt
        yield CounterMetricFamily(
            "splitdns_upstream_forged_replies",
            "Replies rejected (wrong source, ID or question)",
            value=stats.forged,
        )
        cache = srv.cache  # type: ignore[attr-defined]
        yield GaugeMetricFamily("splitdns_cache_entries", "Entries in the cache", value=len(cache))
        yield GaugeMetricFamily(
            "splitdns_cache_bytes", "Bytes the cache accounts", value=cache.bytes
        )
        for name, value in (
            ("hits", cache.stats.hits),
            ("misses", cache.stats.misses),
            ("evictions", cache.stats.evictions),
            ("stale", cache.stats.stale),
            ("prefetches", cache.stats.prefetches),
        ):
            yield CounterMetricFamily(f"splitdns_cache_{name}", f"Cache {name}", value=value)
        yield CounterMetricFamily(
            "splitdns_rebinding_removed",
            "Private addresses removed from public answers by the rebinding guard",
            value=stats.rebinding_removed,
        )
        yield CounterMetricFamily(
            "splitdns_rate_limited",
            "Queries refused or dropped by rate limits",
            value=srv.limiter.limited,  # type: ignore[attr-defined]
        )


def _limit_families(srv: object) -> Iterator[Metric]:
    """The connection budget and the in-flight cap: what is held, what was refused, the sizes."""
    connections = srv.connections  # type: ignore[attr-defined]
    inflight = srv.inflight  # type: ignore[attr-defined]
    sized = srv.budgets  # type: ignore[attr-defined]
    yield GaugeMetricFamily(
        "splitdns_connections_open",
        "Client connections open (TCP, DoT, DoH)",
        value=len(connections),
    )
    yield _by_result(
        "splitdns_connections_closed",
        "Client connections refused at accept or closed early: budget or client_share (refused, "
        "every connection busy), evicted_budget or evicted_client_share (an idle or not-allowed "
        "one closed to make room), handshake, idle, max_age, request_timeout",
        connections.closed,
    )
    yield GaugeMetricFamily(
        "splitdns_queries_in_flight",
        "Queries past the cache awaiting an answer",
        value=inflight.count,
    )
    yield _by_result(
        "splitdns_queries_in_flight_refused",
        "Queries not asked: client_share (that client holds its share), reserve (it holds many "
        "and half the slots are taken) or full (all slots held)",
        inflight.refused,
    )
    sizes = GaugeMetricFamily("splitdns_limit", "Limits in force", labels=["limit"])
    for name in ("connections", "connections_per_client", "in_flight", "in_flight_per_client"):
        sizes.add_metric([name], getattr(sized, name))
    sizes.add_metric(["nofile"], sized.nofile)
    yield sizes


def _dynamic_families(srv: object) -> Iterator[Metric]:
    """The LAN's own names (`dynamic:`): updates by result, names held by zone and source."""
    local = getattr(srv, "local", None)
    if local is None:
        return
    yield _by_result(
        "splitdns_dynamic_updates",
        "RFC 2136 updates: ok, or why refused (unsigned, badkey, badsig, badtime, refused: a "
        "sender outside allow_update, notauth, notzone, nxdomain, yxdomain, nxrrset, yxrrset, "
        "formerr, servfail: the journal could not be written)",
        local.updates.counts,
    )
    names = GaugeMetricFamily(
        "splitdns_dynamic_names", "Names held in the dynamic zones", labels=["zone", "source"]
    )
    for zone in local.store.zones.values():
        names.add_metric([zone.name, "update"], len(zone.names))
        names.add_metric([zone.name, "lease"], len(zone.leased))
    yield names
