"""DNS64 for IPv6-mostly LANs (issue #31), the synthesis and the split horizon kept for it:
RFC 6052's own examples at every prefix length, then the real server in front of NSD, asked
with dig and dnspython from three views (the well-known prefix, the well-known prefix with the
server's own IPv6 address, a network-specific prefix) and from outside them.

The zone's public addresses: www 203.0.113.1 (rewritten to the LAN's 192.0.2.2, which the
well-known prefix must never embed), pub 9.9.9.9 (a global address, only zone data here: no
traffic goes there), v6 with an AAAA of its own, syn with an upstream's own synthesized AAAA of
the public address.
"""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from splitdns.config import model
from splitdns.config.dns64 import extract, prefix_from_probe, synthesize
from splitdns.config.tree import ConfigError
from tests.support.servers import NSD, SplitDNS
from tests.support.tools import need
from tests.support.zones import example_zone

RFC6052_EXAMPLES = [  # section 2.4, Table 1: 192.0.2.33 under each prefix length
    ("2001:db8::/32", "2001:db8:c000:221::"),
    ("2001:db8:100::/40", "2001:db8:1c0:2:21::"),
    ("2001:db8:122::/48", "2001:db8:122:c000:2:2100::"),
    ("2001:db8:122:300::/56", "2001:db8:122:3c0:0:221::"),
    ("2001:db8:122:344::/64", "2001:db8:122:344:c0:2:2100:0"),
    ("2001:db8:122:344::/96", "2001:db8:122:344::192.0.2.33"),
]


@pytest.mark.parametrize(("prefix", "expected"), RFC6052_EXAMPLES)
def test_synthesis_at_every_prefix_length(prefix: str, expected: str) -> None:
    net = ipaddress.IPv6Network(prefix)
    v4 = ipaddress.IPv4Address("192.0.2.33")
    assert synthesize(net, v4) == ipaddress.IPv6Address(expected)
    assert extract(net, ipaddress.IPv6Address(expected)) == v4


@pytest.mark.parametrize(
    ("snippet", "error"),
    [
        ("dns64: {prefix: 2001:db8::/80}", "/80 is not an RFC 6052 prefix length"),
        ("dns64: {prefix: 2001:db8:0:0:100::/96}", "bits 64-71 of a NAT64 prefix must be zero"),
        ("dns64: {prefix: 10.0.0.0/8}", "'10.0.0.0/8' is not an IPv6 prefix"),
        ("dns64: {servers: {192.0.2.2: nope}}", "give an IPv4 address (a rewrite target)"),
        ("dns64: {prefix: fd00:1::/96}", "prefix fd00:1::/96 overlaps rewrite[1]'s target"),
    ],
)
def test_bad_dns64_settings_name_the_key(snippet: str, error: str) -> None:
    text = (
        "views:\n  - name: lan\n    clients: [192.0.2.0/24]\n    rewrite:\n"
        "      - {from: 203.0.113.1, to: 192.0.2.2}\n"
        '      - {from: "2001:db8:1::/64", to: "fd00:1::/64"}\n'
        f"    {snippet}\n"
    )
    with pytest.raises(ConfigError) as caught:
        model.loads(text, "t.yaml")
    assert error in str(caught.value) and "views[0].dns64" in str(caught.value), caught.value


ZONE = example_zone(
    "www A 203.0.113.1",
    "pub A 9.9.9.9",
    "v6 A 203.0.113.1",
    "v6 AAAA 2001:db8::5",
    "syn A 203.0.113.1",
    "syn AAAA 64:ff9b::cb00:7101",
    "alias CNAME pub",
    "mapped A 9.9.9.9",
    "mapped AAAA ::ffff:909:909",
    "own A 203.0.113.1",
    "own AAAA 2001:db8:99::cb00:7101",  # an upstream's DNS64 with a prefix of its own
)
#: what an upstream doing DNS64 with 2001:db8:99::/96 answers for RFC 7050's well-known name
IPV4ONLY = """$ORIGIN ipv4only.arpa.
$TTL 300
@ SOA ns.example.test. hostmaster.example.test. 1 3600 600 86400 60
@ NS ns.example.test.
@ AAAA 2001:db8:99::c000:aa
@ AAAA 2001:db8:99::c000:ab
"""
CONFIG = """\
upstreams: ["127.0.0.1:{nsd}"]
allow: [127.0.0.0/8]
query_log: {{path: "-"}}
views:
  - name: wkp
    clients: [127.0.0.11/32]
    rewrite: [{{from: 203.0.113.1, to: 192.0.2.2}}]
    dns64: true
  - name: paired
    clients: [127.0.0.12/32]
    rewrite: [{{from: 203.0.113.1, to: 192.0.2.2}}]
    dns64: {{servers: {{192.0.2.2: "fd00::2"}}}}
  - name: nsp
    clients: [127.0.0.13/32]
    rewrite: [{{from: 203.0.113.1, to: 192.0.2.2}}]
    dns64: {{prefix: "2001:db8:64::/96"}}
"""


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SplitDNS]:
    work = tmp_path_factory.mktemp("dns64")
    nsd = NSD(work / "nsd", {"example.test": ZONE, "ipv4only.arpa": IPV4ONLY})
    proc = SplitDNS(work, CONFIG.format(nsd=nsd.port))
    yield proc
    code = proc.stop()
    nsd.stop()
    assert code == 0, proc.output
    assert "internal error" not in proc.output, proc.output


def aaaa(split: SplitDNS, name: str, source: str, **make: object) -> dns.message.Message:
    return split.query(name, "AAAA", source=source, **make)


def addresses(reply: dns.message.Message) -> list[str]:
    return [rd.to_text() for rrset in reply.answer if rrset.rdtype == dns.rdatatype.AAAA
            for rd in rrset]  # fmt: skip


def test_a_public_global_address_is_synthesized_with_the_zones_ttl(split: SplitDNS) -> None:
    for source in ("127.0.0.11", "127.0.0.12"):
        reply = aaaa(split, "pub.example.test", source)
        assert addresses(reply) == ["64:ff9b::909:909"], reply
        assert reply.answer[0].ttl <= 60  # the zone's negative TTL (SOA MINIMUM), 5.1.7
    assert addresses(aaaa(split, "pub.example.test", "127.0.0.13")) == ["2001:db8:64::909:909"]


def test_a_rewritten_name_never_gets_its_public_address_synthesized(split: SplitDNS) -> None:
    # the well-known prefix cannot embed 192.0.2.2: NODATA with the zone's SOA
    wkp = aaaa(split, "www.example.test", "127.0.0.11")
    assert wkp.rcode() == dns.rcode.NOERROR and not wkp.answer, wkp
    assert [str(r.name) for r in wkp.authority] == ["example.test."], wkp
    # the server's own IPv6 address, where the view gives one
    assert addresses(aaaa(split, "www.example.test", "127.0.0.12")) == ["fd00::2"]
    # a network-specific prefix + the internal address
    assert addresses(aaaa(split, "www.example.test", "127.0.0.13")) == ["2001:db8:64::c000:202"]
    # the query log says so
    split.wait_for('"to":"2001:db8:64::c000:202","rule":-2,"in":"dns64"')


def test_an_upstreams_own_synthesis_of_the_public_address_is_replaced(split: SplitDNS) -> None:
    assert addresses(aaaa(split, "syn.example.test", "127.0.0.12")) == ["fd00::2"]
    assert addresses(aaaa(split, "syn.example.test", "127.0.0.13")) == ["2001:db8:64::c000:202"]
    # a client in no dns64 view gets the upstream's answer as it is
    assert addresses(aaaa(split, "syn.example.test", "127.0.0.2")) == ["64:ff9b::cb00:7101"]


def test_an_upstreams_own_prefix_is_discovered_rfc7050(split: SplitDNS) -> None:
    line = split.wait_for("NAT64 prefix discovered from the upstreams (RFC 7050)")
    assert line.endswith(
        "NAT64 prefix discovered from the upstreams (RFC 7050): 2001:db8:99::/96; their AAAA "
        "answers there that embed a public address a view rewrites are made again (or removed)"
    ), line
    assert addresses(aaaa(split, "own.example.test", "127.0.0.12")) == ["fd00::2"]
    assert addresses(aaaa(split, "own.example.test", "127.0.0.13")) == ["2001:db8:64::c000:202"]
    assert addresses(aaaa(split, "own.example.test", "127.0.0.2")) == ["2001:db8:99::cb00:7101"]


def test_prefix_from_probe_at_every_length() -> None:
    for prefix, _ in RFC6052_EXAMPLES:
        net = ipaddress.IPv6Network(prefix)
        probe = synthesize(net, ipaddress.IPv4Address("192.0.0.170"))
        assert prefix_from_probe(probe) == net, prefix
    assert prefix_from_probe(ipaddress.IPv6Address("2001:db8::1")) is None


def test_real_aaaa_records_cnames_cd_and_outsiders(split: SplitDNS) -> None:
    assert addresses(aaaa(split, "v6.example.test", "127.0.0.11")) == ["2001:db8::5"]
    # an IPv4-mapped AAAA is excluded by default (RFC 6147 5.1.4): made from the A instead
    assert addresses(aaaa(split, "mapped.example.test", "127.0.0.11")) == ["64:ff9b::909:909"]
    chained = aaaa(split, "alias.example.test", "127.0.0.11")
    assert [r.rdtype for r in chained.answer] == [dns.rdatatype.CNAME, dns.rdatatype.AAAA]
    assert addresses(chained) == ["64:ff9b::909:909"]
    checking = split.query("pub.example.test", "AAAA", source="127.0.0.11", want_dnssec=True)
    assert not checking.flags & dns.flags.AD
    q = dns.message.make_query("pub.example.test", "AAAA")
    q.flags |= dns.flags.CD  # the client validates itself: no synthesis (RFC 6147 5.5)
    raw = dns.query.udp(q, "127.0.0.1", port=split.port, source="127.0.0.11", timeout=5)
    assert addresses(raw) == [] and raw.rcode() == dns.rcode.NOERROR
    assert addresses(aaaa(split, "pub.example.test", "127.0.0.2")) == []  # no dns64 view


def test_ptr_under_the_prefix_is_a_cname_to_in_addr_arpa(split: SplitDNS) -> None:
    """RFC 6147 5.3.1; the in-addr.arpa name is answered by the whole chain (here: the
    RFC 6303 zone of 192.0.2.0/24, answered locally, never sent upstream)."""
    name = ipaddress.IPv6Address("2001:db8:64::c000:202").reverse_pointer
    reply = split.query(name, "PTR", source="127.0.0.13")
    cname = [r for r in reply.answer if r.rdtype == dns.rdatatype.CNAME]
    assert [str(rd.target) for rd in cname[0]] == ["2.2.0.192.in-addr.arpa."], reply
    outside = split.query(name, "PTR", source="127.0.0.11")  # not under the WKP view's prefix
    assert not [r for r in outside.answer if r.rdtype == dns.rdatatype.CNAME]


def test_dig_and_explain_show_it(split: SplitDNS, tmp_path: Path) -> None:
    dig = need("dig", "bind9-dnsutils")
    out = subprocess.run(
        [dig, "@127.0.0.1", "-p", str(split.port), "-b", "127.0.0.13", "+short", "AAAA",
         "www.example.test"], capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.stdout.strip() == "2001:db8:64::c000:202", out.stdout + out.stderr
    conf = tmp_path / "c.yaml"
    conf.write_text(CONFIG.format(nsd=split.startup.split("upstreams 127.0.0.1:")[1].split()[0]))
    explained = subprocess.run(
        [sys.executable, "-m", "splitdns", "explain", "www.example.test", "--type", "AAAA",
         "--client", "127.0.0.11", "-c", str(conf)],
        capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    assert (
        "dns64: www.example.test AAAA for 192.0.2.2: none (dns64: the well-known prefix must "
        "not embed a non-global address" in explained.stdout
    ), explained.stdout + explained.stderr
    run = [sys.executable, "-m", "splitdns"]
    where = Path(__file__).resolve().parents[2]
    checked = subprocess.run([*run, "check", "-c", str(conf)], capture_output=True, text=True,
                             timeout=60, cwd=where)  # fmt: skip
    assert (
        "warning: views.wkp.dns64: IPv6-only clients get no AAAA: the well-known prefix must "
        "not embed 192.0.2.2/32 (RFC 6052 3.1) for names rewrite[0] rewrites; give the "
        "server's IPv6 address in dns64.servers, or use a network-specific prefix"
    ) in checked.stdout, checked.stdout
    doctor = subprocess.run([*run, "doctor", "-c", str(conf), "--timeout", "1"],
                            capture_output=True, text=True, timeout=60, cwd=where)  # fmt: skip
    lines = [line for line in doctor.stdout.splitlines() if "dns64 view" in line]
    assert lines == [
        "warn  dns64 view wkp, rewrite[0] -> 192.0.2.2/32: IPv6-only clients get no AAAA: the "
        "well-known prefix must not embed 192.0.2.2/32 (RFC 6052 3.1)",
        "ok    dns64 view paired, rewrite[0] -> 192.0.2.2/32: IPv6-only clients get fd00::2: the "
        "server sees the client's own address",
        "ok    dns64 view nsp, rewrite[0] -> 192.0.2.2/32: IPv6-only clients get "
        "2001:db8:64::/96 + 192.0.2.2/32: through NAT64, the server sees the NAT64's address, "
        "not the client",
    ], doctor.stdout
