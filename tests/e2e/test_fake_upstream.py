"""Upstream behaviour pinned with a scriptable fake: delays, TC, failures, forgeries, IDs."""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest

from tests.support.fakeupstream import Action, FakeUpstream
from tests.support.metrics import Samples
from tests.support.metrics import scrape as scrape_metrics
from tests.support.servers import SplitDNS, free_port

LAN_VIEW = """\
upstreams: [{upstreams}]
timeout: {timeout}
views:
  - name: lan
    clients: [127.0.0.1/32]
    aaaa: {aaaa}
    rewrite:
      - from: 203.0.113.1
        to: 192.0.2.2
"""

RECORDS = (
    "www.example.test. 300 IN A 203.0.113.1",
    "dual.example.test. 300 IN A 203.0.113.1",
    "dual.example.test. 300 IN AAAA 2001:db8:ffff::1",
    "plain6.example.test. 300 IN AAAA 2001:db8:ffff::2",
    "plain6.example.test. 300 IN A 198.51.100.2",
    "slow.example.test. 300 IN A 203.0.113.1",
    "tc.example.test. 300 IN A 203.0.113.1",
    "forged.example.test. 300 IN A 203.0.113.1",
    "garbage.example.test. 300 IN A 203.0.113.1",
)


def start(
    tmp_path: Path, *ups: FakeUpstream | str, timeout: float = 2, aaaa: str = "keep"
) -> SplitDNS:
    addresses = ", ".join(f'"{u.address if isinstance(u, FakeUpstream) else u}"' for u in ups)
    return SplitDNS(tmp_path, LAN_VIEW.format(upstreams=addresses, timeout=timeout, aaaa=aaaa))


@pytest.fixture
def upstream(fake: FakeUpstream) -> FakeUpstream:
    return fake.add(*RECORDS)


@pytest.fixture
def server(tmp_path: Path, upstream: FakeUpstream) -> Iterator[SplitDNS]:
    proc = start(tmp_path, upstream)
    yield proc
    assert proc.stop() == 0, proc.output


def a_values(resp: dns.message.Message) -> list[str]:
    return [str(rd) for rrset in resp.answer for rd in rrset if rrset.rdtype == 1]


def test_delayed_upstream_still_answers(server: SplitDNS, upstream: FakeUpstream) -> None:
    upstream.actions["slow.example.test"] = Action(delay=0.4)
    assert a_values(server.query("slow.example.test")) == ["192.0.2.2"]


def test_truncated_upstream_reply_is_retried_over_tcp(
    server: SplitDNS, upstream: FakeUpstream
) -> None:
    upstream.actions["tc.example.test"] = Action(truncate_udp=True)
    assert a_values(server.query("tc.example.test")) == ["192.0.2.2"]
    assert upstream.count("tc.example.test", "udp") == 1
    assert upstream.count("tc.example.test", "tcp") == 1


def test_forged_replies_are_ignored(server: SplitDNS, upstream: FakeUpstream) -> None:
    upstream.actions["forged.example.test"] = Action(forged_first=True)
    resp = server.query("forged.example.test")
    assert a_values(resp) == ["192.0.2.2"]
    assert str(resp.question[0].name) == "forged.example.test."


def test_garbage_before_the_answer_is_ignored(server: SplitDNS, upstream: FakeUpstream) -> None:
    upstream.actions["garbage.example.test"] = Action(garbage_first=True)
    assert a_values(server.query("garbage.example.test")) == ["192.0.2.2"]


def test_random_ids_and_source_ports(server: SplitDNS, upstream: FakeUpstream) -> None:
    for i in range(30):
        server.query(f"n{i}.example.test")
    seen = [s for s in upstream.seen if s.name.startswith("n")]
    assert len(seen) == 30
    assert len({s.msg_id for s in seen}) >= 28
    assert len({s.source_port for s in seen}) >= 28


def test_servfail_upstream_fails_over_to_the_next(tmp_path: Path, upstream: FakeUpstream) -> None:
    broken = FakeUpstream(default=Action(rcode=2)).start()
    try:
        proc = start(tmp_path, broken, upstream)
        try:
            assert a_values(proc.query("www.example.test")) == ["192.0.2.2"]
            assert broken.count("www.example.test") == 1
        finally:
            proc.stop()
    finally:
        broken.stop()


@pytest.mark.parametrize("how", ["silent", "closed-port"])
def test_upstream_down_is_servfail_within_the_bound(
    tmp_path: Path, upstream: FakeUpstream, how: str
) -> None:
    if how == "silent":
        dead = FakeUpstream(default=Action(silent=True)).start()
        target: FakeUpstream | str = dead
    else:
        target = f"127.0.0.1:{free_port()}"
    proc = start(tmp_path, target, timeout=1)
    try:
        began = time.monotonic()
        resp = proc.query("www.example.test", timeout=5)
        elapsed = time.monotonic() - began
        assert resp.rcode() == dns.rcode.SERVFAIL
        assert elapsed < 1.5, elapsed  # the configured bound (1 s) plus scheduling slack
        # Still serving afterwards, several times over.
        for _ in range(3):
            assert proc.query("www.example.test", timeout=5).rcode() == dns.rcode.SERVFAIL
        assert proc.proc.poll() is None
    finally:
        assert proc.stop() == 0
        if how == "silent":
            dead.stop()


def test_dead_first_upstream_fails_over_within_the_bound(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    dead = FakeUpstream(default=Action(silent=True)).start()
    proc = start(tmp_path, dead, upstream, timeout=2)
    try:
        began = time.monotonic()
        assert a_values(proc.query("www.example.test")) == ["192.0.2.2"]
        assert time.monotonic() - began < 2.0
    finally:
        proc.stop()
        dead.stop()


def test_aaaa_drop_hides_public_ipv6_beside_a_rewritten_a(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    proc = start(tmp_path, upstream, aaaa="drop")
    try:
        resp = proc.query("dual.example.test", "AAAA")
        assert resp.rcode() == dns.rcode.NOERROR and resp.answer == []
        # Names whose A is not rewritten keep their AAAA.
        kept = proc.query("plain6.example.test", "AAAA")
        assert [str(rd) for rrset in kept.answer for rd in rrset] == ["2001:db8:ffff::2"]
        # Clients outside the view keep it too.
        other = proc.query("dual.example.test", "AAAA", source="127.0.0.2")
        assert [str(rd) for rrset in other.answer for rd in rrset] == ["2001:db8:ffff::1"]
    finally:
        proc.stop()


def test_aaaa_keep_is_the_default(server: SplitDNS) -> None:
    resp = server.query("dual.example.test", "AAAA")
    assert [str(rd) for rrset in resp.answer for rd in rrset] == ["2001:db8:ffff::1"]


def test_sigterm_lets_in_flight_queries_finish(tmp_path: Path, upstream: FakeUpstream) -> None:
    upstream.actions["slow.example.test"] = Action(delay=0.6)
    proc = start(tmp_path, upstream)
    result: dict[str, dns.message.Message] = {}
    worker = threading.Thread(
        target=lambda: result.setdefault("r", proc.query("slow.example.test"))
    )
    worker.start()
    time.sleep(0.2)
    assert proc.stop() == 0
    worker.join(5)
    assert a_values(result["r"]) == ["192.0.2.2"]
    assert "shutting down" in proc.output and "stopped" in proc.output


def test_tcp_pipelined_queries_answer_as_they_complete(
    server: SplitDNS, upstream: FakeUpstream
) -> None:
    upstream.actions["slow.example.test"] = Action(delay=0.5)
    names = ["slow.example.test", "www.example.test", "dual.example.test"]
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as conn:
        wires = []
        for i, name in enumerate(names):
            q = dns.message.make_query(name, "A")
            q.id = 100 + i
            wires.append(q.to_wire())
        conn.sendall(b"".join(struct.pack("!H", len(w)) + w for w in wires))
        order = []
        for _ in names:
            (length,) = struct.unpack("!H", recv_exact(conn, 2))
            order.append(dns.message.from_wire(recv_exact(conn, length)).id)
    assert sorted(order) == [100, 101, 102]
    assert order[-1] == 100  # the slow one did not hold the others back


def recv_exact(conn: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        assert chunk, "connection closed early"
        buf += chunk
    return buf


def test_default_config_forwards_untouched(upstream: FakeUpstream, tmp_path: Path) -> None:
    proc = SplitDNS(tmp_path, None, "--upstream", upstream.address)
    try:
        assert "embedded default config: no rewrites until configured" in proc.startup
        assert a_values(proc.query("www.example.test")) == ["203.0.113.1"]
    finally:
        assert proc.stop() == 0


def test_embedded_default_listens_on_5353_without_root() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "from splitdns.config import model; c = model.load_default(); "
            "print(c.listen[0], len(c.views[0].rules), c.source)",
        ],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    ).stdout.split()
    assert out == ["127.0.0.1:5353", "0", "<embedded", "default>"]


def test_ipv6_and_ipv4_listeners_together(upstream: FakeUpstream, tmp_path: Path) -> None:
    if not socket.has_ipv6:
        pytest.skip("this kernel has no IPv6")
    port6 = free_port("127.0.0.1")
    proc = start_with_listen(tmp_path, upstream, f"[::1]:{port6}")
    try:
        q = dns.message.make_query("www.example.test", "A")
        v6 = dns.query.udp(q, "::1", port=port6, timeout=5)
        assert a_values(v6) == ["203.0.113.1"]  # ::1 is allowed but not in the LAN view
        v6tcp = dns.query.tcp(q, "::1", port=port6, timeout=5)
        assert a_values(v6tcp) == ["203.0.113.1"]
        assert a_values(proc.query("www.example.test")) == ["192.0.2.2"]
    finally:
        assert proc.stop() == 0


def start_with_listen(tmp_path: Path, upstream: FakeUpstream, extra: str) -> SplitDNS:
    text = LAN_VIEW.format(upstreams=f'"{upstream.address}"', timeout=2, aaaa="keep")
    return SplitDNS(tmp_path, text, "--listen", extra)


def test_workers_share_the_port_and_stop_together(upstream: FakeUpstream, tmp_path: Path) -> None:
    text = LAN_VIEW.format(upstreams=f'"{upstream.address}"', timeout=2, aaaa="keep")
    proc = SplitDNS(tmp_path, text, "--workers", "2")
    try:
        proc.wait_for("serving")
        deadline = time.monotonic() + 10
        while proc.output.count("serving") < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.output.count("serving") == 2, proc.output
        for _i in range(20):
            assert a_values(proc.query("www.example.test")) == ["192.0.2.2"]
            assert a_values(proc.query("www.example.test", tcp=True)) == ["192.0.2.2"]
    finally:
        assert proc.stop() == 0, proc.output
    assert proc.output.count("stopped") == 2


def test_health_reports_a_running_and_a_stopped_server(
    server: SplitDNS, upstream: FakeUpstream, tmp_path: Path
) -> None:
    def health(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "splitdns", "health", *args, "--timeout", "1"],
            capture_output=True, text=True, timeout=20,
        )  # fmt: skip

    ok = health("--server", f"127.0.0.1:{server.port}")
    assert ok.returncode == 0 and "healthy" in ok.stdout
    assert upstream.seen == []  # the probe never leaves the server
    stopped = health("--server", f"127.0.0.1:{free_port()}")
    assert stopped.returncode == 1 and "unhealthy" in stopped.stdout
    # A host name, and the first listen address of a config file.
    named = health("--server", f"localhost:{server.port}")
    assert named.returncode == 0, named.stdout + named.stderr
    assert named.stdout.strip() == f"healthy: localhost:{server.port} answered"
    conf = tmp_path / "health.yaml"
    conf.write_text(f'listen: ["127.0.0.1:{server.port}"]\n')
    by_file = health("-c", str(conf))
    assert by_file.returncode == 0 and f"127.0.0.1:{server.port} answered" in by_file.stdout


def test_doh_canary_is_nxdomain_locally(server: SplitDNS, upstream: FakeUpstream) -> None:
    resp = server.query("use-application-dns.net")
    assert resp.rcode() == dns.rcode.NXDOMAIN
    assert upstream.count("use-application-dns.net") == 0


def test_doh_canary_can_be_turned_off(tmp_path: Path, upstream: FakeUpstream) -> None:
    text = LAN_VIEW.format(upstreams=f'"{upstream.address}"', timeout=2, aaaa="keep")
    proc = SplitDNS(tmp_path, text + "doh_canary: false\n")
    try:
        proc.query("use-application-dns.net")
        assert upstream.count("use-application-dns.net") == 1
    finally:
        proc.stop()


def test_rate_limit_holds_a_flooder_while_the_lan_is_served(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    text = LAN_VIEW.format(upstreams=f'"{upstream.address}"', timeout=2, aaaa="keep")
    limits = "rate_limit: {qps: 5, burst: 5, exempt: [127.0.0.1/32]}\n"
    proc = SplitDNS(tmp_path, text + limits)
    try:
        flood = [proc.query("www.example.test", source="127.0.0.2").rcode() for _ in range(40)]
        lan = [proc.query("www.example.test", source="127.0.0.1").rcode() for _ in range(40)]
        tcp = proc.query("www.example.test", source="127.0.0.2", tcp=True).rcode()
    finally:
        proc.stop()
    assert flood.count(dns.rcode.REFUSED) >= 25 and flood[:5] == [dns.rcode.NOERROR] * 5
    assert lan == [dns.rcode.NOERROR] * 40
    assert tcp == dns.rcode.REFUSED  # TCP counts against the same bucket


@pytest.mark.parametrize("hide", [False, True])
def test_query_log_one_json_line_per_query(
    tmp_path: Path, upstream: FakeUpstream, hide: bool
) -> None:
    import json

    text = LAN_VIEW.format(upstreams=f'"{upstream.address}"', timeout=2, aaaa="keep")
    proc = SplitDNS(tmp_path, text + f"query_log: {{hide_clients: {str(hide).lower()}}}\n")
    try:
        proc.query("www.example.test")
        proc.query("www.example.test")  # a cache hit, answered on the fast path
        proc.query("www.example.test", source="127.0.0.2")
        deadline = time.monotonic() + 5
        while proc.output.count('"outcome"') < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        proc.stop()
    lines = [json.loads(line) for line in proc.lines if line.startswith("{")]
    assert [(e["name"], e["type"], e["view"], e["outcome"]) for e in lines] == [
        ("www.example.test", 1, "lan", "rewritten"),
        ("www.example.test", 1, "lan", "cached"),
        ("www.example.test", 1, None, "forwarded"),
    ]
    assert lines[0]["rewritten"] == [
        {"name": "www.example.test", "from": "203.0.113.1", "to": "192.0.2.2", "rule": 0}
    ]
    assert lines[0]["upstream"] == upstream.address
    assert [e["client"] for e in lines] == (
        ["hidden"] * 3 if hide else ["127.0.0.1", "127.0.0.1", "127.0.0.2"]
    )


def test_metrics_endpoint_parses_and_counters_move(tmp_path: Path, upstream: FakeUpstream) -> None:
    import urllib.request

    mport = free_port()
    text = LAN_VIEW.format(upstreams=f'"{upstream.address}"', timeout=2, aaaa="keep")
    proc = SplitDNS(tmp_path, text + f'metrics: "127.0.0.1:{mport}"\n')

    def scrape() -> Samples:
        return scrape_metrics(mport)

    try:
        before = scrape()
        proc.query("www.example.test")
        proc.query("www.example.test")
        proc.query("www.example.test", tcp=True)
        after = scrape()
        with urllib.request.urlopen(f"http://127.0.0.1:{mport}/healthz", timeout=5) as r:
            assert r.status == 200
    finally:
        proc.stop()
    q = "splitdns_queries_total"
    assert after[(q, (("outcome", "rewritten"), ("qtype", "A"), ("transport", "udp")))] == 1
    assert after[(q, (("outcome", "cached"), ("qtype", "A"), ("transport", "udp")))] == 1
    assert after[(q, (("outcome", "cached"), ("qtype", "A"), ("transport", "tcp")))] == 1
    assert (
        after[("splitdns_rewrites_total", (("record", "address"), ("rule", "0"), ("view", "lan")))]
        == 1
    )
    assert after[("splitdns_cache_entries", ())] == 1
    assert after[("splitdns_cache_hits_total", ())] == before[("splitdns_cache_hits_total", ())] + 2
    count = ("splitdns_upstream_seconds_count", (("upstream", upstream.address),))
    assert after[count] == 1
    assert after[("splitdns_express_lane_total", (("result", "answered"),))] == 1  # the miss
    with pytest.raises(OSError):  # stopped: the health endpoint is gone too
        urllib.request.urlopen(f"http://127.0.0.1:{mport}/healthz", timeout=2)


def dynamic_rule(upstream: FakeUpstream, source: str) -> str:
    """A LAN view (127.0.0.1) whose one rule rewrites a dynamic `from` to 192.0.2.2."""
    return (
        f'upstreams: ["{upstream.address}"]\n'
        "views:\n  - name: lan\n    clients: [127.0.0.1/32]\n    rewrite:\n"
        f"      - {{from: {source}, to: 192.0.2.2}}\n"
    )


def test_follow_switches_the_rewrite_when_the_ddns_name_moves(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    import dnslib

    fake.add(
        "home.example.test. 1 IN A 203.0.113.7",
        "www.example.test. 1 IN A 203.0.113.7",
        "new.example.test. 1 IN A 203.0.113.8",
    )
    proc = SplitDNS(tmp_path, dynamic_rule(fake, "{follow: home.example.test}"))
    try:
        proc.wait_for("follow: home.example.test is now 203.0.113.7 (was unresolved)")
        assert a_values(proc.query("www.example.test")) == ["192.0.2.2"]
        assert a_values(proc.query("new.example.test")) == ["203.0.113.8"]
        # The DDNS name moves: no restart, the rule follows within the name's TTL.
        fake.records = [r for r in fake.records if str(r.rname) != "home.example.test."]
        fake.records += dnslib.RR.fromZone("home.example.test. 1 IN A 203.0.113.8")
        proc.wait_for("follow: home.example.test is now 203.0.113.8 (was 203.0.113.7)")
        deadline = time.monotonic() + 5
        while a_values(proc.query("new.example.test")) != ["192.0.2.2"]:
            assert time.monotonic() < deadline, proc.output
            time.sleep(0.1)
        time.sleep(1.1)  # let www's 1 s TTL run out in the cache
        assert a_values(proc.query("www.example.test")) == ["203.0.113.7"]
    finally:
        assert proc.stop() == 0


def test_the_cache_keeps_answering_after_a_follow_source_is_resolved(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    """The first resolution of a followed name reloads the views while the cache is still
    empty; an empty cache once counted as none there (`cache or Cache(...)`: it has a length),
    so the chain got a new one the server's fast path never read: no answer was ever cached
    again. Now the same question twice asks the upstream once."""
    fake.add("home.example.test. 300 IN A 203.0.113.7", "www.example.test. 300 IN A 203.0.113.7")
    proc = SplitDNS(tmp_path, dynamic_rule(fake, "{follow: home.example.test}"))
    try:
        proc.wait_for("follow: home.example.test is now 203.0.113.7 (was unresolved)")
        for _ in range(3):
            assert a_values(proc.query("www.example.test")) == ["192.0.2.2"]
        assert fake.count("www.example.test") == 1
    finally:
        assert proc.stop() == 0


def test_interface_source_reads_the_interfaces_address(tmp_path: Path, fake: FakeUpstream) -> None:
    from splitdns.serve.follow import interface_address

    assert str(interface_address("lo")) == "127.0.0.1"
    with pytest.raises(ValueError, match="interface nosuchif0"):
        interface_address("nosuchif0")
    fake.add("www.example.test. 60 IN A 127.0.0.1")
    proc = SplitDNS(tmp_path, dynamic_rule(fake, "{interface: lo}"))
    try:
        proc.wait_for("follow: lo is now 127.0.0.1 (was unresolved)")
        assert a_values(proc.query("www.example.test")) == ["192.0.2.2"]
    finally:
        assert proc.stop() == 0


@pytest.mark.parametrize("source", ["follow", "interface"])
def test_nat_public_may_be_dynamic(tmp_path: Path, fake: FakeUpstream, source: str) -> None:
    fake.add("home.example.test. 60 IN A 203.0.113.9")
    public = "{follow: home.example.test}" if source == "follow" else "{interface: lo}"
    expected = "203.0.113.9" if source == "follow" else "127.0.0.1"
    conf = tmp_path / "nat.yaml"
    conf.write_text(
        f'upstreams: ["{fake.address}"]\n'
        f"nat:\n  public: {public}\n  lan: [192.0.2.0/24]\n"
        "  forwards: [{proto: tcp, port: 80, to: 192.0.2.2}]\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "splitdns", "nat", "-c", str(conf), "--target", "nftables"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert f"# nat.public {public} is {expected} now" in out.stdout
    assert f"ip daddr {expected} tcp dport 80 dnat to 192.0.2.2" in out.stdout
    check = subprocess.run(
        [sys.executable, "-m", "splitdns", "check", "-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert f"nat: public {public}" in check.stdout
