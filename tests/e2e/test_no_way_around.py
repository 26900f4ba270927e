"""No AAAA (nor HTTPS hint) leads a LAN client to the public address past the rewrite.

The upstream is a real NSD with its defaults (minimal responses off): every positive answer
carries the zone's NS and, in the additional section, the NS's glue, and the glue sits on the
public address (`ns1` on 203.0.113.1, common at home). The AAAA policy must decide on the
question name's own A records (after its CNAME chain), never on the glue: `www` (public A)
loses its AAAA, `other` (an A no rule maps) keeps it. Asked over UDP (the express lane takes
the A) and TCP (the chain), twice each (a miss, then a cache hit).
"""

from __future__ import annotations

import ipaddress
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from splitdns.config.dns64 import extract, synthesize
from tests.support.fakeupstream import FakeUpstream
from tests.support.servers import NSD, Process, SplitDNS, free_port
from tests.support.tools import need

ZONE = """\
$ORIGIN home.test.
$TTL 300
@      SOA   ns1 hostmaster 1 3600 600 86400 60
@      NS    ns1
ns1    A     203.0.113.1
ns1    AAAA  2001:db8:113::53
www    A     203.0.113.1
www    AAAA  2001:db8:113::1
www    HTTPS 1 . alpn=h2 ipv4hint=203.0.113.1 ipv6hint=2001:db8:113::1
alias  CNAME www
other  A     198.51.100.7
other  AAAA  2001:db8:7::7
other  HTTPS 1 . alpn=h2 ipv4hint=198.51.100.7 ipv6hint=2001:db8:7::7
"""

CONFIG = """\
upstreams: ["127.0.0.1:{port}"]
allow: [127.0.0.0/8]
views:
  - name: lan
    clients: [127.0.0.1/32]
    aaaa: drop
    rewrite:
      - {{from: 203.0.113.1, to: 192.0.2.2}}
  - name: nohttps
    clients: [127.0.0.4/32]
    https: drop
    rewrite:
      - {{from: 203.0.113.1, to: 192.0.2.2}}
"""


@pytest.fixture(scope="module")
def glue_nsd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NSD]:
    server = NSD(tmp_path_factory.mktemp("gluensd"), {"home.test": ZONE})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def splitdns(glue_nsd: NSD, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SplitDNS]:
    server = SplitDNS(tmp_path_factory.mktemp("glue"), CONFIG.format(port=glue_nsd.port))
    yield server
    server.stop()


def addresses(reply: dns.message.Message, rdtype: str) -> list[str]:
    kind = dns.rdatatype.from_text(rdtype)
    return sorted(str(rd) for rrset in reply.answer if rrset.rdtype == kind for rd in rrset)


def test_nsd_really_sends_the_glue_on_the_public_address(glue_nsd: NSD) -> None:
    """The premise (else the test below could not fail): NSD's answer carries the glue."""
    query = dns.message.make_query("other.home.test.", "A")
    reply = dns.query.udp(query, "127.0.0.1", port=glue_nsd.port, timeout=5)
    glue = [str(rd) for rrset in reply.additional if rrset.rdtype == 1 for rd in rrset]
    assert glue == ["203.0.113.1"]


@pytest.mark.parametrize("tcp", [False, True], ids=["udp-express-lane", "tcp-chain"])
def test_aaaa_drop_decides_on_the_names_own_a_never_on_glue(splitdns: SplitDNS, tcp: bool) -> None:
    for attempt in ("miss", "hit"):
        # the A first over UDP puts it in the cache through the lane (the AAAA's sibling
        # lookup then reads the lane's entry); over TCP through the chain
        a = splitdns.query("www.home.test.", "A", tcp=tcp)
        assert addresses(a, "A") == ["192.0.2.2"], attempt
        got = splitdns.query("www.home.test.", "AAAA", tcp=tcp)
        assert addresses(got, "AAAA") == [], (attempt, got)
        assert got.rcode() == 0 and any(r.rdtype == 6 for r in got.authority), got
        got = splitdns.query("alias.home.test.", "AAAA", tcp=tcp)
        assert addresses(got, "AAAA") == [], (attempt, got)
        # glue rewritten, the name's own A not: its AAAA stays
        a = splitdns.query("other.home.test.", "A", tcp=tcp)
        assert addresses(a, "A") == ["198.51.100.7"]
        glue = [str(rd) for rrset in a.additional if rrset.rdtype == 1 for rd in rrset]
        assert glue == ["192.0.2.2"], a  # (the glue itself is rewritten)
        got = splitdns.query("other.home.test.", "AAAA", tcp=tcp)
        assert addresses(got, "AAAA") == ["2001:db8:7::7"], (attempt, got)


def test_the_aaaa_question_first_decides_the_same(splitdns: SplitDNS) -> None:
    """Without the A cached before: the policy's own sibling lookup of the A."""
    got = splitdns.query("www.home.test.", "AAAA", source="127.0.0.1", use_edns=False)
    assert addresses(got, "AAAA") == []
    fresh = dns.message.make_query("other.home.test.", "AAAA", want_dnssec=True)
    got = dns.query.udp(fresh, "127.0.0.1", port=splitdns.port, timeout=5)
    assert addresses(got, "AAAA") == ["2001:db8:7::7"]


def test_https_policies_decide_on_the_name_not_the_glue(splitdns: SplitDNS) -> None:
    # https: drop, glue on the public address: `other` keeps its HTTPS record, `www` loses it
    got = splitdns.query("other.home.test.", "HTTPS", source="127.0.0.4")
    assert [rrset.rdtype for rrset in got.answer] == [dns.rdatatype.HTTPS], got
    got = splitdns.query("www.home.test.", "HTTPS", source="127.0.0.4")
    assert got.answer == [] and got.rcode() == 0
    # https: rewrite + aaaa: drop: `other` keeps its ipv6hint; `www` loses the public one
    got = splitdns.query("other.home.test.", "HTTPS")
    assert 'ipv6hint="2001:db8:7::7"' in got.answer[0].to_text(), got
    got = splitdns.query("www.home.test.", "HTTPS")
    text = got.answer[0].to_text()
    assert 'ipv4hint="192.0.2.2"' in text and "2001:db8:113::1" not in text, text


class Dns64Unbound(Process):
    """unbound with its dns64 module (the router's or ISP's resolver that synthesizes),
    forwarding home.test to NSD; on 127.0.0.1, nothing beyond."""

    def __init__(self, workdir: Path, nsd_port: int, prefix: str) -> None:
        self.port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        conf = workdir / "unbound.conf"
        conf.write_text(
            f"server:\n  interface: 127.0.0.1@{self.port}\n  port: {self.port}\n"
            f'  do-ip6: no\n  do-daemonize: no\n  username: ""\n  chroot: ""\n'
            f'  directory: "{workdir}"\n  pidfile: "{workdir}/unbound.pid"\n'
            '  use-syslog: no\n  logfile: ""\n  num-threads: 1\n'
            "  access-control: 127.0.0.0/8 allow\n"
            f'  module-config: "dns64 iterator"\n  dns64-prefix: {prefix}\n'
            "  dns64-synthall: no\n  do-not-query-localhost: no\n"
            '  local-zone: "test." nodefault\n  domain-insecure: "home.test"\n'
            '  local-zone: "ipv4only.arpa." nodefault\n  domain-insecure: "ipv4only.arpa"\n'
            f'forward-zone:\n  name: "home.test"\n  forward-addr: 127.0.0.1@{nsd_port}\n'
            f'forward-zone:\n  name: "ipv4only.arpa"\n  forward-addr: 127.0.0.1@{nsd_port}\n'
            "remote-control:\n  control-enable: no\n"
        )
        subprocess.run([need("unbound-checkconf", "unbound"), str(conf)], check=True,
                       timeout=10, capture_output=True)  # fmt: skip
        super().__init__([need("unbound", "unbound"), "-d", "-c", str(conf)])
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                query = dns.message.make_query("www.home.test.", "AAAA")
                dns.query.udp(query, "127.0.0.1", port=self.port, timeout=1)
                return
            except (dns.exception.Timeout, OSError):
                time.sleep(0.1)
        raise AssertionError(f"unbound did not answer: {self.output[-500:]}")


DNS64_ZONE = """\
$ORIGIN home.test.
$TTL 300
@      SOA   ns1 hostmaster 1 3600 600 86400 60
@      NS    ns1
ns1    A     198.51.100.53
www    A     203.0.113.1
alias  CNAME www
other  A     198.51.100.7
dual   A     203.0.113.1
dual   AAAA  2001:db8:113::1
"""

IPV4ONLY = """\
$ORIGIN ipv4only.arpa.
$TTL 300
@      SOA   ns1.home.test. hostmaster.home.test. 1 3600 600 86400 60
@      NS    ns1.home.test.
@      A     192.0.0.170
@      A     192.0.0.171
"""

PLAIN_VIEW = """\
upstreams: ["127.0.0.1:{port}"]
allow: [127.0.0.0/8]
{extra}views:
  - name: lan
    clients: [127.0.0.1/32]
    rewrite:
      - {{from: 203.0.113.1, to: 192.0.2.2}}
"""


@pytest.mark.parametrize(
    ("prefix", "configured", "www"),
    [
        ("2001:db8:64::/96", "", ["2001:db8:64::c000:202"]),  # discovered by RFC 7050
        ("2001:db8:64::/96", 'nat64_prefixes: ["2001:db8:64::/96"]\n', ["2001:db8:64::c000:202"]),
        ("64:ff9b::/96", "", []),  # the WKP: it must not embed 192.0.2.2: removed
    ],
    ids=["nsp-discovered", "nsp-configured", "wkp"],
)
def test_an_upstream_doing_dns64_cannot_lead_around_the_rewrite(
    tmp_path: Path, prefix: str, configured: str, www: list[str]
) -> None:
    """A view with only `rewrite:` (no dns64:) behind an upstream that synthesizes: no AAAA
    that embeds the public address, through the lane (UDP) and the chain (TCP), miss and hit."""
    nsd = NSD(tmp_path / "nsd", {"home.test": DNS64_ZONE, "ipv4only.arpa": IPV4ONLY})
    upstream = Dns64Unbound(tmp_path / "unbound", nsd.port, prefix)
    server = SplitDNS(tmp_path, PLAIN_VIEW.format(port=upstream.port, extra=configured))
    public = ipaddress.ip_address("203.0.113.1")
    net = ipaddress.ip_network(prefix)
    try:
        raw = dns.query.udp(dns.message.make_query("www.home.test.", "AAAA"), "127.0.0.1",
                            port=upstream.port, timeout=5)  # fmt: skip
        assert addresses(raw, "AAAA"), "the premise: unbound synthesizes the public address"
        if not configured and "2001:db8:64" in prefix:
            server.wait_for("NAT64 prefix discovered")
        for tcp in (False, True):
            for attempt in ("miss", "hit"):
                for name in ("www.home.test.", "alias.home.test."):
                    got = server.query(name, "AAAA", tcp=tcp)
                    found = addresses(got, "AAAA")
                    assert found == www, (tcp, attempt, name, got)
                    for text in found:  # nothing embeds or equals the public address
                        v6 = ipaddress.IPv6Address(text)
                        assert v6 not in net or extract(net, v6) != public
                    if not www:
                        assert got.rcode() == 0 and any(r.rdtype == 6 for r in got.authority)
                # a name no rule maps keeps the upstream's synthesized AAAA
                other = addresses(server.query("other.home.test.", "AAAA", tcp=tcp), "AAAA")
                assert other == [str(synthesize(net, ipaddress.IPv4Address("198.51.100.7")))]
                # a real AAAA (no synthesis: the name has one) is left alone
                dual = addresses(server.query("dual.home.test.", "AAAA", tcp=tcp), "AAAA")
                assert dual == ["2001:db8:113::1"]
        said = subprocess.run(
            [sys.executable, "-m", "splitdns", "explain", "www.home.test", "--type", "AAAA",
             "--client", "127.0.0.1", "-c", next(tmp_path.glob("splitdns-*.yaml")).as_posix()],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert "upstream's DNS64" in said.stdout, said.stdout + said.stderr
        doctor = subprocess.run(
            [sys.executable, "-m", "splitdns", "doctor", "-c",
             next(tmp_path.glob("splitdns-*.yaml")).as_posix()],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert f"upstreams do DNS64 (prefix {prefix})" in doctor.stdout, doctor.stdout
    finally:
        server.stop()
        upstream.stop()
        nsd.stop()


def test_private_relay_canary_is_opt_in(tmp_path: Path, fake: FakeUpstream) -> None:
    """Apple's network opt-out (mask.icloud.com, mask-h2.icloud.com: NXDOMAIN) only with
    block_private_relay: true; otherwise the names are forwarded like any other."""
    fake.add("mask.icloud.com. 60 IN A 198.51.100.80", "mask-h2.icloud.com. 60 IN A 198.51.100.81")
    base = f'upstreams: ["{fake.address}"]\nallow: [127.0.0.0/8]\n'
    plain = SplitDNS(tmp_path, base)
    try:
        assert addresses(plain.query("mask.icloud.com."), "A") == ["198.51.100.80"]
    finally:
        plain.stop()
    blocked = SplitDNS(tmp_path, base + "block_private_relay: true\n")
    try:
        for name in ("mask.icloud.com.", "mask-h2.icloud.com.", "MASK.icloud.com."):
            for tcp in (False, True):
                reply = blocked.query(name, "A", tcp=tcp)
                assert reply.rcode() == dns.rcode.NXDOMAIN, (name, reply)
        assert blocked.query("mask.icloud.com.", "HTTPS").rcode() == dns.rcode.NXDOMAIN
    finally:
        blocked.stop()
