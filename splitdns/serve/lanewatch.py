"""What the express lane waits on: its deadlines, and its fresh sockets' replies.

Both are kept outside the event loop's per-item machinery on purpose. A timer made and
cancelled per query was 2.4 us of a miss; uvloop's add_reader and remove_reader per socket
(a poll handle made and torn down, a transport lookup that raises KeyError each time) were a
fifth of the lane's own CPU. So: one sweep timer over deadline queues, and one epoll set of
our own that the loop watches as a single reader (registering a socket is one epoll_ctl;
closing the socket takes it out of the set).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import select
import time
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger(__name__)

SWEEP_EVERY = 0.02  # how late a lane deadline may be noticed (waits are 0.2 s and longer)
READY_BATCH = 256  # replies taken per wake-up; more wait for the loop's next turn


class Waiting(Protocol):
    """One exchange in the lane, as its watchers see it."""

    watched: bool  # by the deadlines, until it ends one way or another
    began: float  # its time.monotonic() when it started: it gives up at began + its wait

    def expired(self) -> None: ...

    def readable(self) -> None: ...


class Deadlines:
    """When lane exchanges give up: one sweep timer for all of them. Exchanges with the same
    wait share a queue, so each queue is in deadline order; finished ones leave from its
    front."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, on_idle: Callable[[], None] | None = None
    ) -> None:
        self.loop = loop
        self.queues: dict[float, collections.deque[Waiting]] = {}
        self.sweeper: asyncio.TimerHandle | None = None
        self.on_idle = on_idle  # called when the last deadline is gone

    def watch(self, exchange: Waiting, wait: float) -> None:
        """Watch `exchange` for `wait` seconds from its start, rounded to hundredths by the
        caller (a queue per wait: a few, not one per float)."""
        exchange.watched = True
        queue = self.queues.get(wait)
        if queue is None:
            queue = self.queues[wait] = collections.deque()
        while queue and not queue[0].watched:  # most end within a millisecond
            queue.popleft()
        queue.append(exchange)
        if self.sweeper is None:
            self.sweeper = self.loop.call_later(SWEEP_EVERY, self.sweep)

    def sweep(self) -> None:
        self.sweeper = None
        now = time.monotonic()
        for wait, queue in list(self.queues.items()):
            due = now - wait  # exchanges that began by then are due
            while queue and (not queue[0].watched or queue[0].began <= due):
                exchange = queue.popleft()
                if exchange.watched:
                    try:
                        exchange.expired()
                    except Exception:  # a bug: logged; the other deadlines still run
                        log.exception("express lane: a deadline failed")
            if not queue:
                del self.queues[wait]
        if self.queues:
            self.sweeper = self.loop.call_later(SWEEP_EVERY, self.sweep)
        elif self.on_idle is not None:
            self.on_idle()


class Readiness:
    """The lane's fresh sockets in one epoll set, itself one reader of the loop from the
    first socket until the lane is idle (`idle`, called by the deadline sweep once no
    exchange is left: a lane replaced on reload, or quiet, holds no reader; a busy one does
    not add and remove it whenever its last reply comes in)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.epoll = select.epoll()
        self.fd = self.epoll.fileno()
        self.waiting: dict[int, Waiting] = {}
        self.reading = False  # whether the loop watches the epoll set

    def watch(self, fd: int, exchange: Waiting) -> None:
        self.epoll.register(fd, select.EPOLLIN)
        if not self.reading:
            self.loop.add_reader(self.fd, self.ready)
            self.reading = True
        self.waiting[fd] = exchange

    def forget(self, fd: int) -> None:
        """Before the socket closes (closing it leaves the epoll set; its number may be
        reused at once)."""
        self.waiting.pop(fd, None)

    def idle(self) -> None:
        if self.reading and not self.waiting:
            self.loop.remove_reader(self.fd)
            self.reading = False

    def ready(self) -> None:
        waiting = self.waiting
        for fd, _ in self.epoll.poll(0, READY_BATCH):
            exchange = waiting.get(fd)
            if exchange is not None:
                try:
                    exchange.readable()
                except Exception:  # a bug: logged; the other replies are still read
                    log.exception("express lane: reading a reply failed")
