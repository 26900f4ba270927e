"""dnsdist in front of two splitdns (deploy/dnsdist/dnsdist.conf, Debian's dnsdist 1.7): the
real client reaches splitdns's views through PROXY v2, dnsdist's health checks use splitdns's
own probe, and killing one splitdns under load costs only the queries in flight to it until
dnsdist marks it down. The recipe serves 192.168.1.53:53 and 127.0.0.21/22:53; the test moves
them to free loopback ports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import pytest

from tests.support.encrypted import ThrowawayCA
from tests.support.servers import NSD, Process, SplitDNS, free_port
from tests.support.tools import need
from tests.support.zones import example_zone

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "deploy" / "dnsdist" / "dnsdist.conf"
MAPPING = """\
upstreams: ["127.0.0.1:{nsd}"]
allow: [127.0.0.0/8]
trusted_proxies: [127.0.0.1/32]
query_log: {{path: "{log}"}}
views:
  - name: lan
    clients: [127.0.0.2/32]
    rewrite: [{{from: 203.0.113.1, to: 192.0.2.2}}]
"""


class Pair:
    def __init__(self, tmp: Path) -> None:
        zone = example_zone("www A 203.0.113.1")
        self.nsd = NSD(tmp / "nsd", {"example.test": zone})
        self.ports = {"a": free_port("127.0.0.21"), "b": free_port("127.0.0.22")}
        self.logs = {k: tmp / f"query-{k}.log" for k in self.ports}
        self.split = {}
        for name, port in self.ports.items():
            (tmp / name).mkdir()
            address = "127.0.0.21" if name == "a" else "127.0.0.22"
            mapping = MAPPING.format(nsd=self.nsd.port, log=self.logs[name])
            self.split[name] = SplitDNS(tmp / name, mapping, "--listen", f"{address}:{port}")
        self.port = free_port("127.0.0.20")
        conf = RECIPE.read_text()
        conf = conf.replace("192.168.1.53:53", f"127.0.0.20:{self.port}")
        conf = conf.replace("127.0.0.21:53", f"127.0.0.21:{self.ports['a']}")
        conf = conf.replace("127.0.0.22:53", f"127.0.0.22:{self.ports['b']}")
        # the recipe's commented DoT/DoH lines, switched on with a certificate made here
        ca = ThrowawayCA(tmp)
        key, cert = ca.write_cert(tmp, "dns.home.test", "127.0.0.20")
        self.dot, self.doh = free_port("127.0.0.20"), free_port("127.0.0.20")
        conf = conf.replace("-- addTLSLocal(", "addTLSLocal(").replace(
            "-- addDOHLocal(", "addDOHLocal("
        )
        conf = conf.replace("192.168.1.53:853", f"127.0.0.20:{self.dot}")
        conf = conf.replace("192.168.1.53:443", f"127.0.0.20:{self.doh}")
        conf = conf.replace("/etc/dnsdist/fullchain.pem", str(cert))
        conf = conf.replace("/etc/dnsdist/privkey.pem", str(key))
        (tmp / "dnsdist.conf").write_text(conf)
        dnsdist = need("dnsdist", "dnsdist")
        subprocess.run([dnsdist, "--check-config", "-C", str(tmp / "dnsdist.conf")], check=True,
                       capture_output=True, timeout=30)  # fmt: skip
        self.dnsdist = Process([dnsdist, "--supervised", "--disable-syslog", "-C",
                                str(tmp / "dnsdist.conf")])  # fmt: skip
        self.dnsdist.wait_for("Marking downstream splitdns-b (127.0.0.22", timeout=20)

    def ask(self, source: str, timeout: float = 2.0) -> dns.message.Message:
        q = dns.message.make_query("www.example.test", "A")
        return dns.query.udp(q, "127.0.0.20", port=self.port, source=source, timeout=timeout)

    def close(self) -> None:
        self.dnsdist.stop()
        for proc in self.split.values():
            proc.stop()
        self.nsd.stop()


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    made = Pair(tmp_path)
    yield made
    made.close()


def answers(msg: dns.message.Message) -> list[str]:
    return [r.to_text() for rrset in msg.answer for r in rrset]


def test_views_see_the_real_client_through_dnsdist(pair: Pair) -> None:
    deadline = time.monotonic() + 10
    while "up" not in pair.dnsdist.output and time.monotonic() < deadline:
        time.sleep(0.2)
    for _ in range(4):  # both backends get some
        assert answers(pair.ask("127.0.0.2")) == ["192.0.2.2"]
        assert answers(pair.ask("127.0.0.3")) == ["203.0.113.1"]
    clients = {
        json.loads(line)["client"]
        for log in pair.logs.values()
        if log.exists()
        for line in log.read_text().splitlines()
        if json.loads(line)["name"] == "www.example.test"
    }
    assert clients == {"127.0.0.2", "127.0.0.3"}  # never dnsdist's own address


def test_dot_and_doh_terminated_by_dnsdist_keep_the_client(pair: Pair) -> None:
    kdig = need("kdig", "knot-dnsutils")
    time.sleep(2)  # both backends up
    for flag, port in (("+tls", pair.dot), ("+https", pair.doh)):
        for source, expected in (("127.0.0.2", "192.0.2.2"), ("127.0.0.3", "203.0.113.1")):
            out = subprocess.run(
                [kdig, "@127.0.0.20", "-p", str(port), "-b", source, flag, "+short",
                 "+timeout=5", "+retry=0", "www.example.test"],
                capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            assert out.stdout.split() == [expected], (flag, source, out.stdout + out.stderr)


def test_one_splitdns_killed_under_load(pair: Pair) -> None:
    """~100 queries a second for 12 s; splitdns-a is killed after 4 s. Only queries sent
    before dnsdist marks it down may fail."""
    time.sleep(2)  # both up
    results: list[tuple[float, float, bool]] = []  # (sent at, took, ok)
    stop_at = time.monotonic() + 12
    killed_at = [0.0]

    def load() -> None:
        while time.monotonic() < stop_at and len(results) < 2000:
            began = time.monotonic()
            try:
                ok = answers(pair.ask("127.0.0.2", timeout=1.0)) == ["192.0.2.2"]
            except (TimeoutError, dns.exception.Timeout, OSError):
                ok = False
            results.append((began, time.monotonic() - began, ok))
            time.sleep(max(0.0, 0.01 - (time.monotonic() - began)))

    thread = threading.Thread(target=load)
    thread.start()
    time.sleep(4)
    victim = pair.split["a"].proc
    os.kill(victim.pid, signal.SIGKILL)
    killed_at[0] = time.monotonic()
    thread.join(30)
    marked = next(
        (line for line in pair.dnsdist.lines if "splitdns-a" in line and "'down'" in line), ""
    )
    assert marked, pair.dnsdist.output
    failed = [r for r in results if not r[2]]
    window = max((r[0] for r in failed), default=killed_at[0]) - killed_at[0]
    late = [r for r in failed if r[0] > killed_at[0] + 3.5]
    worst = max(r[1] for r in results)
    print(
        f"\ndnsdist + 2 splitdns, one killed: {len(results)} sent, {len(failed)} failed "
        f"(all within {window:.2f} s of the kill, before dnsdist marked it down), worst "
        f"latency {worst * 1000:.0f} ms"
    )
    assert len(results) > 500
    assert not late, late  # after the health checks caught up, nothing failed
