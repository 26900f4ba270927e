"""The express lane's reply check: the common upstream answer, validated without decoding it.

`wire.walk` reads every name as text and builds a Record per record: right for everything a
policy may need, but most of a miss's CPU on the usual answer (A/AAAA, a CNAME or two, an NS
and glue, an OPT last). `scan` checks that usual answer by the same rules (#19: names whose
pointers land on an earlier name's labels, record data shaped like its type, OPT last and
well formed, nothing after the last record) and returns only offsets: the TTLs, and the
addresses a rewrite may touch. Anything else, or anything malformed, returns None and the
caller takes the full walk, which decides (tests/unit/test_quickscan.py holds the two to the
same verdicts).
"""

from __future__ import annotations

import struct

from splitdns import wire

_NAME_DATA = frozenset({wire.TYPE_NS, wire.TYPE_CNAME, wire.TYPE_PTR})
_A, _AAAA, _OPT, _SOA, _IN = (
    wire.TYPE_A,
    wire.TYPE_AAAA,
    wire.TYPE_OPT,
    wire.TYPE_SOA,
    wire.CLASS_IN,
)
_RR = struct.Struct("!HHIH").unpack_from  # wire.RR_FIXED's: type, class, TTL, data length
_ADDRESSES = frozenset({_A, _AAAA})
#: added to the type of an address outside the answer section (glue): its owner is another
#: name, so the lane leaves a rewrite of it to the chain, which credits that name
GLUE = 0x10000


#: What the lane needs of a checked reply, offsets into it (a plain tuple: a NamedTuple's
#: constructor was a twentieth of the scan): flags; records in the answer section; where the
#: trailing OPT record begins (-1 without one); (TTL offset, TTL) of every record but the
#: OPT; the smallest and the largest of those TTLs; (type, data offset) of each A/AAAA
#: outside the authority section (the type + GLUE in the additional section).
Scan = tuple[int, int, int, list[tuple[int, int]], int, int, list[tuple[int, int]]]


def _name_end(data: bytes, offset: int, starts: dict[int, int]) -> int:
    """Where the name at `offset` ends, -1 if `wire.walk` would refuse it. `starts` maps each
    earlier label start (and root) to the name's wire length from there, as the walk's memo
    does: a pointer must land on one, and this name's own starts are added."""
    size = len(data)
    pos = offset
    own = 0
    positions: list[int] = []
    while True:
        if pos >= size:
            return -1
        length = data[pos]
        if length == 0:
            tail = 1
            end = pos + 1
            starts[pos] = 1
            break
        if length >= 0xC0:
            if pos + 1 >= size:
                return -1
            target = ((length & 0x3F) << 8) | data[pos + 1]
            if target >= offset or target < wire.HEADER_LEN:
                return -1
            known = starts.get(target)
            if known is None:
                return -1
            tail = known
            end = pos + 2
            break
        if length > 63:
            return -1
        own += length + 1
        if own >= 255 or pos + 1 + length > size:
            return -1
        positions.append(pos)
        pos += 1 + length
    remaining = own + tail
    if remaining > 255:
        return -1
    for start in positions:
        starts[start] = remaining
        remaining -= data[start] + 1
    return end


def scan(data: bytes, msg_id: int, lname: bytes, qtype_class: bytes) -> Scan | None:
    """A reply to our question (`lname`: its name in wire form, lower case) checked, or None
    for "not the usual shape, or not valid: ask wire.walk"."""
    name_end = wire.HEADER_LEN + len(lname)
    qend = name_end + 4
    size = len(data)
    if (
        size < qend
        or (data[0] << 8) | data[1] != msg_id
        or data[4:6] != b"\x00\x01"
        or data[name_end:qend] != qtype_class
        or data[wire.HEADER_LEN : name_end].lower() != lname
    ):
        return None
    flags = (data[2] << 8) | data[3]
    if flags & wire.OPCODE_MASK or not flags & wire.QR:
        return None
    _, _, _, an, ns, ar = wire.HEADER.unpack_from(data)
    starts: dict[int, int] = {}
    pos = wire.HEADER_LEN
    remaining = len(lname)
    step = data[pos] + 1
    while step > 1:  # the question repeats ours (one plain name): its label starts
        starts[pos] = remaining
        remaining -= step
        pos += step
        step = data[pos] + 1
    starts[pos] = 1
    pos = qend
    total = an + ns + ar
    authority_end = an + ns
    ttls: list[tuple[int, int]] = []
    addresses: list[tuple[int, int]] = []
    opt_start = -1
    low, high = 0xFFFFFFFF, 0
    try:  # reading past the end (IndexError, struct.error) refuses the reply
        for i in range(total):
            start = pos
            first = data[pos]
            if first >= 0xC0:  # the usual owner: one pointer to a known name
                if (((first & 0x3F) << 8) | data[pos + 1]) not in starts:
                    return None
                pos += 2
            elif not first:  # the root (an OPT's owner), as _name_end reads it
                starts[pos] = 1
                pos += 1
            else:
                pos = _name_end(data, pos, starts)
                if pos < 0:
                    return None
            rtype, rclass, ttl, rdlength = _RR(data, pos)
            rdata = pos + 10
            end = rdata + rdlength
            if end > size:
                return None
            if rtype in _ADDRESSES:
                if rclass != _IN or ttl & 0x80000000 or rdlength != (4 if rtype == _A else 16):
                    return None
                if i < an:
                    addresses.append((rtype, rdata))
                elif i >= authority_end:
                    addresses.append((rtype + GLUE, rdata))
            elif rtype == _OPT:
                if i != total - 1 or i < authority_end or data[start] != 0:
                    return None
                option = rdata
                while option < end:  # options (code, length, value) exactly fill the data
                    if option + 4 > end:
                        return None
                    option += 4 + ((data[option + 2] << 8) | data[option + 3])
                if option != end:
                    return None
                opt_start = start
                pos = end
                continue
            elif rclass != _IN or ttl & 0x80000000:
                return None
            elif rtype in _NAME_DATA:
                if _name_end(data, rdata, starts) != end:
                    return None
            elif rtype == _SOA:
                second = _name_end(data, rdata, starts)
                if second < 0 or second > end:
                    return None
                last = _name_end(data, second, starts)
                if last < 0 or last > end or last + 20 != end:
                    return None
            else:
                return None
            ttls.append((pos + 4, ttl))
            if ttl < low:
                low = ttl
            if ttl > high:
                high = ttl
            pos = end
    except (IndexError, struct.error):
        return None
    if pos != size:
        return None
    return flags, an, opt_start, ttls, low, high, addresses
