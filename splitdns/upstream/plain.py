"""Classic DNS to one upstream: UDP with a fresh socket and ID per query, TCP on truncation.

Each UDP exchange uses a fresh connected socket (the kernel picks a random source port) and a
fresh random ID. A reply counts only if it comes from the upstream's address and port, carries
our ID and repeats our question; anything else is counted as forged and ignored while the real
answer is still awaited.
"""

from __future__ import annotations

import _socket
import asyncio
import socket
import struct
import time

from splitdns import wire
from splitdns.config.upstreams import UpstreamSpec
from splitdns.upstream import packets
from splitdns.upstream.socketpool import Pooled, SocketPool, drain
from splitdns.upstream.transport import (
    Attempt,
    OnDone,
    Reply,
    UpstreamStats,
    Waiter,
    begin_task,
    exchange_via,
)


def restore_case(
    data: bytes, message: wire.Message, query: wire.Query
) -> tuple[bytes, wire.Message]:
    """Put the client's spelling of the name back in the question (same length, same offsets),
    so answer names compressed against it read as the client wrote them."""
    question = query.question.wire
    data = data[: wire.HEADER_LEN] + question + data[wire.HEADER_LEN + len(question) :]
    message.questions = [query.question]
    return data, message


def fresh_socket(family: int, address: tuple[str, int]) -> _socket.socket:
    """A non-blocking UDP socket connected to `address`: connect() binds a random ephemeral
    port and makes the kernel drop datagrams from other sources (and report ICMP errors on
    this socket). The C socket type: no Python-level wrapper to run for every query."""
    sock = _socket.socket(family, _socket.SOCK_DGRAM | _socket.SOCK_NONBLOCK)
    try:
        sock.connect(address)
    except OSError:
        sock.close()
        raise
    return sock


class PlainDNS:
    """Classic DNS to one upstream: UDP first, TCP when the answer is truncated."""

    def __init__(
        self, spec: UpstreamSpec, stats: UpstreamStats, mix_case: bool = False, pool: int = 0
    ) -> None:
        self.endpoint = spec
        self.mix_case = mix_case
        self.name = str(spec)
        self.stats = stats
        self.address = (spec.host, spec.port)  # normalised the way the kernel prints it
        self.family = socket.AF_INET6 if spec.family_v6 else socket.AF_INET
        self.pool = SocketPool(self.address, self.family, pool, stats) if pool else None

    def begin(self, query: wire.Query, timeout: float, on_done: OnDone) -> Attempt:
        """A UDP exchange settled by the socket's reader callback (no task, future or timer:
        the group's deadline ends it); a truncated reply continues over TCP."""
        return _UdpAttempt(self, query, timeout, on_done)

    async def exchange(self, query: wire.Query, timeout: float) -> Reply:
        return await exchange_via(self, query, timeout)

    async def tcp(self, query: wire.Query, timeout: float) -> Reply:
        msg_id, packet = packets.make_upstream_query(query, mix_case=self.mix_case)
        exact = packets.sent_question(packet, query) if self.mix_case else None
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
                    if not packets.reply_matches(message, msg_id, query) or (
                        exact is not None and not packets.echoes_question(data, exact)
                    ):
                        self.stats.forged += 1
                        continue
                    if exact is not None:
                        data, message = restore_case(data, message, query)
                    return Reply(data, message, self.name, "tcp")
            finally:
                writer.close()

    async def aclose(self) -> None:
        """The socket pool, when there is one; otherwise nothing is kept between queries."""
        if self.pool is not None:
            self.pool.close()


class _UdpAttempt:
    """One UDP question in flight, on a fresh connected socket or a pooled one.

    It is its own reply sink: the reader callback (`drain`) hands it a matched reply, and it
    tells `on_done`. One object per query, where a coroutine, a task, a future and a timeout
    used to be (the group's one timer covers the deadline).
    """

    __slots__ = (
        "deadline",
        "exact",
        "finished",
        "loop",
        "msg_id",
        "on_done",
        "owner",
        "pooled",
        "query",
        "sock",
        "tcp",
    )

    def __init__(self, owner: PlainDNS, query: wire.Query, timeout: float, on_done: OnDone):
        self.owner = owner
        self.query = query
        self.on_done = on_done
        self.deadline = time.monotonic() + timeout
        self.finished = False
        self.tcp: Attempt | None = None
        self.loop = loop = asyncio.get_running_loop()  # once: each call is a getpid()
        pool = owner.pool
        self.sock: _socket.socket | None = None
        self.pooled: Pooled | None = None
        if pool is not None:
            self.pooled, msg_id = pool.checkout()
            self.msg_id, packet = packets.make_upstream_query(query, msg_id, owner.mix_case)
            self.exact = packets.sent_question(packet, query) if owner.mix_case else None
            self.pooled.waiting[msg_id] = (query, self.exact, self)
            try:
                self.pooled.sock.send(packet)
            except OSError:
                self.cancel()
                raise
            return
        self.msg_id, packet = packets.make_upstream_query(query, mix_case=owner.mix_case)
        self.exact = packets.sent_question(packet, query) if owner.mix_case else None
        self.sock = sock = fresh_socket(owner.family, owner.address)
        try:
            waiting: dict[int, Waiter] = {self.msg_id: (query, self.exact, self)}
            loop.add_reader(sock.fileno(), drain, sock, waiting, owner.stats)
            sock.send(packet)
        except OSError:
            self.cancel()
            raise

    def done(self) -> bool:
        return self.finished or self.tcp is not None

    def set_result(self, result: tuple[bytes, wire.Message], /) -> None:
        if self.done():
            return
        self._release()
        data, message = result
        if message.flags & wire.TC:
            remaining = max(0.05, self.deadline - time.monotonic())
            self.tcp = begin_task(self.owner.tcp(self.query, remaining), self.on_done)
            return
        self.finished = True
        if self.exact is not None:
            data, message = restore_case(data, message, self.query)
        self.on_done(Reply(data, message, self.owner.name, "udp"), None)

    def set_exception(self, exception: BaseException, /) -> None:
        if not self.done():
            self._release()
            self.finished = True
            self.on_done(None, exception)

    def cancel(self) -> None:
        """Stop listening: the socket (or pooled ID) is freed and on_done is never called."""
        if self.tcp is not None:
            self.tcp.cancel()
        elif not self.finished:
            self._release()
        self.finished = True

    def _release(self) -> None:
        if self.pooled is not None:
            SocketPool.release(self.pooled, self.msg_id)
            self.pooled = None
        elif self.sock is not None:
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None


async def ask_once(
    host: str, port: int, query: wire.Query, timeout: float = 2.0
) -> tuple[bytes, wire.Message] | None:
    """One question over UDP, outside every group's health and counters: the server's own
    probes at start (RFC 7050 NAT64 discovery), which must not mark an upstream down or count
    an error when it simply does not know the name. A fresh socket and a random ID; the reply
    must come from `host:port`, carry our ID and echo our question. (data, its walk), or None:
    no usable reply."""
    loop = asyncio.get_running_loop()
    msg_id, packet = packets.make_upstream_query(query)
    family = _socket.AF_INET6 if ":" in host else _socket.AF_INET
    try:
        sock = fresh_socket(family, (host, port))
    except OSError:
        return None
    try:
        await loop.sock_sendall(sock, packet)  # type: ignore[arg-type]
        async with asyncio.timeout(timeout):
            while True:
                data = await loop.sock_recv(sock, 65535)  # type: ignore[arg-type]
                try:
                    message = wire.walk(data)
                except wire.WireError:
                    continue
                if packets.reply_matches(message, msg_id, query):
                    return data, message
    except (OSError, TimeoutError):
        return None
    finally:
        sock.close()
