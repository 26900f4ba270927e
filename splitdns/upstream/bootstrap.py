"""Resolving upstreams given by name (`https://resolver.example.net/...`) exactly once.

Only plain upstreams given as IP addresses may answer a bootstrap question, so an encrypted
upstream is never asked for its own address. The address is kept until a connection to it
fails, then asked again (at most every RETRY seconds).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Sequence

from splitdns import wire
from splitdns.config.upstreams import UpstreamSpec
from splitdns.upstream.group import UpstreamGroup
from splitdns.upstream.plain import PlainDNS
from splitdns.upstream.transport import UpstreamFailure, UpstreamStats

log = logging.getLogger(__name__)

RETRY = 30.0


class Bootstrap:
    """Names to addresses for encrypted upstreams, through plain upstreams only."""

    def __init__(self, plain: Sequence[UpstreamSpec], timeout: float) -> None:
        self.plain = tuple(s for s in plain if s.scheme == "dns" and not s.needs_bootstrap)
        self.timeout = timeout
        self._known: dict[str, tuple[str, float]] = {}
        self._lock = asyncio.Lock()

    async def address(self, host: str) -> str:
        try:
            return str(ipaddress.ip_address(host))
        except ValueError:
            pass
        known = self._known.get(host)
        if known is not None:
            return known[0]
        async with self._lock:
            known = self._known.get(host)
            if known is None:
                known = (await self._resolve(host), time.monotonic())
                self._known[host] = known
                log.info("bootstrap: %s is %s", host, known[0])
            return known[0]

    def forget(self, host: str) -> None:
        """A connection failed: ask again next time (not more often than RETRY)."""
        known = self._known.get(host)
        if known is not None and time.monotonic() - known[1] > RETRY:
            del self._known[host]

    async def _resolve(self, host: str) -> str:
        if not self.plain:
            raise UpstreamFailure(
                f"cannot resolve upstream {host}: no plain bootstrap upstream "
                "(set upstreams.bootstrap to an IP address)"
            )
        group = UpstreamGroup(
            [PlainDNS(s, UpstreamStats()) for s in self.plain], self.timeout, UpstreamStats()
        )
        for qtype in (1, 28):  # A, then AAAA
            reply = await group.resolve(wire.parse_query(wire.make_query(host, qtype)))
            size = 4 if qtype == 1 else 16
            for record in reply.message.section(wire.ANSWER):
                if record.rtype == qtype and record.rdlength == size:
                    raw = reply.data[record.rdata_offset : record.rdata_offset + size]
                    return str(ipaddress.ip_address(raw))
        raise UpstreamFailure(f"bootstrap: {host} has no address")
