"""The operator's HTTP listener: the dashboard, its JSON, /metrics and /healthz.

splitdns accepts the connections itself (as for DoH) and hands each to hypercorn's
per-connection server, so it can bound them: a small budget of its own (never the DNS one, so
a browser or a scraper cannot take a DNS client's place, nor the other way round), a share per
address, a deadline for a TLS handshake, hypercorn's read and keep-alive timeouts. `https://`
uses the DoT/DoH certificate (made, if none is given, like theirs).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections import Counter
from typing import Any

from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.asyncio.worker_context import WorkerContext
from hypercorn.config import Config as HypercornConfig

from splitdns.config.model import Endpoint
from splitdns.serve.encrypted import reset
from splitdns.serve.ports import bind_problem

log = logging.getLogger(__name__)

CONNECTIONS = 64
PER_CLIENT = 16
HANDSHAKE = 5.0


class _Config(HypercornConfig):
    """hypercorn's config with a TLS context of ours (or none)."""

    def __init__(self, context: ssl.SSLContext | None) -> None:
        super().__init__()
        self._context = context

    def create_ssl_context(self) -> ssl.SSLContext | None:
        return self._context

    @property
    def ssl_enabled(self) -> bool:
        return self._context is not None


class OperatorListener:
    """One address serving `app` (an ASGI application) over HTTP/1.1 (and HTTP/2 with TLS)."""

    def __init__(self, app: Any, context: ssl.SSLContext | None = None) -> None:
        hyper = _Config(context)
        hyper.alpn_protocols = ["h2", "http/1.1"]
        hyper.keep_alive_timeout = 30
        hyper.read_timeout = 30
        hyper.accesslog = None
        hyper.errorlog = logging.getLogger("splitdns.dashboard.http")
        hyper.h11_max_incomplete_size = 16384
        hyper.h2_max_concurrent_streams = 16
        hyper.h2_max_header_list_size = 16384
        hyper.max_app_queue_size = 10
        self.hyper = hyper
        self.context = context
        self.wrapped = ASGIWrapper(app)
        self.worker = WorkerContext(None)
        self.open: Counter[str] = Counter()
        self.refused = 0
        self._socket: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self, endpoint: Endpoint, what: str) -> Endpoint:
        """Bind and listen; returns the address as bound (port 0 picks one)."""
        family = socket.AF_INET6 if ":" in endpoint.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((endpoint.host, endpoint.port))
            sock.listen(64)
        except OSError as exc:
            sock.close()
            raise bind_problem(endpoint, what, exc) from None
        sock.setblocking(False)
        self._socket = sock
        self._accepting = asyncio.ensure_future(self._accept(sock))
        return Endpoint(endpoint.host, sock.getsockname()[1])

    async def _accept(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, addr = await loop.sock_accept(sock)
            except OSError:
                await asyncio.sleep(0.1)  # out of descriptors: let connections finish
                continue
            host = addr[0]
            if sum(self.open.values()) >= CONNECTIONS or self.open[host] >= PER_CLIENT:
                self.refused += 1
                reset(conn)
                continue
            self.open[host] += 1
            task = asyncio.ensure_future(self._serve(conn, host))
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)

    async def _serve(self, sock: socket.socket, host: str) -> None:
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
            await TCPServer(self.wrapped, loop, self.hyper, self.worker, {}, reader, writer)
        finally:
            self.open[host] -= 1
            if self.open[host] <= 0:
                del self.open[host]
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
