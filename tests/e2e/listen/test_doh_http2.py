"""The DoH listener's HTTP/2 (listen/h2session.py) held to RFC 9113 with raw frames, in the
manner of h2spec (not packaged for Debian or PyPI): protocol errors end the connection with
GOAWAY and the right code, a client's tiny flow-control window still gets the whole answer,
streams reset as fast as they open pile nothing up, and every other client is answered
throughout.
"""

from __future__ import annotations

import base64
import contextlib
import socket
import ssl
import time
from collections.abc import Iterator

import dns.message
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import pytest
from hyperframe.frame import WindowUpdateFrame

from tests.support.encrypted import unverified_context
from tests.support.fakeupstream import Action, FakeUpstream
from tests.support.servers import SplitDNS, free_port

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
BIG = [f'big.example.test. 300 IN TXT "{"x" * 200}{i}"' for i in range(40)]  # ~8 KB answer


@pytest.fixture(scope="module")
def doh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SplitDNS, int, FakeUpstream]]:
    fake = FakeUpstream().add("www.example.test. 300 IN A 203.0.113.1", *BIG).start()
    fake.actions["slow.example.test"] = Action(delay=1.5)
    port = free_port()
    proc = SplitDNS(
        tmp_path_factory.mktemp("h2"),
        f'upstreams: ["127.0.0.1:{fake.port}"]\nallow: [127.0.0.0/8]\ntcp_idle_timeout: 5\n'
        "limits: {streams_per_connection: 8}\n",
        "--listen", f"https://127.0.0.1:{port}/dns-query",
    )  # fmt: skip
    yield proc, port, fake
    assert proc.stop() == 0, proc.output
    assert "Traceback" not in proc.output, proc.output
    fake.stop()


def connect(port: int) -> ssl.SSLSocket:
    context = unverified_context()
    context.set_alpn_protocols(["h2"])
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    tls = context.wrap_socket(raw)
    assert tls.selected_alpn_protocol() == "h2"
    return tls


def client(settings: dict[int, int] | None = None) -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(
            client_side=True, validate_outbound_headers=False, normalize_outbound_headers=False
        )
    )
    conn.local_settings = h2.settings.Settings(client=True, initial_values=settings or {})
    conn.initiate_connection()
    return conn


def post(conn: h2.connection.H2Connection, name: str, extra: list[tuple[str, str]] = ()) -> int:  # type: ignore[assignment]
    stream = conn.get_next_available_stream_id()
    query = dns.message.make_query(name, "A" if name != "big.example.test" else "TXT").to_wire()
    conn.send_headers(stream, [(":method", "POST"), (":scheme", "https"), (":authority", "x"),
                               (":path", "/dns-query"), ("content-type", "application/dns-message"),
                               *extra])  # fmt: skip
    conn.send_data(stream, query, end_stream=True)
    return stream


def exchange(
    sock: ssl.SSLSocket, conn: h2.connection.H2Connection, until: float = 10
) -> tuple[dict[int, bytes], list[h2.events.Event]]:
    """Send what `conn` has, then read until every open stream ended, the connection closed
    or `until` seconds passed: the bodies by stream, and every event."""
    sock.sendall(conn.data_to_send())
    bodies: dict[int, bytes] = {}
    events: list[h2.events.Event] = []
    began = time.monotonic()
    sock.settimeout(1)
    while time.monotonic() - began < until:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            if not conn.open_outbound_streams:
                break
            continue
        except OSError:
            break
        if not data:
            break
        for event in conn.receive_data(data):
            events.append(event)
            if isinstance(event, h2.events.DataReceived):
                bodies[event.stream_id] = bodies.get(event.stream_id, b"") + event.data
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        sock.sendall(conn.data_to_send())
        if any(isinstance(e, h2.events.ConnectionTerminated) for e in events):
            break
        if not conn.open_outbound_streams and any(
            isinstance(e, h2.events.StreamEnded) for e in events
        ):
            break
    return bodies, events


def still_answers(port: int) -> None:
    with connect(port) as sock:
        conn = client()
        stream = post(conn, "www.example.test")
        bodies, _ = exchange(sock, conn)
    assert dns.message.from_wire(bodies[stream]).answer, "another client went unanswered"


def goaway(events: list[h2.events.Event]) -> h2.events.ConnectionTerminated:
    ended = [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
    assert ended, events
    return ended[0]


def raw_frames(port: int, payload: bytes) -> tuple[int | None, bytes]:
    """Send the preface, our SETTINGS and `payload` as raw bytes: (the GOAWAY's error code, or
    None if the server sent none, everything read)."""
    conn = client()
    with connect(port) as sock:
        sock.sendall(conn.data_to_send() + payload)
        got = b""
        sock.settimeout(3)
        try:
            while chunk := sock.recv(65536):
                got += chunk
        except OSError:
            pass
    code = None
    for event in conn.receive_data(got) if got else []:
        if isinstance(event, h2.events.ConnectionTerminated):
            code = int(event.error_code)
    return code, got


def test_data_on_stream_zero_is_a_connection_error(doh: tuple[SplitDNS, int, FakeUpstream]) -> None:
    """RFC 9113 6.1: DATA on stream 0 is PROTOCOL_ERROR."""
    _, port, _ = doh
    data_on_zero = b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x"  # (hyperframe won't)
    code, _ = raw_frames(port, data_on_zero)
    assert code == h2.errors.ErrorCodes.PROTOCOL_ERROR
    still_answers(port)


def test_a_zero_window_increment_is_a_connection_error(
    doh: tuple[SplitDNS, int, FakeUpstream],
) -> None:
    """RFC 9113 6.9: a WINDOW_UPDATE of 0 on the connection is PROTOCOL_ERROR."""
    _, port, _ = doh
    frame = WindowUpdateFrame(0)
    frame.window_increment = 0
    code, _ = raw_frames(port, frame.serialize())
    assert code == h2.errors.ErrorCodes.PROTOCOL_ERROR
    still_answers(port)


def test_an_uppercase_header_name_is_refused(doh: tuple[SplitDNS, int, FakeUpstream]) -> None:
    """RFC 9113 8.2.1: a field name with upper-case letters makes the request malformed."""
    _, port, _ = doh
    with connect(port) as sock:
        conn = client()
        post(conn, "www.example.test", [("X-Upper", "1")])
        bodies, events = exchange(sock, conn, until=5)
    assert not bodies
    refused = [  # a stream error (RFC 9113 8.1.1; nghttp2) or the connection's (h2)
        e.error_code
        for e in events
        if isinstance(e, (h2.events.StreamReset, h2.events.ConnectionTerminated))
    ]
    assert refused == [h2.errors.ErrorCodes.PROTOCOL_ERROR], events
    still_answers(port)


def test_a_bad_preface_ends_the_connection(doh: tuple[SplitDNS, int, FakeUpstream]) -> None:
    _, port, _ = doh
    with connect(port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # after ALPN chose h2
        sock.settimeout(5)
        got = b""
        try:
            while chunk := sock.recv(65536):
                got += chunk
        except OSError:
            pass
    assert b"HTTP/1.1 200" not in got  # closed (after our SETTINGS and a GOAWAY), not served
    still_answers(port)


def test_a_tiny_window_still_gets_the_whole_answer(
    doh: tuple[SplitDNS, int, FakeUpstream],
) -> None:
    """A client whose streams may receive 100 bytes at a time (SETTINGS_INITIAL_WINDOW_SIZE):
    the ~8 KB answer comes in window-sized pieces as the client opens the window."""
    _, port, _ = doh
    with connect(port) as sock:
        conn = client({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 100})
        stream = post(conn, "big.example.test")
        bodies, events = exchange(sock, conn, until=15)
    pieces = [e for e in events if isinstance(e, h2.events.DataReceived) and e.stream_id == stream]
    answer = dns.message.from_wire(bodies[stream])
    assert len(answer.answer[0]) == 40 and len(pieces) > 10
    assert max(len(p.data) for p in pieces) <= 100


def test_streams_reset_as_they_open_pile_nothing_up(
    doh: tuple[SplitDNS, int, FakeUpstream],
) -> None:
    """CVE-2023-44487's shape: 2,000 requests for a slow name, each reset at once. Answers
    pending stay within limits.streams_per_connection (8): beyond it streams are refused
    (REFUSED_STREAM) or the connection ended, and another client is answered meanwhile."""
    proc, port, _ = doh
    conn = client()
    with connect(port) as sock:
        query = dns.message.make_query("slow.example.test", "A").to_wire()
        path = "/dns-query?dns=" + base64.urlsafe_b64encode(query).rstrip(b"=").decode()
        for _ in range(2000):  # GETs: no body, so no flow-control window runs out
            stream = conn.get_next_available_stream_id()
            fields = [(":method", "GET"), (":scheme", "https"), (":authority", "x")]
            fields.append((":path", path))
            conn.send_headers(stream, fields, end_stream=True)
            conn.reset_stream(stream, h2.errors.ErrorCodes.CANCEL)
        with contextlib.suppress(OSError):  # (ended by the server: allowed)
            sock.sendall(conn.data_to_send())
        began = time.monotonic()
        still_answers(port)
        assert time.monotonic() - began < 3
    assert "internal error" not in proc.output


def test_a_client_that_never_finishes_its_body_gets_408(
    doh: tuple[SplitDNS, int, FakeUpstream],
) -> None:
    """The whole-request deadline (limits.request_timeout, 5 s by default) holds on HTTP/2."""
    _, port, _ = doh
    with connect(port) as sock:
        conn = client()
        stream = conn.get_next_available_stream_id()
        conn.send_headers(stream, [(":method", "POST"), (":scheme", "https"), (":authority", "x"),
                                   (":path", "/dns-query"),
                                   ("content-type", "application/dns-message")])  # fmt: skip
        conn.send_data(stream, b"\x00\x01")  # and never the rest
        _, events = exchange(sock, conn, until=20)
    statuses = [
        dict(e.headers).get(b":status")
        for e in events
        if isinstance(e, h2.events.ResponseReceived) and e.stream_id == stream
    ]
    assert statuses == [b"408"], events
