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
import functools
import logging
import struct
import time
from collections.abc import Sequence

from splitdns import wire
from splitdns.upstream.health import Health
from splitdns.upstream.transport import (
    Attempt,
    Handover,
    OnDone,
    Reply,
    Transport,
    TransportError,
    UpstreamFailure,
    UpstreamStats,
    settling,
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
        if len(self.members) == 1:
            return list(self.members)
        up = [m for m in self.members if m.health.up]
        down = [m for m in self.members if not m.health.up]
        if self.strategy == "fastest" and len(up) > 1:
            up.sort(key=lambda m: m.health.srtt if m.health.srtt is not None else 0.0)
            self._questions += 1
            if self._questions % EXPLORE_EVERY == 0:
                up[0], up[1] = up[1], up[0]
        down.sort(key=lambda m: m.health.down_until or 0.0)
        return up + down

    def ask(
        self, query: wire.Query, on_done: OnDone, handover: Handover | None = None
    ) -> Resolution:
        """Start resolving `query`; `on_done` hears the first usable reply, or UpstreamFailure
        no later than the deadline (`timeout` from now, or the express lane's `handover`).
        Plain calls and callbacks: no task, one timer."""
        return Resolution(self, query, on_done, handover)

    async def resolve(self, query: wire.Query) -> Reply:
        """The first usable reply; UpstreamFailure when none arrives before the deadline."""
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        resolution = self.ask(query, settling(future))
        try:
            return await future
        finally:
            resolution.abandon()  # a no-op once settled; frees everything if we were cancelled

    def _settle(
        self,
        reply: Reply | None,
        error: BaseException | None,
        member: Member,
        began: float,
        problems: list[str],
        recursive: bool = True,
    ) -> Reply | None:
        """Record how one exchange ended; the reply if it is usable.

        A REFUSED to a non-recursive question (RD=0) is the upstream's honest answer, not a
        fault: it is passed on and says nothing about the upstream's health. An error of no
        known kind is raised again: it is a bug, for the server's error boundary to log.
        """
        if error is not None or reply is None:
            if isinstance(error, TimeoutError):
                self._failed(member, "timeout")
                problems.append(f"{member.name}: timeout")
            elif isinstance(error, TransportError):
                self._failed(member, error.kind)
                problems.append(f"{member.name}: {error}")
            elif isinstance(error, OSError | EOFError | struct.error):
                self._failed(member, "network")
                problems.append(f"{member.name}: {error or type(error).__name__}")
            else:
                raise error or RuntimeError("an exchange ended with neither reply nor error")
            return None
        elapsed = time.monotonic() - began
        rcode = reply.message.rcode
        if rcode == wire.REFUSED and not recursive:
            self.stats.observe(member.name, elapsed)
            return reply
        if rcode in (wire.SERVFAIL, wire.REFUSED):
            self.stats.observe(member.name, elapsed)
            self._failed(member, "servfail" if rcode == wire.SERVFAIL else "refused")
            reasons = "".join(  # the upstream's own Extended DNS Errors, if it gave any
                f" (EDE {code}{': ' if text else ''}{text})"
                for code, text in wire.extended_errors(reply.data, reply.message)
            )
            problems.append(f"{member.name}: {wire.rcode_name(rcode)}{reasons}")
            return None
        self.usable(member, elapsed)
        return reply

    def usable(self, member: Member, elapsed: float) -> None:
        """A usable reply from `member` after `elapsed` seconds, counted (the express lane's
        replies are counted here too)."""
        self.stats.observe(member.name, elapsed, True)  # used
        health = member.health
        health.succeeded(elapsed)
        if health.changes:
            self._log_changes(member)

    def _failed(self, member: Member, kind: str) -> None:
        self.stats.failed(member.name, kind)
        member.health.failed()
        self._log_changes(member)

    def _log_changes(self, member: Member) -> None:
        if not member.health.changes:
            return
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


class _Running:
    """One upstream asked for one question: when it was asked, when it is due to be hedged."""

    __slots__ = ("attempt", "began", "hedge_at", "member")

    def __init__(self, member: Member, began: float, hedge_at: float) -> None:
        self.member = member
        self.began = began
        self.hedge_at = hedge_at
        self.attempt: Attempt | None = None


class Resolution:
    """One question's way through a group, driven by callbacks and one timer.

    Attempts report to `_answered`; the timer wakes at the next hedge or at the deadline.
    The first usable reply ends it; so does the deadline, or running out of upstreams. Either
    way `on_done` is called exactly once (unless the asker abandons it first).
    """

    __slots__ = (
        "deadline",
        "finished",
        "group",
        "loop",
        "on_done",
        "problems",
        "query",
        "running",
        "timer",
        "waiting",
    )

    def __init__(
        self,
        group: UpstreamGroup,
        query: wire.Query,
        on_done: OnDone,
        handover: Handover | None = None,
    ) -> None:
        self.group = group
        self.query = query
        self.on_done = on_done
        self.running: list[_Running] = []
        self.problems: list[str] = []
        self.timer: asyncio.TimerHandle | None = None
        self.finished = False
        self.loop = asyncio.get_running_loop()  # once: each call is a getpid()
        if not group.members:
            self.waiting: list[Member] = []
            self.deadline = time.monotonic()
            self._later(UpstreamFailure("no upstream servers configured"))
            return
        group._start_due_probes()
        self.deadline = time.monotonic() + group.timeout
        waiting = group.order()
        if handover is not None:  # the express lane asked one already, within this deadline
            self.deadline = handover.deadline
            waiting = [m for m in waiting if m.name != handover.tried]
            if handover.problem:
                self.problems.append(handover.problem)
        if len(waiting) > 1 and any(m.health.up for m in waiting):
            # Out-of-rotation upstreams are a last resort only when none is healthy.
            waiting = [m for m in waiting if m.health.up]
        self.waiting = waiting
        self._start(group.width)
        if not self.running:  # every one failed at once
            self._later(UpstreamFailure("; ".join(self.problems) or "no upstream could be asked"))
            return
        self._next_wake()

    def _later(self, failure: UpstreamFailure) -> None:
        """Fail from a loop callback, never from inside ask() (callers expect that)."""
        self.finished = True
        self.loop.call_soon(self.on_done, None, failure)

    def _start(self, count: int) -> None:
        while count > 0 and self.waiting:
            member = self.waiting.pop(0)
            began = time.monotonic()
            remaining = self.deadline - began
            running = _Running(
                member, began, began + min(member.health.attempt_timeout(), remaining)
            )
            try:
                running.attempt = member.transport.begin(
                    self.query, remaining, functools.partial(self._answered, running)
                )
            except OSError as exc:  # no socket, no route: this one failed at once
                self.group._settle(None, exc, member, began, self.problems)
                continue
            self.running.append(running)
            count -= 1

    def _answered(
        self, running: _Running, reply: Reply | None, error: BaseException | None
    ) -> None:
        if self.finished:
            return
        self.running.remove(running)
        try:
            usable = self.group._settle(
                reply, error, running.member, running.began, self.problems, self.query.rd
            )
        except Exception as exc:  # an unknown failure: the asker's error boundary logs it
            self._finish(None, exc)
            return
        if usable is not None:
            self._finish(usable, None)
            return
        self._start(1)  # a failure frees its slot at once
        if not self.running:
            self._finish(None, None)
            return
        self._next_wake()

    def _next_wake(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        wake = self.deadline
        if self.waiting and self.running:
            wake = min(wake, min(r.hedge_at for r in self.running))
        delay = max(0.0, wake - time.monotonic())
        self.timer = self.loop.call_later(delay, self._wake)

    def _wake(self) -> None:
        self.timer = None
        if self.finished:
            return
        now = time.monotonic()
        if now >= self.deadline:
            self._finish(None, None)
            return
        if self.waiting and any(r.hedge_at <= now for r in self.running):
            # Hedge: the slowest-to-answer keeps its chance, the next one is asked too.
            for r in self.running:
                if r.hedge_at <= now:
                    r.hedge_at = self.deadline
            self._start(1)
        self._next_wake()

    def _finish(self, reply: Reply | None, error: BaseException | None) -> None:
        """The end: a reply, a bug's exception, or (neither) UpstreamFailure naming why."""
        self._stop_all(count_timeouts=True)
        if error is None and reply is None:
            error = UpstreamFailure("; ".join(self.problems) or "deadline passed")
        self.on_done(reply, error)

    def _stop_all(self, count_timeouts: bool) -> None:
        self.finished = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        now = time.monotonic()
        for r in self.running:
            if r.attempt is not None:
                r.attempt.cancel()
            # Still silent after its attempt time while another won (or time ran out).
            if count_timeouts and (now >= r.hedge_at or r.hedge_at == self.deadline):
                self.group._failed(r.member, "timeout")
                self.problems.append(f"{r.member.name}: no reply in {now - r.began:.2f} s")
        self.running.clear()

    def abandon(self) -> None:
        """The asker stopped listening (cancelled): free sockets and the timer, blame no one."""
        if not self.finished:
            self._stop_all(count_timeouts=False)
