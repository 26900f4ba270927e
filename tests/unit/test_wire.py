"""The codec: hand-written query parse, name decoding limits, finalising answers."""

from __future__ import annotations

import ipaddress

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import pytest

from splitdns import wire
from splitdns.answer import localanswers
from splitdns.answer.views import client_address, is_allowed, select_view
from splitdns.config import model as config
from splitdns.upstream import packets


def query_wire(name: str = "www.example.com.", rdtype: str = "A", **kw: object) -> bytes:
    q = dns.message.make_query(name, rdtype, **kw)  # type: ignore[arg-type]
    q.id = 0x1234
    return bytes(q.to_wire())


def test_parse_plain_query() -> None:
    q = wire.parse_query(query_wire("WWW.Example.com."))
    assert (q.msg_id, q.question.name, q.question.qtype) == (0x1234, "www.example.com", 1)
    assert not q.edns and q.udp_limit() == 512
    assert q.question.name_wire.startswith(b"\x03WWW")  # case kept for the echo


def test_parse_edns_query() -> None:
    q = wire.parse_query(query_wire(use_edns=0, payload=4000, want_dnssec=True))
    assert q.edns and q.do and q.payload == 4000 and q.udp_limit() == 4000
    big = wire.parse_query(query_wire(use_edns=0, payload=65000))
    assert big.udp_limit() == wire.MAX_UDP
    tiny = wire.parse_query(query_wire(use_edns=0, payload=100))
    assert tiny.udp_limit() == 512


def test_too_short_is_dropped() -> None:
    with pytest.raises(wire.WireError) as info:
        wire.parse_query(b"\x12\x34\x01")
    assert not isinstance(info.value, wire.HeaderOnlyError)


def test_response_is_dropped() -> None:
    data = bytearray(query_wire())
    data[2] |= 0x80
    with pytest.raises(wire.WireError) as info:
        wire.parse_query(bytes(data))
    assert not isinstance(info.value, wire.HeaderOnlyError)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda d: d[:12] + b"\x03ab",  # truncated label
        lambda d: d[:4] + b"\x00\x02" + d[6:],  # qdcount 2
        lambda d: d[:4] + b"\x00\x00" + d[6:],  # qdcount 0
        lambda d: d[:12] + b"\xc0\x0c\x00\x01\x00\x01",  # pointer to itself
        lambda d: d[:12] + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01",  # label over 63
        lambda d: d[:12] + (b"\x3f" + b"a" * 63) * 5 + b"\x00\x00\x01\x00\x01",  # name over 255
        lambda d: d[:10] + b"\x00\x02" + d[12:] + wire._opt_record(1232, False) * 2,  # two OPT
    ],
    ids=["truncated", "qd2", "qd0", "loop", "label64", "name256", "two-opt"],
)
def test_malformed_questions_are_formerr(mangle: object) -> None:
    data = mangle(query_wire())  # type: ignore[operator]
    with pytest.raises(wire.HeaderOnlyError) as info:
        wire.parse_query(data)
    assert info.value.msg_id == 0x1234


def test_finalize_echoes_id_and_case_and_adds_opt() -> None:
    q = wire.parse_query(query_wire("WwW.example.com.", use_edns=0, want_dnssec=True))
    bare = wire.make_answer(
        wire.parse_query(query_wire("www.example.com.")), [(1, 60, bytes([192, 0, 2, 1]))]
    )
    out = dns.message.from_wire(wire.finalize(q, bare, 1232))
    assert out.id == 0x1234
    assert out.question[0].name.to_text() == "WwW.example.com."
    assert out.edns == 0 and out.ednsflags & dns.flags.DO
    assert str(out.answer[0][0]) == "192.0.2.1"


def test_finalize_truncates_with_tc() -> None:
    q = wire.parse_query(query_wire())
    rrs = [(1, 60, bytes([192, 0, 2, i])) for i in range(60)]
    out = dns.message.from_wire(wire.finalize(q, wire.make_answer(q, rrs), 512))
    assert out.flags & dns.flags.TC and not out.answer
    full = dns.message.from_wire(wire.finalize(q, wire.make_answer(q, rrs), None))
    assert len(full.answer[0]) == 60


def test_badvers() -> None:
    q = wire.parse_query(query_wire(use_edns=1))
    assert q.edns_version == 1
    out = dns.message.from_wire(wire.make_badvers(q))
    assert out.rcode() == dns.rcode.BADVERS
    assert out.edns == 0 and not out.ednsflags & dns.flags.DO
    signed = wire.parse_query(query_wire(use_edns=1, want_dnssec=True))
    out = dns.message.from_wire(wire.make_badvers(signed))
    assert out.rcode() == dns.rcode.BADVERS and out.ednsflags & dns.flags.DO  # RFC 3225


def test_extended_dns_error_rides_in_our_opt_and_survives_padding() -> None:
    q = wire.parse_query(query_wire(use_edns=0))
    option = wire.ede_option(wire.EDE_NO_REACHABLE_AUTHORITY, "127.0.0.1:53: timeout")
    out = wire.finalize(q, wire.make_error(q, wire.SERVFAIL), 512, option)
    msg = dns.message.from_wire(out)
    assert msg.rcode() == dns.rcode.SERVFAIL and msg.edns == 0
    assert [(o.code, o.text) for o in msg.options] == [(22, "127.0.0.1:53: timeout")]
    padded = wire.pad(out, len(option))
    assert len(padded) % wire.PADDING_BLOCK == 0
    msg = dns.message.from_wire(padded)
    assert [o.otype for o in msg.options] == [dns.edns.EDE, dns.edns.PADDING]
    assert wire.pad(out) == out  # the OPT's options not as said: left alone
    long = wire.ede_option(0, "é" * 150)  # cut to EDE_TEXT_BYTES, whole characters only
    assert len(long) <= 6 + wire.EDE_TEXT_BYTES and long[6:].decode() == "é" * 100


def test_an_upstreams_extended_errors_are_read() -> None:
    q = dns.message.make_query("www.example.test", "A", use_edns=0)
    r = dns.message.make_response(q)
    r.set_rcode(dns.rcode.SERVFAIL)
    unknown = dns.edns.GenericOption(99, b"x")  # type: ignore[arg-type]
    bogus = dns.edns.EDEOption(dns.edns.EDECode.DNSSEC_BOGUS, "bogus")
    r.use_edns(0, 0, 1232, options=[bogus, dns.edns.EDEOption(dns.edns.EDECode.OTHER), unknown])
    data = r.to_wire()
    assert wire.extended_errors(data, wire.walk(data)) == [(6, "bogus"), (0, "")]
    plain = dns.message.make_response(dns.message.make_query("x.test", "A")).to_wire()
    assert wire.extended_errors(plain, wire.walk(plain)) == []


def test_upstream_query_has_fresh_id_and_edns() -> None:
    q = wire.parse_query(query_wire(want_dnssec=True))
    ids = {packets.make_upstream_query(q)[0] for _ in range(50)}
    assert len(ids) > 40
    msg_id, packet = packets.make_upstream_query(q)
    up = dns.message.from_wire(packet)
    assert up.id == msg_id and up.edns == 0 and up.payload == 1232
    assert up.ednsflags & dns.flags.DO


def test_strip_opt() -> None:
    q = dns.message.make_query("a.example.", "A", use_edns=0)
    r = dns.message.make_response(q)
    data = bytes(r.to_wire())
    stripped, walked = wire.strip_opt(data, wire.walk(data))
    assert walked.records == []
    assert dns.message.from_wire(stripped).edns == -1


def test_strip_opt_in_the_middle_of_the_additional_section() -> None:
    """An OPT before another additional record is legal (RFC 6891 §6.1.1); its options go with
    it, even one dnspython refuses (a 2-octet COOKIE, found by the coverage-guided fuzzer):
    the rest of the reply stays, readable."""
    answer = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x01\x2c\x00\x04\xcb\x00\x70\xfa"
    opt = b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x06\x00\x0a\x00\x02ab"
    glue = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x01\x2c\x00\x04\xcb\x00\x71\x03"
    head = b"\x12\x34\x81\x80\x00\x01\x00\x01\x00\x00\x00\x02"
    data = head + b"\x03www\x07example\x04test\x00\x00\x01\x00\x01" + answer + opt + glue
    stripped, walked = wire.strip_opt(data, wire.walk(data))
    parsed = dns.message.from_wire(stripped)
    assert parsed.edns == -1 and [r.rtype for r in walked.records] == [1, 1]
    assert [str(rr[0]) for rr in (*parsed.answer, *parsed.additional)] == [
        "203.0.112.250",
        "203.0.113.3",
    ]


def test_read_name_escapes_dots_inside_labels() -> None:
    data = b"\x03a.b\x03com\x00"
    assert wire.read_name(data, 0) == ("a\\.b.com", len(data))


def test_reply_matching() -> None:
    q = wire.parse_query(query_wire())
    msg_id, packet = packets.make_upstream_query(q)
    reply = dns.message.make_response(dns.message.from_wire(packet))
    walked = wire.walk(bytes(reply.to_wire()))
    assert packets.reply_matches(walked, msg_id, q)
    assert not packets.reply_matches(walked, msg_id ^ 1, q)
    other = wire.parse_query(query_wire("other.example.com."))
    assert not packets.reply_matches(walked, msg_id, other)


# --------------------------------------------------------------------------- local answers

HOSTS_VIEW = config.loads(
    """
views:
  - name: lan
    clients: [192.168.1.0/24]
    hosts_ttl: 42
    hosts:
      nas.home.arpa: [192.168.1.5, "fd00::5"]
      nas2.home.arpa: 192.168.1.5
      "*.lab.example.com": 192.168.1.7
      "*.deep.lab.example.com": 192.168.1.8
""",
    "t.yaml",
).views[0]


def local(name: str, rdtype: str) -> dns.message.Message | None:
    bare = localanswers.answer(wire.parse_query(query_wire(name, rdtype)), HOSTS_VIEW)
    return None if bare is None else dns.message.from_wire(bare)


def test_hosts_a_and_aaaa_and_nodata() -> None:
    a = local("nas.home.arpa.", "A")
    assert a is not None and a.flags & dns.flags.AA
    assert a.answer[0].to_text() == "nas.home.arpa. 42 IN A 192.168.1.5"
    aaaa = local("NAS.home.arpa.", "AAAA")
    assert aaaa is not None and str(aaaa.answer[0][0]) == "fd00::5"
    mx = local("nas.home.arpa.", "MX")
    assert mx is not None and mx.rcode() == 0 and mx.answer == []
    assert local("other.home.arpa.", "A") is None


def test_hosts_wildcards_longest_suffix() -> None:
    assert str(local("x.y.lab.example.com.", "A").answer[0][0]) == "192.168.1.7"  # type: ignore[union-attr]
    assert str(local("z.deep.lab.example.com.", "A").answer[0][0]) == "192.168.1.8"  # type: ignore[union-attr]
    assert local("lab.example.com.", "A") is None


def test_hosts_ptr_lists_every_exact_name() -> None:
    ptr = local("5.1.168.192.in-addr.arpa.", "PTR")
    assert ptr is not None
    assert sorted(str(r) for r in ptr.answer[0]) == ["nas.home.arpa.", "nas2.home.arpa."]
    v6 = local(ipaddress.ip_address("fd00::5").reverse_pointer + ".", "PTR")
    assert v6 is not None and str(v6.answer[0][0]) == "nas.home.arpa."
    assert local("9.1.168.192.in-addr.arpa.", "PTR") is None


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("4.3.2.1.in-addr.arpa", "1.2.3.4"),
        ("4.3.2.in-addr.arpa", None),
        ("999.3.2.1.in-addr.arpa", None),
        ("x.in-addr.arpa", None),
        ("1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa", "::1"),
        ("1.ip6.arpa", None),
    ],
)
def test_reverse_names(name: str, expected: str | None) -> None:
    got = localanswers.reverse_address(name)
    assert (str(got) if got is not None else None) == expected


# --------------------------------------------------------------------------- views


def test_view_selection_first_match_wins() -> None:
    cfg = config.loads(
        """
views:
  - {name: acme, clients: [192.168.1.10/32]}
  - {name: lan, clients: [192.168.1.0/24, "fd00::/64"]}
""",
        "t.yaml",
    )
    pick = lambda a: getattr(select_view(cfg.views, client_address(a)), "name", None)  # noqa: E731
    assert pick("192.168.1.10") == "acme"
    assert pick("192.168.1.11") == "lan"
    assert pick("::ffff:192.168.1.11") == "lan"  # dual-stack socket address
    assert pick("fd00::1") == "lan"
    assert pick("10.0.0.1") is None
    assert is_allowed(cfg.allow, client_address("10.0.0.1"))
    assert not is_allowed(cfg.allow, client_address("198.51.100.1"))


def test_query_ids_come_from_a_batch_that_forked_workers_do_not_share() -> None:
    import os

    first = packets.random_id()
    assert packets._ids, "a batch is kept after the first ID"
    assert 0 <= first < 65536
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a worker after `--workers N` forks
        os.write(write, str(len(packets._ids)).encode())
        os._exit(0)
    os.close(write)
    left_in_child = int(os.read(read, 16))
    os.close(read)
    os.waitpid(pid, 0)
    assert left_in_child == 0  # it draws a batch of its own
    assert len({packets.random_id() for _ in range(1000)}) > 950  # and IDs are spread


def test_the_peek_memo_is_bounded_and_reads_as_peek() -> None:
    """A flood of different remembered questions never holds more than PEEK_MEMO of them, and
    a long query is read afresh, never kept."""
    for i in range(wire.PEEK_MEMO + 10):
        data = query_wire(f"n{i}.example.com.")
        peeked = wire.peek(data)
        assert peeked is not None
        wire.remember(data, peeked)
        assert wire.peek_remembered(data) == (peeked, True)
    assert len(wire._PEEKED) <= wire.PEEK_MEMO
    long = query_wire("a" * 60 + "." + "b" * 60 + "." + "c" * 60 + "." + "d" * 60 + ".")
    assert len(long) > wire.PEEK_MEMO_BYTES
    peeked = wire.peek(long)
    assert peeked is not None
    wire.remember(long, peeked)
    assert long[2:] not in wire._PEEKED and wire.peek_remembered(long) == (peeked, False)
