"""The operator's HTTP listener: the dashboard, its JSON, /metrics and /healthz.

splitdns accepts the connections itself (as for DoH) and hands each to hypercorn's
per-connection server, so it can bound them: a small budget of its own (never the DNS one, so
a browser or a scraper cannot take a DNS client's place, nor the other way round), a share per
address, a deadline for a TLS handshake, a read timeout (none while a live stream is sent: it
reads nothing for minutes), hypercorn's keep-alive timeout. When an address has used its share,
or all are taken, a connection makes room: an idle keep-alive one first (browsers keep a pool),
else one whose request came without a session (an unfinished login form, say) from the
address holding the most; a logged-in request in progress is never closed for another. When
the last connection of a crowd closes, the memory it took is given back to the system.
`https://` uses the DoT/DoH certificate (made, if none is given, like theirs).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import ssl
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.asyncio.worker_context import WorkerContext

from splitdns.config.model import Endpoint
from splitdns.limits import memory
from splitdns.listen.doh import OwnTls
from splitdns.listen.encrypted import accepting, bind_stream, reset

log = logging.getLogger(__name__)

CONNECTIONS = 128
PER_CLIENT = 32
HANDSHAKE = 5.0
READ_TIMEOUT = 30.0
HELD = "splitdns.held"  # the scope key under which a request finds its connection's Held


class Held:
    """One accepted connection: whose, since when, requests in progress (and whether one of
    them came with a session), live streams being sent, its task."""

    __slots__ = ("busy", "host", "opened", "streaming", "task", "trusted")

    def __init__(self, host: str) -> None:
        self.host = host
        self.opened = time.monotonic()
        self.busy = 0
        self.trusted = False
        self.streaming = 0
        self.task: asyncio.Task[None] | None = None

    def close(self) -> None:
        """End the connection (its task closes the transport)."""
        if self.task is not None:
            self.task.cancel()


class TimedReader:
    """The connection's reader as hypercorn reads it, with READ_TIMEOUT between bytes except
    while a live stream is being sent (hypercorn's own read_timeout would cut it)."""

    def __init__(self, reader: asyncio.StreamReader, held: Held) -> None:
        self.reader = reader
        self.held = held

    def at_eof(self) -> bool:
        return self.reader.at_eof()

    async def read(self, n: int = -1) -> bytes:
        pending = asyncio.ensure_future(self.reader.read(n))
        pending.add_done_callback(_retrieved)  # (a reset after the connection ended: quiet)
        try:
            while True:
                done, _ = await asyncio.wait({pending}, timeout=READ_TIMEOUT)
                if done:
                    return pending.result()
                if not self.held.streaming:
                    raise TimeoutError
        finally:
            if not pending.done():
                pending.cancel()


class OperatorListener:
    """One address serving `app` (an ASGI application) over HTTP/1.1 (and HTTP/2 with TLS)."""

    def __init__(
        self,
        app: Any,
        context: ssl.SSLContext | None = None,
        trusted: Callable[[Any], bool] | None = None,
    ) -> None:
        hyper = OwnTls(tls=context is not None)
        hyper.alpn_protocols = ["h2", "http/1.1"]
        hyper.keep_alive_timeout = 30
        hyper.read_timeout = None  # TimedReader's, which spares live streams
        hyper.accesslog = None
        hyper.include_server_header = False
        hyper.errorlog = logging.getLogger("splitdns.dashboard.http")
        hyper.h11_max_incomplete_size = 16384
        hyper.h2_max_concurrent_streams = 16
        hyper.h2_max_header_list_size = 16384
        hyper.max_app_queue_size = 10
        self.hyper = hyper
        self.context = context
        self.worker = WorkerContext(None)
        self.app = app
        self.trusted = trusted or (lambda scope: False)  # a request with a valid session
        self.held: set[Held] = set()
        self._socket: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self, endpoint: Endpoint, what: str) -> Endpoint:
        """Bind and listen; returns the address as bound (port 0 picks one)."""
        sock = bind_stream(endpoint, what)
        sock.listen(64)
        sock.setblocking(False)
        self._socket = sock
        self._accepting = asyncio.ensure_future(self._accept(sock))
        return Endpoint(endpoint.host, sock.getsockname()[1])

    async def _accept(self, sock: socket.socket) -> None:
        async for conn, host in accepting(sock):
            if not self._room_for(host):
                reset(conn)
                continue
            held = Held(host)
            self.held.add(held)
            task = held.task = asyncio.ensure_future(self._serve(conn, held))
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)

    def _room_for(self, host: str) -> bool:
        """Whether a new connection from `host` fits, after closing another if need be (see
        the module's docstring): from that host's when it holds its share, else anyone's."""
        full = len(self.held) >= CONNECTIONS
        if not full and sum(1 for h in self.held if h.host == host) < PER_CLIENT:
            return True
        pool = [h for h in self.held if full or h.host == host]
        victim = min((h for h in pool if not h.busy), key=_age, default=None)
        if victim is None:
            untrusted = [h for h in pool if not h.trusted]
            if not untrusted:
                return False
            holding = Counter(h.host for h in untrusted)
            heaviest = max(holding.values())
            victim = min((h for h in untrusted if holding[h.host] == heaviest), key=_age)
        self.held.discard(victim)  # out of the count now; its task ends at its next step
        victim.close()
        return True

    async def _serve(self, sock: socket.socket, held: Held) -> None:
        loop = asyncio.get_running_loop()
        transport: asyncio.Transport | None = None
        try:
            reader = asyncio.StreamReader(limit=2**16)
            protocol = asyncio.StreamReaderProtocol(reader)
            try:
                async with asyncio.timeout(HANDSHAKE + 0.5):
                    transport, _ = await loop.connect_accepted_socket(
                        lambda: protocol,
                        sock,
                        ssl=self.context,
                        ssl_handshake_timeout=HANDSHAKE if self.context else None,
                    )
            except (TimeoutError, OSError, ssl.SSLError):
                return
            writer = asyncio.StreamWriter(transport, protocol, reader, loop)
            app = ASGIWrapper(functools.partial(_counted, self.app, held, self.trusted))
            timed: Any = TimedReader(reader, held)  # (hypercorn reads through read/at_eof)
            await TCPServer(app, loop, self.hyper, self.worker, {}, timed, writer)
        finally:
            self.held.discard(held)
            if transport is not None:
                transport.abort()
            else:
                sock.close()
            if not self.held:  # a crowd has gone: its buffers back to the system
                memory.trim_soon()

    async def stop(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
        if self._socket is not None:
            self._socket.close()
        await self.worker.terminated.set()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.wait(set(self._connections), timeout=5)


def _retrieved(task: asyncio.Future[bytes]) -> None:
    if not task.cancelled():
        task.exception()


def _age(held: Held) -> float:
    return held.opened


async def _counted(
    app: Any, held: Held, trusted: Callable[[Any], bool], scope: Any, receive: Any, send: Any
) -> None:
    """`app` for one request, with its connection marked busy meanwhile (and trusted once a
    request of it came with a session); the request finds its Held under HELD."""
    held.busy += 1
    if not held.trusted and scope.get("type") == "http" and trusted(scope):
        held.trusted = True
    try:
        await app({**scope, HELD: held}, receive, send)
    finally:
        held.busy -= 1
