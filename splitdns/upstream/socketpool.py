"""`upstreams.socket_pool: N`: plain UDP to an upstream over N long-lived connected sockets.

The default (no pool) opens a fresh socket on a random port for every query: a spoofer must
guess the 16-bit ID and the port (about 2^31 tries with Linux's ephemeral range). A pooled
socket keeps its port for ROTATE_AFTER queries, so the port stops being a secret to someone
who can see or probe it; what remains is the ID (and the question's case with 0x20), against
one query in flight per ID. It is faster (no socket per query), and the README gives the
arithmetic so users can choose. Replies are matched on ID, source address and port (the
socket is connected) and the exact question; everything else is counted as forged and
ignored, and the real answer is still awaited.

`deliver` and `drain` here are the reply matching every UDP exchange and DoT connection uses
(a fresh per-query socket is the one-query case of a pooled one).
"""

from __future__ import annotations

import _socket
import asyncio
import secrets
import socket
from typing import Protocol

from splitdns import wire
from splitdns.upstream import packets
from splitdns.upstream.transport import TransportError, UpstreamStats, Waiter

ROTATE_AFTER = 10_000  # queries a pooled socket (and its port) serves before it is replaced


def deliver(data: bytes, waiting: dict[int, Waiter], stats: UpstreamStats) -> None:
    """Hand a reply to the query waiting for its ID on a shared connection (DoT, the socket
    pool) if it really answers that query: our question, our case with 0x20, no signature we
    did not ask for. Anything else is counted as forged and dropped, but for a reply that
    cannot be read and still names our ID and question: the upstream's own broken answer,
    which fails the exchange at once (the next upstream is asked, not the deadline waited)."""
    try:
        message = wire.walk(data)
    except wire.WireError as exc:
        msg_id = (data[0] << 8) | data[1] if len(data) >= 2 else -1
        waiter = waiting.get(msg_id)
        if waiter is not None and packets.names_question(
            data, msg_id, waiter[0].question, waiter[1]
        ):
            if not waiter[2].done():
                waiter[2].set_exception(TransportError("malformed", f"malformed reply ({exc})"))
            return
        stats.forged += 1
        return
    waiter = waiting.get(message.msg_id)
    if waiter is None:
        stats.forged += 1
        return
    query, exact, future = waiter
    if not packets.reply_matches(message, message.msg_id, query) or (
        exact is not None and not packets.echoes_question(data, exact)
    ):
        stats.forged += 1
        return
    if not future.done():
        future.set_result((data, message))


class Receiver(Protocol):
    """A query on a pooled socket that checks its own replies (the express lane): it gets
    every datagram carrying its ID, and any socket error."""

    def received(self, data: bytes) -> None: ...

    def failed(self, exc: OSError) -> None: ...


def drain(
    sock: _socket.socket,
    waiting: dict[int, Waiter],
    stats: UpstreamStats,
    receivers: dict[int, Receiver] | None = None,
) -> None:
    """The datagram waiting on a connected socket goes to the query it answers (forgeries
    are counted and dropped); a socket error (ICMP unreachable) fails what waits on it now.
    A fresh per-query socket is the one-query case of a pooled one. One datagram a call: the
    loop's reader is level-triggered and calls again while more wait, and reading until
    BlockingIOError raised an exception on almost every reply. (A socket closed since the
    loop saw it readable raises OSError here too: nothing waits on it by then.)"""
    try:
        data = sock.recv(65535)
    except BlockingIOError:
        return
    except OSError as exc:
        for _, _, future in list(waiting.values()):
            if not future.done():
                future.set_exception(exc)
        for failing in list(receivers.values()) if receivers else ():
            failing.failed(exc)
        return
    if receivers and len(data) >= 2:
        receiver = receivers.get((data[0] << 8) | data[1])
        if receiver is not None:
            receiver.received(data)
            return
    deliver(data, waiting, stats)


class Pooled:
    """One connected socket, its reader callback, and the queries waiting on it."""

    def __init__(self, address: tuple[str, int], family: int, stats: UpstreamStats) -> None:
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.connect(address)
        self.stats = stats
        self.used = 0
        self.retiring = False
        self.waiting: dict[int, Waiter] = {}
        self.receivers: dict[int, Receiver] = {}  # the express lane's queries
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(
            self.sock.fileno(), drain, self.sock, self.waiting, stats, self.receivers
        )

    def close(self) -> None:
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()


class SocketPool:
    """N pooled sockets to one upstream; each query takes one at random and a free ID on it."""

    def __init__(
        self, address: tuple[str, int], family: int, size: int, stats: UpstreamStats
    ) -> None:
        self.address = address
        self.family = family
        self.size = size
        self.stats = stats
        self.sockets: list[Pooled] = []
        self.draws: list[int] = []  # 32-bit draws ahead: a socket index above, an ID below

    def _draw(self) -> None:
        """Socket indices and query IDs from the kernel's CSPRNG, 2 048 queries' worth at a
        time (a draw per query was a twentieth of the pool's cost): the high half of each
        32-bit draw picks the socket, the low half is the ID. Draws whose high half is at or
        past the last whole multiple of the pool's size are dropped, so every socket is
        equally likely (none are when the size divides 2^16, as powers of two do)."""
        sockets = self.sockets  # (made here, the first time: not checked per query)
        while len(sockets) < self.size:
            sockets.append(Pooled(self.address, self.family, self.stats))
        draws = memoryview(secrets.token_bytes(8192)).cast("I").tolist()
        limit = 0x10000 - 0x10000 % self.size
        self.draws = draws if limit == 0x10000 else [d for d in draws if d >> 16 < limit]

    def checkout(self) -> tuple[Pooled, int]:
        """A pooled socket taken at random and an ID free on it; the caller registers its
        waiter under the ID and gives both back with `release`. (One flat function: the
        pick, the draw and the ID were three calls on every pooled query.)"""
        if not self.draws:
            self._draw()
        sockets = self.sockets
        draw = self.draws.pop()
        index = (draw >> 16) % self.size
        pooled = sockets[index]
        pooled.used += 1
        if pooled.used >= ROTATE_AFTER:  # a new port; the old socket closes once drained
            pooled.retiring = True
            sockets[index] = Pooled(self.address, self.family, self.stats)
        msg_id = draw & 0xFFFF
        while msg_id in pooled.waiting or msg_id in pooled.receivers:
            msg_id = packets.random_id()
        return pooled, msg_id

    @staticmethod
    def release(pooled: Pooled, msg_id: int) -> None:
        pooled.waiting.pop(msg_id, None)
        pooled.receivers.pop(msg_id, None)
        if pooled.retiring and not pooled.waiting and not pooled.receivers:
            pooled.close()

    def close(self) -> None:
        for pooled in self.sockets:
            pooled.close()
        self.sockets.clear()
        self.draws.clear()  # (the next checkout makes the sockets again)
