"""Malformed and unusual input over real sockets: each row says what the server must do,
then the server must still answer a normal query."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator

import dns.message
import dns.opcode
import dns.rcode
import pytest

from tests.support.fakeupstream import FakeUpstream
from tests.support.servers import SplitDNS

CONFIG = """\
upstreams: ["{up}"]
tcp_idle_timeout: 1
tcp_max_connections: 4
views:
  - name: lan
    clients: [127.0.0.1/32]
    rewrite:
      - {{from: 203.0.113.1, to: 192.0.2.2}}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SplitDNS]:
    up = FakeUpstream().add("www.example.test. 300 IN A 203.0.113.1").start()
    proc = SplitDNS(tmp_path_factory.mktemp("edges"), CONFIG.format(up=up.address))
    yield proc
    assert proc.stop() == 0, proc.output
    up.stop()


def good_query() -> bytes:
    q = dns.message.make_query("www.example.test.", "A")
    q.id = 0x4242
    return bytes(q.to_wire())


def udp_exchange(port: int, data: bytes, wait: float = 0.5) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(wait)
        s.sendto(data, ("127.0.0.1", port))
        try:
            return s.recv(65535)
        except TimeoutError:
            return None


def still_serving(server: SplitDNS) -> None:
    reply = udp_exchange(server.port, good_query(), wait=3)
    assert reply is not None
    msg = dns.message.from_wire(reply)
    assert msg.id == 0x4242 and str(msg.answer[0][0]) == "192.0.2.2"


Q = good_query()


OPT = b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00"  # root owner, 1232 bytes, no options


# a TSIG record (owner "k.", class ANY) whose data is not a TSIG's: relayed as it is, it would
# reach the upstream as a signature nobody can read; FORMERR instead (issue #32)
BROKEN_TSIG = b"\x01k\x00\x00\xfa\x00\xff\x00\x00\x00\x00\x00\x0c" + b"\x05hmac\x00" + b"\x01" * 6


_TSIG_RDATA = b"\x0bhmac-sha256\x00" + b"\x00\x00\x60\x00\x00\x00\x01\x2c" + bytes(8)
TSIG_OF_CLASS_IN = b"\x01k\x00\x00\xfa\x00\x01" + bytes(4) + struct.pack("!H", len(_TSIG_RDATA))
TSIG_OF_CLASS_IN += _TSIG_RDATA


def with_counts(data: bytes, an: int, ns: int, ar: int) -> bytes:
    return data[:6] + struct.pack("!HHH", an, ns, ar) + data[12:]


def opcode(data: bytes, op: int) -> bytes:
    return data[:2] + bytes([(data[2] & 0x87) | (op << 3)]) + data[3:]


@pytest.mark.parametrize(
    ("data", "expect"),
    [
        (b"", "drop"),
        (b"\x12\x34\x01\x00\x00", "drop"),  # truncated header
        (Q[:2] + bytes([Q[2] | 0x80]) + Q[3:], "drop"),  # QR=1: a response
        (Q[:-3], "FORMERR"),  # truncated question
        (Q[:4] + b"\x00\x02" + Q[6:], "FORMERR"),  # qdcount 2
        (Q[:4] + b"\x00\x00" + Q[6:12], "FORMERR"),  # qdcount 0
        (Q[:12] + b"\xc0\x0c\x00\x01\x00\x01", "FORMERR"),  # compression loop
        (Q[:12] + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01", "FORMERR"),  # label > 63
        (Q[:12] + (b"\x3f" + b"a" * 63) * 5 + b"\x00\x00\x01\x00\x01", "FORMERR"),  # > 255
        (opcode(Q, 4), "NOTIMP"),  # NOTIFY
        (opcode(Q, 2), "NOTIMP"),  # STATUS
        (Q[:-2] + b"\x00\x03", "REFUSED"),  # class CH
        (Q[:-4] + b"\x00\xfc\x00\x01", "REFUSED"),  # AXFR over UDP
        (bytes(dns.message.make_query("x.", "A", use_edns=1).to_wire()), "BADVERS"),
        (bytes(range(256)) * 4, "FORMERR"),  # noise with a readable header
        (with_counts(Q, 0, 0, 2) + OPT + OPT, "FORMERR"),  # two OPT records
        (with_counts(Q, 1, 0, 0) + OPT, "FORMERR"),  # OPT in the answer section
        (with_counts(Q, 0, 0, 1) + b"\x01x" + OPT, "FORMERR"),  # OPT with an owner name
        (with_counts(Q, 0, 0, 1) + OPT[:-2] + b"\x00\x09\x00\x0a", "FORMERR"),  # rdlen too big
        (Q[:-4] + b"\xff\x00\x00\x01", "NOERROR"),  # unknown type: forwarded as is
        (Q[:-2] + b"\x00\x2a", "REFUSED"),  # unknown class
        (Q + b"\x00\x00", "FORMERR"),  # bytes after the question
        (with_counts(Q, 0, 0, 1) + OPT + b"junk", "FORMERR"),  # bytes after the last record
        (with_counts(Q, 0, 0, 1) + BROKEN_TSIG, "FORMERR"),  # a signature that is none
        (
            with_counts(Q, 0, 0, 1) + BROKEN_TSIG[:-14] + b"\x00\x01" + BROKEN_TSIG[-12:],
            "FORMERR",
        ),  # TSIG of class IN
    ],
    ids=[
        "empty",
        "short-header",
        "qr1",
        "trunc-question",
        "qd2",
        "qd0",
        "ptr-loop",
        "label64",
        "name256",
        "notify",
        "status",
        "class-ch",
        "axfr",
        "edns1",
        "noise",
        "opt-twice",
        "opt-in-answer",
        "opt-owner",
        "opt-rdlen",
        "type-65280",
        "class-42",
        "trailing-bytes",
        "after-last-record",
        "tsig-unreadable",
        "tsig-class-in",
    ],
)
def test_malformed_udp(server: SplitDNS, data: bytes, expect: str) -> None:
    reply = udp_exchange(server.port, data)
    if expect == "drop":
        assert reply is None
    else:
        assert reply is not None
        msg = dns.message.from_wire(reply)
        assert dns.rcode.to_text(msg.rcode()) == expect
        assert msg.id == struct.unpack("!H", data[:2])[0]
    still_serving(server)


def tcp_connect(server: SplitDNS) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=5)


def test_tcp_zero_length_closes(server: SplitDNS) -> None:
    with tcp_connect(server) as conn:
        conn.sendall(b"\x00\x00")
        assert conn.recv(10) == b""
    still_serving(server)


def test_tcp_short_message_times_out_and_closes(server: SplitDNS) -> None:
    with tcp_connect(server) as conn:
        conn.sendall(b"\x00\x40" + Q[:10])  # claims 64 bytes, sends 10
        began = time.monotonic()
        assert conn.recv(10) == b""
        assert time.monotonic() - began < 3  # tcp_idle_timeout is 1 s
    still_serving(server)


def test_tcp_slow_client_is_cut_off(server: SplitDNS) -> None:
    with tcp_connect(server) as conn:
        framed = struct.pack("!H", len(Q)) + Q
        began = time.monotonic()
        closed = False
        for byte in framed:
            try:
                conn.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            time.sleep(0.3)
            if time.monotonic() - began > 5:
                break
        if not closed:
            conn.settimeout(3)
            try:
                closed = conn.recv(100) == b""
            except ConnectionResetError:
                closed = True
        assert closed
        assert time.monotonic() - began < 6
    still_serving(server)


def test_tcp_connection_cap(server: SplitDNS) -> None:
    conns = [tcp_connect(server) for _ in range(4)]
    try:
        time.sleep(0.2)
        with tcp_connect(server) as extra:
            extra.settimeout(2)
            assert extra.recv(10) == b""  # over the cap: closed at once
    finally:
        for c in conns:
            c.close()
    still_serving(server)


def test_several_queries_on_one_tcp_connection(server: SplitDNS) -> None:
    with tcp_connect(server) as conn:
        for i in range(5):
            q = dns.message.make_query("www.example.test.", "A")
            q.id = i
            wire = q.to_wire()
            conn.sendall(struct.pack("!H", len(wire)) + wire)
            (length,) = struct.unpack("!H", conn.recv(2))
            buf = b""
            while len(buf) < length:
                buf += conn.recv(length - len(buf))
            assert dns.message.from_wire(buf).id == i
