"""A scriptable fake upstream DNS server on loopback (UDP and TCP), built on dnslib.

It answers from a small record table, follows CNAMEs, and can be told per name to delay,
truncate over UDP, answer SERVFAIL, stay silent, or send forged replies before the real one.
It records every query it sees (transport, name, type, ID, source port) for assertions.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import dnslib

Script = Callable[[dnslib.DNSRecord, str], "Action"]


PROBE = "ipv4only.arpa"  # RFC 7050: splitdns asks it at start when a view rewrites


@dataclass
class Action:
    """What the fake does with one query."""

    delay: float = 0.0
    rcode: int | None = None  # answer with this rcode and no records
    silent: bool = False  # never answer
    lost_first: bool = False  # the first query for the name is never answered, later ones are
    truncate_udp: bool = False  # UDP reply has TC=1 and no records
    forged_first: bool = False  # send wrong-ID, wrong-question and wrong-port replies first
    garbage_first: bool = False  # send bytes that are not DNS first
    lowercase_question: bool = False  # echo the question in lower case (breaks 0x20)


@dataclass
class Seen:
    transport: str
    name: str
    qtype: str
    msg_id: int
    source_port: int
    do: bool


@dataclass
class FakeUpstream:
    host: str = "127.0.0.1"
    records: list[dnslib.RR] = field(default_factory=list)
    actions: dict[str, Action] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    default: Action = field(default_factory=Action)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._udp, self._tcp = self._bind_pair()
        self.port = self._udp.getsockname()[1]
        self._udp.settimeout(0.1)
        self._tcp.settimeout(0.1)
        self._threads = [
            threading.Thread(target=self._serve_udp, daemon=True),
            threading.Thread(target=self._serve_tcp, daemon=True),
        ]
        self._lock = threading.Lock()
        self._lost: set[str] = set()  # names whose first query was lost (lost_first)

    def _bind_pair(self) -> tuple[socket.socket, socket.socket]:
        """A UDP and a TCP socket on the same free port (retried: the TCP side may be taken)."""
        for _ in range(50):
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp.bind((self.host, 0))
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                tcp.bind((self.host, udp.getsockname()[1]))
                tcp.listen(64)
            except OSError:
                udp.close()
                tcp.close()
                continue
            return udp, tcp
        raise RuntimeError("no port free for both UDP and TCP")

    # ------------------------------------------------------------------ setup

    def add(self, *zone_lines: str) -> FakeUpstream:
        for line in zone_lines:
            self.records.extend(dnslib.RR.fromZone(line))
        return self

    def start(self) -> FakeUpstream:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=2)
        self._udp.close()
        self._tcp.close()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    # ------------------------------------------------------------------ answering

    def answer(self, request: dnslib.DNSRecord, action: Action, transport: str) -> dnslib.DNSRecord:
        reply = request.reply(ra=1, aa=1)
        if action.lowercase_question:
            reply.q.qname = dnslib.DNSLabel(str(request.q.qname).lower())
        if action.rcode is not None:
            reply.header.rcode = action.rcode
            return reply
        if action.truncate_udp and transport == "udp":
            reply.header.tc = 1
            return reply
        qname = str(request.q.qname).lower()
        qtype = request.q.qtype
        seen_names = set()
        while qname not in seen_names:
            seen_names.add(qname)
            matches = [rr for rr in self.records if str(rr.rname).lower() == qname]
            cname = [rr for rr in matches if rr.rtype == dnslib.QTYPE.CNAME]
            if cname and qtype != dnslib.QTYPE.CNAME:
                reply.add_answer(*cname)
                qname = str(cname[0].rdata.label).lower()
                continue
            for rr in matches:
                if rr.rtype == qtype or qtype == dnslib.QTYPE.ANY:
                    reply.add_answer(rr)
            if not matches and not reply.rr:
                reply.header.rcode = dnslib.RCODE.NXDOMAIN
            break
        return reply

    def _action_for(self, request: dnslib.DNSRecord) -> Action:
        name = str(request.q.qname).lower().rstrip(".")
        if name == PROBE and name not in self.actions:
            return Action()  # splitdns's RFC 7050 probe at start: answered (NXDOMAIN) at once
        return self.actions.get(name, self.default)

    def _record(self, request: dnslib.DNSRecord, transport: str, port: int) -> None:
        if str(request.q.qname).lower().rstrip(".") == PROBE:
            return  # the server's own probe, not a client's question: the tests count those
        do = any(rr.rtype == dnslib.QTYPE.OPT and (rr.ttl & 0x8000) for rr in request.ar)
        with self._lock:
            self.seen.append(
                Seen(
                    transport,
                    str(request.q.qname).rstrip("."),
                    dnslib.QTYPE[request.q.qtype],
                    request.header.id,
                    port,
                    do,
                )
            )

    def _take(self, request: dnslib.DNSRecord, transport: str, port: int) -> Action | None:
        """Record the query and apply its delay; None when the script says stay silent."""
        self._record(request, transport, port)
        action = self._action_for(request)
        if action.silent:
            return None
        if action.lost_first:
            name = str(request.q.qname).lower()
            with self._lock:
                first = name not in self._lost
                self._lost.add(name)
            if first:
                return None
        if action.delay:
            time.sleep(action.delay)
        return action

    def send_from_upstream(self, data: bytes, port: int) -> None:
        """A datagram from the upstream's own address and port (what a spoofer would forge)."""
        with contextlib.suppress(OSError):
            self._udp.sendto(data, (self.host, port))

    def respond(self, data: bytes, transport: str, port: int) -> bytes | None:
        """The reply bytes for one query over a stream transport (TLS, HTTPS), or None."""
        try:
            request = dnslib.DNSRecord.parse(data)
        except Exception:
            return None
        action = self._take(request, transport, port)
        if action is None:
            return None
        reply = self.answer(request, action, transport)
        return bytes(reply.pack())

    def _serve_udp(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self._udp.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._udp_one, args=(data, addr), daemon=True).start()

    def _udp_one(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            request = dnslib.DNSRecord.parse(data)
        except Exception:
            return
        action = self._take(request, "udp", addr[1])
        if action is None:
            return
        reply = self.answer(request, action, "udp")
        if action.garbage_first:
            self._udp.sendto(b"\x00\x01garbage", addr)
        if action.forged_first:
            for forged in self.forgeries(request, reply):
                self._udp.sendto(forged, addr)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
                other.bind((self.host, 0))
                other.sendto(reply.pack(), addr)  # right answer, wrong source port
            time.sleep(0.05)
        with contextlib.suppress(OSError):
            self._udp.sendto(reply.pack(), addr)

    @staticmethod
    def forgeries(request: dnslib.DNSRecord, reply: dnslib.DNSRecord) -> list[bytes]:
        wrong_id = dnslib.DNSRecord.parse(reply.pack())
        wrong_id.header.id = (request.header.id + 1) & 0xFFFF
        wrong_q = dnslib.DNSRecord.parse(reply.pack())
        wrong_q.q.qname = dnslib.DNSLabel("forged.example.test")
        not_response = dnslib.DNSRecord.parse(reply.pack())
        not_response.header.qr = 0
        return [wrong_id.pack(), wrong_q.pack(), not_response.pack()]

    def _serve_tcp(self) -> None:
        while not self._stop.is_set():
            try:
                conn, addr = self._tcp.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._tcp_conn, args=(conn, addr), daemon=True).start()

    def _tcp_conn(self, conn: socket.socket, addr: tuple[str, int]) -> None:
        conn.settimeout(5)
        with conn:
            try:
                while True:
                    head = _recv_exact(conn, 2)
                    if not head:
                        return
                    data = _recv_exact(conn, struct.unpack("!H", head)[0])
                    request = dnslib.DNSRecord.parse(data)
                    action = self._take(request, "tcp", addr[1])
                    if action is None:
                        continue
                    wire = self.answer(request, action, "tcp").pack()
                    conn.sendall(struct.pack("!H", len(wire)) + wire)
            except (OSError, dnslib.DNSError):
                return

    def count(self, name: str, transport: str | None = None) -> int:
        with self._lock:
            return sum(
                1
                for s in self.seen
                if s.name.lower() == name and (transport is None or s.transport == transport)
            )


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            return b""
        buf += chunk
    return buf
