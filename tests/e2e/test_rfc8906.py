"""RFC 8906 §8 (the queries DNS servers fail to answer well), asked with dig of splitdns in
front of NSD, with the expectations for a recursive server (RD=1, AA=0): the checks outside
conformance testers (ISC's genreport, the hickory-dns conformance suite) make.

Every UDP row is asked twice, so the answer is checked both from the upstream (the express
lane or the chain) and from the cache; TCP rows once.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tests.support.servers import NSD, SplitDNS

CONFIG = """\
upstreams: ["127.0.0.1:{port}"]
allow: [127.0.0.1/32]
"""


@pytest.fixture(scope="module")
def server(nsd: NSD, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SplitDNS]:
    proc = SplitDNS(tmp_path_factory.mktemp("rfc8906"), CONFIG.format(port=nsd.port))
    yield proc
    assert proc.stop() == 0, proc.output


@dataclass
class Reply:
    """What dig printed, in the terms RFC 8906 §8 checks."""

    status: str
    opcode: str
    flags: set[str]
    header_mbz: bool  # the header's Z bit set in the response
    answers: int
    sections: tuple[int, int, int, int]  # question, answer, authority, additional counts
    opt: bool
    edns_version: int | None = None
    edns_flags: set[str] = field(default_factory=set)
    edns_mbz: bool = False  # unknown EDNS flags echoed
    options: list[str] = field(default_factory=list)  # EDNS options in the response

    @classmethod
    def parse(cls, out: str) -> Reply:
        head = re.search(r"opcode: (\w+), status: (\w+)", out)
        counts = re.search(
            r";; flags:([^;]*);(?: MBZ: \S+;)? QUERY: (\d+), ANSWER: (\d+), "
            r"AUTHORITY: (\d+), ADDITIONAL: (\d+)",
            out,
        )
        assert head and counts, out
        question, answer, authority, additional = (int(counts.group(i)) for i in range(2, 6))
        reply = cls(
            status=head.group(2),
            opcode=head.group(1),
            flags=set(counts.group(1).split()),
            header_mbz=bool(re.search(r";; flags:[^;]*; MBZ:", out)),
            answers=answer,
            sections=(question, answer, authority, additional),
            opt=";; OPT PSEUDOSECTION:" in out,
        )
        if reply.opt:
            pseudo = out.split(";; OPT PSEUDOSECTION:\n", 1)[1].split("\n;; ", 1)[0]
            edns = re.search(r"; EDNS: version: (\d+), flags:([^;]*);( MBZ: \S+,)?", pseudo)
            assert edns, out
            reply.edns_version = int(edns.group(1))
            reply.edns_flags = set(edns.group(2).split())
            reply.edns_mbz = edns.group(3) is not None
            reply.options = [line.split(":")[0] for line in pseudo.splitlines()[1:]]
        return reply


def ask(server: SplitDNS, name: str, rdtype: str, *options: str) -> Reply:
    out = server.dig(name, rdtype, "+nocookie", *options)
    assert "connection timed out" not in out and "communications error" not in out, out
    return Reply.parse(out)


def asked(server: SplitDNS, name: str, rdtype: str, *options: str) -> list[Reply]:
    """The row over UDP twice (upstream, then cache) or once over TCP."""
    times = 1 if "+tcp" in options else 2
    return [ask(server, name, rdtype, *options) for _ in range(times)]


# §8.1: plain DNS. (options, type) -> every reply: NOERROR, RD=1, AA=0, AD=0, no OPT.
PLAIN = {
    "8.1.1 zone configured": ("+noedns", "SOA"),
    "8.1.2 unknown type": ("+noedns", "TYPE1000"),
    "8.1.3.1 CD=1": ("+noedns +cdflag", "SOA"),
    "8.1.3.2 AD=1": ("+noedns +adflag", "SOA"),
    "8.1.3.3 reserved header bit": ("+noedns +zflag", "SOA"),
    "8.1.5 TCP": ("+noedns +tcp", "SOA"),
}


@pytest.mark.parametrize("case", PLAIN, ids=list(PLAIN))
def test_plain_dns(server: SplitDNS, case: str) -> None:
    options, rdtype = PLAIN[case]
    for reply in asked(server, "example.test", rdtype, *options.split()):
        assert reply.status == "NOERROR", (case, reply)
        assert reply.answers == (0 if rdtype == "TYPE1000" else 1), (case, reply)
        assert {"qr", "rd", "ra"} <= reply.flags and not {"aa", "ad"} & reply.flags, reply
        assert not reply.opt and not reply.header_mbz, (case, reply)


@pytest.mark.parametrize("question", [(), ("+noheader-only",)], ids=["header only", "question"])
def test_8_1_4_unknown_opcode_gets_notimp(server: SplitDNS, question: tuple[str, ...]) -> None:
    options = ("+noedns", "+opcode=15", *(question or ("+header-only",)))
    reply = ask(server, "example.test", "SOA", *options)
    assert (reply.status, reply.opcode) == ("NOTIMP", "RESERVED15"), reply
    assert reply.sections[1:] == (0, 0, 0) and not reply.opt, reply
    assert not {"aa", "rd", "ad", "ra"} & reply.flags, reply  # (genreport flags RA here)


# §8.2: EDNS. (options, type) -> (status, answers, options the reply may carry: none)
EDNS = {
    "8.2.1 minimal EDNS": ("+edns=0", "SOA", "NOERROR", 1),
    "8.2.2 version negotiation": ("+edns=1 +noednsneg", "SOA", "BADVERS", 0),
    "8.2.3 unknown option": ("+edns=0 +ednsopt=100", "SOA", "NOERROR", 1),
    "8.2.4 unknown flag": ("+edns=0 +ednsflags=0x40", "SOA", "NOERROR", 1),
    "8.2.5 version and unknown flag": ("+edns=1 +noednsneg +ednsflags=0x40", "SOA", "BADVERS", 0),
    "8.2.6 version and unknown option": ("+edns=1 +noednsneg +ednsopt=100", "SOA", "BADVERS", 0),
    "8.2.8 DO=1": ("+edns=0 +dnssec", "SOA", "NOERROR", 1),
    "8.2.9 version and DO=1": ("+edns=1 +noednsneg +dnssec", "SOA", "BADVERS", 0),
    "8.2.10 known options": ("+nsid +expire +subnet=0", "SOA", "NOERROR", 1),
    "8.2 over TCP": ("+edns=0 +ednsopt=100 +ednsflags=0x40 +tcp", "SOA", "NOERROR", 1),
}


@pytest.mark.parametrize("case", EDNS, ids=list(EDNS))
def test_edns(server: SplitDNS, case: str) -> None:
    options, rdtype, status, answers = EDNS[case]
    for reply in asked(server, "example.test", rdtype, *options.split()):
        assert (reply.status, reply.answers) == (status, answers), (case, reply)
        assert reply.opt and reply.edns_version == 0, (case, reply)
        assert not reply.edns_mbz and not reply.options, (case, reply)  # unknown: ignored
        assert ("do" in reply.edns_flags) == ("+dnssec" in options), (case, reply)
        assert not {"aa", "ad"} & reply.flags and "rd" in reply.flags, (case, reply)


def test_8_2_7_a_large_answer_is_truncated_to_the_client_buffer(server: SplitDNS) -> None:
    """RFC 8906 asks a DNSKEY with a 512-byte buffer; "big" holds 40 A records (~700 bytes)."""
    for reply in asked(server, "big.example.test", "A", "+bufsize=512", "+dnssec", "+ignore"):
        assert "tc" in reply.flags and reply.status == "NOERROR", reply
        assert reply.opt and reply.edns_version == 0 and "do" in reply.edns_flags, reply
