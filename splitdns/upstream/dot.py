"""DNS over TLS (RFC 7858) to one upstream: one verified connection, reused and pipelined.

TLS itself is Python's ssl module with certificate and host-name checks always on: the
certificate must carry the configured name (the part after `#`), else the upstream is never
used and the log says why. Queries share one connection with distinct random IDs and may be
answered in any order (RFC 7766); a reader task hands each reply to its waiter after checking
the question. A connection the server closed while idle is replaced once, transparently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import ssl
import struct

from splitdns import wire
from splitdns.config.upstreams import UpstreamSpec
from splitdns.upstream import packets
from splitdns.upstream.bootstrap import Bootstrap
from splitdns.upstream.socketpool import deliver
from splitdns.upstream.transport import (
    Attempt,
    OnDone,
    Reply,
    TransportError,
    UpstreamStats,
    Waiter,
    begin_task,
)

log = logging.getLogger(__name__)

#: RFC 7858 asks clients to reuse connections; close ours after this much silence.
IDLE_CLOSE = 30.0


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """Verification always on; a private CA can be trusted with `upstreams.ca_file`."""
    context = ssl.create_default_context(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class _Connection:
    """One TLS connection carrying many pipelined queries."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stats: UpstreamStats
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.stats = stats
        self.waiting: dict[int, Waiter] = {}
        self.closed = False
        self.used = False
        self.task = asyncio.ensure_future(self._read_replies())

    async def ask(self, query: wire.Query) -> tuple[bytes, wire.Message]:
        msg_id = secrets.randbits(16)
        while msg_id in self.waiting:
            msg_id = secrets.randbits(16)
        _, packet = packets.make_upstream_query(query, msg_id)
        future: asyncio.Future[tuple[bytes, wire.Message]] = (
            asyncio.get_running_loop().create_future()
        )
        self.waiting[msg_id] = (query, None, future)
        self.used = True
        try:
            self.writer.write(struct.pack("!H", len(packet)) + packet)
            return await future
        finally:
            self.waiting.pop(msg_id, None)

    async def _read_replies(self) -> None:
        error: BaseException = ConnectionError("connection closed by the upstream")
        try:
            while True:
                async with asyncio.timeout(None if self.waiting else IDLE_CLOSE):
                    (length,) = struct.unpack("!H", await self.reader.readexactly(2))
                data = await self.reader.readexactly(length)
                self._deliver(data)
        except TimeoutError:
            error = ConnectionError("idle connection closed")
        except (OSError, EOFError, asyncio.IncompleteReadError) as exc:
            error = exc if isinstance(exc, OSError) else ConnectionError(str(exc) or "EOF")
        finally:
            self.closed = True
            self.writer.close()
            for _, _, future in self.waiting.values():
                if not future.done():
                    future.set_exception(error)

    def _deliver(self, data: bytes) -> None:
        deliver(data, self.waiting, self.stats)

    async def aclose(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


class DnsOverTls:
    """A DoT upstream: `tls://ADDRESS[:PORT]#NAME`."""

    def __init__(
        self, spec: UpstreamSpec, stats: UpstreamStats, bootstrap: Bootstrap, ca_file: str | None
    ) -> None:
        self.spec = spec
        self.name = str(spec)
        self.stats = stats
        self.bootstrap = bootstrap
        self.context = tls_context(ca_file)
        self._conn: _Connection | None = None
        self._connecting: asyncio.Lock | None = None

    def begin(self, query: wire.Query, timeout: float, on_done: OnDone) -> Attempt:
        return begin_task(self.exchange(query, timeout), on_done)

    async def exchange(self, query: wire.Query, timeout: float) -> Reply:
        async with asyncio.timeout(timeout):
            conn = await self._connection()
            reused = conn.used
            try:
                data, message = await conn.ask(query)
            except ConnectionError:
                if not reused:
                    raise
                # The server may close an idle connection just as we reuse it: one retry.
                conn = await self._connection()
                data, message = await conn.ask(query)
        return Reply(data, message, self.name, "tls")

    async def _connection(self) -> _Connection:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:  # one handshake for a burst of first queries
            if self._conn is None or self._conn.closed:
                self._conn = await self._connect()
            return self._conn

    async def _connect(self) -> _Connection:
        address = await self.bootstrap.address(self.spec.host)
        try:
            reader, writer = await asyncio.open_connection(
                address, self.spec.port, ssl=self.context, server_hostname=self.spec.tls_name
            )
        except ssl.SSLCertVerificationError as exc:
            log.error(
                "upstream %s: certificate refused (%s): not using it", self.name, exc.verify_message
            )
            raise TransportError("tls", f"certificate refused: {exc.verify_message}") from None
        except ssl.SSLError as exc:
            log.error("upstream %s: TLS handshake failed: %s", self.name, exc.reason)
            raise TransportError("tls", f"TLS handshake failed: {exc.reason}") from None
        return _Connection(reader, writer, self.stats)

    async def aclose(self) -> None:
        if self._conn is not None:
            await self._conn.aclose()
            self._conn = None
