"""The express lane against the chain it stands in for: for every reply shape an upstream on
loopback sends, a UDP client gets the same bytes, and the same counters, cache entries and
upstream statistics move, whether the lane answers, hands the question over, or is switched
off (`server.express = None`: the chain alone)."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest

from splitdns import wire
from splitdns.config import model as config
from splitdns.serve import lanewatch
from splitdns.serve import server as server_module
from splitdns.serve.server import Server
from splitdns.upstream import packets
from tests.support.datagrams import datagrams

Script = Callable[[dns.message.Message], list[bytes]]

CONFIG = """
listen: ["127.0.0.1:0"]
upstreams:
  default: ["127.0.0.1:{port}"]
  socket_pool: {pool}
timeout: 0.5
allow: [127.0.0.0/8]
cache: {{size: 100, max_ttl: 3600, min_ttl: 5}}
views:
  - name: lan
    clients: [127.0.0.0/8]
    rewrite:
      - {{from: 203.0.113.0/29, to: 192.0.2.64/29}}
      - {{from: "2001:db8:113::/64", to: "fd00:113::/64"}}
{extra}
"""


class Upstream(asyncio.DatagramProtocol):
    """A loopback upstream in the test's own loop: each query gets what `script` makes."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.queries = 0
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.queries += 1
        assert self.transport is not None
        for reply in self.script(dns.message.from_wire(data)):
            self.transport.sendto(reply, addr)


def answer(*rrsets: str, authority: tuple[str, ...] = (), additional: tuple[str, ...] = (),
           rcode: int = dns.rcode.NOERROR, edns: bool = True) -> Script:  # fmt: skip
    """A script answering with these records ("name ttl IN type data[,data...]")."""

    def rrset(text: str) -> dns.rrset.RRset:
        name, ttl, rdclass, rdtype, data = text.split(maxsplit=4)
        return dns.rrset.from_text(name, int(ttl), rdclass, rdtype, *data.split(","))

    made: dict[tuple[str, int, bool], bytes] = {}  # the same bytes for both runs of `both`

    def script(q: dns.message.Message) -> list[bytes]:
        key = (str(q.question[0].name).lower(), q.question[0].rdtype, q.edns >= 0)
        if key not in made:
            r = dns.message.make_response(q)
            r.set_rcode(rcode)
            if not edns:
                r.use_edns(False)
            r.answer.extend(rrset(t) for t in rrsets)
            r.authority.extend(rrset(t) for t in authority)
            r.additional.extend(rrset(t) for t in additional)
            made[key] = bytes(r.to_wire())
        return [q.id.to_bytes(2, "big") + made[key][2:]]

    return script


async def run(
    script: Script,
    queries: list[bytes],
    lane: bool,
    extra: str = "",
    pool: int = 0,
    hook: Callable[[Server], None] | None = None,
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    upstream = Upstream(script)
    transport, _ = await loop.create_datagram_endpoint(
        lambda: upstream, local_addr=("127.0.0.1", 0)
    )
    port = transport.get_extra_info("sockname")[1]
    server = Server(config.loads(CONFIG.format(port=port, extra=extra, pool=pool), "t.yaml"))
    try:
        if not lane:
            server.express = None
        else:
            assert server.express is not None, "the lane should apply to this config"
        if hook is not None:
            hook(server)
        sent = []
        for q in queries:  # one at a time: the order of answers is then the order of queries
            sent += await datagrams(server, [q], seconds=3)
        stats = server.upstreams.stats
        return {
            "answers": sent,
            "queries": dict(server.counts.queries),
            "rewrites": dict(server.counts.rewrites),
            # (an entry keeps the upstream's random ID: not compared)
            "cache": [
                (k, e.data[2:], e.ttls, e.ttl, e.outcome) for k, e in server.cache._entries.items()
            ],
            "cache_stats": (server.cache.stats.hits, server.cache.stats.misses),
            "used": sorted(stats.answered.values()),  # (one upstream, on a new port each run)
            "errors": sorted((kind, n) for (_, kind), n in stats.errors_by.items()),
            "forged": stats.forged,
            "upstream_queries": upstream.queries,
            "taken": server.counts.express["answered"],
        }
    finally:
        await server.upstreams.aclose()  # (the socket pool's sockets)
        transport.close()


def query(name: str, rdtype: str = "A", msg_id: int = 4242, **kw: Any) -> bytes:
    q = dns.message.make_query(name, rdtype, **kw)
    q.id = msg_id
    return bytes(q.to_wire())


def both(
    script: Script, queries: list[bytes], extra: str = "", pool: int = 0
) -> tuple[dict[str, Any], dict[str, Any]]:
    lane = asyncio.run(run(script, queries, True, extra, pool))
    chain = asyncio.run(run(script, queries, False, extra, pool))
    taken = lane.pop("taken")
    chain.pop("taken")
    assert lane == chain
    return lane, {"taken": taken}


SHAPES: dict[str, tuple[Script, bool]] = {  # name: (script, the lane answers it itself)
    "rewritten A": (answer("www.example.test. 300 IN A 203.0.113.1"), True),
    "public A": (answer("www.example.test. 300 IN A 198.51.100.7"), True),
    "no OPT in the reply": (answer("www.example.test. 300 IN A 203.0.113.1", edns=False), True),
    "two A, NS and rewritten glue": (
        answer(
            "www.example.test. 300 IN A 203.0.113.1,203.0.113.5,198.51.100.9",
            authority=("example.test. 3600 IN NS ns.example.test.",),
            additional=("ns.example.test. 3600 IN A 203.0.113.2",),
        ),
        False,  # glue on the public address: the chain rewrites it and credits ns.
    ),
    "two A, NS and glue no rule maps": (
        answer(
            "www.example.test. 300 IN A 203.0.113.1,203.0.113.5,198.51.100.9",
            authority=("example.test. 3600 IN NS ns.example.test.",),
            additional=("ns.example.test. 3600 IN A 198.51.100.2",),
        ),
        True,
    ),
    "a CNAME chain": (
        answer(
            "www.example.test. 60 IN CNAME edge.cdn.test.",
            "edge.cdn.test. 20 IN CNAME e1.cdn.test.",
            "e1.cdn.test. 7200 IN A 203.0.113.3",
        ),
        True,
    ),
    "TTL 0 (raised to min_ttl)": (answer("www.example.test. 0 IN A 203.0.113.1"), True),
    "NXDOMAIN": (
        answer(
            rcode=dns.rcode.NXDOMAIN,
            authority=("example.test. 300 IN SOA ns.example.test. h.example.test. 1 2 3 4 60",),
        ),
        False,
    ),
    "NODATA": (
        answer(authority=("example.test. 300 IN SOA ns.example.test. h.example.test. 1 2 3 4 60",)),
        False,
    ),
    "MX beside the A": (
        answer(
            "www.example.test. 300 IN A 203.0.113.1",
            "www.example.test. 300 IN MX 10 mx.example.test.",
        ),
        False,
    ),
    "SERVFAIL": (answer(rcode=dns.rcode.SERVFAIL), False),
    "REFUSED": (answer(rcode=dns.rcode.REFUSED), False),
}


@pytest.mark.parametrize("pool", [0, 4], ids=["fresh-port", "socket-pool"])
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_the_lane_answers_as_the_chain_does(shape: str, pool: int) -> None:
    script, itself = SHAPES[shape]
    queries = [
        query("www.example.test."),
        query("WWW.Example.TEST.", msg_id=7),
        query("www.example.test.", use_edns=False),
    ]
    lane, seen = both(script, queries, pool=pool)
    assert len(lane["answers"]) == 3
    rcodes = {dns.message.from_wire(a).rcode() for a in lane["answers"]}
    if itself:
        assert seen["taken"] >= 1, "the lane should have answered this shape itself"
        assert rcodes == {dns.rcode.NOERROR}
    else:
        assert seen["taken"] == 0, "the lane should have handed this shape to the chain"
    first = dns.message.from_wire(lane["answers"][0])
    assert first.id == 4242
    if shape == "rewritten A":
        assert [str(rd) for rd in first.answer[0]] == ["192.0.2.65"]
        assert lane["rewrites"] == {("lan", 0, "address"): 1}


def test_aaaa_is_rewritten_the_same_way() -> None:
    script = answer("www.example.test. 300 IN AAAA 2001:db8:113::5")
    lane, seen = both(script, [query("www.example.test.", "AAAA")])
    assert seen["taken"] == 1
    got = dns.message.from_wire(lane["answers"][0])
    assert [str(rd) for rd in got.answer[0]] == ["fd00:113::5"]


@pytest.mark.parametrize("pool", [0, 4], ids=["fresh-port", "socket-pool"])
def test_forged_and_malformed_replies_are_ignored_the_same_way(pool: int) -> None:
    def script(q: dns.message.Message) -> list[bytes]:
        good = answer("www.example.test. 300 IN A 203.0.113.1")(q)[0]
        wrong_id = bytes([good[0] ^ 0xFF]) + good[1:]
        other = dns.message.make_response(dns.message.make_query("evil.test.", "A"))
        other.id = q.id
        return [wrong_id, bytes(other.to_wire()), b"\x00" * 5, good]

    lane, seen = both(script, [query("www.example.test.")], pool=pool)
    assert lane["forged"] == 3
    assert seen["taken"] == 1
    assert [str(rd) for rd in dns.message.from_wire(lane["answers"][0]).answer[0]] == ["192.0.2.65"]


def test_a_pointer_into_address_bytes_is_refused_by_both() -> None:
    """A name compressed against the bytes of an A record the rewrite will change: the walk
    refuses it (#19), and so must the lane's scan. It carries our ID and question, so it is
    the upstream's own broken reply (#32): a failure at once, not a forgery to wait out; the
    question ends in SERVFAIL within the upstream's round trip, not at the timeout."""

    def script(q: dns.message.Message) -> list[bytes]:
        good = bytearray(answer("www.example.test. 300 IN A 203.0.113.1",
                                "www.example.test. 300 IN A 203.0.113.2")(q)[0])  # fmt: skip
        first_rdata = good.index(bytes([203, 0, 113, 1]))
        second_owner = first_rdata + 4
        good[second_owner : second_owner + 2] = bytes([0xC0, first_rdata])
        return [bytes(good)]

    began = time.monotonic()
    lane, _ = both(script, [query("www.example.test.")])
    assert time.monotonic() - began < 1.0  # both runs, where the timeout is 3 s each
    assert lane["forged"] == 0
    assert lane["errors"] == [("malformed", 1)]
    assert dns.message.from_wire(lane["answers"][0]).rcode() == dns.rcode.SERVFAIL


def test_silence_ends_in_servfail_within_the_deadline() -> None:
    lane, _ = both(lambda q: [], [query("www.example.test.")])
    assert dns.message.from_wire(lane["answers"][0]).rcode() == dns.rcode.SERVFAIL
    assert lane["errors"] == [("timeout", 1)]


@pytest.mark.parametrize("lane", [True, False], ids=["lane", "chain"])
def test_a_closed_upstream_port_is_servfail_at_once(lane: bool) -> None:
    """Nothing listens upstream: the kernel's ICMP error reaches the socket (through the
    lane's epoll set, or the chain's reader) and the answer is SERVFAIL long before the
    0.5 s deadline, counted as a network error, not a timeout."""

    async def ask() -> tuple[bytes, float, list[tuple[str, int]], int]:
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()  # the port is free again: datagrams to it get ICMP port unreachable
        server = Server(config.loads(CONFIG.format(port=port, extra="", pool=0), "t.yaml"))
        if not lane:
            server.express = None
        try:
            began = time.monotonic()
            sent = await datagrams(server, [query("www.example.test.")])
            elapsed = time.monotonic() - began
            errors = sorted((kind, n) for (_, kind), n in server.upstreams.stats.errors_by.items())
            return sent[0], elapsed, errors, server.counts.express["handed"]
        finally:
            await server.upstreams.aclose()

    answer_bytes, elapsed, errors, handed = asyncio.run(ask())
    assert dns.message.from_wire(answer_bytes).rcode() == dns.rcode.SERVFAIL
    assert elapsed < 0.25, elapsed
    assert errors == [("network", 1)]
    assert handed == (1 if lane else 0)


def test_rules_with_names_are_left_to_the_chain() -> None:
    extra = "      - {from: 203.0.113.9, to: 192.0.2.99, names: [only.example.test]}"
    script = answer("www.example.test. 300 IN A 203.0.113.9")
    lane, seen = both(script, [query("www.example.test.")], extra)
    assert seen["taken"] == 0
    assert [str(rd) for rd in dns.message.from_wire(lane["answers"][0]).answer[0]] == [
        "203.0.113.9"
    ]


def test_questions_the_chain_answers_itself_never_leave() -> None:
    lane, seen = both(answer("x. 1 IN A 203.0.113.1"), [
        query("use-application-dns.net."), query("_dns.resolver.arpa.", "SVCB"),
        query("1.1.168.192.in-addr.arpa.", "PTR"), query("www.example.test.", "TXT"),
    ])  # fmt: skip
    assert seen["taken"] == 0
    assert [dns.message.from_wire(a).rcode() for a in lane["answers"][:3]] == [
        dns.rcode.NXDOMAIN, dns.rcode.NOERROR, dns.rcode.NXDOMAIN,
    ]  # fmt: skip
    assert lane["upstream_queries"] == 1  # only the TXT question went upstream


def test_dnssec_answers_go_the_long_way() -> None:
    def script(q: dns.message.Message) -> list[bytes]:
        r = dns.message.make_response(q)
        r.flags |= dns.flags.AD
        r.answer.append(dns.rrset.from_text("www.example.test.", 300, "IN", "A", "203.0.113.1"))
        r.answer.append(dns.rrset.from_text(
            "www.example.test.", 300, "IN", "RRSIG",
            "A 13 3 300 20300101000000 20200101000000 1 example.test. AAAA",
        ))  # fmt: skip
        return [bytes(r.to_wire())]

    lane, seen = both(script, [query("www.example.test.", want_dnssec=True)])
    assert seen["taken"] == 0
    got = dns.message.from_wire(lane["answers"][0])
    assert not got.flags & dns.flags.AD and len(got.answer) == 1  # RRSIG gone, AD cleared


def test_wire_packet_matches_make_upstream_query() -> None:
    q = wire.parse_query(query("www.example.test.", want_dnssec=True))
    _, packet = packets.make_upstream_query(q, 99)
    assert packet == packets.upstream_packet(99, q.flags, q.question.wire, q.do)


class BrokenLane:
    """Stands in for the lane and fails on every question (a bug in the lane)."""

    def take(self, *args: object) -> bool:
        raise RuntimeError("injected fault")


def test_a_broken_lane_costs_no_answer(caplog: pytest.LogCaptureFixture) -> None:
    if server_module.__file__ and not server_module.__file__.endswith(".py"):
        pytest.skip("compiled build: Server.express is typed, a stand-in lane cannot go there")

    def break_lane(server: Server) -> None:
        server.express = BrokenLane()  # type: ignore[assignment]

    script = answer("www.example.test. 300 IN A 203.0.113.1")
    with caplog.at_level(logging.ERROR, logger="splitdns"):
        got = asyncio.run(run(script, [query("www.example.test.")], True, hook=break_lane))
    assert [str(rd) for rd in dns.message.from_wire(got["answers"][0]).answer[0]] == ["192.0.2.65"]
    assert "express lane failed" in caplog.text


def test_finished_exchanges_do_not_pile_up_in_the_deadline_queues() -> None:
    """One sweep timer serves every exchange's deadline; answered ones leave the queue's
    front as new ones come, so a busy lane holds a short queue, not every recent question."""
    servers: list[Server] = []
    script = answer("www.example.test. 300 IN A 203.0.113.1")
    names = [query(f"n{i}.example.test.", msg_id=i) for i in range(40)]
    got = asyncio.run(run(script, names, True, hook=servers.append))
    assert got["taken"] == 40
    lane = servers[0].express
    assert lane is not None
    assert sum(len(q) for q in lane.deadlines.queues.values()) <= 1


def test_a_burst_of_questions_is_read_through_the_lanes_epoll_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """200 different questions in flight at once, more than one wake-up reads (a batch of
    50 here; as many would overflow the test upstream's receive buffer): each reply is read
    from its own socket and answered, and no socket is left watched; once the lane is idle
    the loop no longer watches its epoll set."""
    monkeypatch.setattr(lanewatch, "READY_BATCH", 50)
    servers: list[Server] = []

    async def burst() -> tuple[list[bytes], int]:
        loop = asyncio.get_running_loop()
        upstream = Upstream(answer("www.example.test. 300 IN A 203.0.113.1"))
        upstream.script = lambda q: answer(f"{q.question[0].name} 300 IN A 203.0.113.1")(q)
        transport, _ = await loop.create_datagram_endpoint(
            lambda: upstream, local_addr=("127.0.0.1", 0)
        )
        port = transport.get_extra_info("sockname")[1]
        server = Server(config.loads(CONFIG.format(port=port, extra="", pool=0), "t.yaml"))
        servers.append(server)
        try:
            names = [query(f"b{i}.example.test.", msg_id=i) for i in range(200)]
            sent = await datagrams(server, names)
            await asyncio.sleep(3 * lanewatch.SWEEP_EVERY)  # the sweep finds the lane idle
            assert server.express is not None and not server.express.readiness.reading
            return sent, upstream.queries
        finally:
            await server.upstreams.aclose()
            transport.close()

    sent, asked = asyncio.run(burst())
    assert asked == 200 and len(sent) == 200
    answers = {dns.message.from_wire(a).id: dns.message.from_wire(a) for a in sent}
    assert sorted(answers) == list(range(200))
    for i, message in answers.items():
        assert str(message.answer[0].name) == f"b{i}.example.test."
        assert str(message.answer[0][0]) == "192.0.2.65"
    lane = servers[0].express
    assert lane is not None and servers[0].counts.express["answered"] == 200
    assert lane.readiness.waiting == {}


def test_identical_questions_follow_the_lanes_question() -> None:
    """The lane leads in the coalescing table: identical questions arriving meanwhile wait
    for its upstream answer (one upstream query) and each gets its own rewritten copy."""

    async def twenty() -> tuple[list[bytes], int, int, int, int]:
        loop = asyncio.get_running_loop()
        upstream = Upstream(answer("www.example.test. 300 IN A 203.0.113.1"))
        transport, _ = await loop.create_datagram_endpoint(
            lambda: upstream, local_addr=("127.0.0.1", 0)
        )
        port = transport.get_extra_info("sockname")[1]
        server = Server(config.loads(CONFIG.format(port=port, extra="", pool=0), "t.yaml"))
        assert server.express is not None
        try:
            sent = await datagrams(
                server, [query("www.example.test.", msg_id=i) for i in range(20)]
            )
            pipeline = server.pipeline
            return (
                sent,
                upstream.queries,
                pipeline.coalesce.coalesced,
                len(pipeline.coalesce.inflight),
                server.counts.express["answered"],
            )
        finally:
            await server.upstreams.aclose()
            transport.close()

    sent, asked, coalesced, left, lane = asyncio.run(twenty())
    assert asked == 1 and coalesced == 19 and left == 0
    assert lane == 1  # the leader was the lane's question
    assert sorted(dns.message.from_wire(a).id for a in sent) == list(range(20))
    assert {str(dns.message.from_wire(a).answer[0][0]) for a in sent} == {"192.0.2.65"}
