"""Asking upstream servers: one deadline for the whole question, every reply validated.

Each UDP exchange uses a fresh socket (the kernel picks a random source port) and a fresh
random ID. A reply counts only if it comes from the upstream's address and port, carries our
ID and repeats our question; anything else is counted as forged and ignored while the real
answer is still awaited. TC=1 retries the same upstream over TCP. Timeouts, errors, SERVFAIL
and REFUSED move on to the next upstream; when all fail, UpstreamFailure is raised, well inside
the configured bound.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from splitdns import wire
from splitdns.config import Endpoint

log = logging.getLogger(__name__)


class UpstreamFailure(Exception):
    """No upstream gave a usable answer in time."""


@dataclass(frozen=True, slots=True)
class Reply:
    """A validated upstream reply (still with the upstream's OPT record)."""

    data: bytes
    message: wire.Message
    upstream: str
    transport: str


@dataclass(slots=True)
class UpstreamStats:
    """Counters other parts (metrics, tests) read; kept here so the hot path stays simple."""

    forged: int = 0
    # per upstream: error counts by kind, and latency histogram counts (see metrics.BUCKETS)
    errors_by: dict[tuple[str, str], int] = field(default_factory=dict)
    latency: dict[str, list[float]] = field(default_factory=dict)

    def failed(self, upstream: str, kind: str) -> None:
        key = (upstream, kind)
        self.errors_by[key] = self.errors_by.get(key, 0) + 1

    def observe(self, upstream: str, seconds: float) -> None:
        """Histogram: one slot per bucket bound, then count and sum at the end."""
        slots = self.latency.get(upstream)
        if slots is None:
            slots = self.latency[upstream] = [0.0] * (len(LATENCY_BUCKETS) + 2)
        for i, bound in enumerate(LATENCY_BUCKETS):
            if seconds <= bound:
                slots[i] += 1
                break
        slots[-2] += 1
        slots[-1] += seconds


LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class _ReplyCatcher(asyncio.DatagramProtocol):
    """Waits for the one datagram that is really our answer."""

    def __init__(
        self, source: tuple[str, int], msg_id: int, question: wire.Question, stats: UpstreamStats
    ) -> None:
        self.source = source
        self.msg_id = msg_id
        self.question = question
        self.stats = stats
        self.future: asyncio.Future[tuple[bytes, wire.Message]] = (
            asyncio.get_running_loop().create_future()
        )

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        if self.future.done():
            return
        try:
            # Endpoint hosts are normalised the way the kernel prints addresses.
            same_source = addr[0] == self.source[0] and addr[1] == self.source[1]
            message = wire.walk(data) if same_source else None
        except wire.WireError:
            message = None
        if message is None or not wire.reply_matches(message, self.msg_id, self.question):
            self.stats.forged += 1
            return
        self.future.set_result((data, message))

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and friends: fail this upstream now instead of at the timeout.
        if not self.future.done():
            self.future.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.future.done():
            self.future.set_exception(exc or ConnectionError("socket closed"))


class Transport(Protocol):
    """One way of asking one upstream (plain DNS here; TLS and HTTPS plug in beside it)."""

    name: str

    async def exchange(self, query: wire.Query, timeout: float) -> Reply: ...


class PlainDNS:
    """Classic DNS to one upstream: UDP first, TCP when the answer is truncated."""

    def __init__(self, endpoint: Endpoint, stats: UpstreamStats) -> None:
        self.endpoint = endpoint
        self.name = str(endpoint)
        self.stats = stats
        self._address = (str(ipaddress.ip_address(endpoint.host)), endpoint.port)
        self._family = socket.AF_INET6 if endpoint.family_v6 else socket.AF_INET

    async def exchange(self, query: wire.Query, timeout: float) -> Reply:
        deadline = time.monotonic() + timeout
        reply = await self.udp(query, timeout)
        if reply.message.flags & wire.TC:
            reply = await self.tcp(query, max(0.05, deadline - time.monotonic()))
        return reply

    async def udp(self, query: wire.Query, timeout: float) -> Reply:
        msg_id, packet = wire.make_upstream_query(query)
        loop = asyncio.get_running_loop()
        sock = socket.socket(self._family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            # connect() binds a random ephemeral port and makes the kernel drop datagrams
            # from other sources; the catcher checks the source again anyway.
            sock.connect((self.endpoint.host, self.endpoint.port))
        except OSError:
            sock.close()
            raise
        catcher = _ReplyCatcher(self._address, msg_id, query.question, self.stats)
        transport, _ = await loop.create_datagram_endpoint(lambda: catcher, sock=sock)
        try:
            transport.sendto(packet)
            async with asyncio.timeout(timeout):
                data, message = await catcher.future
        finally:
            transport.close()
        return Reply(data, message, self.name, "udp")

    async def tcp(self, query: wire.Query, timeout: float) -> Reply:
        msg_id, packet = wire.make_upstream_query(query)
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(self.endpoint.host, self.endpoint.port)
            try:
                writer.write(struct.pack("!H", len(packet)) + packet)
                while True:
                    (length,) = struct.unpack("!H", await reader.readexactly(2))
                    data = await reader.readexactly(length)
                    try:
                        message = wire.walk(data)
                    except wire.WireError:
                        self.stats.forged += 1
                        continue
                    if wire.reply_matches(message, msg_id, query.question):
                        return Reply(data, message, self.name, "tcp")
                    self.stats.forged += 1
            finally:
                writer.close()


#: Transports by URL scheme; a bare address means "dns".
TRANSPORTS: dict[str, Callable[[Endpoint, UpstreamStats], Transport]] = {"dns": PlainDNS}


class Upstreams:
    """The ordered upstream list with one overall deadline (failover strategy)."""

    def __init__(
        self, endpoints: Sequence[Endpoint], timeout: float, stats: UpstreamStats | None = None
    ) -> None:
        self.stats = stats or UpstreamStats()
        self.timeout = timeout
        self.transports: list[Transport] = [TRANSPORTS["dns"](e, self.stats) for e in endpoints]

    async def resolve(self, query: wire.Query) -> Reply:
        """The first usable reply; UpstreamFailure when none arrives before the deadline."""
        if not self.transports:
            raise UpstreamFailure("no upstream servers configured")
        deadline = time.monotonic() + self.timeout
        problems: list[str] = []
        count = len(self.transports)
        for position, transport in enumerate(self.transports):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            # Each upstream gets a fair share of what is left, so the last one still has time.
            share = remaining / (count - position)
            began = time.monotonic()
            try:
                reply = await transport.exchange(query, share)
            except TimeoutError:
                self.stats.failed(transport.name, "timeout")
                problems.append(f"{transport.name}: timeout after {share * 1000:.0f} ms")
                continue
            except (OSError, EOFError, asyncio.IncompleteReadError, struct.error) as exc:
                self.stats.failed(transport.name, "network")
                problems.append(f"{transport.name}: {exc or type(exc).__name__}")
                continue
            self.stats.observe(transport.name, time.monotonic() - began)
            rcode = reply.message.rcode
            if rcode in (wire.SERVFAIL, wire.REFUSED):
                self.stats.failed(
                    transport.name, "servfail" if rcode == wire.SERVFAIL else "refused"
                )
                problems.append(f"{transport.name}: rcode {rcode}")
                continue
            return reply
        raise UpstreamFailure("; ".join(problems) or "deadline passed")
