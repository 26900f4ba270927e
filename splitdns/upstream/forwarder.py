"""Which upstreams a question goes to: per-domain groups (longest suffix wins), else default.

The forwarder builds one UpstreamGroup per `upstreams.domains` entry and one for the default
list, all sharing one stats object and one health table keyed by upstream (so a reload keeps
what was learnt about an upstream that stays). It also knows the RFC 6303 reverse zones kept on
the LAN: those are answered locally unless a domain entry sends them somewhere.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import replace

from splitdns import wire
from splitdns.config.model import Config, resolv_conf_upstreams
from splitdns.config.upstreams import Forwarding, UpstreamSpec
from splitdns.upstream.bootstrap import Bootstrap
from splitdns.upstream.doh import DnsOverHttps
from splitdns.upstream.dot import DnsOverTls
from splitdns.upstream.group import Resolution, UpstreamGroup
from splitdns.upstream.health import Health
from splitdns.upstream.plain import PlainDNS
from splitdns.upstream.transport import Handover, OnDone, Reply, Transport, UpstreamStats

log = logging.getLogger(__name__)


def bootstrap_upstreams(config: Config) -> tuple[UpstreamSpec, ...]:
    """`upstreams.bootstrap`, else the plain upstreams configured anywhere, else resolv.conf."""
    if config.forwarding.bootstrap:
        return config.forwarding.bootstrap
    plain = tuple(s for s in every_upstream(config) if s.scheme == "dns")
    return plain or resolv_conf_upstreams()


def only(config: Config, spec: UpstreamSpec) -> Config:
    """The config asking just `spec` for everything (doctor checks upstreams one by one)."""
    forwarding = replace(config.forwarding, domains=(), bootstrap=bootstrap_upstreams(config))
    return replace(config, upstreams=(spec,), forwarding=forwarding)


def every_upstream(config: Config) -> tuple[UpstreamSpec, ...]:
    """Each configured upstream once, default ones first."""
    every = itertools.chain(config.upstreams, *(specs for _, specs in config.forwarding.domains))
    return tuple(dict.fromkeys(every))


class Forwarder:
    """Routes each question to its group and asks it."""

    def __init__(
        self,
        config: Config,
        stats: UpstreamStats | None = None,
        health: dict[str, Health] | None = None,
    ) -> None:
        self.stats = stats or UpstreamStats()
        self.health: dict[str, Health] = health if health is not None else {}
        self.forwarding: Forwarding = config.forwarding
        self.bootstrap = Bootstrap(bootstrap_upstreams(config), config.timeout)
        self._transports: dict[UpstreamSpec, Transport] = {}

        def group(specs: Sequence[UpstreamSpec], domain: str) -> UpstreamGroup:
            return UpstreamGroup(
                [self._transport(s) for s in specs],
                config.timeout,
                self.stats,
                config.forwarding.strategy,
                config.forwarding.parallel_width,
                self.health,
                domain,
            )

        self.default = group(config.upstreams, "")
        self.routes = {domain: group(specs, domain) for domain, specs in self.forwarding.domains}
        self._longest = max((d.count(".") + 1 for d in self.routes), default=0)

    def _transport(self, spec: UpstreamSpec) -> Transport:
        """One transport per upstream, shared by every group that lists it."""
        known = self._transports.get(spec)
        if known is None:
            ca = self.forwarding.ca_file
            if spec.scheme == "tls":
                known = DnsOverTls(spec, self.stats, self.bootstrap, ca)
            elif spec.scheme == "https":
                known = DnsOverHttps(spec, self.stats, self.bootstrap, ca)
            else:
                known = PlainDNS(
                    spec,
                    self.stats,
                    self.forwarding.case_randomization,
                    self.forwarding.socket_pool,
                )
            self._transports[spec] = known
        return known

    def route(self, name: str) -> tuple[str | None, UpstreamGroup]:
        """The longest configured domain that `name` is in or under, and its group."""
        if self.routes:
            labels = name.split(".") if name else []
            for size in range(min(len(labels), self._longest), 0, -1):
                suffix = ".".join(labels[-size:])
                found = self.routes.get(suffix)
                if found is not None:
                    return suffix, found
        return None, self.default

    async def resolve(self, query: wire.Query) -> Reply:
        return await self.route(query.question.name)[1].resolve(query)

    def ask(
        self, query: wire.Query, on_done: OnDone, handover: Handover | None = None
    ) -> Resolution:
        """resolve() without awaiting: on_done hears the reply or the UpstreamFailure."""
        return self.route(query.question.name)[1].ask(query, on_done, handover)

    def describe(self, name: str) -> str:
        """Where `name` goes, for explain."""
        domain, group = self.route(name)
        where = f"domain {domain}" if domain else "default"
        ups = ", ".join(m.name for m in group.members) or "none"
        return f"{where} upstreams ({group.strategy}): {ups}"

    def upstream_health(self) -> list[tuple[str, bool, float | None]]:
        """(upstream, in rotation, smoothed latency) for metrics."""
        return [(name, h.up, h.srtt) for name, h in sorted(self.health.items())]

    async def aclose(self) -> None:
        for group in (self.default, *self.routes.values()):
            group.cancel_probes()
        for transport in self._transports.values():
            await transport.aclose()
