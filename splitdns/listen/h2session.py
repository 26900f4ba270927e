"""DNS over HTTPS on HTTP/2, driven directly: h2's state machine on a protocol, no ASGI.

hypercorn gave each request a task, an ASGI scope and queues: 94 % of a DoH query's time
(bench/listeners: 1.7 k queries/s against unbound's 50 k). Here every event of a read is taken
at once (listen/tlsstream.py hands up a whole read); a request whose answer is in the cache is
answered there, the rest in a task each; what the read produced is written once.

The rules are the DohApp's (listen/doh.py: the path, GET and POST, the media type, the
statuses, Cache-Control, X-Forwarded-For from trusted proxies); the bounds are the ones
hypercorn held and the app's: SETTINGS_MAX_CONCURRENT_STREAMS and answers pending per
connection (`limits.streams_per_connection`; reading pauses at the bound, so streams reset at
once cannot pile up tasks), a 16 KiB header list, a whole-request deadline
(`limits.request_timeout`: 408) and the unfinished bodies' bytes per connection
(`limits.buffered_per_connection`: 413), `tcp_idle_timeout` without a request (and for a
client that does not read its answers). HTTP/2 errors end the connection with GOAWAY.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, cast

from splitdns.config.model import Config
from splitdns.limits.connections import Connection
from splitdns.listen.doh import (
    MAX_MESSAGE,
    NO_CLIENT,
    DohApp,
    Reply,
    reply,
)
from splitdns.listen.h2engines import (
    DATA,
    ENDED,
    GOAWAY,
    REQUEST,
    RESET,
    EngineError,
    make_engine,
)
from splitdns.listen.pacing import Paced

log = logging.getLogger(__name__)

HEADER_LIST = 16384  # a DoH request's headers are a few hundred bytes
_TOO_LARGE: Reply = (413, [(b"content-type", b"text/plain")], b"message too large\n")
_TOO_MUCH: Reply = (
    413,
    [(b"content-type", b"text/plain")],
    b"too many unfinished bytes on this connection\n",
)
_TOO_SLOW: Reply = (408, [(b"content-type", b"text/plain")], b"the request took too long\n")


class _Request:
    """One stream's POST while its body comes."""

    __slots__ = ("body", "host", "size", "timer")

    def __init__(self, host: str) -> None:
        self.host = host  # the client it is answered as
        self.body: list[bytes] = []
        self.size = 0
        self.timer: asyncio.TimerHandle | None = None


class H2Session(Paced):
    """One HTTP/2 DoH connection (on TLS's shim transport), for the client `host`."""

    __slots__ = ("_app", "_config", "_conn", "_engine", "_host", "_requests", "_sessions")

    def __init__(
        self,
        app: DohApp,
        host: str,
        conn: Connection,
        config: Config,
        sessions: set[H2Session],
    ) -> None:
        self._app = app
        self._host = host  # the peer (a trusted proxy's client comes in X-Forwarded-For)
        self._conn = conn
        self._config = config
        self._sessions = sessions
        streams = config.limits.streams_per_connection
        self._engine = make_engine(streams, HEADER_LIST)
        self._requests: dict[int, _Request] = {}  # streams whose body is still coming
        super().__init__()

    def _bounds(self) -> tuple[float, int]:
        return self._config.tcp_idle_timeout, self._config.limits.streams_per_connection

    # ------------------------------------------------------------------ the connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._conn.transport = self._transport
        self._sessions.add(self)
        self._flush()
        self._start_idle()

    def _idle(self) -> None:
        """No request for tcp_idle_timeout (or answers unread as long): GOAWAY and close."""
        self._timer = None
        loop = asyncio.get_running_loop()
        due = self._last + self._config.tcp_idle_timeout
        if self._requests or self._pending:  # busy: the request deadline bounds those
            due = loop.time() + self._config.tcp_idle_timeout
        if not self._writable:
            due = loop.time()
        if loop.time() < due and not self._draining:
            self._timer = loop.call_at(due, self._idle)
            return
        self.close()

    def data_received(self, data: bytes) -> None:
        if self._transport is None:
            return
        try:
            events = self._engine.receive(data)
        except EngineError as exc:
            log.debug("HTTP/2 error from %s: %s", self._host, exc)
            self._flush()  # (the engine's GOAWAY)
            self._close_now()
            return
        for kind, stream, value, ended in events:
            if kind == REQUEST:
                self._request(stream, value, ended)  # type: ignore[arg-type]
            elif kind == DATA:
                self._data(stream, value)  # type: ignore[arg-type]
                if ended:
                    self._ended(stream)
            elif kind == ENDED:
                self._ended(stream)
            elif kind == RESET:
                self._forget(stream)
            elif kind == GOAWAY:
                self._draining = True
        self._flush()
        if self._draining and not self._pending:
            self.close()

    def _flush(self) -> None:
        out = self._engine.out()
        if out and self._transport is not None:
            self._transport.write(out)

    # ------------------------------------------------------------------ requests

    def _request(self, stream: int, fields: list[tuple[bytes, bytes]], ended: bool) -> None:
        method = path = media = b""
        forwarded: list[bytes] = []
        for name, value in fields:
            if name == b":method":
                method = bytes(value)
            elif name == b":path":
                path = bytes(value)
            elif name == b"content-type":
                media = bytes(value)
            elif name == b"x-forwarded-for":
                forwarded.append(bytes(value))
        self._last = asyncio.get_running_loop().time()
        target, _, query = path.decode("latin-1").partition("?")
        head = self._app.head(method.decode("latin-1"), target, query, media)
        host = self._app.client_of(self._host, forwarded)
        still_sending = not ended
        if isinstance(head, tuple):
            self._send(stream, head, reset=still_sending)
        elif host is None:
            self._send(stream, NO_CLIENT, reset=still_sending)
        elif isinstance(head, bytes):  # a GET: the message is in the path (a body is ignored)
            self._answer(stream, head, host)
        elif not still_sending:  # a POST without a body
            self._send(stream, reply(None))
        else:
            request = self._requests[stream] = _Request(host)
            request.timer = asyncio.get_running_loop().call_later(
                self._config.limits.request_timeout, self._too_slow, stream
            )

    def _too_slow(self, stream: int) -> None:
        if stream in self._requests:
            self._conn.timed_out = True
            self._forget(stream)
            self._send(stream, _TOO_SLOW, reset=True)
            self._flush()

    def _data(self, stream: int, chunk: bytes) -> None:
        request = self._requests.get(stream)
        if request is None:
            return  # (already answered: a refused request's body, or a GET's)
        request.size += len(chunk)
        self._conn.buffered += len(chunk)
        if request.size > MAX_MESSAGE:
            self._forget(stream)
            self._send(stream, _TOO_LARGE, reset=True)
        elif self._conn.buffered > self._config.limits.buffered_per_connection:
            self._forget(stream)
            self._send(stream, _TOO_MUCH, reset=True)
        else:
            request.body.append(chunk)

    def _ended(self, stream: int) -> None:
        request = self._requests.get(stream)
        if request is None:
            return
        self._forget(stream)
        self._answer(stream, b"".join(request.body), request.host)

    def _forget(self, stream: int) -> None:
        """The stream's request is done with (answered, refused or reset): its held bytes
        are given back and its deadline dropped."""
        request = self._requests.pop(stream, None)
        if request is not None:
            if request.timer is not None:
                request.timer.cancel()
            if request.size > 0:
                self._conn.buffered -= request.size

    def _answer(self, stream: int, message: bytes, host: str) -> None:
        server = self._app.server
        self._last = asyncio.get_running_loop().time()
        self._conn.last = time.monotonic()
        limited, answer = server.over_limit(message, host)
        if not limited:
            try:
                answer = server.fast_answer(message, host, "doh")
            except Exception:  # the fast path must never cost an answer
                log.exception("cache fast path failed on a DoH query; the slow way")
                answer = None
            if answer is None:
                if len(self._pending) >= self._config.limits.streams_per_connection:
                    self._refuse(stream)  # (streams reset at once: no pile of tasks)
                    return
                self._conn.started()
                self._track(asyncio.ensure_future(self._respond(stream, message, host)))
                return
        self._send(stream, reply(answer))

    async def _respond(self, stream: int, message: bytes, host: str) -> None:
        answer = await self._app.server.respond(message, host, "doh")
        if self._transport is not None:
            self._send(stream, reply(answer))
            self._flush()

    def _answered(self, task: asyncio.Task[Any]) -> None:
        self._conn.finished()
        super()._answered(task)

    def _refuse(self, stream: int) -> None:
        self._engine.refuse(stream)

    def _send(self, stream: int, response: Reply, reset: bool = False) -> None:
        """The response on `stream` (`reset`: the client is still sending a body we will
        not read), written at once: a TLS record each, as unbound does; clients that read
        one record at a time and take one response a read (dnsperf 2.10's DoH) lose the rest
        of a record."""
        status, headers, body = response
        fields = [
            (b":status", str(status).encode()),
            *headers,
            (b"content-length", str(len(body)).encode()),
        ]
        self._engine.respond(stream, fields, body, reset)
        self._flush()

    def eof_received(self) -> bool:
        self._draining = True
        return bool(self._pending)

    def close(self) -> None:
        """Once the answers pending are sent: GOAWAY, then close (HTTP/2 sends nothing on a
        connection after its GOAWAY)."""
        self._draining = True
        if self._transport is None or self._transport.is_closing():
            return
        if self._pending:
            self._pause()
            return
        self._engine.goaway()
        self._flush()
        self._transport.close()

    def _close_now(self) -> None:
        self._draining = True
        if self._transport is not None:
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        for stream in list(self._requests):
            self._forget(stream)
        self._transport = None
        self._draining = True
        self._sessions.discard(self)
