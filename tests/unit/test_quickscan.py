"""quickscan against wire.walk: whatever the scan accepts, the walk accepts too and reads the
same way (TTL offsets, addresses, OPT); mutated and hostile replies included."""

from __future__ import annotations

import dns.message
import dns.rrset
from hypothesis import given, settings
from hypothesis import strategies as st

from splitdns import wire
from splitdns.answer.quickscan import GLUE, scan
from splitdns.upstream import packets

NAME = b"\x03www\x07example\x04test\x00"
A_IN = b"\x00\x01\x00\x01"


Row = tuple[str, str, str]  # name, type, data


def reply(
    *answers: Row,
    authority: tuple[Row, ...] = (),
    additional: tuple[Row, ...] = (),
    edns: bool = True,
) -> bytes:
    q = dns.message.make_query("www.example.test.", "A", use_edns=0 if edns else False)
    q.id = 0x1234
    r = dns.message.make_response(q)
    for section, rows in (
        (r.answer, answers),
        (r.authority, authority),
        (r.additional, additional),
    ):
        for name, rdtype, data in rows:
            section.append(dns.rrset.from_text(name, 300, "IN", rdtype, data))
    return bytes(r.to_wire())


SEEDS = [
    reply(("www.example.test.", "A", "203.0.113.1")),
    reply(("www.example.test.", "A", "203.0.113.1"), edns=False),
    reply(
        ("www.example.test.", "CNAME", "edge.cdn.test."),
        ("edge.cdn.test.", "A", "203.0.113.4"),
        authority=(("cdn.test.", "NS", "ns.cdn.test."),),
        additional=(("ns.cdn.test.", "A", "198.51.100.1"), ("ns.cdn.test.", "AAAA", "2001:db8::1")),
    ),
    reply(
        ("www.example.test.", "AAAA", "2001:db8::5"),
        authority=(("example.test.", "SOA", "ns.example.test. h.example.test. 1 2 3 4 5"),),
    ),
]


def agrees(data: bytes) -> None:
    """The scan's verdict holds up against the full walk."""
    checked = scan(data, 0x1234, NAME, A_IN)
    if checked is None:
        return
    message = wire.walk(data)  # raises (and fails the test) if the scan let through junk
    query = wire.parse_query(bytes(dns.message.make_query("www.example.test.", "A").to_wire()))
    assert packets.reply_matches(message, 0x1234, query)
    flags, answers, opt_start, ttls, low, high, addresses = checked
    records = [r for r in message.records if r.rtype != wire.TYPE_OPT]
    assert ttls == [
        (r.ttl_offset, int.from_bytes(data[r.ttl_offset : r.ttl_offset + 4], "big"))
        for r in records
    ]
    if ttls:
        assert (low, high) == (min(t for _, t in ttls), max(t for _, t in ttls))
    assert addresses == [
        (r.rtype + (GLUE if r.section == wire.ADDITIONAL else 0), r.rdata_offset)
        for r in records
        if r.rtype in (wire.TYPE_A, wire.TYPE_AAAA) and r.section != wire.AUTHORITY
    ]
    opts = [r.start for r in message.records if r.rtype == wire.TYPE_OPT]
    assert opt_start == (opts[0] if opts else -1)
    assert answers == len(message.section(wire.ANSWER))
    assert flags == message.flags


def test_every_seed_is_taken_and_read_as_the_walk_reads_it() -> None:
    for seed in SEEDS:
        assert scan(seed, 0x1234, NAME, A_IN) is not None
        agrees(seed)


def test_replies_to_other_questions_are_not_taken() -> None:
    seed = SEEDS[0]
    assert scan(seed, 0x4321, NAME, A_IN) is None  # another ID
    assert scan(seed, 0x1234, b"\x03www\x05other\x04test\x00", A_IN) is None
    assert scan(seed, 0x1234, NAME, b"\x00\x1c\x00\x01") is None  # another type
    assert scan(seed[:-1], 0x1234, NAME, A_IN) is None  # cut short
    assert scan(seed + b"\x00", 0x1234, NAME, A_IN) is None  # a byte after the last record
    upper = seed[:13] + b"WWW" + seed[16:]
    assert scan(upper, 0x1234, NAME, A_IN) is not None  # the name's case is the client's


@settings(max_examples=1500, deadline=None)
@given(
    st.sampled_from(SEEDS),
    st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=4),
    st.integers(0, 400),
)
def test_mutated_replies_never_pass_the_scan_and_fail_the_walk(
    seed: bytes, flips: list[tuple[int, int]], cut: int
) -> None:
    data = bytearray(seed)
    for where, value in flips:
        if where < len(data):
            data[where] = value
    if cut:
        data = data[: max(12, len(data) - cut % 40)]
    agrees(bytes(data))


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(SEEDS), st.integers(12, 200), st.integers(12, 200))
def test_pointers_anywhere_are_judged_as_the_walk_judges_them(
    seed: bytes, where: int, target: int
) -> None:
    data = bytearray(seed)
    if where + 1 < len(data):
        data[where : where + 2] = bytes([0xC0 | (target >> 8), target & 0xFF])
    agrees(bytes(data))
