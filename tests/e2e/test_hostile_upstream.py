"""Hostile upstream replies, one per class the coverage-guided fuzzer found (issue #19), replayed
through the real server from a loopback upstream, with dnspython and dig as clients.

Each crafted reply comes first and the real answer a few milliseconds later: the crafted one
is refused (counted as forged) and the real one served, or, where the reply can be made safe
(a TTL with its top bit set), it is served made safe. Never a public address for the LAN view,
never a message the client cannot parse, never an "internal error" in the server's log.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import dns.rrset
import pytest

from tests.support.canned import CannedUpstream
from tests.support.metrics import scrape, total
from tests.support.servers import SplitDNS, free_port
from tests.support.tools import need

CORPUS = Path(__file__).parents[1] / "fuzz" / "corpus"
CLASSES = sorted(CORPUS.glob("reply-class*.bin"))


def real_answer() -> bytes:
    q = dns.message.make_query("www.example.test", "A")
    r = dns.message.make_response(q)
    r.answer.append(dns.rrset.from_text("www.example.test.", 300, "IN", "A", "203.0.113.1"))
    return bytes(r.to_wire())


def dig(split: SplitDNS) -> str:
    """What dig prints for www.example.test asked of splitdns (one try, five seconds)."""
    binary = need("dig", "bind9-dnsutils")
    return subprocess.run(
        [binary, "@127.0.0.1", "-p", str(split.port), "-b", "127.0.0.1", "+tries=1", "+time=5",
         "www.example.test"],
        capture_output=True, text=True, timeout=30,
    ).stdout  # fmt: skip


@pytest.fixture(scope="module")
def upstream() -> Iterator[CannedUpstream]:
    canned = CannedUpstream()
    yield canned
    canned.stop()


@pytest.fixture(scope="module")
def split(upstream: CannedUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SplitDNS]:
    mport = free_port()
    proc = SplitDNS(
        tmp_path_factory.mktemp("hostile"),
        f'upstreams: ["{upstream.address}"]\ntimeout: 1\ncache: {{size: 0}}\n'
        f'metrics: "127.0.0.1:{mport}"\n'
        "views:\n  - name: lan\n    clients: [127.0.0.1/32]\n    rewrite:\n"
        "      - {from: 203.0.113.0/24, to: 192.0.2.0/24}\n"
        '      - {from: "2001:db8:1::/64", to: "fd00:1::/64"}\n',
    )
    proc.metrics_port = mport  # type: ignore[attr-defined]
    yield proc
    assert proc.stop() == 0, proc.output
    assert "internal error" not in proc.output and "Traceback" not in proc.output, proc.output


def test_there_is_a_regression_input_for_every_class() -> None:
    assert {p.name.split("-")[1] for p in CLASSES} == {f"class{i}" for i in range(1, 8)}


@pytest.mark.parametrize("path", CLASSES, ids=lambda p: p.name)
def test_crafted_reply_then_real_answer(
    path: Path, upstream: CannedUpstream, split: SplitDNS
) -> None:
    upstream.replies = [path.read_bytes(), real_answer()]
    forged = total(scrape(split.metrics_port), "splitdns_upstream_forged_replies_total")  # type: ignore[attr-defined]
    resp = split.query("www.example.test", timeout=5)  # dnspython parses it, or raises
    assert resp.rcode() == dns.rcode.NOERROR, resp
    texts = [rd.to_text() for rrset in resp.answer for rd in rrset]
    assert texts and all(t.startswith("192.0.2.") for t in texts), resp
    if "class7" in path.name:  # made safe, not refused: its TTL is 0, as RFC 2181 §8 reads it
        assert [rrset.ttl for rrset in resp.answer] == [0]
    else:
        after = total(scrape(split.metrics_port), "splitdns_upstream_forged_replies_total")  # type: ignore[attr-defined]
        assert after == forged + 1
    out = dig(split)
    assert "status: NOERROR" in out and "203.0.113." not in out and "WARNING" not in out, out


@pytest.mark.parametrize("path", CLASSES[:3], ids=lambda p: p.name)
def test_crafted_reply_alone_is_servfail_within_the_bound(
    path: Path, upstream: CannedUpstream, split: SplitDNS
) -> None:
    upstream.replies = [path.read_bytes()]
    started = time.monotonic()
    resp = split.query("www.example.test", timeout=5)
    assert resp.rcode() == dns.rcode.SERVFAIL
    assert time.monotonic() - started < 2.0


def test_an_opt_before_the_last_record_with_a_cookie_dnspython_refuses(
    upstream: CannedUpstream, split: SplitDNS
) -> None:
    """Legal, though odd: the OPT record before the last additional record, carrying a 2-octet
    COOKIE that dnspython refuses (found by the coverage-guided fuzzer). splitdns drops the
    upstream's options anyway: the answer is served, its glue rewritten, dig reads it."""
    reply = (CORPUS / "reply-opt-mid-additional-2-octet-cookie.bin").read_bytes()
    upstream.replies = [reply]
    resp = split.query("www.example.test", timeout=5)
    assert resp.rcode() == dns.rcode.NOERROR, resp
    assert [rd.to_text() for rrset in resp.answer for rd in rrset] == ["203.0.112.250"]
    assert [rd.to_text() for rrset in resp.additional for rd in rrset] == ["192.0.2.3"]
    upstream.replies = [reply]
    out = dig(split)
    assert "status: NOERROR" in out and "192.0.2.3" in out and "COOKIE" not in out, out
