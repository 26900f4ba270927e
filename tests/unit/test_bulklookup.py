"""commands/bulklookup.py, `splitdns import`'s many questions at once, against a UDP upstream
of our own on loopback: every question settled (one lost first try asked again), replies
that do not match (another ID, another question, another source port) never taken, and the
names asked as `asking` puts them."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import threading

import dns.message
import dns.rcode
import dns.rrset

from splitdns.commands import bulklookup
from splitdns.config.model import Endpoint


class Upstream:
    """A loopback UDP upstream: `name` -> 203.0.113.N for names ending in `N.example.test`,
    NXDOMAIN otherwise; drops the first query for each name in `drop_once`; before each
    real answer sends a forged one (the question changed) and one from another port."""

    def __init__(self, drop_once: set[str]) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.other.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.drop_once = set(drop_once)
        self.asked: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while not self.stop.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            query = dns.message.from_wire(data)
            name = query.question[0].name.to_text(omit_final_dot=True)
            self.asked.append(name)
            if name in self.drop_once:
                self.drop_once.discard(name)
                continue
            forged = dns.message.make_response(dns.message.make_query("forged.test", "A"))
            forged.id = query.id
            forged.answer.append(dns.rrset.from_text(
                "forged.test.", 60, "IN", "A", "198.51.100.66"))  # fmt: skip
            self.sock.sendto(forged.to_wire(), peer)
            reply = dns.message.make_response(query)
            label = name.split(".")[0]
            if label.startswith("host") and query.question[0].rdtype == 1:
                address = f"203.0.113.{int(label[4:]) % 250 + 1}"
                reply.answer.append(dns.rrset.from_text(query.question[0].name, 60, "IN", "A",
                                                        address))  # fmt: skip
                stray = dns.message.make_response(query)
                stray.answer.append(dns.rrset.from_text(query.question[0].name, 60, "IN", "A",
                                                        "198.51.100.77"))  # fmt: skip
                self.other.sendto(stray.to_wire(), peer)  # (right ID and question, wrong port)
            elif not label.startswith("host"):
                reply.set_rcode(dns.rcode.NXDOMAIN)
            self.sock.sendto(reply.to_wire(), peer)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)
        self.sock.close()
        self.other.close()


def test_every_question_settled_and_only_by_its_own_reply() -> None:
    names = [f"host{n}.example.test" for n in range(600)] + ["nothing.example.test"]
    questions = [(name, rtype) for name in names for rtype in ("A", "AAAA")]
    upstream = Upstream(drop_once={"host7.example.test", "host300.example.test"})
    try:
        found = asyncio.run(
            bulklookup.ask_all(questions, Endpoint("127.0.0.1", upstream.port), timeout=0.5)
        )
    finally:
        upstream.close()
    assert len(found["A"]) == len(names) and len(found["AAAA"]) == len(names)
    for n in range(600):
        assert found["A"][f"host{n}.example.test"] == (
            ipaddress.ip_address(f"203.0.113.{n % 250 + 1}"),
        )
        assert found["AAAA"][f"host{n}.example.test"] is None  # NODATA
    assert found["A"]["nothing.example.test"] is None  # NXDOMAIN
    assert upstream.asked.count("host7.example.test") == 3  # A lost once, asked again; AAAA


def test_names_are_asked_as_asking_puts_them_and_repeats_skipped() -> None:
    upstream = Upstream(drop_once=set())
    known: bulklookup.Answers = {"A": {"host1.example.test": None}, "AAAA": {}}
    try:
        found = asyncio.run(
            bulklookup.ask_all(
                [("host1.example.test", "A"), ("*.host2.example.test", "A")],
                Endpoint("127.0.0.1", upstream.port),
                timeout=0.5,
                found=known,
                asking=lambda name: "host9." + name[2:] if name.startswith("*.") else name,
            )
        )
    finally:
        upstream.close()
    assert upstream.asked == ["host9.host2.example.test"]  # host1 was known already
    assert found["A"]["*.host2.example.test"] == (ipaddress.ip_address("203.0.113.10"),)
    assert found["A"]["host1.example.test"] is None


def test_a_silent_upstream_ends_within_the_timeouts() -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        found = asyncio.run(
            bulklookup.ask_all(
                [(f"host{n}.example.test", "A") for n in range(1000)],
                Endpoint("127.0.0.1", silent.getsockname()[1]),
                timeout=0.3,
            )
        )
    finally:
        silent.close()
    assert found == {"A": {}, "AAAA": {}}  # nothing settled: left to the caller's slow path
