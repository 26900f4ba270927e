"""Extended DNS Errors (RFC 8914) as dig prints them: why a LAN client got REFUSED or
SERVFAIL, in its own tools, without reading splitdns's log. Only clients that speak EDNS get
one (the option rides in the OPT record)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import dns.edns
import dns.rcode
import pytest

from tests.support.canned import CannedUpstream
from tests.support.servers import NSD, SplitDNS, free_port

CONFIG = """\
upstreams: ["127.0.0.1:{port}"]
allow: [127.0.0.1/32]
timeout: 1
"""


@pytest.fixture(scope="module")
def server(nsd: NSD, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SplitDNS]:
    proc = SplitDNS(tmp_path_factory.mktemp("ede"), CONFIG.format(port=nsd.port))
    yield proc
    assert proc.stop() == 0, proc.output


def status_and_ede(out: str) -> tuple[str, str | None]:
    status = re.search(r"status: (\w+)", out)
    assert status, out
    ede = re.search(r"^; EDE: (.*)$", out, re.MULTILINE)
    return status.group(1), ede.group(1) if ede else None


def test_a_client_outside_allow_is_told_prohibited(server: SplitDNS) -> None:
    out = server.dig("www.example.test", source="127.0.0.3")
    assert status_and_ede(out) == ("REFUSED", "18 (Prohibited)")


def test_what_a_forwarder_does_not_do_is_not_supported(server: SplitDNS) -> None:
    out = server.dig("version.bind", "CH", "TXT")
    assert status_and_ede(out) == ("REFUSED", "21 (Not Supported)")
    # a zone transfer, asked by dnspython over TCP (dig prints no header for a failed AXFR)
    reply = server.query("example.test", "AXFR", tcp=True, use_edns=0)
    assert reply.rcode() == dns.rcode.REFUSED
    assert [(o.code, o.text) for o in reply.options] == [(dns.edns.EDECode.NOT_SUPPORTED, None)]


def test_answers_carry_no_extended_error(server: SplitDNS) -> None:
    assert status_and_ede(server.dig("www.example.test")) == ("NOERROR", None)


def test_dead_upstreams_are_named_in_the_servfail(tmp_path_factory: pytest.TempPathFactory) -> None:
    closed = f"127.0.0.1:{free_port()}"  # nothing listens: the kernel answers port unreachable
    proc = SplitDNS(tmp_path_factory.mktemp("ede-dead"), CONFIG.format(port=closed.split(":")[1]))
    try:
        status, ede = status_and_ede(proc.dig("www.example.test"))
        assert status == "SERVFAIL", ede
        assert ede is not None and ede.startswith("22 (No Reachable Authority): ("), ede
        assert closed in ede, ede  # which upstream failed, and how
        plain = proc.dig("+noedns", "www2.example.test")
        assert status_and_ede(plain) == ("SERVFAIL", None) and "OPT PSEUDOSECTION" not in plain
    finally:
        assert proc.stop() == 0, proc.output


def test_an_upstreams_own_extended_error_is_passed_on(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A validating upstream's SERVFAIL says why (DNSSEC Bogus): the client hears it too."""
    q = dns.message.make_query("www.example.test", "A", use_edns=0)
    servfail = dns.message.make_response(q)
    servfail.set_rcode(dns.rcode.SERVFAIL)
    bogus = dns.edns.EDEOption(dns.edns.EDECode.DNSSEC_BOGUS, "no valid RRSIG")
    servfail.use_edns(0, 0, 1232, options=[bogus])
    upstream = CannedUpstream()
    upstream.replies = [servfail.to_wire()]
    proc = SplitDNS(tmp_path_factory.mktemp("ede-up"), CONFIG.format(port=upstream.port))
    try:
        status, ede = status_and_ede(proc.dig("www.example.test"))
        assert status == "SERVFAIL", ede
        assert ede is not None and ede.startswith("22 (No Reachable Authority)"), ede
        assert f"{upstream.address}: SERVFAIL (EDE 6: no valid RRSIG)" in ede, ede
    finally:
        assert proc.stop() == 0, proc.output
        upstream.stop()
