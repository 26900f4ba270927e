"""Upstreams end to end: per-domain routes, failover past a black hole, strategies, RFC 6303
reverse zones, DNS over TLS and over HTTPS (fakes with a CA made here), queried with dig."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import dns.rcode
import pytest

from tests.support.configs import REWRITE_VIEW
from tests.support.encrypted import FakeDoH, FakeDoT, ThrowawayCA
from tests.support.fakeupstream import Action, FakeUpstream
from tests.support.servers import SplitDNS, free_port


def fake_with(*lines: str, default: Action | None = None) -> FakeUpstream:
    fake = FakeUpstream(default=default or Action()).add(*lines)
    return fake.start()


def a_values(resp: object) -> list[str]:
    return sorted(str(rd) for rrset in resp.answer for rd in rrset if rrset.rdtype == 1)  # type: ignore[attr-defined]


def names_seen(fake: FakeUpstream) -> list[str]:
    return [s.name.lower() for s in fake.seen]


def test_domains_route_by_longest_suffix_and_both_get_rewritten(
    tmp_path: Path, fakes: list[FakeUpstream]
) -> None:
    router = fake_with("printer.lan. 60 IN A 203.0.113.1", "nas.lan. 60 IN A 192.0.2.40")
    public = fake_with("www.example.test. 300 IN A 203.0.113.1")
    vpn = fake_with("wiki.corp.example. 300 IN A 203.0.113.1")
    fakes += [router, public, vpn]
    proc = SplitDNS(
        tmp_path,
        f"""\
upstreams:
  default: ["{public.address}"]
  domains:
    lan: ["{router.address}"]
    corp.example: ["{vpn.address}"]
{REWRITE_VIEW}""",
    )
    try:
        assert "192.0.2.2" in proc.dig("+short", "printer.lan")
        assert proc.dig("+short", "nas.lan").split() == ["192.0.2.40"]
        assert proc.dig("+short", "www.example.test").split() == ["192.0.2.2"]
        assert a_values(proc.query("wiki.corp.example")) == ["192.0.2.2"]
        assert set(names_seen(router)) == {"printer.lan", "nas.lan"}
        assert names_seen(public) == ["www.example.test"]
        assert names_seen(vpn) == ["wiki.corp.example"]
        assert "+ 2 domain routes" in proc.startup
    finally:
        assert proc.stop() == 0, proc.output
    config_file = next(tmp_path.glob("splitdns-*.yaml"))
    explained = subprocess.run(
        [sys.executable, "-m", "splitdns", "explain", "printer.lan", "-c", str(config_file)],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    assert f"route: domain lan upstreams (failover): {router.address}" in explained
    assert f"upstream: {router.address} answered over udp" in explained
    assert "rewrite: printer.lan 203.0.113.1 -> 192.0.2.2" in explained


def test_black_holed_first_upstream_costs_under_a_second_then_rests(
    tmp_path: Path, fakes: list[FakeUpstream]
) -> None:
    hole = fake_with(default=Action(silent=True))
    good = fake_with(*(f"n{i}.example.test. 300 IN A 203.0.113.1" for i in range(12)))
    fakes += [hole, good]
    proc = SplitDNS(
        tmp_path, f'upstreams: ["{hole.address}", "{good.address}"]\ntimeout: 3\n{REWRITE_VIEW}'
    )
    try:
        times = []
        for i in range(8):
            began = time.monotonic()
            assert a_values(proc.query(f"n{i}.example.test")) == ["192.0.2.2"]
            times.append(time.monotonic() - began)
        assert max(times) < 1.0, times
        # Two strikes took it out of rotation: later questions go straight to the next one.
        assert len(hole.seen) == 2, names_seen(hole)
        assert max(times[2:]) < 0.2, times
        assert "down for 2 s" in proc.wait_for(f"upstream {hole.address}")
        # After the back-off one probe (not a client's question) checks it.
        time.sleep(2.2)
        assert a_values(proc.query("n8.example.test")) == ["192.0.2.2"]
        deadline = time.monotonic() + 3
        while len(hole.seen) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [(s.name, s.qtype) for s in hole.seen[2:]] == [("", "SOA")]
        proc.wait_for("probe failed: down for 4 s", timeout=5)
    finally:
        assert proc.stop() == 0, proc.output


def test_recovered_upstream_returns_after_its_probe(
    tmp_path: Path, fakes: list[FakeUpstream]
) -> None:
    first = fake_with("www.example.test. 300 IN A 203.0.113.1", default=Action(silent=True))
    second = fake_with("www.example.test. 300 IN A 203.0.113.1")
    fakes += [first, second]
    proc = SplitDNS(
        tmp_path,
        f'upstreams: ["{first.address}", "{second.address}"]\ncache:\n  size: 0\n{REWRITE_VIEW}',
    )
    try:
        for _ in range(2):
            assert a_values(proc.query("www.example.test")) == ["192.0.2.2"]
        proc.wait_for("down for 2 s")
        first.default = Action()  # it comes back
        time.sleep(2.2)
        proc.query("www.example.test")  # due probe starts in the background
        proc.wait_for(f"upstream {first.address}: back up", timeout=5)
        before = len(first.seen)
        assert a_values(proc.query("www.example.test")) == ["192.0.2.2"]
        assert len(first.seen) == before + 1  # first in order again
    finally:
        assert proc.stop() == 0, proc.output


def test_parallel_strategy_asks_two_and_fastest_learns(
    tmp_path: Path, fakes: list[FakeUpstream]
) -> None:
    lines = [f"p{i}.example.test. 300 IN A 203.0.113.1" for i in range(40)]
    slow = fake_with(*lines, default=Action(delay=0.05))
    quick = fake_with(*lines)
    fakes += [slow, quick]
    ups = f'["{slow.address}", "{quick.address}"]'
    parallel = SplitDNS(tmp_path, f"upstreams:\n  default: {ups}\n  strategy: parallel\n")
    try:
        resp = parallel.query("p0.example.test")
        assert a_values(resp) == ["203.0.113.1"]
        deadline = time.monotonic() + 2  # the slower fake's thread may record it a bit later
        while not slow.seen and time.monotonic() < deadline:
            time.sleep(0.01)
        assert names_seen(slow) == names_seen(quick) == ["p0.example.test"]
    finally:
        assert parallel.stop() == 0, parallel.output
    slow.seen.clear()
    quick.seen.clear()
    fastest = SplitDNS(tmp_path, f"upstreams:\n  default: {ups}\n  strategy: fastest\n")
    try:
        for i in range(1, 40):
            fastest.query(f"p{i}.example.test")
        # The first question (nothing learnt yet) goes to the first listed; after that, once
        # both latencies are known, the quick one takes nearly everything.
        assert len(quick.seen) >= 30, (len(slow.seen), len(quick.seen))
    finally:
        assert fastest.stop() == 0, fastest.output


def test_private_reverse_lookups_stay_on_the_lan(tmp_path: Path, fakes: list[FakeUpstream]) -> None:
    router = fake_with("5.1.168.192.in-addr.arpa. 60 IN PTR printer.lan.")
    public = fake_with("8.8.8.8.in-addr.arpa. 60 IN PTR dns.example.test.")
    fakes += [router, public]
    proc = SplitDNS(
        tmp_path,
        f"""\
upstreams:
  default: ["{public.address}"]
  domains:
    1.168.192.in-addr.arpa: ["{router.address}"]
""",
    )
    try:
        local = proc.dig("-x", "10.1.2.3")
        assert "status: NXDOMAIN" in local and "10.in-addr.arpa." in local  # RFC 6303 SOA
        assert "NXDOMAIN" in proc.dig("-x", "192.168.7.7")
        assert "printer.lan." in proc.dig("+short", "-x", "192.168.1.5")
        assert "dns.example.test." in proc.dig("+short", "-x", "8.8.8.8")
        assert names_seen(router) == ["5.1.168.192.in-addr.arpa"]
        assert names_seen(public) == ["8.8.8.8.in-addr.arpa"]
    finally:
        assert proc.stop() == 0, proc.output


# --------------------------------------------------------------------------- encrypted


@pytest.fixture
def ca(tmp_path: Path) -> ThrowawayCA:
    return ThrowawayCA(tmp_path)


def test_dns_over_tls_reuses_one_verified_connection(
    tmp_path: Path, fakes: list[FakeUpstream], ca: ThrowawayCA
) -> None:
    backend = fake_with(*(f"t{i}.example.test. 300 IN A 203.0.113.1" for i in range(10)))
    fakes.append(backend)
    dot = FakeDoT(backend, ca.server_context("dot.example.test"))
    mport = free_port()
    proc = SplitDNS(
        tmp_path,
        f"""\
upstreams:
  default: ["tls://127.0.0.1:{dot.port}#dot.example.test"]
  ca_file: "{ca.ca_file}"
metrics: "127.0.0.1:{mport}"
{REWRITE_VIEW}""",
    )
    try:
        for i in range(10):
            assert proc.dig("+short", f"t{i}.example.test").split() == ["192.0.2.2"]
        assert dot.connections == 1 and dot.handshake_failures == 0
        assert {s.transport for s in backend.seen} == {"tls"}
        with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5) as r:
            text = r.read().decode()
        name = f"tls://127.0.0.1:{dot.port}#dot.example.test"
        assert f'splitdns_upstream_answers_total{{upstream="{name}"}} 10.0' in text
        assert f'splitdns_upstream_up{{upstream="{name}"}} 1.0' in text
    finally:
        assert proc.stop() == 0, proc.output
        dot.stop()


def test_dot_with_the_wrong_certificate_name_is_never_used(
    tmp_path: Path, fakes: list[FakeUpstream], ca: ThrowawayCA
) -> None:
    backend = fake_with("www.example.test. 300 IN A 203.0.113.1")
    fallback = fake_with("www.example.test. 300 IN A 203.0.113.1")
    fakes += [backend, fallback]
    dot = FakeDoT(backend, ca.server_context("other.example.test"))
    wrong = f"tls://127.0.0.1:{dot.port}#dot.example.test"
    only = SplitDNS(tmp_path, f'upstreams:\n  default: ["{wrong}"]\n  ca_file: "{ca.ca_file}"\n')
    try:
        resp = only.query("www.example.test")
        assert resp.rcode() == dns.rcode.SERVFAIL
        line = only.wait_for("certificate refused")
        assert wrong in line and "dot.example.test" in line
    finally:
        assert only.stop() == 0, only.output
    with_fallback = SplitDNS(
        tmp_path,
        f'upstreams:\n  default: ["{wrong}", "{fallback.address}"]\n'
        f'  ca_file: "{ca.ca_file}"\n{REWRITE_VIEW}',
    )
    try:
        for _ in range(3):
            assert with_fallback.dig("+short", "www.example.test").split() == ["192.0.2.2"]
        assert backend.seen == []  # not one question went over the refused connection
        assert dot.handshake_failures >= 1 and dot.connections == 0
    finally:
        assert with_fallback.stop() == 0, with_fallback.output
        dot.stop()


def test_dns_over_https_http2_with_a_bootstrapped_name(
    tmp_path: Path, fakes: list[FakeUpstream], ca: ThrowawayCA
) -> None:
    backend = fake_with(*(f"h{i}.example.test. 300 IN A 203.0.113.1" for i in range(6)))
    boot = fake_with("doh.example.test. 60 IN A 127.0.0.1")
    fakes += [backend, boot]
    doh = FakeDoH(backend, ca.server_context("doh.example.test", alpn=["h2", "http/1.1"]))
    url = f"https://doh.example.test:{doh.port}/dns-query"
    proc = SplitDNS(
        tmp_path,
        f"""\
upstreams:
  default: ["{url}"]
  bootstrap: ["{boot.address}"]
  ca_file: "{ca.ca_file}"
{REWRITE_VIEW}""",
    )
    try:
        for i in range(6):
            assert proc.dig("+short", f"h{i}.example.test").split() == ["192.0.2.2"]
        assert doh.versions == ["HTTP/2"] * 6
        assert doh.connections == 1
        # The name was resolved once, through the bootstrap, never through itself.
        assert [(s.name, s.qtype) for s in boot.seen] == [("doh.example.test", "A")]
        assert {s.transport for s in backend.seen} == {"https"}
    finally:
        assert proc.stop() == 0, proc.output
        doh.stop()


def test_dns_over_https_falls_back_to_http1_and_reports_http_errors(
    tmp_path: Path, fakes: list[FakeUpstream], ca: ThrowawayCA
) -> None:
    backend = fake_with("www.example.test. 300 IN A 203.0.113.1")
    fakes.append(backend)
    doh = FakeDoH(backend, ca.server_context("127.0.0.1", alpn=["http/1.1"]))
    proc = SplitDNS(
        tmp_path,
        f'upstreams:\n  default: ["https://127.0.0.1:{doh.port}/dns-query"]\n'
        f'  ca_file: "{ca.ca_file}"\ncache:\n  size: 0\n',
    )
    try:
        assert a_values(proc.query("www.example.test")) == ["203.0.113.1"]
        assert doh.versions == ["HTTP/1.1"]
        doh.status = 500
        began = time.monotonic()
        assert proc.query("www.example.test").rcode() == dns.rcode.SERVFAIL
        assert time.monotonic() - began < 1.0  # an HTTP error moves on at once
    finally:
        assert proc.stop() == 0, proc.output
        doh.stop()


def test_dot_answers_out_of_order_and_survives_servers_closing_connections(
    tmp_path: Path, fakes: list[FakeUpstream], ca: ThrowawayCA
) -> None:
    backend = fake_with(
        "slow.example.test. 300 IN A 203.0.113.1",
        *(f"q{i}.example.test. 300 IN A 203.0.113.1" for i in range(6)),
    )
    backend.actions["slow.example.test"] = Action(delay=0.6)
    fakes.append(backend)
    dot = FakeDoT(backend, ca.server_context("dot.example.test"))
    proc = SplitDNS(
        tmp_path,
        f'upstreams:\n  default: ["tls://127.0.0.1:{dot.port}#dot.example.test"]\n'
        f'  ca_file: "{ca.ca_file}"\ntimeout: 3\n{REWRITE_VIEW}',
    )
    try:
        assert proc.dig("+short", "q0.example.test").split() == ["192.0.2.2"]  # connected
        done: dict[str, float] = {}

        def ask(name: str) -> None:
            assert proc.dig("+short", name).split() == ["192.0.2.2"]
            done[name] = time.monotonic()

        slow = threading.Thread(target=ask, args=("slow.example.test",))
        slow.start()
        time.sleep(0.1)
        ask("q1.example.test")  # pipelined behind the slow one, answered first
        slow.join(5)
        assert done["q1.example.test"] < done["slow.example.test"]
        assert dot.connections == 1
        dot.close_after_reply = True  # now the server hangs up after every answer
        for i in range(2, 6):
            assert proc.dig("+short", f"q{i}.example.test").split() == ["192.0.2.2"]
        assert dot.connections == 4  # q2 on the first connection, then one each for q3-q5
    finally:
        assert proc.stop() == 0, proc.output
        dot.stop()


def test_doh_with_the_wrong_certificate_name_is_refused(
    tmp_path: Path, fakes: list[FakeUpstream], ca: ThrowawayCA
) -> None:
    backend = fake_with("www.example.test. 300 IN A 203.0.113.1")
    fakes.append(backend)
    doh = FakeDoH(backend, ca.server_context("other.example.test", alpn=["h2"]))
    url = f"https://127.0.0.1:{doh.port}/dns-query"
    proc = SplitDNS(tmp_path, f'upstreams:\n  default: ["{url}"]\n  ca_file: "{ca.ca_file}"\n')
    try:
        assert proc.query("www.example.test").rcode() == dns.rcode.SERVFAIL
        assert url in proc.wait_for("certificate refused")
        assert backend.seen == [] and doh.connections == 0
    finally:
        assert proc.stop() == 0, proc.output
        doh.stop()
