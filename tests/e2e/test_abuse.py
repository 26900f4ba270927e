"""No one device can take the LAN's DNS down (issue 32): the real server under
`ulimit -n 1024` (systemd's default soft limit, here the hard one too, so nothing can be
raised), attacked by tests/support/abuse.py in a process of its own, while a LAN probe asks a
cached name and a new name every 0.1 s. Every attack, from one address and from many:
unfinished DoH POSTs, many streams on one connection, half-open TLS on DoT and DoH, trickling
TCP, an oversized length prefix, and a new-name flood from one exempt client.

Pass: the probe's hits and misses answered, p99 under 100 ms, no SERVFAIL; the server's RSS
grows by less than 64 MiB; the attackers' connections are closed by the documented deadlines;
the metrics name what was refused. Figures are printed (`-s`).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest

from tests.support.load import rss_kib, sockets_of
from tests.support.metrics import scrape, total
from tests.support.servers import NSD, SplitDNS, free_port
from tests.support.zones import example_zone

ROOT = Path(__file__).resolve().parents[2]
NOFILE = 1024
BASELINE: list[int] = []  # the server's RSS (KiB) before any attack
CONFIG = """\
upstreams:
  default: ["127.0.0.1:{nsd}"]
  domains:
    flood.example.test: ["127.0.0.1:{hole}"]   # a black hole: every miss holds its socket
allow: [127.0.0.0/8]
state_dir: {state}
tcp_idle_timeout: 4
metrics: "127.0.0.1:{metrics}"
limits:
  handshake_timeout: 3
  request_timeout: 3
views:
  - name: lan
    clients: [127.0.0.1/32]
    rewrite:
      - {{from: 203.0.113.1, to: 192.0.2.2}}
"""


class Probe:
    """A LAN client (127.0.0.1) asking a cached name and a new name every `every` seconds."""

    def __init__(self, port: int, every: float = 0.1) -> None:
        self.port = port
        self.every = every
        self.hits: list[float] = []
        self.misses: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._n = 0

    def _ask(self, name: str, into: list[float]) -> None:
        q = dns.message.make_query(name, "A")
        began = time.monotonic()
        try:
            reply = dns.query.udp(q, "127.0.0.1", port=self.port, timeout=2)
        except Exception as exc:  # a lost answer is a failure to report, not to raise here
            self.failures.append(f"{name}: {type(exc).__name__}")
            return
        into.append(time.monotonic() - began)
        if reply.rcode() != dns.rcode.NOERROR or not reply.answer:
            self.failures.append(f"{name}: {dns.rcode.to_text(reply.rcode())}")

    def _run(self) -> None:
        while not self._stop.is_set():
            self._n += 1
            self._ask("www.example.test", self.hits)
            self._ask(f"p{self._n}-{time.time_ns()}.probe.example.test", self.misses)
            self._stop.wait(self.every)

    def __enter__(self) -> Probe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    @staticmethod
    def p99(values: list[float]) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] if ordered else 0.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SplitDNS, int, int, int]]:
    work = tmp_path_factory.mktemp("abuse")
    zone = example_zone("www A 203.0.113.1", "*.probe A 203.0.113.1")
    nsd = NSD(work / "nsd", {"example.test": zone})
    hole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # bound, never read
    hole.bind(("127.0.0.1", 0))
    dot, doh, metrics = free_port(), free_port(), free_port()
    text = CONFIG.format(
        nsd=nsd.port, hole=hole.getsockname()[1], state=work / "state", metrics=metrics
    )
    proc = SplitDNS(
        work, text, "--listen", f"tls://127.0.0.1:{dot}", "--listen",
        f"https://127.0.0.1:{doh}/dns-query", nofile=NOFILE,
    )  # fmt: skip
    try:
        proc.query("www.example.test")  # cached from now on
        BASELINE.append(rss_kib(proc.proc.pid))
        yield proc, dot, doh, metrics
    finally:
        code = proc.stop()
        nsd.stop()
        hole.close()
        assert code == 0, proc.output
        assert "internal error" not in proc.output, proc.output
        assert "Too many open files" not in proc.output, proc.output


def attack(kind: str, port: int, *args: str, timeout: float = 60) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-m", "tests.support.abuse", kind, str(port), *args],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


CASES = [
    # (name, kind, port key, arguments, the deadline that must close every connection)
    ("doh-unfinished, one address", "doh-unfinished", "doh", ["--count", "300"], 3 + 4 + 2),
    ("doh-unfinished, many", "doh-unfinished", "doh", ["--count", "400", "--source", "many"], 9),
    ("doh, 99 streams", "doh-unfinished", "doh", ["--count", "20", "--streams", "99"], 9),
    ("dot half-open, one address", "tls-halfopen", "dot", ["--count", "600"], 3 + 2),
    ("dot half-open, many", "tls-halfopen", "dot", ["--count", "600", "--source", "many"], 5),
    ("doh half-open, many", "tls-halfopen", "doh", ["--count", "400", "--source", "many"], 5),
    ("tcp trickle, many", "tcp-trickle", "tcp", ["--count", "600", "--source", "many"], 4 + 2),
    ("tcp oversized, one address", "tcp-oversized", "tcp", ["--count", "600"], 4 + 2),
]


@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    ("name", "kind", "which", "args", "deadline"), CASES, ids=[c[0] for c in CASES]
)
def test_an_attack_leaves_the_lan_answered(
    server: tuple[SplitDNS, int, int, int],
    name: str,
    kind: str,
    which: str,
    args: list[str],
    deadline: float,
) -> None:
    proc, dot, doh, _ = server
    port = {"dot": dot, "doh": doh, "tcp": proc.port}[which]
    rss_before = rss_kib(proc.proc.pid)
    hold = 15.0
    with Probe(proc.port) as probe:
        result = attack(kind, port, *args, "--hold", str(hold))
    rss_after = rss_kib(proc.proc.pid)
    print(
        f"\n{name}: opened {result['opened']}, refused at once {result['refused']}, closed by the "
        f"server {result['closed']} (the longest lived {result['longest']} s, deadline "
        f"{deadline} s), still open {result['still_open']}; probe hits p99 "
        f"{Probe.p99(probe.hits) * 1000:.1f} ms, misses p99 {Probe.p99(probe.misses) * 1000:.1f} "
        f"ms ({len(probe.hits)} + {len(probe.misses)}), failures {len(probe.failures)}; RSS "
        f"{rss_before // 1024} -> {rss_after // 1024} MiB"
    )
    assert not probe.failures, probe.failures[:10]
    assert len(probe.hits) >= 5 and len(probe.misses) >= 5  # (asked throughout)
    assert Probe.p99(probe.hits) < 0.1 and Probe.p99(probe.misses) < 0.1
    assert rss_after - rss_before < 64 * 1024
    assert not result["errors"], result  # the attacker itself worked
    # every connection the server let in was closed by a deadline, not kept for the hold
    assert result["still_open"] == 0, result
    assert float(result["longest"]) <= deadline + 1.5, result  # type: ignore[arg-type]
    # and TCP still takes a LAN client afterwards
    reply = proc.query("www.example.test", tcp=True)
    assert [str(rd) for rrset in reply.answer for rd in rrset] == ["192.0.2.2"]


@pytest.mark.timeout(300)
def test_a_new_name_flood_from_one_exempt_client_leaves_others_answered(
    server: tuple[SplitDNS, int, int, int],
) -> None:
    """Random names under a domain whose server never answers (a "water torture" flood): each
    miss would hold an upstream socket for the whole timeout. The flooder's share of queries
    in flight caps the sockets; the probe's misses go elsewhere and never wait for a slot."""
    proc, _, _, metrics = server
    peak = 0
    with Probe(proc.port) as probe:
        flood = threading.Thread(
            target=lambda: held.append(
                attack("udp-flood", proc.port, "--rate", "8000", "--hold", "8")
            )
        )
        held: list[dict[str, object]] = []
        flood.start()
        while flood.is_alive():
            peak = max(peak, sockets_of(proc.proc.pid))
            time.sleep(0.1)
    result = held[0]
    samples = scrape(metrics)
    print(
        f"\nnew-name flood: {result}; the server's sockets at most {peak} (NOFILE {NOFILE}); "
        f"probe hits p99 {Probe.p99(probe.hits) * 1000:.1f} ms, misses p99 "
        f"{Probe.p99(probe.misses) * 1000:.1f} ms, failures {len(probe.failures)}"
    )
    assert not probe.failures, probe.failures[:10]
    assert Probe.p99(probe.hits) < 0.1 and Probe.p99(probe.misses) < 0.1
    assert peak < NOFILE // 2
    assert total(samples, "splitdns_queries_in_flight_refused_total", result="client_share") > 0


@pytest.mark.timeout(300)
def test_a_new_name_flood_from_many_addresses_within_their_limits_leaves_others_answered(
    server: tuple[SplitDNS, int, int, int],
) -> None:
    """Twelve addresses, each within its rate limit (90 of 100 a second) and its share of
    queries in flight, flood a silent domain: together they would hold every slot. Those
    holding many slots use at most half the pool; the probe's misses still get one."""
    proc, _, _, metrics = server
    with Probe(proc.port) as probe:
        result = attack("udp-flood", proc.port, "--rate", "90", "--hold", "8", "--count", "12",
                        "--source", "many")  # fmt: skip
    samples = scrape(metrics)
    refused = total(samples, "splitdns_queries_in_flight_refused_total", result="reserve")
    print(
        f"\n12-address flood within limits: {result}; refused for the reserve {refused:.0f}; "
        f"probe misses p99 {Probe.p99(probe.misses) * 1000:.1f} ms, failures "
        f"{len(probe.failures)} of {len(probe.hits) + len(probe.misses)}"
    )
    assert not probe.failures, probe.failures[:10]
    assert refused > 0  # (the flood did reach the reserve: the test can fail)


def test_the_metrics_name_what_was_refused(server: tuple[SplitDNS, int, int, int]) -> None:
    proc, dot, doh, metrics = server
    attack("tls-halfopen", dot, "--count", "70", "--hold", "6")  # over one address's share
    attack("doh-unfinished", doh, "--count", "2", "--hold", "9")
    samples = scrape(metrics)
    assert total(samples, "splitdns_limit", limit="nofile") == NOFILE
    assert total(samples, "splitdns_connections_open") >= 0
    for reason in ("handshake", "request_timeout"):
        assert total(samples, "splitdns_connections_closed_total", result=reason) > 0, reason
    refused = sum(
        total(samples, "splitdns_connections_closed_total", result=reason)
        for reason in ("budget", "client_share", "evicted_budget", "evicted_client_share")
    )
    assert refused > 0
    assert "descriptor limit 1024 is too low" in proc.output
    # after every attack above, the memory the waves took is bounded and given back
    time.sleep(2)  # (a sweep sees the connections gone and trims the heap)
    grown = rss_kib(proc.proc.pid) - BASELINE[0]
    print(f"\nRSS after the attacks: {grown // 1024} MiB above the start")
    assert grown < 64 * 1024


# last: the waves it sends stay in the RSS the test above bounds across all the others
@pytest.mark.timeout(300)
def test_memory_after_the_doh_bodies_attack_is_bounded_and_not_kept_growing(
    server: tuple[SplitDNS, int, int, int],
) -> None:
    """200 DoH connections x 32 streams x 1.8 KB of unfinished bodies, within the limits, twice:
    RSS comes back to within 20 MiB of where it was (issue #36's target; 2-6 MiB since the
    HTTP/2 sessions hold no task, queue or scope per stream, and TLS no 256 KiB buffer per
    connection: it was +32 MiB on hypercorn), and the second run adds next to nothing."""
    proc, _, doh, metrics = server
    before = rss_kib(proc.proc.pid)
    settled = []
    for _ in range(2):
        attack("doh-unfinished", doh, "--count", "200", "--streams", "32", "--body", "1800",
               "--source", "many", "--hold", "6")  # fmt: skip
        deadline = time.monotonic() + 15  # every connection closed by its deadline, then
        while time.monotonic() < deadline:  # the sweep's trim (bounded wait)
            if total(scrape(metrics), "splitdns_connections_open") == 0:
                break
            time.sleep(0.5)
        time.sleep(2)
        settled.append(rss_kib(proc.proc.pid))
    print(f"\nDoH bodies twice: RSS {before // 1024} MiB before, "
          f"{' then '.join(str(s // 1024) for s in settled)} MiB after each")  # fmt: skip
    assert settled[0] - before < 20 * 1024
    assert settled[1] - settled[0] < 10 * 1024
