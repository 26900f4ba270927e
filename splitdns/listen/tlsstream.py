"""TLS for an accepted connection through OpenSSL's memory BIOs, as a transport of its own.

asyncio's (and uvloop's) TLS transport keeps a read buffer, a write backlog and a task-free
state machine per connection: 46 KiB of RSS for an idle one (bench/listeners --idle, beside
this shim's 18 KiB in the same prototype run), and it hands the protocol one record at a
time. Here the plain TCP transport feeds an `ssl.SSLObject`; every record a read brings is
decrypted into one shared buffer and handed up at once, and the protocol above writes its
answers for the whole read in one record. To that protocol the shim is an ordinary transport
(write, close, abort, pause/resume reading, get_extra_info), so a DoT session or an HTTP/2
one runs on it as it would on plain TCP.

The handshake has a deadline; a failed or late one is reported (`failed`) and the connection
aborted; `up` is told when it is done (the session starts there).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable
from typing import Any, cast

log = logging.getLogger(__name__)

READ_SIZE = 65536
_READ_BUFFER = bytearray(READ_SIZE)  # one for the process: reads are synchronous
_READ_VIEW = memoryview(_READ_BUFFER)


class TlsStream(asyncio.Transport, asyncio.Protocol):
    """Server-side TLS between a plain transport (below) and a protocol (above): a protocol
    to the one, a transport to the other."""

    __slots__ = (
        "_app",
        "_closing",
        "_context",
        "_failed",
        "_handshake_timeout",
        "_incoming",
        "_lost",
        "_outgoing",
        "_timer",
        "_tls",
        "_transport",
        "_up",
    )

    def __init__(
        self,
        context: ssl.SSLContext,
        handshake_timeout: float,
        up: Callable[[TlsStream], asyncio.BaseProtocol | None],
        failed: Callable[[], None],
        lost: Callable[[], None],
    ) -> None:
        super().__init__()
        self._context = context
        self._handshake_timeout = handshake_timeout
        self._up: Callable[[TlsStream], asyncio.BaseProtocol | None] | None = up
        self._failed = failed  # the handshake failed or was late (counted by the caller)
        self._lost = lost  # the connection has ended, however (the budget's release)
        self._app: asyncio.Protocol | None = None
        self._transport: asyncio.Transport | None = None
        self._tls: ssl.SSLObject | None = None
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._timer: asyncio.TimerHandle | None = None
        self._closing = False

    # ------------------------------------------------------------------ below: the TCP side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._tls = self._context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._handshake_timeout, self._late)

    def _late(self) -> None:
        self._timer = None
        if self._up is not None:
            self._fail()

    def _fail(self) -> None:
        self._up = None
        self._failed()
        self.abort()

    def data_received(self, data: bytes) -> None:
        tls = self._tls
        if tls is None:
            return
        self._incoming.write(data)
        if self._up is not None and not self._handshake(tls):
            return
        app = self._app
        if app is None:
            return
        parts = []
        try:
            while True:
                size = cast(int, tls.read(READ_SIZE, _READ_BUFFER))  # (into it: a count)
                if not size:  # (0: a close_notify)
                    raise ssl.SSLZeroReturnError
                parts.append(_READ_VIEW[:size].tobytes())
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:
            self._flush()
            if parts:
                app.data_received(b"".join(parts))
            if not self.is_closing() and not app.eof_received():
                self.close()
            return
        except ssl.SSLError as exc:
            log.debug("TLS error from %s: %s", self.get_extra_info("peername"), exc)
            self.abort()
            return
        self._flush()  # (what reading wrote: a TLS 1.2 alert, a key update's answer)
        if parts:
            try:
                app.data_received(parts[0] if len(parts) == 1 else b"".join(parts))
            except Exception:  # a bug above: this connection ends, the server goes on
                log.exception("internal error on a connection from %s", self._peer())
                self.abort()

    def _peer(self) -> str:
        peer = self.get_extra_info("peername")
        return str(peer[0]) if peer else "?"

    def _handshake(self, tls: ssl.SSLObject) -> bool:
        """Advance the handshake; True once it is done and the protocol above has started."""
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return False
        except (ssl.SSLError, OSError) as exc:
            log.debug("TLS handshake from %s failed: %s", self.get_extra_info("peername"), exc)
            self._flush()  # (the alert, if any)
            self._fail()
            return False
        self._flush()  # (the server's Finished and, in TLS 1.3, its session tickets)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        up, self._up = self._up, None
        app = up(self) if up is not None else None
        if not isinstance(app, asyncio.Protocol) or self.is_closing():
            self.abort()
            return False
        self._app = app
        app.connection_made(self)
        return True

    def eof_received(self) -> bool | None:
        return self._app is None or bool(self._app.eof_received())

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._up = None
        self._tls = None
        app, self._app = self._app, None
        try:
            if app is not None:
                app.connection_lost(exc)
        finally:
            self._lost()

    def pause_writing(self) -> None:
        if self._app is not None:
            self._app.pause_writing()

    def resume_writing(self) -> None:
        if self._app is not None:
            self._app.resume_writing()

    # ------------------------------------------------------------------ above: a transport

    def write(self, data: bytes | bytearray | memoryview) -> None:
        tls = self._tls
        if tls is None or self._closing:
            return
        view = memoryview(data)
        try:
            while view:
                view = view[tls.write(view) :]
        except ssl.SSLError as exc:
            log.debug("TLS write to %s failed: %s", self.get_extra_info("peername"), exc)
            self.abort()
            return
        self._flush()

    def _flush(self) -> None:
        if self._outgoing.pending and self._transport is not None:
            self._transport.write(self._outgoing.read())

    def close(self) -> None:
        """Say close_notify, write what is pending, then close."""
        if self._closing or self._transport is None:
            return
        self._closing = True
        tls = self._tls
        if tls is not None and self._app is not None:
            with contextlib.suppress(ssl.SSLError, ValueError):  # (SSLWantReadError: the
                tls.unwrap()  # peer's close_notify is not awaited)
            self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._closing = True
        if self._transport is not None:
            self._transport.abort()

    def is_closing(self) -> bool:
        return self._closing or self._transport is None or self._transport.is_closing()

    def pause_reading(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    def get_write_buffer_size(self) -> int:
        return 0 if self._transport is None else self._transport.get_write_buffer_size()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self._tls
        if self._transport is None:
            return default
        return self._transport.get_extra_info(name, default)

    @property
    def resumed(self) -> bool:
        """Whether the handshake resumed an earlier session (a ticket or a session ID)."""
        return self._tls is not None and self._tls.session_reused

    @property
    def alpn(self) -> str | None:
        return None if self._tls is None else self._tls.selected_alpn_protocol()
