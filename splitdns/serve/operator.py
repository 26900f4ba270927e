"""The operator's HTTP listener: the dashboard, its JSON, /metrics and /healthz.

splitdns accepts the connections itself (as for DoH) and hands each to hypercorn's
per-connection server, so it can bound them: a small budget of its own (never the DNS one, so
a browser or a scraper cannot take a DNS client's place, nor the other way round), a share per
address (when it is used up, that address's oldest idle keep-alive connection makes room:
browsers keep a pool of them), a deadline for a TLS handshake, hypercorn's read and keep-alive
timeouts. `https://`
uses the DoT/DoH certificate (made, if none is given, like theirs).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import ssl
import time
from typing import Any

from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.asyncio.worker_context import WorkerContext

from splitdns.config.model import Endpoint
from splitdns.serve.doh import OwnTls
from splitdns.serve.encrypted import accepting, bind_stream, reset

log = logging.getLogger(__name__)

CONNECTIONS = 128
PER_CLIENT = 32
HANDSHAKE = 5.0


class Held:
    """One accepted connection: whose, since when, requests in progress, its task."""

    __slots__ = ("busy", "host", "opened", "task")

    def __init__(self, host: str) -> None:
        self.host = host
        self.opened = time.monotonic()
        self.busy = 0
        self.task: asyncio.Task[None] | None = None


class OperatorListener:
    """One address serving `app` (an ASGI application) over HTTP/1.1 (and HTTP/2 with TLS)."""

    def __init__(self, app: Any, context: ssl.SSLContext | None = None) -> None:
        hyper = OwnTls(tls=context is not None)
        hyper.alpn_protocols = ["h2", "http/1.1"]
        hyper.keep_alive_timeout = 30
        hyper.read_timeout = 30
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
        """Whether a new connection from `host` fits, after closing an idle one if need be:
        that host's oldest when it holds its share, anyone's oldest when all are taken."""
        full = len(self.held) >= CONNECTIONS
        if not full and sum(1 for h in self.held if h.host == host) < PER_CLIENT:
            return True
        idle = [h for h in self.held if not h.busy and (full or h.host == host)]
        if not idle:
            return False
        oldest = min(idle, key=lambda h: h.opened)
        self.held.discard(oldest)  # out of the count now; its task ends at its next step
        if oldest.task is not None:
            oldest.task.cancel()
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
            app = ASGIWrapper(functools.partial(_counted, self.app, held))
            await TCPServer(app, loop, self.hyper, self.worker, {}, reader, writer)
        finally:
            self.held.discard(held)
            if transport is not None:
                transport.abort()
            else:
                sock.close()

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


async def _counted(app: Any, held: Held, scope: Any, receive: Any, send: Any) -> None:
    """`app` for one request, with its connection marked busy meanwhile."""
    held.busy += 1
    try:
        await app(scope, receive, send)
    finally:
        held.busy -= 1
