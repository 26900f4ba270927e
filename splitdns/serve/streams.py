"""TCP and DoT connections (RFC 7766): framing, pipelined queries answered as they complete,
a deadline per message, the connection budget, PROXY v2 headers from trusted proxies.

The server hands every accepted stream here (plain TCP at accept; DoT after its handshake,
already admitted); each message goes back to the server's one error boundary (`respond`).
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol, cast

from splitdns.config.model import Config, IPNetwork
from splitdns.limits.connections import Connection, ConnectionBudget
from splitdns.listen import proxyv2
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
    def stream_hit(self, data: bytes, host: str, transport: str) -> bytes | None: ...
    async def respond(self, data: bytes, host: str, transport: str) -> bytes | None: ...
    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]: ...


class Streams:
    """The open TCP and DoT connections of one server."""

    def __init__(self, server: StreamHost) -> None:
        self.server = server
        self.writers: set[asyncio.StreamWriter] = set()
        self.sessions: set[StreamSession] = set()

    def close(self) -> None:
        """Close every open connection (the server is stopping)."""
        for writer in list(self.writers):
            writer.close()
        for session in list(self.sessions):
            session.close()

    def session(self, host: str, transport: str, conn: Connection) -> StreamSession:
        """The protocol for an admitted connection whose client is known (DoT: after the
        PROXY header, when TLS is up)."""
        return StreamSession(self, host, transport, conn)

    async def tcp_client(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        transport: str = "tcp",
        client: str | None = None,
        conn: Connection | None = None,
    ) -> None:
        """One TCP (or, behind TLS, DoT) connection: RFC 7766 framing, pipelined queries
        answered as they complete, a deadline per message, the connection budget. `client` is
        the address a PROXY header already named and `conn` the budget's record (DoT reads and
        admits both before the TLS handshake); plain TCP is admitted here, at accept."""
        peer = writer.get_extra_info("peername")
        if conn is None:
            if peer is None or self.server.closing:
                writer.transport.abort()
                return
            conn = self.server.connections.admit(peer[0], transport, self.server.allowed(peer[0]))
            if conn is None:
                writer.transport.abort()  # RST: nothing lingers in TIME_WAIT on our side
                return
            conn.transport = cast(asyncio.Transport, writer.transport)
        try:
            host = client or peer[0]
            trusted = self.server.config.trusted_proxies and self.server.trusted(
                host, self.server.config.trusted_proxies
            )
            if client is None and trusted:
                named = await self.read_proxy_header(reader.readexactly, host)
                if named is None:
                    return
                host = named
            if not self.server.trap.done:
                self.server.trap.saw(host)
            self.writers.add(writer)
            await self._serve_stream(reader, writer, host, transport, conn)
        finally:
            self.server.connections.release(conn)
            self.writers.discard(writer)
            writer.close()

    async def _serve_stream(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        host: str,
        transport: str,
        conn: Connection,
    ) -> None:
        pending: set[asyncio.Task[Any]] = set()
        idle = self.server.config.tcp_idle_timeout
        streams = self.server.config.limits.streams_per_connection

        def finished(task: asyncio.Task[Any]) -> None:
            pending.discard(task)
            conn.finished()

        while (data := await self._next_message(reader, idle)) is not None:
            conn.started()
            task = self.server.spawn(self._tcp_answer(data, host, writer, transport))
            pending.add(task)
            task.add_done_callback(finished)
            if len(pending) >= streams:
                await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        if pending:
            await asyncio.wait(pending, timeout=self.server.config.timeout + 1)

    async def _next_message(self, reader: asyncio.StreamReader, idle: float) -> bytes | None:
        """The next RFC 7766 message, or None: the connection is done (closed, idle, a zero
        length, or a PROXY header from a sender not trusted to send one)."""
        try:
            # One deadline per message: a client trickling bytes cannot hold us forever.
            async with asyncio.timeout(idle):
                (length,) = struct.unpack("!H", await reader.readexactly(2))
                if length == 0:
                    return None
                if length == 0x0D0A:  # "\r\n": perhaps a PROXY header, not a length
                    head = await reader.readexactly(10)
                    if head == proxyv2.SIGNATURE[2:]:
                        self.server.counts.proxy["untrusted"] += 1  # from anyone else: closed
                        return None
                    return head + await reader.readexactly(length - 10)
                return await reader.readexactly(length)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            return None

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

    async def _tcp_answer(
        self, data: bytes, host: str, writer: asyncio.StreamWriter, transport: str = "tcp"
    ) -> None:
        limited, refusal = self.server.over_limit(data, host)
        answer = refusal if limited else await self.server.respond(data, host, transport)
        if answer is not None and not writer.is_closing():
            writer.write(struct.pack("!H", len(answer)) + answer)
            try:
                # A client that never reads is cut off, not waited for.
                async with asyncio.timeout(self.server.config.tcp_idle_timeout):
                    await writer.drain()
            except (ConnectionError, TimeoutError):
                writer.close()


class StreamSession(asyncio.Protocol):
    """One stream connection as a protocol (DoT on listen/tlsstream.py's transport): every
    complete message a read brings is taken at once; cache hits are answered there and
    written together, one write (one TLS record) a read; the rest are answered in tasks of
    their own and written as they complete (RFC 7766 §6.2.1.1: out of order). No task waits
    on the connection itself, so an idle one costs its buffers and a timer.

    The bounds are tcp_client's: `limits.streams_per_connection` answers pending (reading
    pauses at the bound), `tcp_idle_timeout` between complete messages (a trickling or
    silent client is closed), the same again for a client that does not read its answers.
    """

    __slots__ = (
        "_buffer",
        "_conn",
        "_draining",
        "_host",
        "_label",
        "_last",
        "_paused",
        "_pending",
        "_streams",
        "_timer",
        "_transport",
        "_writable",
    )

    def __init__(self, streams: Streams, host: str, label: str, conn: Connection) -> None:
        self._streams = streams
        self._host = host
        self._label = label  # the transport's name in counters and logs: tcp | dot
        self._conn = conn
        self._buffer = b""
        self._pending: set[asyncio.Task[Any]] = set()
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last = 0.0  # when the last complete message came (the loop's clock)
        self._paused = False  # reading paused: too many answers pending
        self._writable = True  # the client reads what we write
        self._draining = False  # no more messages: close once the pending are answered

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._conn.transport = self._transport
        self._streams.sessions.add(self)
        server = self._streams.server
        if not server.trap.done:
            server.trap.saw(self._host)
        loop = asyncio.get_running_loop()
        self._last = loop.time()
        self._timer = loop.call_at(self._last + server.config.tcp_idle_timeout, self._idle)

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
        if not self._paused:
            self._take()

    def _take(self) -> None:
        """Take every complete message in the buffer (up to the pending bound)."""
        buffer = self._buffer
        server = self._streams.server
        host, label = self._host, self._label
        streams = server.config.limits.streams_per_connection
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
                    answer = server.stream_hit(message, host, label)
                except Exception:  # the fast path must never cost an answer
                    log.exception("cache fast path failed on a %s query; the slow way", label)
                    answer = None
                if answer is None:
                    self._answer_later(message)
                    if len(self._pending) >= streams:
                        self._pause()
                        break
                    continue
            if answer is not None:
                out.append(len(answer).to_bytes(2, "big") + answer)
        self._buffer = buffer[start:] if start else buffer
        if took:
            self._last = asyncio.get_running_loop().time()
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
        self._conn.started()
        task = server.spawn(self._answer(message))
        self._pending.add(task)
        task.add_done_callback(self._answered)

    async def _answer(self, message: bytes) -> None:
        answer = await self._streams.server.respond(message, self._host, self._label)
        transport = self._transport
        if answer is not None and transport is not None and not transport.is_closing():
            transport.write(len(answer).to_bytes(2, "big") + answer)

    def _answered(self, task: asyncio.Task[Any]) -> None:
        self._pending.discard(task)
        self._conn.finished()
        if self._draining:
            if not self._pending:
                self.close()
        elif self._paused and self._writable:
            self._resume()

    def _pause(self) -> None:
        if not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()

    def _resume(self) -> None:
        if self._paused and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
            if self._buffer and not self._draining:  # messages read before the pause
                self._take()

    def pause_writing(self) -> None:
        """The client does not read: take no more of its messages; `_idle` cuts it off if it
        does not catch up within the idle timeout."""
        self._writable = False
        self._pause()
        loop = asyncio.get_running_loop()
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_later(self._streams.server.config.tcp_idle_timeout, self._idle)

    def resume_writing(self) -> None:
        self._writable = True
        if len(self._pending) < self._streams.server.config.limits.streams_per_connection:
            self._resume()

    def eof_received(self) -> bool:
        """The client is done sending: the pending answers are still written."""
        self._draining = True
        return bool(self._pending)

    def close(self) -> None:
        self._draining = True
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._transport = None
        self._draining = True
        self._streams.sessions.discard(self)
        self._streams.server.connections.release(self._conn)
