"""TCP and DoT connections (RFC 7766): framing, pipelined queries answered as they complete,
a deadline per message, the connection budget, PROXY v2 headers from trusted proxies.

Both run as one protocol, StreamSession: plain TCP from its accept (admitted there, its PROXY
header read in-band), DoT on listen/tlsstream.py's transport once its handshake is done (its
PROXY header read off the socket before TLS, admitted at accept). Cached answers are made in
the read that brought the question; every other message goes to the server's one error
boundary (`respond`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol, cast

from splitdns.config.model import Config, IPNetwork
from splitdns.limits.connections import Connection, ConnectionBudget
from splitdns.listen import proxyv2
from splitdns.listen.pacing import Paced
from splitdns.serve.clienttrap import ClientTrap
from splitdns.serve.published import Counts

log = logging.getLogger(__name__)


class StreamHost(Protocol):
    """What the streams need of the server (serve/server.py's Server)."""

    config: Config
    counts: Counts
    trap: ClientTrap
    connections: ConnectionBudget
    closing: bool

    def allowed(self, host: str) -> bool: ...
    def trusted(self, host: str, networks: tuple[IPNetwork, ...]) -> bool: ...
    def proxied_client(self, header: proxyv2.Header, host: str) -> str: ...
    def over_limit(self, data: bytes, host: str) -> tuple[bool, bytes | None]: ...
    def fast_answer(self, data: bytes, host: str, transport: str = ...) -> bytes | None: ...
    async def respond(self, data: bytes, host: str, transport: str) -> bytes | None: ...
    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]: ...


class Streams:
    """The open TCP and DoT connections of one server."""

    def __init__(self, server: StreamHost) -> None:
        self.server = server
        self.sessions: set[StreamSession] = set()

    def close(self) -> None:
        """Close every open connection (the server is stopping)."""
        for session in list(self.sessions):
            session.close()

    def session(self, host: str, transport: str, conn: Connection) -> StreamSession:
        """The protocol for an admitted connection whose client is known (DoT: after the
        PROXY header, when TLS is up)."""
        return StreamSession(self, host, transport, conn)

    def tcp_session(self) -> StreamSession:
        """The protocol for a plain TCP connection, admitted when it is made."""
        return StreamSession(self, None, "tcp", None)

    async def read_proxy_header(
        self, read_exactly: Callable[[int], Awaitable[bytes]], host: str
    ) -> str | None:
        """The client a trusted proxy's stream speaks for (its own address for LOCAL), read
        with `read_exactly` (a StreamReader's, or exact reads off a raw socket before TLS);
        None (counted) when the header is missing, malformed or slow."""
        try:
            async with asyncio.timeout(self.server.config.tcp_idle_timeout):
                fixed = await read_exactly(proxyv2.FIXED)
                total = proxyv2.header_length(fixed)
                header = proxyv2.parse(fixed + await read_exactly(total - proxyv2.FIXED))
        except proxyv2.ProxyError:
            self.server.counts.proxy["malformed"] += 1
            return None
        except (TimeoutError, EOFError, OSError):  # incl. IncompleteReadError, ConnectionError
            self.server.counts.proxy["missing"] += 1
            return None
        return self.server.proxied_client(header, host)


class StreamSession(Paced):
    """One stream connection as a protocol (DoT on listen/tlsstream.py's transport): every
    complete message a read brings is taken at once; cache hits are answered there and
    written together, one write (one TLS record) a read; the rest are answered in tasks of
    their own and written as they complete (RFC 7766 §6.2.1.1: out of order). No task waits
    on the connection itself, so an idle one costs its buffers and a timer.

    Bounds: `limits.streams_per_connection` answers pending (reading pauses at the bound),
    `tcp_idle_timeout` between complete messages (a trickling or silent client is closed),
    the same again for a client that does not read its answers.

    Plain TCP comes without a client or budget record: it is admitted when made (a refused
    one is reset), and from a `trusted_proxies` sender its first bytes must be a PROXY v2
    header naming the client (missing, slow or malformed: closed, counted).
    """

    __slots__ = ("_buffer", "_conn", "_host", "_label", "_proxied", "_streams")

    def __init__(
        self, streams: Streams, host: str | None, label: str, conn: Connection | None
    ) -> None:
        self._streams = streams
        self._host = host or ""
        self._label = label  # the transport's name in counters and logs: tcp | dot
        self._conn = conn
        self._proxied = False  # a PROXY header is awaited before the first message
        self._buffer = b""
        super().__init__()

    def _bounds(self) -> tuple[float, int]:
        config = self._streams.server.config
        return config.tcp_idle_timeout, config.limits.streams_per_connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        server = self._streams.server
        if self._conn is None:  # plain TCP: admitted now, before any byte is read
            peer = transport.get_extra_info("peername")
            conn = None
            if peer is not None and not server.closing:
                host = str(peer[0])
                conn = server.connections.admit(host, self._label, server.allowed(host))
            if conn is None:
                self._draining = True
                self._transport = None
                cast(asyncio.Transport, transport).abort()  # RST: nothing lingers here
                return
            self._conn, self._host = conn, host
            proxies = server.config.trusted_proxies
            self._proxied = bool(proxies) and server.trusted(host, proxies)
        self._conn.transport = self._transport
        self._streams.sessions.add(self)
        if not self._proxied and not server.trap.done:
            server.trap.saw(self._host)
        self._start_idle()

    def _idle(self) -> None:
        """The idle deadline: closed if no message came within it (else set again)."""
        self._timer = None
        loop = asyncio.get_running_loop()
        idle = self._streams.server.config.tcp_idle_timeout
        due = self._last + idle
        if not self._writable:  # answers unread for as long: cut off
            due = min(due, loop.time())
        if loop.time() < due and not self._draining:
            self._timer = loop.call_at(due, self._idle)
            return
        if self._proxied:  # the trusted sender never sent its header
            self._streams.server.counts.proxy["missing"] += 1
            self._proxied = False
        self._draining = True
        if self._pending and self._writable:
            self._pause()  # the answers already asked for are written, then it closes
            self._timer = loop.call_later(self._streams.server.config.timeout + 1, self.close)
        else:
            self.close()

    def data_received(self, data: bytes) -> None:
        if self._draining:
            return
        self._buffer = self._buffer + data if self._buffer else data
        if self._proxied and not self._proxy_header_read():
            return
        if not self._paused:
            self._take()

    def _proxy_header_read(self) -> bool:
        """Whether the trusted sender's PROXY header is in: then the client it names is this
        connection's and the rest of the buffer is DNS (False: wait, or closed if bad)."""
        buffer = self._buffer
        try:
            if len(buffer) < proxyv2.FIXED:
                return False
            total = proxyv2.header_length(buffer[: proxyv2.FIXED])
            if len(buffer) < total:
                return False
            header = proxyv2.parse(buffer[:total])
        except proxyv2.ProxyError:
            self._streams.server.counts.proxy["malformed"] += 1
            self._proxied = False
            self.close()
            return False
        server = self._streams.server
        self._host = server.proxied_client(header, self._host)
        self._proxied = False
        self._buffer = buffer[total:]
        if not server.trap.done:
            server.trap.saw(self._host)
        return True

    def _take(self) -> None:
        """Take every complete message in the buffer (up to the pending bound)."""
        buffer = self._buffer
        server = self._streams.server
        host, label = self._host, self._label
        out: list[bytes] = []
        start = 0
        size = len(buffer)
        took = False
        while size - start >= 2:
            length = (buffer[start] << 8) | buffer[start + 1]
            if length == 0 or (length == 0x0D0A and self._proxy_header(buffer, start)):
                self._draining = True
                break
            end = start + 2 + length
            if end > size:
                break
            message = buffer[start + 2 : end]
            start, took = end, True
            limited, answer = server.over_limit(message, host)
            if not limited:
                try:
                    answer = server.fast_answer(message, host, label)
                except Exception:  # the fast path must never cost an answer
                    log.exception("cache fast path failed on a %s query; the slow way", label)
                    answer = None
                if answer is None:
                    self._answer_later(message)
                    if self._paused:  # (at the bound of answers pending)
                        break
                    continue
            if answer is not None:
                out.append(len(answer).to_bytes(2, "big") + answer)
        self._buffer = buffer[start:] if start else buffer
        if took:
            self._last = asyncio.get_running_loop().time()
            if self._conn is not None:
                self._conn.last = time.monotonic()
        if out and self._transport is not None:
            self._transport.write(out[0] if len(out) == 1 else b"".join(out))
        if self._draining and not self._pending:
            self.close()

    def _proxy_header(self, buffer: bytes, start: int) -> bool:
        """Whether the "\\r\\n" length starts a PROXY header (from a sender not trusted to
        send one: the connection ends, counted); it may yet be a 3,338-byte message."""
        if len(buffer) - start < 12:
            return False
        if buffer[start + 2 : start + 12] == proxyv2.SIGNATURE[2:]:
            self._streams.server.counts.proxy["untrusted"] += 1
            return True
        return False

    def _answer_later(self, message: bytes) -> None:
        server = self._streams.server
        if self._conn is not None:
            self._conn.started()
        self._track(server.spawn(self._answer(message)))

    async def _answer(self, message: bytes) -> None:
        answer = await self._streams.server.respond(message, self._host, self._label)
        transport = self._transport
        if answer is not None and transport is not None and not transport.is_closing():
            transport.write(len(answer).to_bytes(2, "big") + answer)

    def _answered(self, task: asyncio.Task[Any]) -> None:
        if self._conn is not None:
            self._conn.finished()
        super()._answered(task)

    def _resumed(self) -> None:
        if self._buffer and not self._draining:  # messages read before the pause
            self._take()

    def eof_received(self) -> bool:
        """The client is done sending: the pending answers are still written."""
        if self._proxied:
            self._streams.server.counts.proxy["missing"] += 1
            self._proxied = False
        self._draining = True
        return bool(self._pending)

    def close(self) -> None:
        self._draining = True
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        self._transport = None
        self._draining = True
        self._streams.sessions.discard(self)
        if self._conn is not None:
            self._streams.server.connections.release(self._conn)
