"""One connection budget for TCP, DoT and DoH, counted from accept.

Every client connection is admitted here the moment it is accepted, before any TLS handshake
or PROXY header, so a device that opens connections and never speaks holds budget, not
descriptors beyond it. When the budget (or the address's share of it) is full, room is made
by closing a connection that is doing nothing for anyone: first one from an address outside
`allow` (it can only ever be refused), then the oldest idle one (no query being answered);
when every connection is busy the new one is closed instead. A sweep once a second closes
connections past their deadlines: idle too long, or older than `connection_max_age` (when
next idle, and at once after a grace of `timeout` + 2 s). Everything refused or closed is
counted, by reason, for /metrics.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from splitdns.limits import memory

log = logging.getLogger(__name__)

SWEEP_EVERY = 1.0  # seconds between deadline sweeps
WARN_EVERY = 10.0  # seconds between "budget full" warnings (a flood must not flood the log)


class Connection:
    """One admitted client connection: who, since when, and how to end it."""

    __slots__ = (
        "allowed",
        "buffered",
        "busy",
        "host",
        "kind",
        "last",
        "opened",
        "task",
        "timed_out",
        "transport",
    )

    def __init__(self, host: str, kind: str, allowed: bool, now: float) -> None:
        self.host = host
        self.kind = kind  # tcp | dot | doh
        self.allowed = allowed  # in `allow`: its queries can be answered
        self.opened = now
        self.last = now  # the last time a query started or ended on it
        self.busy = 0  # queries being answered on it now
        self.buffered = 0  # bytes of unfinished requests held for it (DoH bodies)
        self.timed_out = False  # a request on it missed limits.request_timeout (DoH)
        self.task: asyncio.Task[Any] | None = None  # what runs it (before its transport is known)
        self.transport: asyncio.Transport | None = None

    def started(self) -> None:
        self.busy += 1
        self.last = time.monotonic()

    def finished(self) -> None:
        self.busy -= 1
        self.last = time.monotonic()

    def close(self) -> None:
        """End it now: abort the transport (every reader on it wakes up), or cancel the task
        that is still setting it up (accepting, reading a PROXY header, the TLS handshake)."""
        if self.transport is not None:
            self.transport.abort()
        elif self.task is not None:
            self.task.cancel()


class ConnectionBudget:
    """Admits, tracks and retires the client connections of all stream listeners."""

    def __init__(
        self,
        total: int,
        per_client: int,
        idle: float,
        max_age: float,
        grace: float,
        exempt: Callable[[str], bool] = lambda host: False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = total
        self.per_client = per_client
        self.idle = idle
        self.max_age = max_age
        self.grace = grace
        self.exempt = exempt  # addresses without a share (trusted proxies speak for many)
        self.clock = clock
        self.open: dict[int, Connection] = {}  # by id, in the order they were admitted
        self.by_host: Counter[str] = Counter()
        self.closed: Counter[str] = Counter()  # why connections were refused or ended early
        self._warned = -WARN_EVERY
        self._trimmed_at = 0  # connections open at the last memory trim (or the peak since)
        self._sweeper: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self.open)

    def admit(self, host: str, kind: str, allowed: bool) -> Connection | None:
        """A new connection from `host`, or None: it must be closed at once (counted)."""
        full_share = self.by_host[host] >= self.per_client and not self.exempt(host)
        if full_share and not self._make_room(host, "client_share"):
            return self._refuse("client_share", host)
        if len(self.open) >= self.total and not self._make_room(None, "budget"):
            return self._refuse("budget", host)
        conn = Connection(host, kind, allowed, self.clock())
        self.open[id(conn)] = conn
        self.by_host[host] += 1
        return conn

    def release(self, conn: Connection) -> None:
        """A connection has ended (whoever ended it); safe to call more than once."""
        if conn.timed_out:
            conn.timed_out = False
            self.closed["request_timeout"] += 1
        if self.open.pop(id(conn), None) is not None:
            self.by_host[conn.host] -= 1
            if self.by_host[conn.host] <= 0:
                del self.by_host[conn.host]

    def _make_room(self, host: str | None, reason: str) -> bool:
        """Close one connection (of `host` when given) that serves nobody now; False if none."""
        victim = None
        for conn in self.open.values():  # oldest first
            if host is not None and conn.host != host:
                continue
            if not conn.allowed:
                victim = conn
                break
            if victim is None and not conn.busy:
                victim = conn
                if host is not None:
                    break
        if victim is None:
            return False
        self.closed[f"evicted_{reason}"] += 1
        self.release(victim)
        victim.close()
        return True

    def _refuse(self, reason: str, host: str) -> Connection | None:
        self.closed[reason] += 1
        now = self.clock()
        if now - self._warned >= WARN_EVERY:
            self._warned = now
            limit = self.per_client if reason == "client_share" else self.total
            log.warning(
                "connection limit reached (%s: %d, every connection busy): closed a new one "
                "from %s (limits.connections%s)",
                reason.replace("_", " "),
                limit,
                host,
                "_per_client" if reason == "client_share" else "",
            )
        return None

    def sweep(self) -> None:
        """Close connections past a deadline: idle, or too old (see the module's note); and
        once a wave of connections has gone, hand the memory it used back to the system."""
        now = self.clock()
        if len(self.open) < self._trimmed_at // 2 or (self._trimmed_at and not self.open):
            self._trimmed_at = len(self.open)
            memory.give_back()
        self._trimmed_at = max(self._trimmed_at, len(self.open))
        for conn in list(self.open.values()):
            age = now - conn.opened
            if conn.busy:
                if age > self.max_age + self.grace:
                    self._end(conn, "max_age")
            elif age > self.max_age:
                self._end(conn, "max_age")
            elif now - conn.last > self.idle + self.grace:  # a backstop for each listener's own
                self._end(conn, "idle")

    def _end(self, conn: Connection, reason: str) -> None:
        self.closed[reason] += 1
        self.release(conn)
        conn.close()

    def start(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.ensure_future(self._sweep_forever())

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_EVERY)
            try:
                self.sweep()
            except Exception:  # a bug here must not end the sweeps
                log.exception("connection sweep failed")

    def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in list(self.open.values()):
            self.release(conn)
            conn.close()
