"""No AAAA (nor HTTPS hint) leads a LAN client to the public address past the rewrite.

The upstream is a real NSD with its defaults (minimal responses off): every positive answer
carries the zone's NS and, in the additional section, the NS's glue, and the glue sits on the
public address (`ns1` on 203.0.113.1, common at home). The AAAA policy must decide on the
question name's own A records (after its CNAME chain), never on the glue: `www` (public A)
loses its AAAA, `other` (an A no rule maps) keeps it. Asked over UDP (the express lane takes
the A) and TCP (the chain), twice each (a miss, then a cache hit).
"""

from __future__ import annotations

from collections.abc import Iterator

import dns.message
import dns.rdatatype
import pytest

from tests.support.servers import NSD, SplitDNS

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
