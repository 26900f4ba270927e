"""RFC 2136 UPDATE messages and their TSIG (RFC 8945), read and answered on the wire.

Hand-made, like wire.py, because an UPDATE is judged on the event loop every query also runs
on: dnspython took about 1 ms of CPU per update (parse, verify, sign), which at a DHCP
server's 500 updates a second put queries behind it. Here a signed update costs tens of
microseconds. The MAC is HMAC over exactly the bytes RFC 8945 section 4.3 lists; names in the
RDATA of the types that hold them are stored uncompressed, so a stored record never points
into the message it came in.
"""

from __future__ import annotations

import hmac
import struct
from dataclasses import dataclass

from splitdns import wire

OPCODE_UPDATE = 5
CLASS_NONE, CLASS_ANY = 254, 255
TYPE_TSIG = 250
FUDGE = 300
#: TSIG algorithm names (as on the wire) -> hashlib's
DIGESTS = {
    "hmac-md5.sig-alg.reg.int": "md5",
    "hmac-sha1": "sha1",
    "hmac-sha224": "sha224",
    "hmac-sha256": "sha256",
    "hmac-sha384": "sha384",
    "hmac-sha512": "sha512",
}
#: types whose RDATA is a name, or fixed octets then a name (RFC 3597 section 4: the ones
#: that may be compressed), as (octets before the name)
NAME_RDATA = {2: 0, 5: 0, 12: 0, 39: 0, 15: 2, 33: 6}


@dataclass(slots=True)
class RR:
    name: str  # lower case, no final dot
    rtype: int
    rclass: int
    ttl: int
    rdata: bytes  # uncompressed


@dataclass(slots=True)
class Tsig:
    key: str  # lower case, no final dot
    algorithm: str
    time_signed: int
    fudge: int
    mac: bytes
    original_id: int
    error: int
    other: bytes
    start: int  # where the TSIG record begins in the message
    key_wire: bytes  # the names as sent (uncompressed), for the MAC and the answer
    algorithm_wire: bytes


@dataclass(slots=True)
class Update:
    msg_id: int
    flags: int
    zone: list[tuple[str, int, int]]  # (name, type, class)
    zone_wire: bytes  # the zone section as sent (echoed in the answer)
    prerequisites: list[RR]
    updates: list[RR]
    tsig: Tsig | None


def expand_name(data: bytes, offset: int) -> tuple[bytes, int]:
    """The name at `offset` as uncompressed wire bytes (labels as sent) and the offset after
    it; pointers must point backwards (wire.read_name's rule), so no loop can form."""
    out = bytearray()
    pos, end, lowest = offset, -1, offset
    while True:
        if pos >= len(data):
            raise wire.WireError("name runs past the end of the message")
        length = data[pos]
        if length == 0:
            out.append(0)
            return bytes(out), (end if end >= 0 else pos + 1)
        if length & 0xC0 == 0xC0:
            if pos + 1 >= len(data):
                raise wire.WireError("truncated compression pointer")
            target = ((length & 0x3F) << 8) | data[pos + 1]
            if target >= lowest or target < wire.HEADER_LEN:
                raise wire.WireError("compression pointer does not point backwards")
            end = pos + 2 if end < 0 else end
            pos = lowest = target
            continue
        if length & 0xC0 or pos + 1 + length > len(data) or len(out) + length + 2 > 255:
            raise wire.WireError("bad label")
        out += data[pos : pos + 1 + length]
        pos += 1 + length


def _text(name_wire: bytes) -> str:
    return wire.read_name(name_wire, 0, compressed=False)[0].lower()


def _record(data: bytes, pos: int) -> tuple[RR, int, int, bytes]:
    """(the record, where its RDATA begins, the offset after it, its owner's wire form)."""
    owner, pos = expand_name(data, pos)
    if pos + 10 > len(data):
        raise wire.WireError("record header runs past the end")
    rtype, rclass, ttl, rdlength = struct.unpack_from("!HHIH", data, pos)
    start = pos + 10
    end = start + rdlength
    if end > len(data):
        raise wire.WireError("RDATA runs past the end")
    rdata = data[start:end]
    if rtype in NAME_RDATA and rdlength:
        fixed = NAME_RDATA[rtype]
        target, after = expand_name(data, start + fixed)
        if after != end:
            raise wire.WireError("RDATA longer than its name")
        rdata = data[start : start + fixed] + target
    return RR(_text(owner), rtype, rclass, ttl, rdata), start, end, owner


def parse(data: bytes) -> Update:
    """An UPDATE message; WireError when it cannot be read (answered FORMERR)."""
    if len(data) < wire.HEADER_LEN:
        raise wire.WireError("shorter than a header")
    msg_id, flags, zocount, prcount, upcount, adcount = wire.HEADER.unpack_from(data)
    if (flags >> 11) & 0xF != OPCODE_UPDATE or flags & 0x8000:
        raise wire.WireError("not an UPDATE request")
    pos = wire.HEADER_LEN
    zone: list[tuple[str, int, int]] = []
    for _ in range(zocount):
        name, pos = expand_name(data, pos)
        if pos + 4 > len(data):
            raise wire.WireError("zone section runs past the end")
        rtype, rclass = struct.unpack_from("!HH", data, pos)
        pos += 4
        zone.append((_text(name), rtype, rclass))
    if len(zone) != 1 or zone[0][1] != wire.TYPE_SOA or zone[0][2] >= 128:  # (RFC 2136
        raise wire.WireError("the zone section is not one SOA")  # 3.1.1; no odd echo)
    zone_wire = data[wire.HEADER_LEN : pos]
    sections: list[list[RR]] = [[], [], []]
    tsig = None
    for index, count in enumerate((prcount, upcount, adcount)):
        for n in range(count):
            begin = pos
            record, start, pos, owner = _record(data, pos)
            if record.rtype == TYPE_TSIG:
                if index != 2 or n != count - 1:
                    raise wire.WireError("TSIG is not the last record")
                tsig = _tsig(record, data[start:pos], begin, owner)
            else:
                sections[index].append(record)
    if pos != len(data):
        raise wire.WireError("bytes after the last record")
    return Update(msg_id, flags, zone, zone_wire, sections[0], sections[1], tsig)


def _tsig(record: RR, rdata: bytes, begin: int, owner: bytes) -> Tsig:
    algorithm, pos = expand_name(rdata, 0)
    if pos + 10 > len(rdata):
        raise wire.WireError("TSIG RDATA too short")
    high, low, fudge, size = struct.unpack_from("!HIHH", rdata, pos)
    pos += 10
    mac = rdata[pos : pos + size]
    pos += size
    if pos + 6 > len(rdata):
        raise wire.WireError("TSIG RDATA too short")
    original_id, error, other_len = struct.unpack_from("!HHH", rdata, pos)
    other = rdata[pos + 6 : pos + 6 + other_len]
    if len(mac) != size or len(other) != other_len or pos + 6 + other_len != len(rdata):
        raise wire.WireError("TSIG RDATA malformed")
    if record.rclass != CLASS_ANY or record.ttl != 0:
        raise wire.WireError("TSIG class or TTL")
    return Tsig(record.name, _text(algorithm), (high << 32) | low, fudge, mac, original_id,
                error, other, begin, owner, algorithm)  # fmt: skip


def _variables(
    key: bytes, algorithm: bytes, signed: int, fudge: int, error: int, other: bytes
) -> bytes:
    """RFC 8945 section 4.3.3: the TSIG variables the MAC covers (names canonical: their
    wire form in lower case)."""
    return (
        key.lower() + struct.pack("!HI", CLASS_ANY, 0)
        + algorithm.lower()
        + struct.pack("!HIHHH", signed >> 32, signed & 0xFFFFFFFF, fudge, error, len(other))
        + other
    )  # fmt: skip


def request_mac(data: bytes, tsig: Tsig, secret: bytes) -> bytes:
    """The MAC the request should carry: over the message without its TSIG (ARCOUNT one
    less, the original ID) and the TSIG variables."""
    body = bytearray(data[: tsig.start])
    struct.pack_into("!H", body, 0, tsig.original_id)
    struct.pack_into("!H", body, 10, struct.unpack_from("!H", body, 10)[0] - 1)
    variables = _variables(tsig.key_wire, tsig.algorithm_wire, tsig.time_signed, tsig.fudge,
                           tsig.error, tsig.other)  # fmt: skip
    return hmac.new(secret, bytes(body) + variables, DIGESTS[tsig.algorithm]).digest()


def verify(data: bytes, tsig: Tsig, secret: bytes) -> bool:
    """Whether the request's MAC is right (constant time; a truncated MAC is refused)."""
    if tsig.algorithm not in DIGESTS:
        return False
    wanted = request_mac(data, tsig, secret)
    return len(tsig.mac) == len(wanted) and hmac.compare_digest(tsig.mac, wanted)


def answer(update: Update, rcode: int) -> bytes:
    """The unsigned answer: the header (ID, opcode, rcode) and the zone section echoed."""
    flags = 0x8000 | (OPCODE_UPDATE << 11) | (rcode & 0xF)
    return wire.HEADER.pack(update.msg_id, flags, len(update.zone), 0, 0, 0) + update.zone_wire


def signed(
    reply: bytes, update: Update, secret: bytes, now: int, error: int = 0, other: bytes = b""
) -> bytes:
    """`reply` with a TSIG record signed with the request's key (RFC 8945 section 5.3): its
    MAC covers the request's MAC, the reply and the TSIG variables."""
    tsig = update.tsig
    assert tsig is not None
    digest = DIGESTS[tsig.algorithm]
    variables = _variables(tsig.key_wire, tsig.algorithm_wire, now, FUDGE, error, other)
    prefix = struct.pack("!H", len(tsig.mac)) + tsig.mac
    covered = struct.pack("!H", tsig.original_id) + reply[2:]  # (the ID a verifier puts back)
    mac = hmac.new(secret, prefix + covered + variables, digest).digest()
    return _with_tsig(reply, tsig, now, mac, error, other)


def unsigned_error(update: Update, error: int) -> bytes:
    """NOTAUTH with a TSIG record carrying `error` and no MAC (BADKEY, BADSIG)."""
    tsig = update.tsig
    assert tsig is not None
    return _with_tsig(answer(update, 9), tsig, tsig.time_signed, b"", error, b"")


def _with_tsig(reply: bytes, tsig: Tsig, now: int, mac: bytes, error: int, other: bytes) -> bytes:
    rdata = tsig.algorithm_wire
    rdata += struct.pack("!HIHH", now >> 32, now & 0xFFFFFFFF, FUDGE, len(mac)) + mac
    rdata += struct.pack("!HHH", tsig.original_id, error, len(other)) + other
    record = tsig.key_wire + struct.pack("!HHIH", TYPE_TSIG, CLASS_ANY, 0, len(rdata))
    out = bytearray(reply)
    struct.pack_into("!H", out, 10, struct.unpack_from("!H", out, 10)[0] + 1)
    return bytes(out) + record + rdata
