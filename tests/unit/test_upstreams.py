"""Upstream plumbing without sockets: spec parsing, the config section, routes, health, and
the group's strategies driven by scripted in-process transports."""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass, field

import pytest

from splitdns import wire
from splitdns.config import model as config
from splitdns.config.model import ConfigError
from splitdns.config.upstreams import UpstreamSpec, local_reverse_zone, parse_upstream
from splitdns.upstream import packets
from splitdns.upstream.forwarder import Forwarder, every_upstream
from splitdns.upstream.group import EXPLORE_EVERY, UpstreamGroup
from splitdns.upstream.health import (
    FIRST_BACKOFF,
    MAX_ATTEMPT,
    MIN_ATTEMPT,
    UNKNOWN_ATTEMPT,
    Health,
)
from splitdns.upstream.transport import (
    Attempt,
    OnDone,
    Reply,
    TransportError,
    UpstreamFailure,
    UpstreamStats,
    begin_task,
)

# --------------------------------------------------------------------------- specs


@pytest.mark.parametrize(
    ("text", "spec", "shown"),
    [
        ("192.0.2.1", UpstreamSpec("dns", "192.0.2.1", 53), "192.0.2.1:53"),
        ("192.0.2.1:5353", UpstreamSpec("dns", "192.0.2.1", 5353), "192.0.2.1:5353"),
        ("[2001:db8::1]:53", UpstreamSpec("dns", "2001:db8::1", 53), "[2001:db8::1]:53"),
        ("2001:db8::1", UpstreamSpec("dns", "2001:db8::1", 53), "[2001:db8::1]:53"),
        (
            "tls://198.51.100.53#resolver.example.net",
            UpstreamSpec("tls", "198.51.100.53", 853, "resolver.example.net"),
            "tls://198.51.100.53#resolver.example.net",
        ),
        (
            "tls://198.51.100.53:8853#dot.example",
            UpstreamSpec("tls", "198.51.100.53", 8853, "dot.example"),
            "tls://198.51.100.53:8853#dot.example",
        ),
        (
            "tls://dot.example",
            UpstreamSpec("tls", "dot.example", 853, "dot.example"),
            "tls://dot.example",
        ),
        (
            "https://resolver.example.net/dns-query",
            UpstreamSpec(
                "https", "resolver.example.net", 443, "resolver.example.net", "/dns-query"
            ),
            "https://resolver.example.net/dns-query",
        ),
        (
            "https://doh.example:8443",
            UpstreamSpec("https", "doh.example", 8443, "doh.example", "/dns-query"),
            "https://doh.example:8443/dns-query",
        ),
    ],
)
def test_upstream_text_forms(text: str, spec: UpstreamSpec, shown: str) -> None:
    parsed = parse_upstream(text)
    assert parsed == spec
    assert str(parsed) == shown
    assert parse_upstream(str(parsed)) == parsed  # what we print reads back the same


@pytest.mark.parametrize(
    "text",
    [
        "",
        "resolver.example.net",  # plain DNS needs an address: no bootstrap for the bootstrap
        "192.0.2.1:0",
        "192.0.2.1:99999",
        "quic://192.0.2.1",
        "tls://",
        "tls://192.0.2.1#",
        "tls://192.0.2.1:x#name",
        "https://",
        "https://doh.example/dns-query?dns=AAAA",
        "tls://bad_name!",
    ],
)
def test_bad_upstream_text_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_upstream(text)


def test_names_needing_bootstrap() -> None:
    assert parse_upstream("https://doh.example/dns-query").needs_bootstrap
    assert not parse_upstream("tls://192.0.2.1#dot.example").needs_bootstrap


# --------------------------------------------------------------------------- the config section

MAPPING = """\
upstreams:
  default: ["tls://198.51.100.53#resolver.example.net", "https://resolver.example.net/dns-query"]
  strategy: fastest
  bootstrap: [198.51.100.1]
  domains:
    lan: ["192.0.2.1"]
    1.168.192.in-addr.arpa: ["192.0.2.1"]
    corp.example: ["198.51.100.8", "198.51.100.9:5353"]
"""


def test_mapping_form() -> None:
    cfg = config.loads(MAPPING, "t.yaml")
    assert [str(s) for s in cfg.upstreams] == [
        "tls://198.51.100.53#resolver.example.net",
        "https://resolver.example.net/dns-query",
    ]
    fwd = cfg.forwarding
    assert fwd.strategy == "fastest"
    assert [str(s) for s in fwd.bootstrap] == ["198.51.100.1:53"]
    assert [d for d, _ in fwd.domains] == ["lan", "1.168.192.in-addr.arpa", "corp.example"]
    assert len(every_upstream(cfg)) == 5  # the router listed twice counts once


def test_list_form_still_means_default() -> None:
    cfg = config.loads('upstreams: ["192.0.2.1", "tls://192.0.2.2#dot.example"]\n', "t.yaml")
    assert [s.scheme for s in cfg.upstreams] == ["dns", "tls"]
    assert cfg.forwarding.domains == ()
    assert cfg.forwarding.strategy == "failover"


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ("upstreams:\n  strategy: random\n", "t.yaml:2: upstreams.strategy: must be one of"),
        ("upstreams:\n  defualt: []\n", "t.yaml:2: upstreams.defualt: unknown key"),
        (
            "upstreams:\n  domains:\n    lan: []\n",
            "t.yaml:3: upstreams.domains.lan: must list at least one upstream",
        ),
        (
            "upstreams:\n  domains:\n    'bad domain': [192.0.2.1]\n",
            "t.yaml:3: upstreams.domains.bad domain: 'bad domain' is not a valid domain",
        ),
        (
            "upstreams:\n  bootstrap: ['tls://192.0.2.1#x.example']\n",
            "t.yaml:2: upstreams.bootstrap[0]: bootstrap upstreams must be plain IP addresses",
        ),
        (
            "upstreams:\n  default:\n    - 192.0.2.1\n    - 192.0.2.1\n",
            "t.yaml:3: upstreams.default: lists the same upstream twice",
        ),
        (
            "upstreams:\n  domains:\n    lan:\n      - https://router.lan/dns-query?x=1\n",
            "t.yaml:4: upstreams.domains.lan[0]:",
        ),
        ("upstreams:\n  parallel_width: 1\n", "t.yaml:2: upstreams.parallel_width: must be"),
    ],
)
def test_mapping_errors_name_line_and_key(snippet: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.loads(snippet, "t.yaml")
    assert str(info.value).startswith(expected), str(info.value)


# --------------------------------------------------------------------------- routes, RFC 6303


def forwarder_for(text: str) -> Forwarder:
    return Forwarder(config.loads(text, "t.yaml"))


def test_longest_suffix_wins() -> None:
    fwd = forwarder_for(
        "upstreams:\n  default: [198.51.100.1]\n  domains:\n"
        "    example: [192.0.2.1]\n    corp.example: [192.0.2.2]\n"
        "    vpn.corp.example: [192.0.2.3]\n"
    )
    assert fwd.route("www.example.test")[0] is None
    assert fwd.route("example")[0] == "example"
    assert fwd.route("a.b.example")[0] == "example"
    assert fwd.route("corp.example")[0] == "corp.example"
    assert fwd.route("x.corp.example")[0] == "corp.example"
    assert fwd.route("host.vpn.corp.example")[0] == "vpn.corp.example"
    assert fwd.route("xcorp.example")[0] == "example"  # label boundaries, not string suffixes
    assert fwd.route("")[0] is None
    assert "domain corp.example upstreams (failover): 192.0.2.2:53" in fwd.describe(
        "x.corp.example"
    )


def test_private_reverse_zones_stay_local_unless_routed() -> None:
    plain = config.loads("upstreams: [198.51.100.1]\n", "t.yaml").forwarding
    assert local_reverse_zone(plain, "5.1.168.192.in-addr.arpa") == "168.192.in-addr.arpa"
    assert local_reverse_zone(plain, "1.0.0.10.in-addr.arpa") == "10.in-addr.arpa"
    assert local_reverse_zone(plain, "1.0.20.172.in-addr.arpa") == "20.172.in-addr.arpa"
    assert local_reverse_zone(plain, "1.0.32.172.in-addr.arpa") is None  # public 172.32/11
    assert local_reverse_zone(plain, "8.8.8.8.in-addr.arpa") is None
    assert local_reverse_zone(plain, "www.example.test") is None
    routed = config.loads(
        "upstreams:\n  default: [198.51.100.1]\n  domains:\n"
        "    1.168.192.in-addr.arpa: [192.0.2.1]\n",
        "t.yaml",
    ).forwarding
    assert local_reverse_zone(routed, "5.1.168.192.in-addr.arpa") is None
    assert local_reverse_zone(routed, "5.2.168.192.in-addr.arpa") == "168.192.in-addr.arpa"
    off = config.loads("upstreams:\n  local_reverse: false\n", "t.yaml").forwarding
    assert local_reverse_zone(off, "5.1.168.192.in-addr.arpa") is None


# --------------------------------------------------------------------------- health


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_health_backs_off_and_needs_a_probe_to_return() -> None:
    clock = Clock()
    h = Health(clock)
    assert h.up and h.attempt_timeout() == UNKNOWN_ATTEMPT
    h.failed()
    assert h.up  # one failure is noise
    h.failed()
    assert not h.up and not h.probe_due()
    clock.now += FIRST_BACKOFF
    assert h.probe_due() and not h.up  # time alone does not bring it back
    h.probing = True
    assert not h.probe_due()  # one probe at a time
    h.probing = False
    h.probe_failed()
    assert not h.probe_due()
    clock.now += FIRST_BACKOFF  # the back-off doubled
    assert not h.probe_due()
    clock.now += FIRST_BACKOFF
    assert h.probe_due()
    h.succeeded(0.01)
    assert h.up and h.failures == 0
    assert h.take_changes() == ["down for 2 s", "probe failed: down for 4 s", "back up"]


def test_attempt_time_follows_latency_within_bounds() -> None:
    h = Health()
    for _ in range(20):
        h.succeeded(0.001)
    assert h.attempt_timeout() == MIN_ATTEMPT
    for _ in range(40):
        h.succeeded(2.0)
    assert h.attempt_timeout() == MAX_ATTEMPT


# --------------------------------------------------------------------------- group strategies


@dataclass
class Scripted:
    """A transport answering after `delay`, or failing with `error`, and counting calls."""

    name: str
    delay: float = 0.0
    error: Exception | None = None
    rcode: int = wire.NOERROR
    calls: int = 0
    cancelled: int = 0
    log: list[float] = field(default_factory=list)

    def begin(self, query: wire.Query, timeout: float, on_done: OnDone) -> Attempt:
        return begin_task(self.exchange(query, timeout), on_done)

    async def exchange(self, query: wire.Query, timeout: float) -> Reply:
        self.calls += 1
        self.log.append(time.monotonic())
        try:
            await asyncio.sleep(min(self.delay, timeout))
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if self.delay > timeout:
            raise TimeoutError
        if self.error is not None:
            raise self.error
        data = wire.make_error(query, self.rcode)
        return Reply(data, wire.walk(data), self.name, "udp")

    async def aclose(self) -> None:
        return None


QUERY = wire.parse_query(wire.make_query("www.example.test", wire.TYPE_A))


def ask(group: UpstreamGroup) -> tuple[str, float]:
    async def once() -> tuple[str, float]:
        began = time.monotonic()
        reply = await group.resolve(QUERY)
        return reply.upstream, time.monotonic() - began

    return asyncio.run(once())


def group_of(*members: Scripted, strategy: str = "failover", timeout: float = 2.0) -> UpstreamGroup:
    return UpstreamGroup(list(members), timeout, UpstreamStats(), strategy)


def test_failover_asks_in_order_and_moves_on_at_once_on_errors() -> None:
    a = Scripted("a", error=TransportError("tls", "certificate refused"))
    b = Scripted("b", rcode=wire.SERVFAIL)
    c = Scripted("c")
    group = group_of(a, b, c)
    name, took = ask(group)
    assert name == "c" and took < 0.15
    assert (a.calls, b.calls, c.calls) == (1, 1, 1)
    assert group.stats.errors_by == {("a", "tls"): 1, ("b", "servfail"): 1}


def test_failover_hedges_past_a_black_hole_within_a_second() -> None:
    hole, good = Scripted("hole", delay=60), Scripted("good")
    group = group_of(hole, good)
    name, took = ask(group)
    assert name == "good" and UNKNOWN_ATTEMPT <= took < 1.0
    assert hole.cancelled == 1
    name, took = ask(group)  # second strike: out of rotation, not even asked
    assert name == "good"
    assert not group.members[0].health.up
    calls = hole.calls
    name, took = ask(group)
    assert name == "good" and took < 0.1 and hole.calls == calls


def test_a_slow_first_answer_still_wins_after_hedging() -> None:
    slow, silent = Scripted("slow", delay=0.5), Scripted("silent", delay=60)
    name, took = ask(group_of(slow, silent))
    assert name == "slow" and 0.5 <= took < 0.9


def test_everything_failing_raises_within_the_timeout() -> None:
    group = group_of(Scripted("x", delay=60), Scripted("y", delay=60), timeout=0.6)
    began = time.monotonic()
    with pytest.raises(UpstreamFailure):
        ask(group)
    assert time.monotonic() - began < 0.9


def test_fastest_prefers_lowest_latency_and_still_explores() -> None:
    slow, quick = Scripted("slow", delay=0.03), Scripted("quick", delay=0.0)
    group = group_of(slow, quick, strategy="fastest")
    slow_health, quick_health = (m.health for m in group.members)
    slow_health.succeeded(0.03)
    quick_health.succeeded(0.001)

    async def many() -> list[str]:
        return [(await group.resolve(QUERY)).upstream for _ in range(EXPLORE_EVERY * 2)]

    winners = asyncio.run(many())
    assert winners.count("quick") >= EXPLORE_EVERY * 2 - 2
    assert slow.calls == 2  # one exploration per EXPLORE_EVERY questions


def test_parallel_sends_two_and_takes_the_first() -> None:
    a, b, c = Scripted("a", delay=0.2), Scripted("b", delay=0.01), Scripted("c")
    group = group_of(a, b, c, strategy="parallel")
    name, took = ask(group)
    assert name == "b" and took < 0.15
    assert (a.calls, b.calls, c.calls) == (1, 1, 0)
    assert a.cancelled == 1


def test_mixed_case_keeps_the_name_and_changes_only_letters() -> None:
    query = wire.parse_query(wire.make_query("a-1.www.example.test", wire.TYPE_A))
    seen = set()
    for _ in range(20):
        _, packet = packets.make_upstream_query(query, mix_case=True)
        sent = packets.sent_question(packet, query)
        assert sent.lower() == query.question.wire.lower() and len(sent) == len(query.question.wire)
        assert packets.echoes_question(packet, sent)
        seen.add(sent)
    assert len(seen) > 10  # 17 letters: random case each time
    _, plain = packets.make_upstream_query(query)
    assert packets.sent_question(plain, query) == query.question.wire


def test_socket_pool_reuses_ports_and_rotates_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pooled sockets keep their ports for ROTATE_AFTER queries, then new ports replace them;
    every answer still arrives; the pool closes with the transport."""
    import asyncio

    from splitdns.config.upstreams import UpstreamSpec
    from splitdns.upstream import socketpool
    from splitdns.upstream.plain import PlainDNS
    from splitdns.upstream.transport import UpstreamStats
    from tests.support.fakeupstream import FakeUpstream

    monkeypatch.setattr(socketpool, "ROTATE_AFTER", 10)
    fake = FakeUpstream().add("p.example.test. 60 IN A 203.0.113.1").start()
    try:
        spec = UpstreamSpec("dns", "127.0.0.1", fake.port)
        transport = PlainDNS(spec, UpstreamStats(), pool=2)

        async def run() -> None:
            for _ in range(40):
                query = wire.parse_query(wire.make_query("p.example.test", wire.TYPE_A))
                reply = await transport.exchange(query, 2.0)
                assert reply.message.rcode == wire.NOERROR
            await transport.aclose()

        asyncio.run(run())
    finally:
        fake.stop()
    ports = [seen.source_port for seen in fake.seen]
    assert len(ports) == 40
    assert len(set(ports[:5])) <= 2  # two sockets serve the first queries
    assert 4 <= len(set(ports)) <= 12  # rotated after every 10 queries a socket served


@pytest.mark.parametrize("size", [64, 1000])
def test_socket_pool_draws_every_socket_alike_and_ids_at_random(size: int) -> None:
    """The pool's draws ahead (socket index and ID in one 32-bit draw): indices cover the pool
    evenly (a size that does not divide 2^16 drops the uneven tail), IDs are spread over 16
    bits, and an ID still in flight on a socket is never handed out again on it."""
    import collections

    from splitdns.upstream.socketpool import SocketPool
    from splitdns.upstream.transport import UpstreamStats

    async def run() -> None:
        pool = SocketPool(("127.0.0.1", 9), socket.AF_INET, size, UpstreamStats())
        indices: collections.Counter[int] = collections.Counter()
        ids: set[int] = set()
        for _ in range(50):
            pool._draw()
            indices.update((draw >> 16) % size for draw in pool.draws)
            ids.update(draw & 0xFFFF for draw in pool.draws)
        assert len(pool.sockets) == size  # made with the first draw
        assert set(indices) == set(range(size))
        expected = sum(indices.values()) / size
        assert max(indices.values()) < 2 * expected + 10  # no socket favoured
        assert len(ids) > 30000 and max(ids) > 0xF000
        pool.draws = [0, 0, 0]  # socket 0, ID 0, three times over
        taken = []
        for _ in range(3):
            pooled, msg_id = pool.checkout()
            pooled.receivers[msg_id] = object()  # type: ignore[assignment]
            taken.append((pooled, msg_id))
        assert len({msg_id for _, msg_id in taken}) == 3  # 0 once, then fresh random IDs
        pool.close()
        assert not pool.sockets and not pool.draws

    asyncio.run(run())


def test_socket_pool_setting() -> None:
    cfg = config.loads("upstreams:\n  default: [192.0.2.1]\n  socket_pool: 64\n", "t.yaml")
    assert cfg.forwarding.socket_pool == 64
    with pytest.raises(config.ConfigError, match="socket_pool"):
        config.loads("upstreams:\n  default: [192.0.2.1]\n  socket_pool: -1\n", "t.yaml")
