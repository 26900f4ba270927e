"""TCP and DoT connections (RFC 7766): framing, pipelined queries answered as they complete,
a deadline per message, the connection budget, PROXY v2 headers from trusted proxies.

The server hands every accepted stream here (plain TCP at accept; DoT after its handshake,
already admitted); each message goes back to the server's one error boundary (`respond`).
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol, cast

from splitdns.config.model import Config, IPNetwork
from splitdns.limits.connections import Connection, ConnectionBudget
from splitdns.listen import proxyv2
from splitdns.serve.clienttrap import ClientTrap
from splitdns.serve.published import Counts


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
    async def respond(self, data: bytes, host: str, transport: str) -> bytes | None: ...
    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]: ...


class Streams:
    """The open TCP and DoT connections of one server."""

    def __init__(self, server: StreamHost) -> None:
        self.server = server
        self.writers: set[asyncio.StreamWriter] = set()

    def close(self) -> None:
        """Close every open connection (the server is stopping)."""
        for writer in list(self.writers):
            writer.close()

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
