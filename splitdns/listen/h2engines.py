"""The HTTP/2 engines the DoH session (listen/h2session.py) can drive, behind one small face.

`NativeEngine` is libnghttp2 (through the ngh2 binding): framing, HPACK, flow control and its
DoS guards (rapid reset and "glitch" rate limits, header list size and count, CONTINUATION
counts) in C, 1.2-1.4x unbound's canned DoH rate here, where the pure-Python h2 library's
canned floor is 0.17-0.19x (bench/dohceiling, same run). `PureEngine` is h2, kept for where
the binding cannot be installed (no wheel for the platform) and chosen by
SPLITDNS_HTTP2_ENGINE=h2. Both say the same things: a request's fields, its body's chunks,
its end, a reset, the client's GOAWAY.
"""

from __future__ import annotations

import contextlib
import os
from typing import Protocol

REQUEST, DATA, ENDED, RESET, GOAWAY = range(5)
# (kind, stream, fields or a body chunk or None, the stream ended with this event)
Event = tuple[int, int, object, bool]


class EngineError(Exception):
    """The client broke HTTP/2: the engine queued its GOAWAY; the connection ends."""


class Engine(Protocol):
    def receive(self, data: bytes) -> list[Event]: ...

    def respond(
        self, stream: int, fields: list[tuple[bytes, bytes]], body: bytes, reset: bool
    ) -> None: ...

    def refuse(self, stream: int) -> None: ...

    def goaway(self) -> None: ...

    def out(self) -> bytes: ...


def make_engine(streams: int, header_list: int) -> Engine:
    """The native engine where ngh2 imports, else h2 (or as SPLITDNS_HTTP2_ENGINE says)."""
    if os.environ.get("SPLITDNS_HTTP2_ENGINE", "") != "h2" and native_available():
        return NativeEngine(streams, header_list)
    return PureEngine(streams, header_list)


def native_available() -> bool:
    try:
        import ngh2  # noqa: F401
    except ImportError:
        return False
    return True


def engine_name() -> str:
    """Which engine new DoH connections get: "nghttp2" or "h2" (for the startup line)."""
    if os.environ.get("SPLITDNS_HTTP2_ENGINE", "") != "h2" and native_available():
        return "nghttp2"
    return "h2"


class NativeEngine:
    """libnghttp2: every limit below is enforced in C, before any Python sees a frame."""

    __slots__ = ("_conn", "_early", "_events", "_ng")

    def __init__(self, streams: int, header_list: int) -> None:
        import ngh2
        import ngh2.events

        self._ng = ngh2
        self._events = ngh2.events
        self._early: list[bytes] = []  # answers serialised ahead of their stream's reset
        config = ngh2.Configuration(
            max_inbound_header_list_size=header_list,
            max_inbound_header_count=64,  # a DoH request has about ten
            max_continuations=4,
        )
        self._conn = ngh2.Connection(ngh2.Role.SERVER, config)
        self._conn.initiate_connection(
            {
                ngh2.Setting.MAX_CONCURRENT_STREAMS: streams,
                ngh2.Setting.MAX_HEADER_LIST_SIZE: header_list,
                ngh2.Setting.ENABLE_PUSH: 0,
            }
        )

    def receive(self, data: bytes) -> list[Event]:
        ev = self._events
        try:
            self._conn.receive_data(data)
        except self._ng.NGH2Error as exc:
            raise EngineError(str(exc)) from None
        found: list[Event] = []
        for event in self._conn.events():
            if isinstance(event, ev.RequestReceived):
                found.append((REQUEST, event.stream_id, event.headers, event.end_stream))
            elif isinstance(event, ev.DataReceived):
                found.append((DATA, event.stream_id, event.data, event.end_stream))
            elif isinstance(event, ev.StreamReset):
                found.append((RESET, event.stream_id, None, True))
            elif isinstance(event, (ev.GoAwayReceived, ev.ConnectionClosed)):
                found.append((GOAWAY, 0, None, True))
        return found

    def respond(
        self, stream: int, fields: list[tuple[bytes, bytes]], body: bytes, reset: bool
    ) -> None:
        """The answer; `reset`: the client is still sending a body we will not read: the
        stream is reset (NO_ERROR) once the answer is out (nghttp2 sends a reset before
        queued data, so the answer is taken from it first)."""
        try:
            self._conn.send_response(stream, fields, end_stream=not body)
            if body:
                self._conn.send_data(stream, body, end_stream=True)
            if reset:
                self._early.append(self._conn.data_to_send())
                self._conn.reset_stream(stream, 0)
        except self._ng.NGH2Error:
            return  # (the client reset the stream, or the connection is going away)

    def refuse(self, stream: int) -> None:
        with contextlib.suppress(self._ng.NGH2Error):
            self._conn.reset_stream(stream, self._ng.ErrorCode.REFUSED_STREAM)

    def goaway(self) -> None:
        with contextlib.suppress(self._ng.NGH2Error):
            self._conn.terminate_connection(0)

    def out(self) -> bytes:
        try:
            out = self._conn.data_to_send()
        except self._ng.NGH2Error:  # (after a bad preface nghttp2 says nothing more)
            out = b""
        if self._early:
            out = b"".join([*self._early, out])
            self._early.clear()
        return out


class PureEngine:
    """The h2 library: answers held back by a client's flow-control window are kept here and
    sent as the window opens."""

    __slots__ = ("_blocked", "_conn", "_errors", "_events")

    def __init__(self, streams: int, header_list: int) -> None:
        import h2.config
        import h2.connection
        import h2.errors
        import h2.events
        import h2.exceptions
        import h2.settings

        self._events = h2.events
        self._errors = h2.exceptions
        self._conn = h2.connection.H2Connection(
            h2.config.H2Configuration(
                client_side=False,
                header_encoding=None,
                validate_outbound_headers=False,  # (ours: a few fixed, lower-case fields)
                normalize_outbound_headers=False,
            )
        )
        self._conn.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: streams,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: header_list,
            },
        )
        self._conn.initiate_connection()
        self._blocked: dict[int, memoryview] = {}  # answers waiting for window

    def receive(self, data: bytes) -> list[Event]:
        ev = self._events
        try:
            events = self._conn.receive_data(data)
        except self._errors.ProtocolError as exc:
            raise EngineError(str(exc)) from None
        except Exception as exc:  # h2 on hostile bytes: never more than this connection
            raise EngineError(repr(exc)) from None
        found: list[Event] = []
        for event in events:
            if isinstance(event, ev.RequestReceived):
                ended = event.stream_ended is not None
                found.append((REQUEST, event.stream_id, event.headers or (), ended))
            elif isinstance(event, ev.DataReceived):
                self._conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                found.append((DATA, event.stream_id, event.data or b"", False))
            elif isinstance(event, ev.StreamEnded):
                found.append((ENDED, event.stream_id, None, True))
            elif isinstance(event, ev.StreamReset):
                self._blocked.pop(event.stream_id, None)
                found.append((RESET, event.stream_id, None, True))
            elif isinstance(event, (ev.WindowUpdated, ev.RemoteSettingsChanged)):
                self._unblock()
            elif isinstance(event, ev.ConnectionTerminated):
                found.append((GOAWAY, 0, None, True))
        return found

    def respond(
        self, stream: int, fields: list[tuple[bytes, bytes]], body: bytes, reset: bool
    ) -> None:
        """The answer; `reset`: the client is still sending a body we will not read: the
        stream is then reset (RFC 9113 §8.1)."""
        conn = self._conn
        try:
            conn.send_headers(stream, fields)
            window = min(conn.local_flow_control_window(stream), len(body))
            self._send_body(stream, memoryview(body), window)
            if reset and stream not in self._blocked:
                conn.reset_stream(stream, 0)
        except (self._errors.StreamClosedError, self._errors.ProtocolError, KeyError):
            return  # (the client reset the stream, or the connection is going away)

    def _send_body(self, stream: int, body: memoryview, window: int) -> None:
        conn = self._conn
        frame = conn.max_outbound_frame_size
        sent = 0
        while sent < window:
            chunk = body[sent : min(window, sent + frame)]
            sent += len(chunk)
            conn.send_data(stream, chunk.tobytes(), end_stream=sent == len(body))
        if sent < len(body):
            self._blocked[stream] = body[sent:]
        elif not body:
            conn.end_stream(stream)

    def _unblock(self) -> None:
        errors = (self._errors.StreamClosedError, self._errors.ProtocolError, KeyError)
        for stream, body in list(self._blocked.items()):
            try:
                window = min(self._conn.local_flow_control_window(stream), len(body))
            except errors:
                del self._blocked[stream]
                continue
            if window:
                del self._blocked[stream]
                with contextlib.suppress(*errors):
                    self._send_body(stream, body, window)

    def refuse(self, stream: int) -> None:
        with contextlib.suppress(self._errors.StreamClosedError, self._errors.ProtocolError):
            self._conn.reset_stream(stream, 7)  # REFUSED_STREAM

    def goaway(self) -> None:
        with contextlib.suppress(self._errors.ProtocolError):
            self._conn.close_connection()

    def out(self) -> bytes:
        return self._conn.data_to_send()
