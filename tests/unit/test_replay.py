"""Replayed hits (serve/replay.py): the same query bytes again within the second get the hit's
answer with their own ID, and never anything a fresh hit would not give: not after the TTLs
tick, not once the entry is evicted, replaced or due for prefetch, not across views or query
shapes, and not while the query log is on."""

from __future__ import annotations

import asyncio
import io

import dns.edns
import dns.flags
import dns.message

from splitdns.config import model as config
from splitdns.serve import replay
from splitdns.serve.querylog import QueryLog
from splitdns.serve.server import Server
from tests.support.datagrams import datagrams
from tests.unit.test_cache import make, query


def udp(server: Server, data: bytes, host: str = "127.0.0.1") -> bytes:
    """One query through the UDP entry point (Server.datagram); its one answer."""
    answers = asyncio.run(datagrams(server, [data], host=host))
    assert len(answers) == 1
    return answers[0]


def replies(server: Server, host: str = "127.0.0.1") -> dict[bytes, object]:
    plan = server._clients[host]
    assert plan is not None
    return plan.replies  # type: ignore[return-value]


def test_a_replay_is_the_hit_with_the_query_s_own_id() -> None:
    server, ups, clock = make()
    udp(server, query("www.example.test.", msg_id=1))  # the miss
    hit = udp(server, query("www.example.test.", msg_id=2))  # a hit, kept
    assert query("www.example.test.", msg_id=2)[2:] in replies(server)
    clock.now += 0.5
    again = udp(server, query("www.example.test.", msg_id=0xBEEF))
    assert again[:2] == b"\xbe\xef" and again[2:] == hit[2:]
    assert ups.asked == ["www.example.test/1"]
    assert server.cache.stats.hits == 2
    assert server.counts.queries[("udp", "A", "cached")] == 2
    msg = dns.message.from_wire(again)
    assert str(msg.answer[0][0]) == "192.0.2.2" and msg.answer[0].ttl == 300


def test_a_replay_sends_what_was_kept() -> None:
    """The kept answer is what goes out (so the tests below see replays, not fresh hits)."""
    server, _, _ = make()
    udp(server, query("www.example.test.", msg_id=1))
    udp(server, query("www.example.test.", msg_id=2))
    kept = replies(server)
    key = query("www.example.test.", msg_id=3)[2:]
    tail, *rest = kept[key]  # type: ignore[misc]
    kept[key] = (tail[:-1] + b"\xfe", *rest)  # type: ignore[assignment]
    assert udp(server, query("www.example.test.", msg_id=3))[-1:] == b"\xfe"


def test_ttls_tick_after_a_second_and_expiry_is_kept() -> None:
    server, ups, clock = make()
    udp(server, query("www.example.test.", msg_id=1))
    udp(server, query("www.example.test.", msg_id=2))
    clock.now += 1.0
    msg = dns.message.from_wire(udp(server, query("www.example.test.", msg_id=3)))
    assert msg.answer[0].ttl == 299  # the kept answer said 300: a fresh hit was made
    clock.now += 0.9
    assert (
        dns.message.from_wire(udp(server, query("www.example.test.", msg_id=4))).answer[0].ttl
        == 299
    )
    clock.now += 298.2  # past the entry's expiry: asked again
    assert (
        dns.message.from_wire(udp(server, query("www.example.test.", msg_id=5))).answer[0].ttl
        == 300
    )
    assert len(ups.asked) == 2


def test_an_evicted_or_replaced_entry_is_never_replayed() -> None:
    server, ups, _ = make(size=1)
    www = query("www.example.test.", msg_id=1)
    udp(server, www)
    udp(server, www)  # kept
    udp(server, query("other.example.test.", msg_id=1))  # evicts www
    udp(server, www)
    assert ups.asked == ["www.example.test/1", "other.example.test/1", "www.example.test/1"]
    udp(server, www)  # kept again, for the new entry
    server.cache.clear()  # as a reload that changes the upstreams does
    udp(server, www)
    assert ups.asked.count("www.example.test/1") == 3


def test_prefetch_still_happens() -> None:
    server, ups, clock = make(prefetch=True)
    ups.records[("odd.example.test", "A")] = [(55, "198.51.100.9")]
    odd = query("odd.example.test.", msg_id=1)
    udp(server, odd)  # stored at 1000.0, TTL 55: due for prefetch from 1049.5
    clock.now = 1049.2
    udp(server, odd)  # a hit, kept until 1049.5 (its TTLs would tick at 1050)
    clock.now = 1049.7
    udp(server, odd)  # due: the chain answers it and refreshes the entry
    assert server.cache.stats.prefetches == 1
    assert ups.asked.count("odd.example.test/1") == 2


def test_views_and_query_shapes_never_share() -> None:
    server, _, _ = make()
    www = query("www.example.test.", msg_id=1)
    for host in ("127.0.0.1", "127.0.0.2", "127.0.0.1", "127.0.0.2"):
        udp(server, www, host)
    lan = dns.message.from_wire(udp(server, www, "127.0.0.1"))
    outside_view = dns.message.from_wire(udp(server, www, "127.0.0.2"))
    assert str(lan.answer[0][0]) == "192.0.2.2"
    assert str(outside_view.answer[0][0]) == "203.0.113.1"
    big = query("big.example.test.", msg_id=1, use_edns=0, payload=1232)
    small = query("big.example.test.", msg_id=1)
    for data in (big, big, small, small, big):  # each shape kept on its own
        udp(server, data)
    assert not dns.message.from_wire(udp(server, big)).flags & dns.flags.TC
    assert dns.message.from_wire(udp(server, small)).flags & dns.flags.TC


def test_nothing_is_kept_while_the_query_log_is_on() -> None:
    server, _, _ = make()
    logged = io.StringIO()
    server.querylog = QueryLog(config.QueryLogSettings(enabled=True), stream=logged)
    www = query("www.example.test.", msg_id=1)
    for _ in range(3):
        udp(server, www)
    assert replies(server) == {}
    assert len(logged.getvalue().splitlines()) == 3  # every hit logged


def test_replays_are_bounded_per_view() -> None:
    """Many shapes of one hot name (a client varying its EDNS size, say) start the view's
    replays over instead of growing them; long queries are never kept."""
    server, _, _ = make()
    udp(server, query("www.example.test.", msg_id=1))
    for payload in range(600, 600 + replay.REPLAYS + 50):
        udp(server, query("www.example.test.", use_edns=0, payload=payload))
    assert 0 < len(replies(server)) <= replay.REPLAYS
    long = query(
        "www.example.test.", use_edns=0, options=[dns.edns.GenericOption(65001, bytes(300))]
    )
    udp(server, long)
    udp(server, long)
    assert long[2:] not in replies(server)
