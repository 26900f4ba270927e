"""One `https://` listen address's HTTP side: HTTP/2 on listen/h2session.py's protocol (what
DoH clients speak: browsers, Android, dnsperf, curl), HTTP/1.1 (and a client that names no
ALPN) on hypercorn, each on TLS that splitdns set up itself (listen/encrypted.py), so the
connection budget counts them from accept and can close any of them."""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.asyncio.worker_context import WorkerContext

from splitdns.config.model import Config
from splitdns.limits.connections import Connection
from splitdns.listen.doh import DohApp, OwnTls
from splitdns.listen.h2session import HEADER_LIST, H2Session
from splitdns.listen.tlsstream import TlsStream


class DohServing:
    """The sessions of one DoH listen address: HTTP/2 ones of our own, hypercorn's for
    HTTP/1.1 (its limits set from `limits:`; the whole-request deadline and the bytes per
    connection are the app's)."""

    def __init__(self, app: DohApp, config: Config) -> None:
        hyper = OwnTls()
        idle = config.tcp_idle_timeout
        hyper.alpn_protocols = ["h2", "http/1.1"]
        hyper.keep_alive_timeout = idle
        hyper.read_timeout = int(max(1, idle))
        hyper.accesslog = None
        hyper.errorlog = logging.getLogger("splitdns.doh.http")
        hyper.h2_max_concurrent_streams = config.limits.streams_per_connection
        hyper.h2_max_header_list_size = HEADER_LIST
        hyper.h11_max_incomplete_size = 16384
        hyper.max_app_queue_size = 10
        self.app = app
        self.config = config
        self.hyper = hyper
        self.context = WorkerContext(None)
        self.sessions: set[H2Session] = set()
        self._http1: set[asyncio.Task[Any]] = set()

    def session(self, tls: TlsStream, host: str, conn: Connection) -> asyncio.Protocol:
        """The protocol for a connection whose TLS is up, by the ALPN it chose."""
        if tls.alpn == "h2":
            return H2Session(self.app, host, conn, self.config, self.sessions)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=2**16)
        protocol = asyncio.StreamReaderProtocol(reader)
        writer = asyncio.StreamWriter(tls, protocol, reader, loop)
        app = ASGIWrapper(functools.partial(self.app.serve, conn=conn, peer=host))
        task = asyncio.ensure_future(
            TCPServer(app, loop, self.hyper, self.context, {}, reader, writer)
        )
        self._http1.add(task)
        task.add_done_callback(self._http1.discard)
        return protocol

    async def stop(self) -> None:
        """Tell open connections to close once their requests are done."""
        await self.context.terminated.set()
        for session in list(self.sessions):
            session.close()
        if self._http1:
            await asyncio.wait(set(self._http1), timeout=5)
        for task in list(self._http1):
            task.cancel()
