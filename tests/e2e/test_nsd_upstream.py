"""Acceptance through real parts: NSD upstream, `splitdns serve`, dig and dnspython clients.

Views are tested on one machine by binding different loopback sources: 127.0.0.1 is the LAN
view, 127.0.0.2 is allowed but in no view, 127.0.0.3 is outside `allow`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest

from tests.support.servers import NSD, SplitDNS

CONFIG = """\
upstreams: ["127.0.0.1:{port}"]
allow: [127.0.0.1/32, 127.0.0.2/32]
views:
  - name: lan
    clients: [127.0.0.1/32]
    rewrite:
      - from: 203.0.113.1
        to: 192.0.2.2
      - from: 203.0.113.1
        to: 192.0.2.3
        names: [mail.example.test]
      - from: 203.0.113.0/29
        to: 192.0.2.64/29
      - from: 2001:db8:1::/64
        to: fd00:1::/64
    hosts:
      nas.home.arpa: 192.0.2.5
      "*.lab.example.test": [192.0.2.7, "fd00::7"]
"""


@pytest.fixture(scope="module")
def server(nsd: NSD, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SplitDNS]:
    proc = SplitDNS(tmp_path_factory.mktemp("split"), CONFIG.format(port=nsd.port))
    yield proc
    assert proc.stop() == 0, proc.output


def answers(output: str) -> list[tuple[str, int, str, str]]:
    """(owner, ttl, type, data) from dig's ANSWER SECTION."""
    section = output.split(";; ANSWER SECTION:\n", 1)
    if len(section) < 2:
        return []
    rows = []
    for line in section[1].split("\n\n", 1)[0].splitlines():
        owner, ttl, _cls, rtype, data = line.split(None, 4)
        rows.append((owner, int(ttl), rtype, data))
    return rows


def status(output: str) -> str:
    match = re.search(r"status: (\w+)", output)
    assert match, output
    return match.group(1)


def test_lan_view_gets_the_internal_address(server: SplitDNS) -> None:
    out = server.dig("www.example.test", source="127.0.0.1")
    assert status(out) == "NOERROR"
    assert answers(out) == [("www.example.test.", 300, "A", "192.0.2.2")]


def test_allowed_client_in_no_view_gets_the_public_answer(server: SplitDNS) -> None:
    out = server.dig("www.example.test", source="127.0.0.2")
    assert answers(out) == [("www.example.test.", 300, "A", "203.0.113.1")]


def test_client_outside_allow_is_refused(server: SplitDNS) -> None:
    out = server.dig("www.example.test", source="127.0.0.3")
    assert status(out) == "REFUSED"
    assert answers(out) == []


def test_cname_chain_is_kept_and_its_address_rewritten(server: SplitDNS) -> None:
    out = server.dig("chain.example.test")
    assert answers(out) == [
        ("chain.example.test.", 300, "CNAME", "alias.example.test."),
        ("alias.example.test.", 300, "CNAME", "www.example.test."),
        ("www.example.test.", 300, "A", "192.0.2.2"),
    ]


def test_cidr_maps_one_to_one(server: SplitDNS) -> None:
    assert answers(server.dig("host5.example.test"))[0][3] == "192.0.2.69"


def test_names_rule_beats_the_general_rule(server: SplitDNS) -> None:
    assert answers(server.dig("mail.example.test"))[0][3] == "192.0.2.3"


def test_only_matching_records_change(server: SplitDNS) -> None:
    got = sorted(row[3] for row in answers(server.dig("two.example.test")))
    assert got == ["192.0.2.2", "198.51.100.9"]
    assert answers(server.dig("outside.example.test"))[0][3] == "198.51.100.7"


def test_ipv6_rule_rewrites_aaaa(server: SplitDNS) -> None:
    assert answers(server.dig("v6.example.test", "AAAA")) == [
        ("v6.example.test.", 300, "AAAA", "fd00:1::10")
    ]


def test_wildcard_hosts_answer_locally_and_authoritatively(server: SplitDNS) -> None:
    out = server.dig("a.b.lab.example.test")
    assert answers(out) == [("a.b.lab.example.test.", 300, "A", "192.0.2.7")]
    assert re.search(r"flags: qr aa", out), out
    assert answers(server.dig("x.lab.example.test", "AAAA"))[0][3] == "fd00::7"
    nodata = server.dig("x.lab.example.test", "MX")
    assert status(nodata) == "NOERROR" and answers(nodata) == []
    # The suffix itself is not covered by "*.": it is forwarded (and NSD says NXDOMAIN).
    assert status(server.dig("lab.example.test")) == "NXDOMAIN"


def test_ptr_for_hosts(server: SplitDNS) -> None:
    assert answers(server.dig("-x", "192.0.2.5")) == [
        ("5.2.0.192.in-addr.arpa.", 300, "PTR", "nas.home.arpa.")
    ]


def test_tcp_query(server: SplitDNS) -> None:
    out = server.dig("+tcp", "www.example.test")
    [(owner, ttl, rtype, data)] = answers(out)  # cached by the first test: its TTL may age
    assert (owner, rtype, data) == ("www.example.test.", "A", "192.0.2.2") and 290 < ttl <= 300
    resp = server.query("chain.example.test", tcp=True)
    assert [str(r[0]) for r in resp.answer if r.rdtype == 1] == ["192.0.2.2"]


def test_udp_truncation_then_tcp_retry(server: SplitDNS) -> None:
    out = server.dig("+noedns", "big.example.test")
    assert "Truncated, retrying in TCP mode" in out
    rows = answers(out)
    assert len(rows) == 40
    got = {row[3] for row in rows}
    assert "192.0.2.2" in got  # 203.0.113.1: the /32 rule wins over the /29
    assert {f"192.0.2.{64 + i}" for i in range(2, 8)} <= got  # 203.0.113.2-7 via the /29
    assert "203.0.113.8" in got  # outside every rule


def test_edns_buffer_is_respected(server: SplitDNS) -> None:
    resp = server.query("big.example.test", use_edns=0, payload=1232)
    assert not resp.flags & dns.flags.TC
    assert len(resp.answer[0]) == 40
    small = server.query("big.example.test", use_edns=0, payload=512)
    assert small.flags & dns.flags.TC and not small.answer
    assert small.edns == 0  # the client used EDNS, so the answer carries OPT too


def test_dnspython_from_two_sources(server: SplitDNS) -> None:
    lan = server.query("www.example.test", source="127.0.0.1")
    other = server.query("www.example.test", source="127.0.0.2")
    assert str(lan.answer[0][0]) == "192.0.2.2"
    assert str(other.answer[0][0]) == "203.0.113.1"
    outsider = server.query("www.example.test", source="127.0.0.3")
    assert outsider.rcode() == dns.rcode.REFUSED


def test_query_name_case_is_echoed(server: SplitDNS) -> None:
    resp = server.query("WwW.ExAmPlE.TeSt")
    assert resp.question[0].name.to_text() == "WwW.ExAmPlE.TeSt."
    assert str(resp.answer[0][0]) == "192.0.2.2"


def test_nxdomain_passes_through(server: SplitDNS) -> None:
    assert status(server.dig("missing.example.test")) == "NXDOMAIN"


def test_kdig_agrees(server: SplitDNS, tmp_path: Path) -> None:
    import subprocess

    from tests.support.tools import need

    kdig = need("kdig", "knot-dnsutils")
    out = subprocess.run(
        [kdig, "@127.0.0.1", "-p", str(server.port), "+tcp", "+short", "chain.example.test"],
        capture_output=True,
        text=True,
        timeout=20,
    ).stdout.split()
    assert out == ["alias.example.test.", "www.example.test.", "192.0.2.2"]


def test_the_same_query_again_reads_the_same_to_real_clients(server: SplitDNS) -> None:
    """kdig, `dig +nocookie` and a dnspython query re-sent send the same bytes but the ID, so
    from the second time on splitdns replays the hit (serve/replay.py): each client must still
    read its own ID, the same records and its own view's address."""
    import subprocess

    from tests.support.tools import need

    kdig = need("kdig", "knot-dnsutils")
    for source, address in (("127.0.0.1", "192.0.2.2"), ("127.0.0.2", "203.0.113.1")):
        for _ in range(3):
            out = server.dig("+nocookie", "www.example.test", source=source)
            assert status(out) == "NOERROR", out
            [(owner, ttl, rtype, data)] = answers(out)
            assert (owner, rtype, data) == ("www.example.test.", "A", address)
            assert 0 < ttl <= 300
            where = ["@127.0.0.1", "-p", str(server.port), "-b", source]
            short = subprocess.run(
                [kdig, *where, "+short", "www.example.test"],
                capture_output=True,
                text=True,
                timeout=20,
            ).stdout.split()
            assert short == [address]
        q = dns.message.make_query("www.example.test", "A")
        for msg_id in (1, 0xBEEF, 0xFFFF):
            q.id = msg_id
            r = dns.query.udp(q, "127.0.0.1", port=server.port, source=source, timeout=5)
            assert r.id == msg_id and str(r.answer[0][0]) == address


def explain(nsd: NSD, tmp_path: Path, *args: str) -> str:
    import subprocess
    import sys

    conf = tmp_path / "explain.yaml"
    conf.write_text(CONFIG.format(port=nsd.port))
    out = subprocess.run(
        [sys.executable, "-m", "splitdns", "explain", "-c", str(conf), *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    said, _, rest = out.stdout.partition("\n")  # explain names the mapping it used first
    assert said == f"config: {conf} (from -c)", said
    return rest


def test_explain_a_rewritten_name(nsd: NSD, tmp_path: Path) -> None:
    out = explain(nsd, tmp_path, "chain.example.test", "--client", "127.0.0.1")
    assert out.splitlines() == [
        "question: chain.example.test A from 127.0.0.1",
        "view: lan (clients 127.0.0.1/32)",
        f"route: default upstreams (failover): 127.0.0.1:{nsd.port}",
        f"upstream: 127.0.0.1:{nsd.port} answered over udp:",
        "  rcode NOERROR",
        "  chain.example.test. 300 IN CNAME alias.example.test.",
        "  alias.example.test. 300 IN CNAME www.example.test.",
        "  www.example.test. 300 IN A 203.0.113.1",
        *NSD_EXTRA,
        "rewrite: www.example.test 203.0.113.1 -> 192.0.2.2 by rewrite[0] "
        "(203.0.113.1 -> 192.0.2.2)",
        "final answer:",
        "  rcode NOERROR",
        "  chain.example.test. 300 IN CNAME alias.example.test.",
        "  alias.example.test. 300 IN CNAME www.example.test.",
        "  www.example.test. 300 IN A 192.0.2.2",
        *NSD_EXTRA,  # authority and glue pass untouched (198.51.100.53 matches no rule)
    ]


NSD_EXTRA = [
    "  example.test. 300 IN NS ns1.example.test.",
    "  ns1.example.test. 300 IN A 198.51.100.53",
]


def test_explain_a_name_outside_all_rules(nsd: NSD, tmp_path: Path) -> None:
    out = explain(nsd, tmp_path, "outside.example.test", "--client", "127.0.0.1")
    assert "rewrite: no rule matched: the answer passes unchanged" in out
    final = out.split("final answer:\n", 1)[1].splitlines()
    assert final[:2] == ["  rcode NOERROR", "  outside.example.test. 300 IN A 198.51.100.7"]
    other = explain(nsd, tmp_path, "www.example.test", "--client", "127.0.0.2")
    assert "view: none (allowed, in no view): plain forwarding, answers untouched" in other
    refused = explain(nsd, tmp_path, "www.example.test", "--client", "198.51.100.1")
    assert refused.splitlines()[-1] == "allow: 198.51.100.1 is outside `allow` -> REFUSED"


def test_explain_a_hosts_name(nsd: NSD, tmp_path: Path) -> None:
    out = explain(nsd, tmp_path, "nas.home.arpa", "--client", "127.0.0.1")
    assert out.splitlines()[2:] == [
        "hosts: answered locally from view lan's hosts (never forwarded)",
        "  rcode NOERROR",
        "  nas.home.arpa. 300 IN A 192.0.2.5",
    ]
