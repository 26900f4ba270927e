"""Seed inputs for the fuzzers: real captures where a real tool can make them, built messages
for what the test zone lacks (DNSSEC records, odd EDNS).

Real captures: the exact bytes `dig` and `kdig` send (caught on a loopback socket) and NSD's
answers to them (CNAME chains, NXDOMAIN with SOA, many A records, AAAA). They are made once per
session, so seeds follow the tools' real behaviour rather than our idea of it.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.query
import dns.rrset

from tests.support.servers import NSD
from tests.support.tools import need

CORPUS = Path(__file__).parent / "corpus"

NAMES = [
    ("www.example.test", "A"),
    ("chain.example.test", "A"),
    ("two.example.test", "A"),
    ("dual.example.test", "AAAA"),
    ("big.example.test", "A"),
    ("missing.example.test", "A"),
    ("example.test", "SOA"),
    ("example.test", "NS"),
]


def capture_client_query(argv: list[str]) -> bytes:
    """The first datagram a real client sends to a loopback socket (it gets no answer)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5)
        port = str(sock.getsockname()[1])
        proc = subprocess.Popen(
            [a.replace("PORT", port) for a in argv],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            return sock.recv(65535)
        finally:
            proc.kill()
            proc.wait(5)


def client_queries() -> list[bytes]:
    dig = need("dig", "bind9-dnsutils")
    kdig = need("kdig", "knot-dnsutils")
    argvs = [
        [dig, "@127.0.0.1", "-p", "PORT", "+tries=1", "www.example.test"],
        [
            dig,
            "@127.0.0.1",
            "-p",
            "PORT",
            "+tries=1",
            "+dnssec",
            "+cd",
            "dual.example.test",
            "AAAA",
        ],
        [dig, "@127.0.0.1", "-p", "PORT", "+tries=1", "+nsid", "+subnet=192.0.2.0/24", "x.test"],
        [dig, "@127.0.0.1", "-p", "PORT", "+tries=1", "+noedns", "-x", "192.0.2.5"],
        [
            kdig,
            "@127.0.0.1",
            "-p",
            "PORT",
            "+retry=0",
            "+padding=64",
            "+cookie",
            "www.example.test",
        ],
    ]
    return [capture_client_query(argv) for argv in argvs]


def nsd_answers(nsd: NSD) -> list[bytes]:
    out = []
    for name, rdtype in NAMES:
        for edns in (False, True):
            q = dns.message.make_query(
                name, rdtype, use_edns=0 if edns else False, want_dnssec=edns
            )
            wire = q.to_wire()
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.settimeout(3)
                sock.sendto(wire, ("127.0.0.1", nsd.port))
                out.append(sock.recv(65535))
    return out


def built_answers() -> list[bytes]:
    """DNSSEC-shaped and unusual answers the unsigned test zone cannot give."""
    q = dns.message.make_query("signed.example.test", "A", want_dnssec=True)
    r = dns.message.make_response(q)
    r.flags |= dns.flags.AD
    r.answer.append(dns.rrset.from_text("signed.example.test.", 300, "IN", "A", "203.0.113.1"))
    r.answer.append(
        dns.rrset.from_text(
            "signed.example.test.",
            300,
            "IN",
            "RRSIG",
            "A 13 3 300 20261231000000 20261101000000 12345 example.test. "
            "oJB1W6WNGv+ldvQ3WDG0MQkg5IEhjRip8WTrPYGv07h108dUKGMeDPKijVCHX3DDKdfb+v6oB9wfuh3DTJXUAfI/M0zmO/zz8bW0Rznl8O3tGNazPwQKkRN20XPXV6nwwfoXmJQbsLNrLfkGJ5D6fwFm8nN+6pBzeDQfsS3Ap3o=",
        )
    )
    r.authority.append(
        dns.rrset.from_text(
            "example.test.", 300, "IN", "NSEC", "zz.example.test. A NS SOA RRSIG NSEC DNSKEY"
        )
    )
    r.additional.append(
        dns.rrset.from_text(
            "example.test.",
            300,
            "IN",
            "DNSKEY",
            "257 3 13 mdsswUyr3DPW132mOi8V9xESWE8jTo0dxCjjnopKl+GqJxpVXckHAeF+"
            "KkxLbxILfDLUT0rAK9iUzy1L53eKGQ==",
        )
    )
    opts = [dns.edns.GenericOption(dns.edns.NSID, b"ns1"), dns.edns.GenericOption(12, b"\x00" * 8)]
    q2 = dns.message.make_query("www.example.test", "A", use_edns=0, options=opts)
    r2 = dns.message.make_response(q2)
    r2.answer.append(dns.rrset.from_text("www.example.test.", 1, "IN", "A", "203.0.113.1"))
    r2.answer.append(
        dns.rrset.from_text("www.example.test.", 60, "IN", "TXT", '"v=spf1 -all"', '"a" "b"')
    )
    return [r.to_wire(), r2.to_wire()]


def corpus_files() -> list[Path]:
    return sorted(CORPUS.glob("*.bin"))
