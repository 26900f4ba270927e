"""The cache and coalescing, driven through the real chain with an in-process fake upstream
and an injected clock: tests move time instead of sleeping."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest

from splitdns import wire
from splitdns.answer.cache import Cache
from splitdns.answer.links import Outcome, Request
from splitdns.answer.views import client_address
from splitdns.config import model as config
from splitdns.serve.server import Server
from splitdns.upstream.transport import OnDone, Reply, UpstreamFailure

CONFIG = """
upstreams: [192.0.2.53]
cache: {{size: {size}, serve_stale: {stale}, prefetch: {prefetch}, servfail_ttl: 5}}
views:
  - name: lan
    clients: [127.0.0.1/32]
    aaaa: drop
    rewrite:
      - {{from: 203.0.113.1, to: 192.0.2.2}}
"""


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeUpstreams:
    """Answers from a table; counts questions; can fail or be slow on demand."""

    records: dict[tuple[str, str], list[tuple[int, str]]] = field(default_factory=dict)
    asked: list[str] = field(default_factory=list)
    failing: bool = False
    delay: float = 0.0

    def ask(self, query: wire.Query, on_done: OnDone, handover: object = None) -> None:
        """The flat walk's form: the same answer, told to a callback."""
        task = asyncio.ensure_future(self.resolve(query))
        task.add_done_callback(
            lambda t: on_done(None, t.exception()) if t.exception() else on_done(t.result(), None)
        )

    async def resolve(self, query: wire.Query) -> Reply:
        self.asked.append(f"{query.question.name}/{query.question.qtype}")
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.failing:
            raise UpstreamFailure("scripted failure")
        q = dns.message.make_query(query.question.name + ".", query.question.qtype)
        r = dns.message.make_response(q)
        rdtype = dns.rdatatype.to_text(query.question.qtype)
        rows = self.records.get((query.question.name, rdtype))
        if rows is None:
            r.set_rcode(dns.rcode.NXDOMAIN)
            r.authority.append(
                dns.rrset.from_text(
                    "test.", 300, "IN", "SOA", "ns.test. host.test. 1 3600 600 86400 60"
                )
            )
        for ttl, value in rows or []:
            r.answer.append(
                dns.rrset.from_text(query.question.name + ".", ttl, "IN", rdtype, value)
            )
        data = bytes(r.to_wire())
        return Reply(data, wire.walk(data), "fake", "udp")


def make(
    size: int = 100, stale: bool = False, prefetch: bool = False
) -> tuple[Server, FakeUpstreams, Clock]:
    cfg = config.loads(
        CONFIG.format(size=size, stale=str(stale).lower(), prefetch=str(prefetch).lower()), "t.yaml"
    )
    ups = FakeUpstreams(
        records={
            ("www.example.test", "A"): [(300, "203.0.113.1")],
            ("dual.example.test", "A"): [(120, "203.0.113.1")],
            ("dual.example.test", "AAAA"): [(120, "2001:db8::1")],
            ("big.example.test", "A"): [(300, f"198.51.100.{i}") for i in range(1, 41)],
            ("other.example.test", "A"): [(50, "198.51.100.1")],
        }
    )
    clock = Clock()
    server = Server(cfg, upstreams=ups)  # type: ignore[arg-type]
    server.cache.clock = clock
    return server, ups, clock


def query(name: str, rdtype: str = "A", msg_id: int = 1, **kw: object) -> bytes:
    q = dns.message.make_query(name, rdtype, **kw)  # type: ignore[arg-type]
    q.id = msg_id
    return bytes(q.to_wire())


def ask(server: Server, data: bytes, host: str = "127.0.0.1") -> dns.message.Message:
    fast = server.fast_answer(data, host)
    if fast is None:
        fast = asyncio.run(server.respond(data, host, "udp"))
    assert fast is not None
    return dns.message.from_wire(fast)


def ttl_and_value(msg: dns.message.Message) -> tuple[int, str]:
    return msg.answer[0].ttl, str(msg.answer[0][0])


def test_hit_ages_ttls_and_echoes_id_and_case() -> None:
    server, ups, clock = make()
    assert ttl_and_value(ask(server, query("www.example.test."))) == (300, "192.0.2.2")
    clock.now += 100.4
    data = query("WWW.Example.TEST.", msg_id=0xBEEF)
    hit = server.fast_answer(data, "127.0.0.1")
    assert hit is not None  # answered without the chain
    msg = dns.message.from_wire(hit)
    assert msg.id == 0xBEEF and msg.question[0].name.to_text() == "WWW.Example.TEST."
    assert ttl_and_value(msg) == (200, "192.0.2.2")
    assert ups.asked == ["www.example.test/1"]
    clock.now += 200
    assert server.fast_answer(data, "127.0.0.1") is None  # expired: the chain asks again
    assert ttl_and_value(ask(server, data)) == (300, "192.0.2.2")
    assert len(ups.asked) == 2


def test_views_never_share_cached_answers() -> None:
    server, ups, _ = make()
    assert ttl_and_value(ask(server, query("www.example.test."), "127.0.0.1"))[1] == "192.0.2.2"
    assert ttl_and_value(ask(server, query("www.example.test."), "127.0.0.2"))[1] == "203.0.113.1"
    assert ttl_and_value(ask(server, query("www.example.test."), "127.0.0.1"))[1] == "192.0.2.2"
    assert ttl_and_value(ask(server, query("www.example.test."), "127.0.0.2"))[1] == "203.0.113.1"
    assert len(ups.asked) == 2  # once per view, then hits


def test_outsiders_never_get_cached_answers() -> None:
    server, _, _ = make()
    ask(server, query("www.example.test."))
    assert server.fast_answer(query("www.example.test."), "198.51.100.1") is None
    msg = ask(server, query("www.example.test."), "198.51.100.1")
    assert msg.rcode() == dns.rcode.REFUSED and not msg.answer


def test_do_bit_is_part_of_the_key() -> None:
    server, ups, _ = make()
    ask(server, query("www.example.test."))
    ask(server, query("www.example.test.", use_edns=0, want_dnssec=True))
    assert len(ups.asked) == 2


def test_negative_answers_live_for_the_soa_minimum() -> None:
    server, ups, clock = make()
    msg = ask(server, query("missing.example.test."))
    assert msg.rcode() == dns.rcode.NXDOMAIN and msg.authority[0].ttl == 60
    clock.now += 30
    again = ask(server, query("missing.example.test."))
    assert again.rcode() == dns.rcode.NXDOMAIN and again.authority[0].ttl == 30
    assert len(ups.asked) == 1
    clock.now += 31
    ask(server, query("missing.example.test."))
    assert len(ups.asked) == 2


def test_lru_eviction_by_entries() -> None:
    server, ups, _ = make(size=2)
    for name in ("www", "other", "big"):
        ask(server, query(f"{name}.example.test."))
    assert len(server.cache) == 2 and server.cache.stats.evictions == 1
    ask(server, query("www.example.test."))  # evicted first: asked again
    assert ups.asked.count("www.example.test/1") == 2


def test_byte_bound() -> None:
    cache = Cache(config.CacheSettings(size=1000, max_bytes=3000))
    server, _, _ = make()
    data = asyncio.run(server.respond(query("big.example.test."), "127.0.0.2", "tcp"))
    assert data is not None
    for i in range(10):
        cache.put(("", f"k{i}".encode(), b"", False, False), data, "forwarded", 0.0)
        assert cache.bytes <= 3000
    assert 0 < len(cache) < 10


def test_cached_answer_truncates_for_a_small_buffer() -> None:
    server, _, _ = make()
    ask(server, query("big.example.test.", use_edns=0, payload=4096))
    small = server.fast_answer(query("big.example.test."), "127.0.0.1")
    assert small is not None
    msg = dns.message.from_wire(small)
    assert msg.flags & dns.flags.TC and not msg.answer
    large = dns.message.from_wire(
        server.fast_answer(query("big.example.test.", use_edns=0, payload=1232), "127.0.0.1") or b""
    )
    assert len(large.answer[0]) == 40 and large.edns == 0


def test_coalescing_shares_one_upstream_query() -> None:
    server, ups, _ = make(size=0)
    ups.delay = 0.05

    async def many() -> list[bytes | None]:
        return await asyncio.gather(
            *(
                server.respond(query("www.example.test.", msg_id=i), "127.0.0.1", "udp")
                for i in range(20)
            )
        )

    answers = asyncio.run(many())
    assert len(ups.asked) == 1
    ids = sorted(dns.message.from_wire(a).id for a in answers if a)
    assert ids == list(range(20))
    assert server.pipeline.coalesce.coalesced == 19


def test_servfail_cached_briefly() -> None:
    server, ups, clock = make()
    ups.failing = True
    assert ask(server, query("www.example.test.")).rcode() == dns.rcode.SERVFAIL
    ups.failing = False
    assert ask(server, query("www.example.test.")).rcode() == dns.rcode.SERVFAIL
    assert len(ups.asked) == 1
    clock.now += 6
    assert ttl_and_value(ask(server, query("www.example.test.")))[1] == "192.0.2.2"


def test_serve_stale_when_every_upstream_fails() -> None:
    server, ups, clock = make(stale=True)
    ask(server, query("www.example.test."))
    clock.now += 400  # expired
    ups.failing = True
    msg = ask(server, query("www.example.test."))
    assert msg.rcode() == dns.rcode.NOERROR
    assert ttl_and_value(msg) == (30, "192.0.2.2")
    resp = asyncio.run(
        server.handler(
            Request(
                wire.parse_query(query("www.example.test.")), client_address("127.0.0.1"), "udp"
            )
        )
    )
    assert resp.outcome is Outcome.STALE
    # RFC 8914 code 3, "Stale Answer", for a client that speaks EDNS (none without)
    signed = ask(server, query("www.example.test.", use_edns=0))
    assert [(o.code, o.text) for o in signed.options] == [(dns.edns.EDECode.STALE_ANSWER, None)]
    assert not ask(server, query("www.example.test.")).options


def test_no_stale_without_the_setting() -> None:
    server, ups, clock = make(stale=False)
    ask(server, query("www.example.test."))
    clock.now += 400
    ups.failing = True
    assert ask(server, query("www.example.test.")).rcode() == dns.rcode.SERVFAIL


def test_prefetch_refreshes_popular_entries_before_expiry() -> None:
    server, ups, clock = make(prefetch=True)

    async def scenario() -> None:
        await server.respond(query("www.example.test."), "127.0.0.1", "udp")
        clock.now += 280  # within the last tenth of 300 s
        assert server.fast_answer(query("www.example.test."), "127.0.0.1") is None
        await server.respond(query("www.example.test."), "127.0.0.1", "udp")
        await asyncio.sleep(0.01)  # let the background refresh run

    asyncio.run(scenario())
    assert len(ups.asked) == 2
    hit = server.fast_answer(query("www.example.test."), "127.0.0.1")
    assert hit is not None and dns.message.from_wire(hit).answer[0].ttl == 300


def test_aaaa_drop_uses_the_cached_a_answer() -> None:
    server, ups, _ = make()
    ask(server, query("dual.example.test."))
    msg = ask(server, query("dual.example.test.", "AAAA"))
    assert msg.rcode() == dns.rcode.NOERROR and msg.answer == []
    assert ups.asked.count("dual.example.test/1") == 1  # the A came from the cache
    again = ask(server, query("dual.example.test.", "AAAA"))
    assert again.answer == []


@pytest.mark.parametrize("size", [0])
def test_size_zero_disables_the_cache(size: int) -> None:
    server, ups, _ = make(size=size)
    ask(server, query("www.example.test."))
    ask(server, query("www.example.test."))
    assert len(ups.asked) == 2 and len(server.cache) == 0


def test_reload_keeps_entries_of_unchanged_views_only() -> None:
    server, ups, _ = make()
    ask(server, query("www.example.test."), "127.0.0.1")  # lan view
    ask(server, query("www.example.test."), "127.0.0.2")  # no view
    assert len(server.cache) == 2
    changed = config.loads(
        CONFIG.format(size=100, stale="false", prefetch="false").replace("192.0.2.2", "192.0.2.9"),
        "t.yaml",
    )
    notes = server.reload(changed)
    assert "1 cache entries of changed views dropped" in notes
    assert ttl_and_value(ask(server, query("www.example.test."), "127.0.0.1"))[1] == "192.0.2.9"
    assert ttl_and_value(ask(server, query("www.example.test."), "127.0.0.2"))[1] == "203.0.113.1"
    assert len(ups.asked) == 3  # only the changed view asked again
    same = server.reload(changed)
    assert "0 cache entries of changed views dropped" in same


def test_hits_and_misses_are_counted_once() -> None:
    server, _, _ = make()
    ask(server, query("www.example.test."))  # fast path declines, the chain misses
    assert (server.cache.stats.hits, server.cache.stats.misses) == (0, 1)
    ask(server, query("www.example.test."))  # answered on the fast path
    assert (server.cache.stats.hits, server.cache.stats.misses) == (1, 1)


def test_a_reload_while_the_cache_is_empty_keeps_one_cache() -> None:
    """An empty cache is falsy (it has a length): a reload once made the chain a new one
    beside the server's, and no answer was ever read from the cache again."""
    cfg = config.loads(
        "upstreams: [127.0.0.1]\nviews: [{name: lan, clients: [127.0.0.1/32]}]\n", "t"
    )
    server = Server(cfg)
    assert len(server.cache) == 0
    server.reload(cfg)
    assert server.cache is server.pipeline.cache
