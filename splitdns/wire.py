"""The DNS codec: the only module that reads or writes DNS wire format.

The hot path never builds dnspython objects: queries are parsed by hand (header, question,
OPT) and upstream answers are walked in place, so a rewrite is a 4- or 16-byte patch and the
rest of the message stays exactly as the upstream sent it. dnspython is used only where a
message must be rebuilt (removing RRSIGs after a rewrite, an OPT record in an odd place).

One job read whole (about 1,100 lines): the format itself. Reading (names with their
compression pointers, the walk, queries, EDNS options) and writing (answers, NODATA, the
client's OPT, padding) share the same constants, bounds and rules, and a change to one side
is checked against the other in the same file. What splitdns sends upstream and which replies
it accepts is a policy on top of the format, kept apart (upstream/packets.py).
"""

from __future__ import annotations

import ipaddress
import secrets
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

import dns.message
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype

# dnspython imports record types on first use; after splitdns drops root it may no longer be
# able to read its own install (e.g. under a 0700 /root), so load them all now.
dns.rdata.load_all_types()  # type: ignore[no-untyped-call]

HEADER = struct.Struct("!HHHHHH")
HEADER_LEN = 12
RR_FIXED = struct.Struct("!HHIH")

# Header flag bits.
QR = 0x8000
AA = 0x0400
TC = 0x0200
RD = 0x0100
RA = 0x0080
AD = 0x0020
CD = 0x0010
OPCODE_MASK = 0x7800

# Response codes.
NOERROR = 0
FORMERR = 1
SERVFAIL = 2
NXDOMAIN = 3
NOTIMP = 4
REFUSED = 5
BADVERS = 16

# Record types and classes the server itself looks at.
TYPE_A = 1
TYPE_NS = 2
TYPE_CNAME = 5
TYPE_SOA = 6
TYPE_PTR = 12
TYPE_AAAA = 28
TYPE_OPT = 41
TYPE_RRSIG = 46
TYPE_SVCB = 64
TYPE_HTTPS = 65
TYPE_SIG = 24
TYPE_TSIG = 250
TYPE_IXFR = 251
TYPE_AXFR = 252
CLASS_IN = 1

ANSWER, AUTHORITY, ADDITIONAL = 1, 2, 3

OPTION_PADDING = 12  # RFC 7830
OPTION_EDE = 15  # RFC 8914: Extended DNS Errors
EDE_STALE = 3  # "Stale Answer"
EDE_PROHIBITED = 18
EDE_NOT_SUPPORTED = 21
EDE_NO_REACHABLE_AUTHORITY = 22
EDE_TEXT_BYTES = 200  # the reason given beside a code, cut to this
OPTION_CLIENT_SUBNET = 8  # RFC 7871
PADDING_BLOCK = 468  # RFC 8467 §4.1: responses are padded to a multiple of this

#: The UDP payload size splitdns advertises and uses upstream (DNS flag day 2020).
EDNS_PAYLOAD = 1232
#: Classic DNS limit for clients that send no EDNS.
CLASSIC_UDP = 512
#: Largest UDP answer splitdns sends, whatever a client claims.
MAX_UDP = 4096


class WireError(ValueError):
    """The bytes are not a well-formed DNS message."""


class HeaderOnlyError(WireError):
    """The header is readable but the rest is not: answer FORMERR with the header's ID."""

    def __init__(self, message: str, msg_id: int, flags: int) -> None:
        super().__init__(message)
        self.msg_id = msg_id
        self.flags = flags


class Question(NamedTuple):
    """One question: `name` is lower-case text without the final dot ("" is the root)."""

    name: str
    qtype: int
    qclass: int
    wire: bytes  # the question exactly as sent: name (uncompressed), type, class

    @property
    def name_wire(self) -> bytes:
        return self.wire[:-4]


class Query(NamedTuple):
    """A parsed client query: everything the server needs, nothing it does not."""

    msg_id: int
    flags: int
    question: Question
    edns: bool = False
    payload: int = CLASSIC_UDP
    do: bool = False
    edns_version: int = 0
    #: The whole client message when it carries a TSIG or SIG(0): relayed upstream unchanged
    #: but for the ID (RFC 8945 §5.5), and its answer relayed back unchanged.
    signed: bytes | None = None
    padded: bool = False  # the query carried EDNS padding (RFC 7830): pad the answer too
    #: EDNS Client Subnet (RFC 7871): (family, source prefix length, address octets as sent)
    ecs: tuple[int, int, bytes] | None = None

    @property
    def rd(self) -> bool:
        return bool(self.flags & RD)

    @property
    def cd(self) -> bool:
        return bool(self.flags & CD)

    @property
    def opcode(self) -> int:
        return (self.flags & OPCODE_MASK) >> 11

    def udp_limit(self) -> int:
        """Largest UDP answer this client accepts (RFC 6891 §6.2.5: never below 512)."""
        if not self.edns:
            return CLASSIC_UDP
        return max(CLASSIC_UDP, min(self.payload, MAX_UDP))

    def with_name(self, name: str, qtype: int) -> Query:
        """The same query for another name and type (a DNS64 PTR's in-addr.arpa lookup)."""
        wire = encode_name(name) + struct.pack("!HH", qtype, self.question.qclass)
        return self._replace(question=Question(name, qtype, self.question.qclass, wire))

    def with_type(self, qtype: int) -> Query:
        """The same query for another type (used to look up A beside AAAA)."""
        q = self.question
        wire = q.name_wire + struct.pack("!HH", qtype, q.qclass)
        return Query(
            self.msg_id,
            self.flags,
            Question(q.name, qtype, q.qclass, wire),
            self.edns,
            self.payload,
            self.do,
            self.edns_version,
        )


class Record(NamedTuple):
    """Where one resource record sits in a message; the bytes stay in the message."""

    section: int
    name: str
    rtype: int
    rclass: int
    ttl_offset: int
    rdata_offset: int
    rdlength: int
    start: int
    end: int


@dataclass(slots=True)
class Message:
    """A walked message: header fields, questions and record positions."""

    msg_id: int
    flags: int
    questions: list[Question]
    records: list[Record] = field(default_factory=list)

    @property
    def rcode(self) -> int:
        return self.flags & 0xF

    def section(self, section: int) -> list[Record]:
        return [r for r in self.records if r.section == section]


# --------------------------------------------------------------------------- names


def _label_text(label: bytes) -> str:
    text = label.lower().decode("latin-1")
    if "." in text or "\\" in text:
        text = text.replace("\\", "\\\\").replace(".", "\\.")
    return text


def read_name(data: bytes, offset: int, compressed: bool = True) -> tuple[str, int]:
    """Decode a possibly compressed name at `offset`; returns (text, offset after the name).

    Every pointer must point before the name's start and before the previous pointer's target
    (as dnspython and BIND require), so pointers strictly descend: no loop can form.

    The walk of a whole message is stricter (see _walk_name): there every pointer must land
    where an earlier name's label began: a pointer into a TTL, a length or address bytes would
    decode to another name as soon as splitdns rewrites or ages those bytes.
    `compressed=False` refuses any pointer (fields RFC 3597 and RFC 6672 forbid compressing).
    """
    labels: list[str] = []
    end = -1
    wire_len = 1
    pos = offset
    lowest = offset
    limit = len(data)
    while True:
        if pos >= limit:
            raise WireError("name runs past the end of the message")
        length = data[pos]
        if length == 0:
            pos += 1
            break
        kind = length & 0xC0
        if kind == 0xC0:
            if pos + 1 >= limit:
                raise WireError("truncated compression pointer")
            target = ((length & 0x3F) << 8) | data[pos + 1]
            if end < 0:
                end = pos + 2
            if target >= lowest or target < HEADER_LEN:
                raise WireError("compression pointer does not point backwards into the body")
            if not compressed:
                raise WireError("compression pointer in a name that may not be compressed")
            pos = lowest = target
            continue
        if kind != 0:
            raise WireError("unsupported label type")
        wire_len += length + 1
        if wire_len > 255:
            raise WireError("name longer than 255 octets")
        if pos + 1 + length > limit:
            raise WireError("label runs past the end of the message")
        labels.append(_label_text(data[pos + 1 : pos + 1 + length]))
        pos += 1 + length
    return ".".join(labels), (end if end >= 0 else pos)


#: A walk's memo of names: label start -> (the name's text from there, its wire length).
Known = dict[int, tuple[str, int]]


def _walk_name(data: bytes, offset: int, known: Known) -> tuple[str, int]:
    """read_name for the walk of a whole message: a compression pointer must land where an
    earlier name's label (or root) began, and then that name's rest is already known: one
    look-up instead of reading its labels again. This name's own label starts are added."""
    limit = len(data)
    if offset + 1 < limit and data[offset] >= 0xC0:  # the usual owner name: one pointer
        rest = known.get(((data[offset] & 0x3F) << 8) | data[offset + 1])
        if rest is not None:  # (every known start lies before `offset`)
            return rest[0], offset + 2
    labels: list[str] = []
    positions: list[int] = []
    pos = offset
    own_len = 0
    while True:
        if pos >= limit:
            raise WireError("name runs past the end of the message")
        length = data[pos]
        if length == 0:
            tail, tail_len, end = "", 1, pos + 1
            known[pos] = ("", 1)  # the root: a pointer may name the root by pointing here
            break
        kind = length & 0xC0
        if kind == 0xC0:
            if pos + 1 >= limit:
                raise WireError("truncated compression pointer")
            target = ((length & 0x3F) << 8) | data[pos + 1]
            if target >= offset or target < HEADER_LEN:
                raise WireError("compression pointer does not point backwards into the body")
            rest = known.get(target)
            if rest is None:
                raise WireError("compression pointer does not land on an earlier name")
            tail, tail_len = rest
            end = pos + 2
            break
        if kind != 0:
            raise WireError("unsupported label type")
        own_len += length + 1
        if own_len >= 255:
            raise WireError("name longer than 255 octets")
        if pos + 1 + length > limit:
            raise WireError("label runs past the end of the message")
        positions.append(pos)
        labels.append(_label_text(data[pos + 1 : pos + 1 + length]))
        pos += 1 + length
    if own_len + tail_len > 255:
        raise WireError("name longer than 255 octets")
    if not labels:
        return tail, end
    if tail:
        labels.append(tail)
    text = ".".join(labels)
    known[positions[0]] = (text, own_len + tail_len)
    if len(positions) > 1:  # the suffixes, for pointers to a later label of this name
        remaining = own_len + tail_len
        for i in range(1, len(positions)):
            remaining -= positions[i] - positions[i - 1]
            known[positions[i]] = (".".join(labels[i:]), remaining)
    return text, end


def encode_name(name: str) -> bytes:
    """Encode a plain ASCII name (config names, reverse names) uncompressed."""
    out = bytearray()
    for label in name.strip(".").split(".") if name.strip(".") else []:
        raw = label.encode("ascii")
        if not 0 < len(raw) <= 63:
            raise ValueError(f"bad label in {name!r}")
        out.append(len(raw))
        out += raw
    out.append(0)
    if len(out) > 255:
        raise ValueError(f"name too long: {name!r}")
    return bytes(out)


def _read_question(data: bytes, offset: int, known: Known | None = None) -> tuple[Question, int]:
    name, pos = read_name(data, offset) if known is None else _walk_name(data, offset, known)
    if pos + 4 > len(data):
        raise WireError("truncated question")
    qtype, qclass = struct.unpack_from("!HH", data, pos)
    return Question(name, qtype, qclass, bytes(data[offset : pos + 4])), pos + 4


def _read_records(
    data: bytes,
    offset: int,
    counts: tuple[int, int, int],
    check_rdata: bool = False,
    known: Known | None = None,
) -> tuple[list[Record], int]:
    """The records after the question, and the offset where they end. With `check_rdata` (an
    upstream reply) every record's data is checked against its type, OPT options and TSIG
    placement too; `known` holds the names compression pointers may land on."""
    records: list[Record] = []
    pos = offset
    opt_seen = False
    total = sum(counts)
    size = len(data)
    for section, count in zip((ANSWER, AUTHORITY, ADDITIONAL), counts, strict=True):
        for _ in range(count):
            start = pos
            name, pos = read_name(data, pos) if known is None else _walk_name(data, pos, known)
            if pos + 10 > size:
                raise WireError("truncated record")
            rtype, rclass, _ttl, rdlength = RR_FIXED.unpack_from(data, pos)
            rdata = pos + 10
            if rdata + rdlength > size:
                raise WireError("record data runs past the end of the message")
            if rtype == TYPE_OPT:
                if opt_seen or section != ADDITIONAL or name != "":
                    raise WireError("misplaced or repeated OPT record")
                opt_seen = True
                if check_rdata:
                    _check_options(data, rdata, rdata + rdlength)
            elif check_rdata:
                if rtype == TYPE_A and rclass == CLASS_IN:  # the usual record: checked here
                    if rdlength != 4:
                        raise WireError(f"type {rtype} record data of {rdlength} octets")
                else:
                    last = len(records) == total - 1 and section == ADDITIONAL
                    if rtype == TYPE_TSIG and not (last and rclass == 255):
                        raise WireError("TSIG that is not the last record, or not of class ANY")
                    _check_rdata(data, rtype, rclass, rdata, rdlength, known)
            records.append(
                Record(
                    section, name, rtype, rclass, pos + 4, rdata, rdlength, start, rdata + rdlength
                )
            )
            pos = rdata + rdlength
    return records, pos


def _check_options(data: bytes, pos: int, end: int) -> None:
    """EDNS options (code, length, value) must exactly fill the OPT record's data."""
    while pos < end:
        if pos + 4 > end:
            raise WireError("truncated EDNS option")
        pos += 4 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    if pos != end:
        raise WireError("EDNS option runs past its OPT record")


#: Types whose data is one name that may be compressed (RFC 1035 §3.3); SOA and MX below.
_NAME_RDATA = frozenset({TYPE_NS, TYPE_CNAME, TYPE_PTR})
TYPE_DNAME = 39
#: Types with names in their data that may not be compressed (RFC 3597 §4, RFC 6672 §2.5,
#: RFC 9460 §2.2, RFC 4034 §3.1.7): parsed on their own, then re-encoded to the same length.
_UNCOMPRESSED_NAMES = frozenset(
    {17, 18, 21, 24, 26, 30, 33, 35, 36, TYPE_DNAME, 46, 47, 55, 64, 65, 249, 250}
)


def _name_ends_at(data: bytes, offset: int, end: int, known: Known | None = None) -> int:
    after = (read_name(data, offset) if known is None else _walk_name(data, offset, known))[1]
    if after > end:
        raise WireError("name runs past its record data")
    return after


def _check_rdata(
    data: bytes,
    rtype: int,
    rclass: int,
    rdata: int,
    rdlength: int,
    known: Known | None = None,
) -> None:
    """Record data must have its type's shape: splitdns passes answers on to clients, and a
    malformed record in an answer breaks the client's parser, not ours.

    The common types are checked here (cheap); the rest by dnspython's own rdata parser, given
    the record data alone, so that no compression pointer can reach outside it.
    """
    end = rdata + rdlength
    if rclass == CLASS_IN and rtype in (TYPE_A, TYPE_AAAA):
        if rdlength != (4 if rtype == TYPE_A else 16):
            raise WireError(f"type {rtype} record data of {rdlength} octets")
        return
    if rtype in _NAME_RDATA:
        ok = _name_ends_at(data, rdata, end, known) == end
    elif rtype == TYPE_SOA:
        ok = _name_ends_at(data, _name_ends_at(data, rdata, end, known), end, known) + 20 == end
    elif rtype == 15 and rdlength > 2:  # MX
        ok = _name_ends_at(data, rdata + 2, end, known) == end
    elif rtype == 16:  # TXT: one or more <length><text> strings, exactly filling the data
        pos = rdata
        while pos < end:
            pos += 1 + data[pos]
        ok = pos == end and rdlength > 0
    else:
        own = data[rdata:end]
        try:
            parsed = dns.rdata.from_wire(
                dns.rdataclass.RdataClass.make(rclass),
                dns.rdatatype.RdataType.make(rtype),
                own,
                0,
                rdlength,
            )
            again = parsed.to_wire() if rtype in _UNCOMPRESSED_NAMES else own
        except Exception as exc:  # a third-party parser: whatever it raises means "malformed"
            raise WireError(f"type {rtype} record data malformed: {exc}") from None
        if again is None or len(again) != rdlength:
            raise WireError(f"type {rtype} record data holds a compressed name")
        return
    if not ok:
        raise WireError(f"type {rtype} record data malformed")


def walk(data: bytes) -> Message:
    """Walk a whole upstream message, keeping offsets; raises WireError on any inconsistency:
    bad names, compression pointers anywhere but onto an earlier name's labels, record data not
    shaped like its type, OPT or TSIG out of place, an opcode other than QUERY, trailing bytes.
    What passes can be rewritten, cached and aged in place without changing any name."""
    if len(data) < HEADER_LEN:
        raise WireError("shorter than a DNS header")
    msg_id, flags, qd, an, ns, ar = HEADER.unpack_from(data)
    if flags & OPCODE_MASK:
        raise WireError(f"opcode {(flags & OPCODE_MASK) >> 11}: only QUERY replies are taken")
    pos = HEADER_LEN
    questions = []
    known: Known = {}
    for _ in range(qd):
        q, pos = _read_question(data, pos, known)
        questions.append(q)
    records, end = _read_records(data, pos, (an, ns, ar), check_rdata=True, known=known)
    if end != len(data):
        raise WireError(f"{len(data) - end} bytes after the last record")
    return Message(msg_id, flags, questions, records)


def read_cname_target(data: bytes, record: Record) -> str:
    return read_name(data, record.rdata_offset)[0]


# --------------------------------------------------------------------------- queries


def parse_query(data: bytes) -> Query:
    """Parse a client query.

    Raises WireError when even the header is unreadable (drop it) and HeaderOnlyError when the
    header is readable but the rest is malformed (answer FORMERR). Responses (QR=1) raise
    WireError: they are never answered, so a forged reply cannot start a loop.
    """
    if len(data) < HEADER_LEN:
        raise WireError("shorter than a DNS header")
    msg_id, flags, qd, an, ns, ar = HEADER.unpack_from(data)
    if flags & QR:
        raise WireError("a response, not a query")
    if qd != 1:
        raise HeaderOnlyError(f"{qd} questions (exactly one is allowed)", msg_id, flags)
    try:
        question, pos = _read_question(data, HEADER_LEN)
        edns = False
        payload = CLASSIC_UDP
        do = False
        version = 0
        signed = None
        padded = False
        ecs = None
        if an or ns or ar:
            records, pos = _read_records(data, pos, (an, ns, ar))
            last = records[-1] if records else None
            if last is not None and last.section == ADDITIONAL and _is_signature(data, last):
                # relayed as it is, so it must at least be a signature (RFC 8945 section 5.1)
                if last.rtype == TYPE_TSIG and last.rclass != 255:
                    raise WireError("TSIG not of class ANY")
                _check_rdata(data, last.rtype, last.rclass, last.rdata_offset, last.rdlength)
                signed = data
            for record in records:
                if record.rtype != TYPE_OPT:
                    continue
                edns = True
                payload = record.rclass
                ext = struct.unpack_from("!I", data, record.ttl_offset)[0]
                version = (ext >> 16) & 0xFF
                do = bool(ext & 0x8000)
                padded, ecs = _client_options(data, record)
        if pos != len(data):  # (BIND says "trailing garbage": FORMERR, as here)
            raise WireError(f"{len(data) - pos} bytes after the last record")
    except WireError as exc:
        raise HeaderOnlyError(str(exc), msg_id, flags) from exc
    return Query(msg_id, flags, question, edns, payload, do, version, signed, padded, ecs)


def _options(data: bytes, opt: Record) -> Iterator[tuple[int, int, int]]:
    """An OPT record's options as (code, value start, value end) offsets into `data`, those
    that fit in the record's data (a walked message's always do: `_check_options`)."""
    pos, end = opt.rdata_offset, opt.rdata_offset + opt.rdlength
    while pos + 4 <= end:
        code, length = struct.unpack_from("!HH", data, pos)
        start = pos + 4
        pos = start + length
        if pos > end:
            return
        yield code, start, pos


def _client_options(data: bytes, opt: Record) -> tuple[bool, tuple[int, int, bytes] | None]:
    """One pass over a client's EDNS options: whether it padded (RFC 7830), and its Client
    Subnet's family, source prefix length and address octets (the first well-formed one)."""
    padded = False
    ecs = None
    for code, start, stop in _options(data, opt):
        if code == OPTION_PADDING:
            padded = True
        elif code == OPTION_CLIENT_SUBNET and ecs is None and stop - start >= 4:
            family, source, _scope = struct.unpack_from("!HBB", data, start)
            ecs = (family, source, bytes(data[start + 4 : stop]))
    return padded, ecs


def ecs_client(ecs: tuple[int, int, bytes]) -> str | None:
    """The single address a full-length ECS option names (/32, /128), else None."""
    family, source, octets = ecs
    if family == 1 and source == 32 and len(octets) == 4:
        return str(ipaddress.IPv4Address(octets))
    if family == 2 and source == 128 and len(octets) == 16:
        return str(ipaddress.IPv6Address(octets))
    return None


def pad(answer: bytes, options: int = 0, block: int = PADDING_BLOCK) -> bytes:
    """RFC 8467 §4.1: pad an answer over an encrypted transport to a multiple of 468 octets,
    with a padding option in the OPT record splitdns put last, whose options so far take
    `options` bytes (unchanged if there is no such record)."""
    at = len(answer) - 11 - options  # where that OPT record begins
    if at < HEADER_LEN or answer[at] != 0 or answer[at + 1 : at + 3] != b"\x00\x29":
        return answer
    if answer[at + 9 : at + 11] != struct.pack("!H", options):
        return answer
    size = (-(len(answer) + 4)) % block
    option = struct.pack("!HH", OPTION_PADDING, size) + bytes(size)
    rdlength = struct.pack("!H", options + len(option))
    return answer[: at + 9] + rdlength + answer[at + 11 :] + option


def ede_option(code: int, text: str = "") -> bytes:
    """An Extended DNS Error option (RFC 8914): why an answer failed or is what it is, an info
    code and a short UTF-8 reason, for the client's logs (dig prints it as "EDE")."""
    extra = text.encode("utf-8")[:EDE_TEXT_BYTES].decode("utf-8", "ignore").encode("utf-8")
    return struct.pack("!HHH", OPTION_EDE, 2 + len(extra), code) + extra


def _is_signature(data: bytes, record: Record) -> bool:
    """TSIG, or SIG(0) (a SIG record covering type 0), as the last additional record."""
    if record.rtype == TYPE_TSIG:
        return True
    covered = data[record.rdata_offset : record.rdata_offset + 2]
    return record.rtype == TYPE_SIG and record.rdlength >= 2 and covered == b"\x00\x00"


def _opt_record(payload: int, do: bool, ext_rcode: int = 0) -> bytes:
    ttl = (ext_rcode << 24) | (0x8000 if do else 0)
    return b"\x00" + struct.pack("!HHIH", TYPE_OPT, payload, ttl, 0)


# --------------------------------------------------------------------------- answers


def _response_flags(query_flags: int, rcode: int, aa: bool = False) -> int:
    flags = QR | RA | (query_flags & (OPCODE_MASK | RD | CD)) | (rcode & 0xF)
    if aa:
        flags |= AA
    return flags


def make_error(query: Query, rcode: int) -> bytes:
    """A bare answer (no OPT) carrying only the question and `rcode`."""
    return HEADER.pack(query.msg_id, _response_flags(query.flags, rcode), 1, 0, 0, 0) + (
        query.question.wire
    )


def make_header_error(msg_id: int, flags: int, rcode: int) -> bytes:
    """An answer for a query whose question could not be read, or whose opcode splitdns does not
    serve (FORMERR, NOTIMP): the header alone, the opcode echoed, RD/CD/AD/Z and RA cleared
    (RA speaks of recursion for a query; nothing was understood here to recurse on, and
    ISC's genreport flags RA on an unknown opcode's answer)."""
    return HEADER.pack(msg_id, QR | (flags & OPCODE_MASK) | (rcode & 0xF), 0, 0, 0, 0)


def make_answer(
    query: Query, rrs: list[tuple[int, int, bytes]], *, aa: bool = True, rcode: int = NOERROR
) -> bytes:
    """A bare answer whose records all belong to the question's name: (type, ttl, rdata)."""
    out = bytearray(
        HEADER.pack(query.msg_id, _response_flags(query.flags, rcode, aa), 1, len(rrs), 0, 0)
    )
    out += query.question.wire
    for rtype, ttl, rdata in rrs:
        out += b"\xc0\x0c" + struct.pack("!HHIH", rtype, CLASS_IN, ttl, len(rdata)) + rdata
    return bytes(out)


def make_empty_zone_answer(query: Query, zone: str) -> bytes:
    """NXDOMAIN below `zone`, NODATA at its apex (its SOA when asked), with the SOA for negative
    caching: what an RFC 6303 locally served zone says."""
    apex = query.question.name == zone
    soa = _soa_record(local_soa(zone, 10800), 10800)
    answers = 1 if apex and query.question.qtype == TYPE_SOA else 0
    rcode = NOERROR if apex else NXDOMAIN
    head = HEADER.pack(
        query.msg_id, _response_flags(query.flags, rcode, aa=True), 1, answers, 1 - answers, 0
    )
    return head + query.question.wire + soa


class Soa(NamedTuple):
    """A zone's SOA as an upstream gave it (names decoded, so it can be written again)."""

    zone: str
    mname: str
    rname: str
    numbers: tuple[int, int, int, int, int]  # serial, refresh, retry, expire, minimum
    ttl: int


def find_soa(data: bytes, message: Message | None = None) -> Soa | None:
    """The first SOA in an answer's answer or authority section: the zone it speaks for."""
    try:
        message = message if message is not None else walk(data)
        for r in message.records:
            if r.rtype != TYPE_SOA or r.section == ADDITIONAL:
                continue
            mname, pos = read_name(data, r.rdata_offset)
            rname, pos = read_name(data, pos)
            numbers = struct.unpack_from("!5I", data, pos)
            ttl = int.from_bytes(data[r.ttl_offset : r.ttl_offset + 4], "big")
            return Soa(r.name, mname, rname, numbers, ttl)
    except (WireError, struct.error):
        return None
    return None


def make_nodata(query: Query, soa: Soa | None, ttl: int) -> bytes:
    """NODATA with the zone's SOA, its TTL and MINIMUM no longer than `ttl`, so that stubs
    and downstream caches can cache the empty answer (RFC 2308 section 5) for no longer than
    what caused it; with no SOA known, none (nothing is made up)."""
    head = HEADER.pack(query.msg_id, _response_flags(query.flags, NOERROR), 1, 0, int(bool(soa)), 0)
    if soa is None:
        return head + query.question.wire
    return head + query.question.wire + _soa_record(soa, ttl)


def make_zone_negative(query: Query, soa: Soa, rcode: int) -> bytes:
    """NXDOMAIN or NODATA from a zone splitdns holds (authoritative: AA), with its SOA."""
    head = HEADER.pack(query.msg_id, _response_flags(query.flags, rcode, aa=True), 1, 0, 1, 0)
    return head + query.question.wire + _soa_record(soa, soa.ttl)


def soa_rdata(soa: Soa, ttl: int) -> bytes:
    """The SOA's RDATA, its MINIMUM no longer than `ttl`."""
    serial, refresh, retry, expire, minimum = soa.numbers
    rdata = encode_name(soa.mname) + encode_name(soa.rname)
    return rdata + struct.pack("!5I", serial, refresh, retry, expire, min(minimum, ttl))


def _soa_record(soa: Soa, ttl: int) -> bytes:
    """`soa` as a record, its TTL and MINIMUM no longer than `ttl`."""
    minimum = soa.numbers[4]
    rdata = soa_rdata(soa, ttl)
    head = struct.pack("!HHIH", TYPE_SOA, CLASS_IN, min(ttl, soa.ttl, minimum), len(rdata))
    return encode_name(soa.zone) + head + rdata


def local_soa(zone: str, ttl: int) -> Soa:
    """The SOA of a zone splitdns answers itself (RFC 6303 section 3's; TTL, MINIMUM `ttl`)."""
    return Soa(zone, "localhost", "nobody.invalid", (1, 604800, 86400, 2419200, ttl), ttl)


def aaaa_from_a(
    query: Query,
    a_answer: bytes,
    make: Callable[[ipaddress.IPv4Address], ipaddress.IPv6Address | None],
    cap: int,
) -> tuple[bytes, int]:
    """DNS64 (RFC 6147 section 5.1.7): an AAAA answer to `query` made from an A answer: its
    CNAME chain kept, each A record's address mapped by `make` (None leaves it out), every TTL
    no longer than `cap`. Returns the bare answer and how many AAAA records it holds."""
    message = walk(a_answer)
    records = bytearray()
    count = made = 0
    for r in message.records:
        if r.section != ANSWER or r.rclass != CLASS_IN:
            continue
        ttl = min(int.from_bytes(a_answer[r.ttl_offset : r.ttl_offset + 4], "big"), cap)
        if r.rtype == TYPE_CNAME:
            rdata = encode_name(read_cname_target(a_answer, r))
            rtype = TYPE_CNAME
        elif r.rtype == TYPE_A and r.rdlength == 4:
            v4 = ipaddress.IPv4Address(a_answer[r.rdata_offset : r.rdata_offset + 4])
            v6 = make(v4)
            if v6 is None:
                continue
            rdata, rtype = v6.packed, TYPE_AAAA
            made += 1
        else:
            continue
        records += encode_name(r.name) + struct.pack("!HHIH", rtype, CLASS_IN, ttl, len(rdata))
        records += rdata
        count += 1
    head = HEADER.pack(query.msg_id, _response_flags(query.flags, NOERROR), 1, count, 0, 0)
    return head + query.question.wire + bytes(records), made


def cname_then(query: Query, target: str, ttl: int, answer: bytes) -> bytes:
    """An answer to `query`: a CNAME to `target`, then the records of `answer`'s answer
    section (the answer for `target`: RFC 6147 section 5.3.1's PTR under the NAT64 prefix)."""
    message = walk(answer)
    rdata = encode_name(target)
    out = bytearray(encode_name(query.question.name))
    out += struct.pack("!HHIH", TYPE_CNAME, CLASS_IN, ttl, len(rdata)) + rdata
    count = 1
    for r in message.records:
        if r.section != ANSWER or r.rtype not in (TYPE_PTR, TYPE_CNAME):
            continue
        target_name = read_name(answer, r.rdata_offset)[0]
        body = encode_name(target_name)
        rttl = int.from_bytes(answer[r.ttl_offset : r.ttl_offset + 4], "big")
        out += encode_name(r.name) + struct.pack("!HHIH", r.rtype, r.rclass, rttl, len(body))
        out += body
        count += 1
    rcode = message.rcode if count == 1 else NOERROR
    head = HEADER.pack(query.msg_id, _response_flags(query.flags, rcode), 1, count, 0, 0)
    return head + query.question.wire + bytes(out)


def make_local_nodata(query: Query, zone: str, ttl: int) -> bytes:
    """NODATA for a name splitdns answers itself (DDR), with an SOA of its own for `zone`
    (TTL and MINIMUM `ttl`), as RFC 6303's locally served zones carry."""
    return make_nodata(query, local_soa(zone, ttl), ttl)


def zero_negative_ttls(data: bytes, message: Message) -> bytes:
    """RFC 2181 §8: a TTL with its top bit set means 0 (not 68 years); written as 0 so that
    neither the cache nor a client reads it as huge."""
    high = [r.ttl_offset for r in message.records if data[r.ttl_offset] & 0x80]
    if not high:
        return data
    out = bytearray(data)
    for offset in high:
        out[offset : offset + 4] = bytes(4)
    return bytes(out)


def as_forwarder(bare: bytes) -> bytes:
    """A forwarded answer: RA set, AA cleared (splitdns is not the authority for it)."""
    flags = ((bare[2] << 8) | bare[3] | RA) & ~AA
    return bare[:2] + struct.pack("!H", flags) + bare[4:]


def relayed(query: Query, reply: bytes, limit: int | None) -> bytes:
    """An upstream's answer to a signed query, as it came but for the client's ID; too big for
    the client's UDP limit: the header and question with TC, so it asks again over TCP."""
    if limit is not None and len(reply) > limit:
        _, flags, *_ = HEADER.unpack_from(reply)
        return HEADER.pack(query.msg_id, flags | TC, 1, 0, 0, 0) + query.question.wire
    return struct.pack("!H", query.msg_id) + reply[2:]


def finalize(query: Query, bare: bytes, limit: int | None, options: bytes = b"") -> bytes:
    """Turn a bare answer into the bytes sent to this client (see `assemble`)."""
    return assemble(
        query.msg_id, query.flags, query.question.wire, bare, query.edns, query.do, limit, options
    )


OPT_PLAIN = _opt_record(EDNS_PAYLOAD, False)
OPT_DO = _opt_record(EDNS_PAYLOAD, True)


def assemble(
    msg_id: int,
    query_flags: int,
    question: bytes,
    bare: bytes,
    edns: bool,
    do: bool,
    limit: int | None,
    options: bytes = b"",
) -> bytes:
    """The bytes sent to one client, built from a bare answer with a same-length question.

    Writes the client's ID, RD bit and question bytes (so the name's case is echoed), adds an
    OPT record when the client used EDNS (carrying `options`, e.g. an Extended DNS Error),
    and when the result exceeds `limit` (UDP) sends the question alone with TC=1 so the
    client retries over TCP. No parsing: this is the hot path.
    """
    _, flags, qd, an, ns, ar = HEADER.unpack_from(bare)
    flags = (flags & ~RD) | (query_flags & RD) | RA
    body = bare[HEADER_LEN + len(question) :] if qd == 1 else b""
    opt = (OPT_DO if do else OPT_PLAIN) if edns else b""
    if opt:
        ar += 1
        if options:
            opt = opt[:-2] + struct.pack("!H", len(options)) + options
    out = HEADER.pack(msg_id, flags, 1, an, ns, ar) + question + body + opt
    if limit is not None and len(out) > limit:
        out = HEADER.pack(msg_id, (flags | TC) & ~AD, 1, 0, 0, 1 if opt else 0) + question + opt
    return out


#: An OPT record's fixed part: root owner, type, payload size, extended rcode, version, flags
#: (DO is the top bit), data length.
_OPT_HEAD = struct.Struct("!BHHBBHH")

#: What `peek` reads: (id, flags, name_end, question_end, edns, do, udp_limit).
Peeked = tuple[int, int, int, int, bool, bool, int]


def peek(data: bytes) -> Peeked | None:
    """The cache-hit parse: (id, flags, name_end, question_end, edns, do, udp_limit) or None.

    Handles only the common shape (one uncompressed question, at most an OPT record, opcode
    QUERY, version 0). Anything else returns None and takes the full path, which also
    answers the errors.
    """
    size = len(data)
    if size < 17:
        return None
    msg_id, flags, qdcount, ancount, nscount, arcount = HEADER.unpack_from(data)
    if flags & 0xF800 or qdcount != 1 or ancount or nscount or arcount > 1:  # QR, opcode
        return None
    pos = 12
    while True:
        length = data[pos]
        if length == 0:
            break
        if length > 63:
            return None
        pos += length + 1
        if pos >= size:
            return None
    name_end = pos + 1
    qend = name_end + 4
    if name_end - 12 > 255 or qend > size:
        return None
    if arcount == 0:
        return (msg_id, flags, name_end, qend, False, False, CLASSIC_UDP) if qend == size else None
    if qend + 11 > size:
        return None
    owner, rtype, payload, _, version, edns_flags, rdlength = _OPT_HEAD.unpack_from(data, qend)
    if owner or rtype != TYPE_OPT or version or qend + 11 + rdlength != size:
        return None
    limit = CLASSIC_UDP if payload < CLASSIC_UDP else min(payload, MAX_UDP)
    return msg_id, flags, name_end, qend, True, bool(edns_flags & 0x8000), limit


_PEEKED: dict[bytes, tuple[int, int, int, bool, bool, int]] = {}
PEEK_MEMO = 4096  # questions remembered, each at most PEEK_MEMO_BYTES long: ~1 MiB at most
PEEK_MEMO_BYTES = 256


def peek_remembered(data: bytes, after_id: bytes | None = None) -> tuple[Peeked | None, bool]:
    """`peek`, or what it read of the same bytes after the ID before (`remember`), and whether
    it came from the memo: a LAN asks the same few questions the same way over and over, and
    the cache-hit path then skips the walk over the name, a fifth of a hit's Python. The same
    bytes always read the same, so the memo cannot be wrong. (`after_id`: `data[2:]`, when the
    caller has already cut it, so it is not cut and hashed again.)"""
    if len(data) > PEEK_MEMO_BYTES:
        known = None
    else:
        known = _PEEKED.get(data[2:] if after_id is None else after_id)
    if known is not None:
        return ((data[0] << 8) | data[1], *known), True
    return peek(data), False


def remember(data: bytes, peeked: Peeked) -> None:
    """Keep what `peek` read of a question not in the memo yet and worth remembering (one
    that hit the cache: a flood of new names is never kept, and costs the memo nothing but a
    look-up)."""
    if len(data) <= PEEK_MEMO_BYTES:
        if len(_PEEKED) >= PEEK_MEMO:
            _PEEKED.clear()
        _PEEKED[data[2:]] = peeked[1:]


def make_badvers(query: Query) -> bytes:
    """RFC 6891 §6.1.3: an EDNS version we do not speak gets BADVERS with our version 0 (and
    the query's DO bit copied, as RFC 3225 asks of every response: RFC 8906 §8.2.9)."""
    flags = _response_flags(query.flags, BADVERS & 0xF)
    return (
        HEADER.pack(query.msg_id, flags, 1, 0, 0, 1)
        + query.question.wire
        + _opt_record(EDNS_PAYLOAD, query.do, BADVERS >> 4)
    )


def extended_errors(data: bytes, message: Message) -> list[tuple[int, str]]:
    """The Extended DNS Errors (RFC 8914) in a walked reply's OPT record: (info code, text)
    each, the text cut to EDE_TEXT_BYTES. An upstream's reasons for its SERVFAIL (a validating
    resolver's "DNSSEC Bogus", say), so splitdns can pass them on when it gives up."""
    found = []
    for record in message.records:
        if record.rtype != TYPE_OPT:
            continue
        for code, start, stop in _options(data, record):
            if code == OPTION_EDE and stop - start >= 2:
                info = (data[start] << 8) | data[start + 1]
                text = data[start + 2 : min(stop, start + 2 + EDE_TEXT_BYTES)]
                found.append((info, text.decode("utf-8", "replace")))
    return found


_OPTION_HEAD = struct.Struct("!HH")  # an EDNS option's code and length
_LOCAL_USE_OPTION = 65001  # RFC 6891 §9: 65001-65534 are for local and experimental use


def blank_options(data: bytes, message: Message) -> bytes:
    """`data` with its OPT record's options replaced by one option of a local-use code over
    the same octets, for dnspython: it refuses some malformed options (a 2-octet COOKIE, say)
    that splitdns drops anyway, since a client gets splitdns's own EDNS and never the
    upstream's. (walk has checked that the options fill the OPT's data exactly.)"""
    blanked = bytearray(data)
    for record in message.records:
        if record.rtype == TYPE_OPT and record.rdlength >= 4:
            start, length = record.rdata_offset, record.rdlength
            blanked[start : start + 4] = _OPTION_HEAD.pack(_LOCAL_USE_OPTION, length - 4)
            blanked[start + 4 : start + length] = bytes(length - 4)
    return bytes(blanked)


def strip_opt(data: bytes, message: Message) -> tuple[bytes, Message]:
    """Remove the upstream's OPT record: the client gets splitdns's own EDNS, not the upstream's.

    Returns the new bytes and their walk. The usual case (OPT last) keeps every other offset,
    so the walk is reused rather than repeated.
    """
    opts = [r for r in message.records if r.rtype == TYPE_OPT]
    if not opts:
        return data, message
    if len(opts) == 1 and opts[0].end == len(data):
        msg_id, flags, qd, an, ns, ar = HEADER.unpack_from(data)
        stripped = HEADER.pack(msg_id, flags, qd, an, ns, ar - 1) + data[HEADER_LEN : opts[0].start]
        records = [r for r in message.records if r.rtype != TYPE_OPT]
        return stripped, Message(msg_id, flags, message.questions, records)
    # OPT in the middle of the additional section: rare; let dnspython rebuild the message
    # (its options blanked first: they go with it).
    try:
        parsed = dns.message.from_wire(blank_options(data, message), ignore_trailing=True)
        parsed.use_edns(False)
        rebuilt = bytes(parsed.to_wire())
    except Exception as exc:  # a third-party parser: whatever it raises means "malformed"
        raise WireError(f"cannot rebuild without its OPT record: {exc}") from None
    return rebuilt, walk(rebuilt)


def remove_rrsigs(data: bytes, covered: set[tuple[int, str, int]]) -> bytes:
    """Drop the RRSIGs covering (section, owner, type) RRsets that splitdns rewrote."""
    parsed = dns.message.from_wire(data, ignore_trailing=True)
    sections = {ANSWER: parsed.answer, AUTHORITY: parsed.authority, ADDITIONAL: parsed.additional}
    for section, rrsets in sections.items():
        keep = []
        for rrset in rrsets:
            if rrset.rdtype == dns.rdatatype.RRSIG:
                owner = rrset.name.to_text(omit_final_dot=True).lower()
                owner = "" if owner == "@" else owner
                if (section, owner, int(rrset.covers)) in covered:
                    continue
            keep.append(rrset)
        rrsets[:] = keep
    return bytes(parsed.to_wire())


def set_flags(data: bytes, set_bits: int = 0, clear_bits: int = 0) -> bytes:
    flags = struct.unpack_from("!H", data, 2)[0]
    flags = (flags | set_bits) & ~clear_bits
    return data[:2] + struct.pack("!H", flags) + data[4:]


def rcode_name(rcode: int) -> str:
    """NOERROR, SERVFAIL, REFUSED...: what dig prints, never a bare number."""
    return str(dns.rcode.to_text(dns.rcode.Rcode.make(rcode)))


def rcode_of(data: bytes) -> int:
    return data[3] & 0xF


def refuse_raw(data: bytes) -> bytes | None:
    """REFUSED for a rate-limited query, built from the raw bytes (no parse); None to drop."""
    peeked = peek(data)
    if peeked is None:
        return None
    msg_id, flags, _, qend, _, _, _ = peeked
    return HEADER.pack(msg_id, _response_flags(flags, REFUSED), 1, 0, 0, 0) + data[12:qend]


def make_query(name: str, qtype: int, rd: bool = True, msg_id: int | None = None) -> bytes:
    """A plain query for `name` (used by `explain` and `import`, never on the serving path),
    with a random ID unless given one."""
    return (
        HEADER.pack(secrets.randbits(16) if msg_id is None else msg_id, RD if rd else 0, 1, 0, 0, 0)
        + encode_name(name)
        + struct.pack("!HH", qtype, CLASS_IN)
    )


def type_code(text: str) -> int:
    try:
        return int(dns.rdatatype.from_text(text))
    except dns.rdatatype.UnknownRdatatype:
        raise ValueError(f"{text!r} is not a DNS record type") from None


def answer_lines(data: bytes) -> list[str]:
    """The records of a message as zone-file lines, and its rcode (for people, not the wire)."""
    parsed = dns.message.from_wire(data, ignore_trailing=True)
    lines = [f"rcode {dns.rcode.to_text(parsed.rcode())}"]
    for section in (parsed.answer, parsed.authority, parsed.additional):
        for rrset in section:
            lines.extend(rrset.to_text().splitlines())
    return lines


def map_aaaa(
    query: Query,
    answer: bytes,
    make: Callable[[str, ipaddress.IPv6Address], ipaddress.IPv6Address | None],
) -> tuple[bytes, int]:
    """The AAAA answer to `query` again, its CNAME chain and TTLs kept, each AAAA record's
    address mapped by `make(owner, address)` (None leaves the record out); the authority and
    additional sections go. Returns the bare answer and how many AAAA records it holds."""
    message = walk(answer)
    records = bytearray()
    count = kept = 0
    for r in message.records:
        if r.section != ANSWER or r.rclass != CLASS_IN:
            continue
        ttl = answer[r.ttl_offset : r.ttl_offset + 4]
        if r.rtype == TYPE_CNAME:
            rdata = encode_name(read_cname_target(answer, r))
        elif r.rtype == TYPE_AAAA and r.rdlength == 16:
            v6 = make(r.name, ipaddress.IPv6Address(answer[r.rdata_offset : r.rdata_offset + 16]))
            if v6 is None:
                continue
            rdata = v6.packed
            kept += 1
        else:
            continue
        records += encode_name(r.name) + struct.pack("!HH", r.rtype, CLASS_IN) + ttl
        records += struct.pack("!H", len(rdata)) + rdata
        count += 1
    flags = struct.unpack_from("!H", answer, 2)[0] & ~AD
    head = HEADER.pack(query.msg_id, flags, 1, count, 0, 0)
    return head + query.question.wire + bytes(records), kept
