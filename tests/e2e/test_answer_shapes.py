"""Right answers for every record and query shape (HTTPS/SVCB hints, forwarder flags, RD=0,
NODATA that caches, signed queries), through a real NSD and unbound with dig, kdig and dnspython.

Clients by loopback source: 127.0.0.1 lan view (aaaa keep, https rewrite), 127.0.0.2 allowed
in no view (public answers), 127.0.0.4 `v4only` (aaaa: drop), 127.0.0.5 `nohttps` (https: drop).
"""

from __future__ import annotations

import base64
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rrset
import dns.tsig
import dns.tsigkeyring
import pytest

from tests.support.metrics import scrape, total
from tests.support.servers import NSD, Process, SplitDNS, free_port
from tests.support.tools import need
from tests.support.zones import example_zone

ZONE = example_zone(
    "www     A    203.0.113.1",
    "www     AAAA 2001:db8:ff::1",
    "www     HTTPS 1 . alpn=h2,h3 ipv4hint=203.0.113.1 ipv6hint=2001:db8:ff::1 key65000=abc",
    "chain   CNAME www",
    "svc     HTTPS 1 pool.example.test. alpn=h2 port=8443 ipv4hint=203.0.113.7",
    "pool    A    203.0.113.7",
    "alias   HTTPS 0 www.example.test.",
    "net     HTTPS 1 . ipv4hint=203.0.113.5,203.0.113.6",
    "_8443._https.api SVCB 1 api.example.test. ipv4hint=203.0.113.1",
    "api     A    203.0.113.1",
    "other   HTTPS 1 . ipv4hint=198.51.100.7",
    "other   A    198.51.100.7",
    "fresh1  A    203.0.113.1",
    "fresh2  A    203.0.113.1",
)

TSIG_NAME = "splitdns-test-key."
TSIG_SECRET = base64.b64encode(b"a shared secret of thirty-two by").decode()

RULES = """\
    rewrite:
      - from: 203.0.113.1
        to: 192.0.2.2
      - from: 203.0.113.0/29
        to: 192.0.2.64/29
      - from: 203.0.113.7
        to: 192.0.2.77
        names: [pool.example.test]
"""

CONFIG = (
    """\
upstreams: ["127.0.0.1:{port}"]
allow: [127.0.0.0/8]
metrics: "127.0.0.1:{mport}"
views:
  - name: lan
    clients: [127.0.0.1/32]
"""
    + RULES
    + """\
    hosts:
      nas.home.arpa: 192.0.2.5
  - name: v4only
    clients: [127.0.0.4/32]
    aaaa: drop
"""
    + RULES
    + """\
  - name: nohttps
    clients: [127.0.0.5/32]
    https: drop
"""
    + RULES
)


@pytest.fixture(scope="module")
def nsd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NSD]:
    server = NSD(tmp_path_factory.mktemp("nsd-svcb"), {"example.test": ZONE})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def split(nsd: NSD, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SplitDNS]:
    mport = free_port()
    proc = SplitDNS(tmp_path_factory.mktemp("split"), CONFIG.format(port=nsd.port, mport=mport))
    proc.metrics_port = mport  # type: ignore[attr-defined]
    yield proc
    assert proc.stop() == 0, proc.output


def https_rdata(resp: dns.message.Message, name: str, rdtype: str = "HTTPS") -> list[str]:
    rrset = resp.get_rrset(
        resp.answer, dns.name.from_text(name), 1, dns.rdatatype.from_text(rdtype)
    )
    return sorted(r.to_text() for r in rrset) if rrset else []


# --------------------------------------------------------------------------- hints


def test_lan_gets_rewritten_hints_and_every_other_param_byte_for_byte(split: SplitDNS) -> None:
    lan = split.query("www.example.test", "HTTPS")
    public = split.query("www.example.test", "HTTPS", source="127.0.0.2")
    assert https_rdata(public, "www.example.test.") == [
        '1 . alpn="h2,h3" ipv4hint="203.0.113.1" ipv6hint="2001:db8:ff::1" key65000="abc"'
    ]
    assert https_rdata(lan, "www.example.test.") == [
        '1 . alpn="h2,h3" ipv4hint="192.0.2.2" ipv6hint="2001:db8:ff::1" key65000="abc"'
    ]
    # On the wire: the rdata differs from the upstream's in the 4 hint bytes and nowhere else.
    lan_wire, public_wire = (m.answer[0][0].to_digestable() for m in (lan, public))
    assert len(lan_wire) == len(public_wire)
    differ = [i for i, (a, b) in enumerate(zip(lan_wire, public_wire, strict=True)) if a != b]
    at = public_wire.index(bytes([203, 0, 113, 1]))
    assert differ and set(differ) <= set(range(at, at + 4))


def test_kdig_and_dig_see_the_rewritten_hint(split: SplitDNS) -> None:
    kdig = need("kdig", "knot-dnsutils")
    out = subprocess.run(
        [kdig, "@127.0.0.1", "-p", str(split.port), "-b", "127.0.0.1", "+short",
         "www.example.test", "HTTPS"],
        capture_output=True, text=True, timeout=30,
    ).stdout  # fmt: skip
    assert "ipv4hint=192.0.2.2" in out and "203.0.113.1" not in out, out
    out = split.dig("+short", "www.example.test", "HTTPS", source="127.0.0.2")
    assert "ipv4hint=203.0.113.1" in out, out


def test_target_name_cname_chain_cidr_and_svcb(split: SplitDNS) -> None:
    # TargetName form: the `names` rule for pool.example.test matches through the TargetName.
    assert https_rdata(split.query("svc.example.test", "HTTPS"), "svc.example.test.") == [
        '1 pool.example.test. alpn="h2" port="8443" ipv4hint="192.0.2.77"'
    ]
    # The same hint for a client outside the view stays public.
    out = https_rdata(
        split.query("svc.example.test", "HTTPS", source="127.0.0.2"), "svc.example.test."
    )
    assert out == ['1 pool.example.test. alpn="h2" port="8443" ipv4hint="203.0.113.7"']
    # A CNAME chain to a name with an HTTPS record.
    chain = split.query("chain.example.test", "HTTPS")
    assert https_rdata(chain, "www.example.test.")[0].startswith(
        '1 . alpn="h2,h3" ipv4hint="192.0.2.2"'
    )
    # CIDR 1:1: 203.0.113.5/.6 inside 203.0.113.0/29 -> 192.0.2.69/.70.
    assert https_rdata(split.query("net.example.test", "HTTPS"), "net.example.test.") == [
        '1 . ipv4hint="192.0.2.69,192.0.2.70"'
    ]
    # SVCB (type 64) the same way.
    svcb = split.query("_8443._https.api.example.test", "SVCB")
    assert https_rdata(svcb, "_8443._https.api.example.test.", "SVCB") == [
        '1 api.example.test. ipv4hint="192.0.2.2"'
    ]
    # Alias form carries no hints: passed unchanged.
    assert https_rdata(split.query("alias.example.test", "HTTPS"), "alias.example.test.") == [
        "0 www.example.test."
    ]


def assert_nsds_soa(rrset: dns.rrset.RRset) -> None:
    """The zone's own SOA, as NSD serves it (tests/support/zones.py), not one made up for the
    query name (issue #32): owner the zone apex, NSD's names and serial."""
    assert rrset.name == dns.name.from_text("example.test."), rrset
    assert rrset[0].mname == dns.name.from_text("ns1.example.test.")
    assert rrset[0].rname == dns.name.from_text("hostmaster.example.test.")
    assert rrset[0].serial == 1 and rrset[0].minimum <= 60


def test_aaaa_drop_removes_public_ipv6hints_and_answers_nodata_with_an_soa(split: SplitDNS) -> None:
    resp = split.query("www.example.test", "HTTPS", source="127.0.0.4")
    assert https_rdata(resp, "www.example.test.") == [
        '1 . alpn="h2,h3" ipv4hint="192.0.2.2" key65000="abc"'
    ]
    aaaa = split.query("www.example.test", "AAAA", source="127.0.0.4")
    assert aaaa.rcode() == dns.rcode.NOERROR and not aaaa.answer
    soa = [r for r in aaaa.authority if r.rdtype == dns.rdatatype.SOA]
    assert soa and 0 < soa[0].ttl <= 60, aaaa  # NSD's MINIMUM is 60: no longer than that
    assert_nsds_soa(soa[0])
    # The view without aaaa: drop keeps both.
    assert split.query("www.example.test", "AAAA").answer


def test_https_drop_answers_nodata_for_rewritten_names_only(split: SplitDNS) -> None:
    resp = split.query("www.example.test", "HTTPS", source="127.0.0.5")
    assert resp.rcode() == dns.rcode.NOERROR and not resp.answer
    assert [r.rdtype for r in resp.authority] == [dns.rdatatype.SOA]
    assert_nsds_soa(resp.authority[0])
    other = split.query("other.example.test", "HTTPS", source="127.0.0.5")
    assert https_rdata(other, "other.example.test.") == ['1 . ipv4hint="198.51.100.7"']


def test_hosts_names_never_get_an_upstream_https_record(split: SplitDNS) -> None:
    resp = split.query("nas.home.arpa", "HTTPS")
    assert resp.rcode() == dns.rcode.NOERROR and not resp.answer
    assert resp.flags & dns.flags.AA


def test_metrics_and_query_shapes_count_hint_rewrites(split: SplitDNS) -> None:
    split.query("net.example.test", "HTTPS")
    samples = scrape(split.metrics_port)  # type: ignore[attr-defined]
    assert total(samples, "splitdns_rewrites_total", view="lan", record="ipv4hint") >= 2
    assert total(samples, "splitdns_rewrites_total", view="v4only", rule="aaaa_drop") >= 1


# --------------------------------------------------------------------------- flags


def test_forwarded_answers_say_ra_not_aa(split: SplitDNS) -> None:
    out = split.dig("www.example.test")
    assert "flags: qr rd ra;" in out, out
    assert "recursion requested but not available" not in out
    hosts = split.dig("nas.home.arpa")
    assert "flags: qr aa rd ra;" in hosts, hosts


def test_unknown_opcode_gets_a_header_only_notimp(split: SplitDNS) -> None:
    q = dns.message.make_query("www.example.test", "A")
    q.set_opcode(dns.opcode.STATUS)
    q.flags |= dns.flags.CD | dns.flags.AD
    wire = q.to_wire()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(wire, ("127.0.0.1", split.port))
        data = sock.recv(4096)
    flags = int.from_bytes(data[2:4], "big")
    assert data[:2] == wire[:2] and data[4:12] == bytes(8)
    assert flags & 0xF == dns.rcode.NOTIMP and (flags >> 11) & 0xF == dns.opcode.STATUS
    assert flags & 0x8000 and not flags & (0x0100 | 0x0010 | 0x0020 | 0x0040), hex(flags)
    assert not flags & 0x0080, hex(flags)  # RA clear: nothing was understood to recurse on


# --------------------------------------------------------------------------- signed queries


def test_tsig_signed_query_is_relayed_and_the_signed_answer_verifies(
    tmp_path: Path,
) -> None:
    """NSD knows the key, splitdns does not: the client's signature reaches NSD intact and
    NSD's signed answer reaches the client intact (dnspython verifies it, or raises)."""
    zone = ZONE
    workdir = tmp_path / "nsd"
    nsd = NSD.__new__(NSD)
    nsd.port = free_port()
    conf = NSD.write_config(workdir, {"example.test": zone}, "127.0.0.1", nsd.port)
    conf.write_text(
        conf.read_text()
        + f'key:\n  name: {TSIG_NAME}\n  algorithm: hmac-sha256\n  secret: "{TSIG_SECRET}"\n'
    )
    Process.__init__(nsd, [need("nsd", "nsd"), "-d", "-c", str(conf)])
    try:
        nsd.wait_answering(nsd.port, "example.test")
        proc = SplitDNS(tmp_path, CONFIG.format(port=nsd.port, mport=free_port()))
        try:
            keyring = dns.tsigkeyring.from_text({TSIG_NAME: TSIG_SECRET})
            q = dns.message.make_query("www.example.test", "A")
            q.use_tsig(keyring, keyname=TSIG_NAME, algorithm=dns.tsig.HMAC_SHA256)
            resp = dns.query.udp(q, "127.0.0.1", port=proc.port, timeout=5)
            assert resp.had_tsig
            # Relayed, not rewritten: the signature covers the public address.
            assert [r.to_text() for r in resp.answer[0]] == ["203.0.113.1"]
            unsigned = proc.query("www.example.test")
            assert [r.to_text() for r in unsigned.answer[0]] == ["192.0.2.2"]
        finally:
            assert proc.stop() == 0, proc.output
    finally:
        nsd.stop()


# --------------------------------------------------------------------------- RD=0


def _unbound(workdir: Path, port: int, body: str) -> Process:
    """A plain unbound on 127.0.0.1:port with `body` appended to its server: clause."""
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "unbound.conf"
    conf.write_text(
        "server:\n"
        f"  interface: 127.0.0.1@{port}\n  port: {port}\n  do-ip6: no\n"
        '  do-daemonize: no\n  username: ""\n  chroot: ""\n'
        f'  directory: "{workdir}"\n  pidfile: "{workdir}/unbound.pid"\n'
        '  use-syslog: no\n  logfile: ""\n  num-threads: 1\n'
        '  module-config: "iterator"\n  do-not-query-localhost: no\n'
        "  access-control: 127.0.0.0/8 allow\n" + body + "remote-control:\n  control-enable: no\n"
    )
    subprocess.run(
        [need("unbound-checkconf", "unbound"), str(conf)], check=True, timeout=10,
        capture_output=True,
    )  # fmt: skip
    return Process([need("unbound", "unbound"), "-d", "-c", str(conf)])


def test_rd0_cannot_poison_a_name_or_an_upstreams_health(nsd: NSD, tmp_path: Path) -> None:
    """Through a recursive unbound (which refuses RD=0 for what it has not cached): the RD=0
    client gets REFUSED, the next RD=1 client the real answer at once, health untouched."""
    uport = free_port()
    unbound = _unbound(
        tmp_path / "unbound", uport,
        f"  local-zone: \"test.\" nodefault\nforward-zone:\n  name: \"example.test\"\n"
        f"  forward-addr: 127.0.0.1@{nsd.port}\n",
    )  # fmt: skip
    try:
        unbound.wait_answering(uport, "example.test")
        mport = free_port()
        proc = SplitDNS(tmp_path, CONFIG.format(port=uport, mport=mport))
        try:
            before = scrape(mport)
            q = dns.message.make_query("fresh1.example.test", "A")
            q.flags &= ~dns.flags.RD
            first = dns.query.udp(q, "127.0.0.1", port=proc.port, source="127.0.0.1", timeout=5)
            assert first.rcode() == dns.rcode.REFUSED, first
            started = time.monotonic()
            second = proc.query("fresh1.example.test", source="127.0.0.4")
            assert second.rcode() == dns.rcode.NOERROR
            assert [r.to_text() for r in second.answer[0]] == ["192.0.2.2"]
            assert time.monotonic() - started < 1.0
            after = scrape(mport)
        finally:
            assert proc.stop() == 0, proc.output
    finally:
        unbound.stop()
    errors = "splitdns_upstream_errors_total"
    assert total(after, errors) == total(before, errors)
    assert total(after, "splitdns_upstream_up") == 1


def test_a_stub_cache_downstream_caches_the_aaaa_drop_nodata(
    split: SplitDNS, tmp_path: Path
) -> None:
    """unbound as a router's cache forwarding to splitdns from the v4only client's address:
    the second AAAA question is answered from unbound's cache, never reaching splitdns."""
    uport = free_port()
    unbound = _unbound(
        tmp_path / "stub", uport,
        "  outgoing-interface: 127.0.0.4\n  local-zone: \"test.\" nodefault\n"
        f"forward-zone:\n  name: \".\"\n  forward-addr: 127.0.0.1@{split.port}\n",
    )  # fmt: skip
    try:
        unbound.wait_answering(uport, "example.test")
        key = dict(qtype="AAAA", transport="udp")

        def asked() -> float:
            return total(scrape(split.metrics_port), "splitdns_queries_total", **key)  # type: ignore[attr-defined]

        q = dns.message.make_query("fresh2.example.test", "AAAA")
        first = dns.query.udp(q, "127.0.0.1", port=uport, timeout=5)
        assert first.rcode() == dns.rcode.NOERROR and not first.answer, first
        seen = asked()
        second = dns.query.udp(q, "127.0.0.1", port=uport, timeout=5)
        assert second.rcode() == dns.rcode.NOERROR and not second.answer
        assert asked() == seen
    finally:
        unbound.stop()


def test_explain_shows_hint_rewrites_and_what_aaaa_drop_did(nsd: NSD, tmp_path: Path) -> None:
    path = tmp_path / "explain.yaml"
    path.write_text(CONFIG.format(port=nsd.port, mport=free_port()).replace("metrics:", "#"))

    def explain(*args: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "splitdns", "explain", "-c", str(path), *args],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        return out.stdout

    hints = explain("www.example.test", "--type", "HTTPS")
    assert "rewrite: www.example.test ipv4hint 203.0.113.1 -> 192.0.2.2 by rewrite[0]" in hints
    dropped = explain("www.example.test", "--type", "AAAA", "--client", "127.0.0.4")
    assert "aaaa: drop: the view rewrites www.example.test, so this answer is NODATA" in dropped
    assert "aaaa: drop: www.example.test 2001:db8:ff::1 removed (aaaa: drop)" in dropped
    assert "no rule matched" in dropped  # the AAAA itself matched no rule...
    assert "SOA" in dropped.split("final answer:")[1]  # ...and the client gets NODATA + SOA
    v6 = explain("www.example.test", "--type", "HTTPS", "--client", "127.0.0.4")
    assert "aaaa: drop: www.example.test ipv6hint 2001:db8:ff::1 removed (aaaa: drop)" in v6
