"""The encrypted listeners of one server: DNS over TLS and DNS over HTTPS, their certificate,
its reload, and the pin users need for a self-signed one.

DoT is the RFC 7766 TCP service behind TLS (many pipelined queries per connection, answered
out of order as they complete, the same idle timeout and connection cap); DoH is hypercorn
with the DohApp. Both answer through Server.respond, so views, allow, rate limits, the query
log and metrics are the same as for plain DNS, decided by the real client address.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import ssl
import struct
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

from splitdns.config.encrypted import EncryptedListener
from splitdns.config.model import Config, Endpoint, IPNetwork
from splitdns.limits.connections import Connection, ConnectionBudget
from splitdns.listen import certs, proxyv2
from splitdns.listen.doh import DohApp
from splitdns.listen.dohserving import DohServing
from splitdns.listen.ports import bind_problem
from splitdns.listen.tlsstream import TlsStream


class Streams(Protocol):
    """Where a DoT connection goes once admitted and shaken hands (serve/streams.py)."""

    async def read_proxy_header(
        self, read_exactly: Callable[[int], Awaitable[bytes]], host: str
    ) -> str | None: ...

    def session(self, host: str, transport: str, conn: Connection) -> asyncio.Protocol: ...


class Serving(Protocol):
    """What the listeners need of the server (it hands itself in)."""

    config: Config
    connections: ConnectionBudget
    closing: bool
    streams: Streams

    def over_limit(self, data: bytes, host: str) -> tuple[bool, bytes | None]: ...

    def fast_answer(self, data: bytes, host: str, transport: str = ...) -> bytes | None: ...

    def trusted(self, host: str, networks: tuple[IPNetwork, ...]) -> bool: ...

    def allowed(self, host: str) -> bool: ...

    async def respond(self, data: bytes, host: str, transport: str) -> bytes | None: ...


log = logging.getLogger(__name__)

# the protocol of a connection once TLS is up: (its TLS transport, the client, budget record)
MakeSession = Callable[[TlsStream, str, Connection], asyncio.Protocol]
# sets up one admitted connection: (its socket, the peer's address, its budget record)
SetUp = Callable[[socket.socket, str, Connection], Awaitable[None]]

CERT_POLL = 1.0  # seconds between looks at the certificate files


def _bind(listener: EncryptedListener) -> socket.socket:
    kind = "DNS over TLS" if listener.kind == "dot" else "DNS over HTTPS"
    return bind_stream(Endpoint(listener.host, listener.port), kind)


def bind_stream(endpoint: Endpoint, what: str) -> socket.socket:
    """A TCP socket bound to `endpoint` (IPv6 only for an IPv6 address); OSError names the
    address and `what` it was for."""
    family = socket.AF_INET6 if ":" in endpoint.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((endpoint.host, endpoint.port))
    except OSError as exc:
        sock.close()
        raise bind_problem(endpoint, what, exc) from None
    return sock


class EncryptedListeners:
    def __init__(self, server: Serving, user: str | None = None) -> None:
        self.server = server
        self.user = user  # who splitdns becomes after binding: the made key goes to them
        self.files: certs.CertFiles | None = None
        self.pin = ""
        self.reloader: certs.Reloader | None = None
        self._doh: list[DohServing] = []
        self._watch: asyncio.Task[None] | None = None
        self._accepting: list[asyncio.Task[None]] = []
        self._sockets: list[socket.socket] = []
        self._proxied: set[asyncio.Task[None]] = set()
        #: TLS handshakes done, by (transport, full | resumed): a phone that reconnects with
        #: its session ticket (TLS 1.3) or session ID (1.2) skips the key exchange
        self.handshakes: Counter[tuple[str, str]] = Counter()

    async def start(self) -> list[tuple[str, str]]:
        """Bind every tls:// and https:// address; returns (kind, address) as bound."""
        config = self.server.config
        if not config.encrypted:
            return []
        files, pin, dot_context, doh_context = certificate(config, self.user)
        self.files, self.pin = files, pin
        self.reloader = certs.Reloader(files, [dot_context, doh_context])
        bound: list[tuple[str, str]] = []
        for listener in config.encrypted:
            sock = _bind(listener)
            port = sock.getsockname()[1]
            shown = EncryptedListener(listener.kind, listener.host, port, listener.path)
            sock.listen(256)
            sock.setblocking(False)
            if listener.kind == "dot":
                setup: SetUp = functools.partial(
                    self._tls, context=dot_context, session=self._dot_session
                )
            else:
                doh = DohServing(DohApp(self.server, listener.path), config)
                self._doh.append(doh)
                setup = functools.partial(self._tls, context=doh_context, session=doh.session)
            self._accepting.append(asyncio.ensure_future(self._accept(sock, listener.kind, setup)))
            self._sockets.append(sock)
            bound.append((listener.kind, str(shown)))
        if not self.files.self_signed:  # a made certificate is never renewed behind our back
            self._watch = asyncio.ensure_future(self._watch_certificate())
        return bound

    async def _accept(self, sock: socket.socket, kind: str, setup: SetUp) -> None:
        """Accept, admit to the connection budget at once (before any byte is read), then
        set the connection up in a task of its own."""
        budget = self.server.connections
        async for conn, host in accepting(sock):
            admitted = (
                None if self.server.closing else budget.admit(host, kind, self.server.allowed(host))
            )
            if admitted is None:
                reset(conn)
                continue
            task = asyncio.ensure_future(setup(conn, host, admitted))
            admitted.task = task
            self._proxied.add(task)
            task.add_done_callback(self._proxied.discard)

    async def _tls(
        self,
        sock: socket.socket,
        host: str,
        conn: Connection,
        context: ssl.SSLContext,
        session: MakeSession,
    ) -> None:
        """One admitted DoT or DoH connection: a trusted sender's PROXY header (DoT), then
        TLS through memory BIOs (listen/tlsstream.py) under the protocol `session` makes once
        the handshake is done (within `limits.handshake_timeout`). The task ends there: the
        connection lives on in its protocols, and the budget is told when it ends."""
        loop = asyncio.get_running_loop()
        server = self.server
        config = server.config
        sock.setblocking(False)
        released = functools.partial(server.connections.release, conn)

        def up(tls: TlsStream) -> asyncio.Protocol:
            self.handshakes[(conn.kind, "resumed" if tls.resumed else "full")] += 1
            return session(tls, host, conn)

        def failed() -> None:
            server.connections.closed["handshake"] += 1

        shim = TlsStream(context, config.limits.handshake_timeout, up, failed, released)
        try:
            if server.trusted(host, config.trusted_proxies) and (
                conn.kind == "dot"
                or await _first_byte(loop, sock, config.limits.handshake_timeout)
                == proxyv2.SIGNATURE[:1]
            ):
                named = await server.streams.read_proxy_header(
                    functools.partial(_recv_exactly, loop, sock), host
                )
                if named is None:
                    released()
                    sock.close()
                    return
                host = named
            await loop.connect_accepted_socket(lambda: shim, sock)
        except TimeoutError:  # (a trusted DoH sender silent through the handshake deadline)
            failed()
            released()
            sock.close()
            return
        except OSError:
            released()
            sock.close()
            return
        except asyncio.CancelledError:  # closed by the budget while reading the header
            released()
            sock.close()
            raise
        conn.transport = shim
        conn.task = None

    def _dot_session(self, tls: TlsStream, host: str, conn: Connection) -> asyncio.Protocol:
        return self.server.streams.session(host, "dot", conn)

    async def _watch_certificate(self) -> None:
        while True:
            await asyncio.sleep(CERT_POLL)
            if self.reloader is not None and self.reloader.poll() and self.files is not None:
                self.pin = certs.pin(self.files)

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        for task in self._accepting:
            task.cancel()
        for sock in self._sockets:
            sock.close()
        for doh in self._doh:
            await doh.stop()
        for task in list(self._proxied):
            task.cancel()
        if self._proxied:
            await asyncio.wait(set(self._proxied), timeout=5)
        self._doh.clear()


async def accepting(sock: socket.socket) -> AsyncIterator[tuple[socket.socket, str]]:
    """Each connection accepted on `sock` and its peer's address, for ever (when descriptors
    run out, accepting waits a moment for connections to finish)."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            conn, addr = await loop.sock_accept(sock)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        yield conn, addr[0]


def certificate(
    config: Config, user: str | None
) -> tuple[certs.CertFiles, str, ssl.SSLContext, ssl.SSLContext]:
    """The certificate (made if it is the self-signed one and missing), its pin, and a TLS
    context for DoT and one for HTTPS (DoH, the dashboard): read or made as `user`, the one
    splitdns becomes (its files, its state directory, which root without DAC_OVERRIDE may
    not write, as in the image), else as root, handed to `user`."""
    switched = False
    try:
        with certs.acting_as(user) as switched:
            return _certificate(config, None)
    except (PermissionError, certs.CertificateError):
        if not switched:
            raise
        return _certificate(config, user)


def _certificate(
    config: Config, hand_to: str | None
) -> tuple[certs.CertFiles, str, ssl.SSLContext, ssl.SSLContext]:
    files = certs.ensure(config, hand_to)
    pin = certs.pin(files)
    dot_context = certs.server_context(files, ["dot"])
    doh_context = certs.server_context(files, ["h2", "http/1.1"])
    doh_context.options |= ssl.OP_NO_COMPRESSION  # RFC 7540 §9.2.1
    return files, pin, dot_context, doh_context


def reset(sock: socket.socket) -> None:
    """Close a refused connection with a RST, so nothing of it lingers on our side."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


async def _first_byte(loop: asyncio.AbstractEventLoop, sock: socket.socket, within: float) -> bytes:
    """The first byte the peer sends, left unread (MSG_PEEK): DoH from a trusted proxy may
    start with a PROXY v2 header (HAProxy passing TLS through, `send-proxy-v2`) or with TLS
    at once (an HTTP proxy naming the client in X-Forwarded-For). TimeoutError after `within`
    seconds; b"" for a peer that closed."""
    async with asyncio.timeout(within):
        while True:
            try:
                return sock.recv(1, socket.MSG_PEEK)
            except BlockingIOError:
                pass
            readable: asyncio.Future[None] = loop.create_future()
            loop.add_reader(sock.fileno(), _wake, readable)
            try:
                await readable
            finally:
                loop.remove_reader(sock.fileno())


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _recv_exactly(loop: asyncio.AbstractEventLoop, conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = await loop.sock_recv(conn, size - len(data))
        if not chunk:
            raise EOFError("closed before the PROXY header was complete")
        data += chunk
    return data
