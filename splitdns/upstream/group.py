"""One list of upstreams used together: the strategy, hedging, one deadline, health.

A question is sent to the first upstream the strategy picks. If no reply comes within that
upstream's attempt time (learned from its latency), the next one is asked as well, while the
first may still answer: the first usable reply wins and the rest are cancelled. Errors, SERVFAIL
and REFUSED move on at once. Upstreams out of rotation (see health) are skipped unless nothing
else is left, and return only after a background probe succeeds. When everything fails,
UpstreamFailure is raised no later than the configured timeout.

Strategies: `failover` asks in the configured order; `fastest` orders by smoothed latency
(every 64th question tries the runner-up first so a recovered upstream is noticed); `parallel`
asks the first `parallel_width` at once and takes the first usable reply.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Sequence

from splitdns import wire
from splitdns.upstream.health import Health
from splitdns.upstream.transport import (
    Reply,
    Transport,
    TransportError,
    UpstreamFailure,
    UpstreamStats,
)

log = logging.getLogger(__name__)

EXPLORE_EVERY = 64


class Member:
    """A transport with its health."""

    def __init__(self, transport: Transport, health: Health) -> None:
        self.transport = transport
        self.health = health
        self.name = transport.name


class UpstreamGroup:
    """Upstreams asked together under one strategy and one deadline."""

    def __init__(
        self,
        transports: Sequence[Transport],
        timeout: float,
        stats: UpstreamStats,
        strategy: str = "failover",
        parallel_width: int = 2,
        health: dict[str, Health] | None = None,
        domain: str = "",
    ) -> None:
        health = health if health is not None else {}
        self.members = [Member(t, health.setdefault(t.name, Health())) for t in transports]
        self.timeout = timeout
        self.stats = stats
        self.strategy = strategy
        self.width = parallel_width if strategy == "parallel" else 1
        self._questions = 0
        self._probes: set[asyncio.Task[None]] = set()
        # A probe asks the SOA of the group's own domain (the root for the default group):
        # any real reply but SERVFAIL proves the upstream is back, even an authoritative-only
        # server that refuses everything else.
        self._probe_query = wire.parse_query(wire.make_query(domain, 6))

    def order(self) -> list[Member]:
        """Members in the order to ask them: healthy first (by strategy), then the rest."""
        up = [m for m in self.members if m.health.up]
        down = [m for m in self.members if not m.health.up]
        if self.strategy == "fastest" and len(up) > 1:
            up.sort(key=lambda m: m.health.srtt if m.health.srtt is not None else 0.0)
            self._questions += 1
            if self._questions % EXPLORE_EVERY == 0:
                up[0], up[1] = up[1], up[0]
        down.sort(key=lambda m: m.health.down_until or 0.0)
        return up + down

    async def resolve(self, query: wire.Query) -> Reply:
        """The first usable reply; UpstreamFailure when none arrives before the deadline."""
        if not self.members:
            raise UpstreamFailure("no upstream servers configured")
        self._start_due_probes()
        deadline = time.monotonic() + self.timeout
        waiting = self.order()
        if any(m.health.up for m in waiting):
            # Out-of-rotation upstreams are a last resort only when none is healthy.
            waiting = [m for m in waiting if m.health.up]
        running: dict[asyncio.Task[Reply], tuple[Member, float, float]] = {}
        problems: list[str] = []

        def start(count: int) -> None:
            for _ in range(min(count, len(waiting))):
                member = waiting.pop(0)
                began = time.monotonic()
                remaining = deadline - began
                task = asyncio.ensure_future(member.transport.exchange(query, remaining))
                hedge_at = began + min(member.health.attempt_timeout(), remaining)
                running[task] = (member, began, hedge_at)

        start(self.width)
        try:
            while running:
                now = time.monotonic()
                next_hedge = min(h for _, _, h in running.values()) if waiting else deadline
                wake = min(deadline, max(next_hedge, now))
                done, _ = await asyncio.wait(
                    running, timeout=max(0.0, wake - now), return_when=asyncio.FIRST_COMPLETED
                )
                for task in done:
                    member, began, _ = running.pop(task)
                    reply = self._settle(task, member, began, problems, query.rd)
                    if reply is not None:
                        return reply
                    start(1)  # a failure frees its slot at once
                now = time.monotonic()
                if now >= deadline:
                    break
                if waiting and not done and now >= next_hedge:
                    # Hedge: the slowest-to-answer keeps its chance, the next one is asked too.
                    for task, (member, began, hedge_at) in list(running.items()):
                        if hedge_at <= now:
                            running[task] = (member, began, deadline)
                    start(1)
        finally:
            for task, (member, began, hedge_at) in running.items():
                task.cancel()
                # Still silent after its attempt time while another won (or time ran out).
                if time.monotonic() >= hedge_at or hedge_at == deadline:
                    self._failed(member, "timeout")
                    problems.append(f"{member.name}: no reply in {time.monotonic() - began:.2f} s")
        raise UpstreamFailure("; ".join(problems) or "deadline passed")

    def _settle(
        self,
        task: asyncio.Task[Reply],
        member: Member,
        began: float,
        problems: list[str],
        recursive: bool = True,
    ) -> Reply | None:
        """Record how one exchange ended; the reply if it is usable.

        A REFUSED to a non-recursive question (RD=0) is the upstream's honest answer, not a
        fault: it is passed on and says nothing about the upstream's health.
        """
        try:
            reply = task.result()
        except TimeoutError:
            self._failed(member, "timeout")
            problems.append(f"{member.name}: timeout")
            return None
        except TransportError as exc:
            self._failed(member, exc.kind)
            problems.append(f"{member.name}: {exc}")
            return None
        except (OSError, EOFError, asyncio.IncompleteReadError, struct.error) as exc:
            self._failed(member, "network")
            problems.append(f"{member.name}: {exc or type(exc).__name__}")
            return None
        elapsed = time.monotonic() - began
        self.stats.observe(member.name, elapsed)
        rcode = reply.message.rcode
        if rcode == wire.REFUSED and not recursive:
            return reply
        if rcode in (wire.SERVFAIL, wire.REFUSED):
            self._failed(member, "servfail" if rcode == wire.SERVFAIL else "refused")
            problems.append(f"{member.name}: {wire.rcode_name(rcode)}")
            return None
        member.health.succeeded(elapsed)
        self._log_changes(member)
        self.stats.used(member.name)
        return reply

    def _failed(self, member: Member, kind: str) -> None:
        self.stats.failed(member.name, kind)
        member.health.failed()
        self._log_changes(member)

    def _log_changes(self, member: Member) -> None:
        for change in member.health.take_changes():
            log.warning("upstream %s: %s", member.name, change)

    def _start_due_probes(self) -> None:
        for member in self.members:
            if member.health.probe_due():
                member.health.probing = True
                task = asyncio.ensure_future(self._probe(member))
                self._probes.add(task)
                task.add_done_callback(self._probes.discard)

    async def _probe(self, member: Member) -> None:
        """One background question decides whether a resting upstream returns."""
        began = time.monotonic()
        try:
            reply = await member.transport.exchange(self._probe_query, self.timeout)
            usable = reply.message.rcode != wire.SERVFAIL
        except (OSError, EOFError, TimeoutError, asyncio.IncompleteReadError, struct.error):
            usable = False
        finally:
            member.health.probing = False
        if usable:
            member.health.succeeded(time.monotonic() - began)
        else:
            self.stats.failed(member.name, "probe")
            member.health.probe_failed()
        self._log_changes(member)

    def cancel_probes(self) -> None:
        for task in list(self._probes):
            task.cancel()
