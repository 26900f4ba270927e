"""What every upstream transport shares: the reply type, the failure, the counters.

Transports (plaindns, dot, doh) each validate their replies (our ID or channel, our exact
question) before handing a Reply up; the group (upstreamgroup) picks which upstream to ask.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from splitdns import wire


class UpstreamFailure(Exception):
    """No upstream gave a usable answer in time."""


class Reply(NamedTuple):
    """A validated upstream reply (still with the upstream's OPT record)."""

    data: bytes
    message: wire.Message
    upstream: str
    transport: str


@dataclass(slots=True)
class UpstreamStats:
    """Counters other parts (metrics, tests) read; kept here so the hot path stays simple."""

    forged: int = 0
    rebinding_removed: int = 0  # private addresses the rebinding guard took out of answers
    # per upstream: answers that were used (won the race)
    answered: dict[str, int] = field(default_factory=dict)
    # per upstream: error counts by kind, and latency histogram counts (see metrics.BUCKETS)
    errors_by: dict[tuple[str, str], int] = field(default_factory=dict)
    latency: dict[str, list[float]] = field(default_factory=dict)

    def failed(self, upstream: str, kind: str) -> None:
        key = (upstream, kind)
        self.errors_by[key] = self.errors_by.get(key, 0) + 1

    def observe(self, upstream: str, seconds: float, used: bool = False) -> None:
        """Histogram: one slot per bucket bound, then count and sum at the end; `used`: the
        reply was used (won the race), counted in `answered` too."""
        slots = self.latency.get(upstream)
        if slots is None:
            slots = self.latency[upstream] = [0.0] * (_BUCKETS + 2)
        i = bisect_left(LATENCY_BUCKETS, seconds)  # the first bound >= seconds
        if i < _BUCKETS:
            slots[i] += 1
        slots[-2] += 1
        slots[-1] += seconds
        if used:
            self.answered[upstream] = self.answered.get(upstream, 0) + 1


LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_BUCKETS = len(LATENCY_BUCKETS)


class TransportError(OSError):
    """A transport-level failure with a clear kind for metrics ("tls", "http", ...)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class Handover(NamedTuple):
    """What the express lane (serve/express.py) tells the chain about a question it asked
    first: the chain finishes it within the same deadline, without asking that upstream again."""

    deadline: float
    reply: Reply | None = None  # a checked reply the chain takes as the upstream's answer
    tried: str | None = None  # the upstream that failed it: not asked again
    problem: str = ""  # how that failed, for the SERVFAIL's note


#: How an exchange ends: exactly one of (reply, None) or (None, the exception), called once,
#: never from inside `begin` itself (always from a later loop callback).
OnDone = Callable[[Reply | None, BaseException | None], None]


class Attempt(Protocol):
    """An exchange in flight; cancelling it frees its socket (or task) and silences `on_done`."""

    def cancel(self) -> Any: ...


class Transport(Protocol):
    """One way of asking one upstream: plain DNS, DNS over TLS or DNS over HTTPS."""

    name: str

    def begin(self, query: wire.Query, timeout: float, on_done: OnDone) -> Attempt:
        """Start an exchange whose end `on_done` hears; no task needed (plain UDP has none).
        May raise OSError at once (no socket, no route): nothing was started then."""
        ...

    async def exchange(self, query: wire.Query, timeout: float) -> Reply:
        """A validated reply within `timeout`, or an exception (TimeoutError, OSError...)."""
        ...

    async def aclose(self) -> None:
        """Close reused connections (on reload and shutdown)."""
        ...


def begin_task(exchange: Coroutine[Any, Any, Reply], on_done: OnDone) -> Attempt:
    """`begin` for transports written as coroutines (DoT, DoH): a task reporting to on_done."""
    task = asyncio.ensure_future(exchange)

    def report(task: asyncio.Task[Reply]) -> None:
        if task.cancelled():
            return  # cancelled by its owner, who no longer listens
        exc = task.exception()
        if exc is not None:
            on_done(None, exc)
        else:
            on_done(task.result(), None)

    task.add_done_callback(report)
    return task


def settling(future: asyncio.Future[Reply]) -> OnDone:
    """An OnDone that settles `future` (the awaitable form of a callback exchange)."""

    def settle(reply: Reply | None, exc: BaseException | None) -> None:
        if future.done():
            return
        if exc is not None:
            future.set_exception(exc)
        elif reply is not None:
            future.set_result(reply)

    return settle


async def exchange_via(transport: Transport, query: wire.Query, timeout: float) -> Reply:
    """`exchange` for transports whose native form is `begin` (one implementation of both)."""
    future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
    attempt = transport.begin(query, timeout, settling(future))
    try:
        async with asyncio.timeout(timeout):
            return await future
    finally:
        attempt.cancel()


class Sink(Protocol):
    """Where a matched reply goes: an asyncio.Future, or an object settling without one."""

    def done(self) -> bool: ...

    def set_result(self, result: tuple[bytes, wire.Message], /) -> None: ...

    def set_exception(self, exception: BaseException, /) -> None: ...


#: A query waiting on a connection: the query, its question as sent with 0x20 (or None), and
#: the sink its reply settles.
Waiter = tuple[wire.Query, bytes | None, Sink]
