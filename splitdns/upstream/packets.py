"""What splitdns sends upstream and which replies it accepts (RFC 5452).

Every query upstream gets a random ID from the kernel's CSPRNG (and, with `mix_case`, random
letter case: 0x20); a reply counts only when it is a response with that ID and the exact
question (case included, when mixed), and carries a transaction signature only when the
query did. Used by every upstream transport, the express lane and the tools that ask.
"""

from __future__ import annotations

import os
import secrets
import struct

from splitdns import wire

_ID_BATCH = 4096
_ids: list[int] = []
os.register_at_fork(after_in_child=_ids.clear)  # workers must not share a sequence


def random_id() -> int:
    """A query ID from the kernel's CSPRNG, drawn 4 096 at a time (one getrandom call, not
    one per query); unpredictable all the same (RFC 5452)."""
    if not _ids:
        _ids.extend(memoryview(secrets.token_bytes(2 * _ID_BATCH)).cast("H").tolist())
    return _ids.pop()


def make_upstream_query(
    query: wire.Query, msg_id: int | None = None, mix_case: bool = False
) -> tuple[int, bytes]:
    """The query splitdns sends upstream: a fresh random ID, RD/CD copied, EDNS with DO copied.

    splitdns always speaks EDNS upstream (so big answers come over UDP) and strips the reply's
    OPT before answering, adding its own when the client used EDNS. With `mix_case` the name's
    letters get random case (draft-vixie-dnsext-dns0x20): a reply must echo it exactly, which
    adds one bit per letter to what a spoofer has to guess.
    """
    if msg_id is None:
        msg_id = random_id()
    if query.signed is not None:  # the signature covers every byte but the ID: relay as is
        return msg_id, struct.pack("!H", msg_id) + query.signed[2:]
    question = query.question.wire
    if mix_case:
        question = _mixed_case(question[:-4]) + question[-4:]
    return msg_id, upstream_packet(msg_id, query.flags, question, query.do)


def upstream_packet(msg_id: int, query_flags: int, question: bytes, do: bool) -> bytes:
    """Our query upstream: wire.RD and wire.CD as the client set them, EDNS with its DO bit."""
    head = wire.HEADER.pack(msg_id, query_flags & (wire.RD | wire.CD), 1, 0, 0, 1)
    return head + question + (wire.OPT_DO if do else wire.OPT_PLAIN)


def _mixed_case(name_wire: bytes) -> bytes:
    """Flip the case of each letter at random (labels' length octets are never letters)."""
    bits = secrets.randbits(len(name_wire))
    out = bytearray(name_wire)
    for i in range(len(out)):  # (mypyc cannot enumerate a bytearray)
        octet = out[i]
        if (0x41 <= octet <= 0x5A or 0x61 <= octet <= 0x7A) and (bits >> i) & 1:
            out[i] = octet ^ 0x20
    return bytes(out)


def sent_question(packet: bytes, query: wire.Query) -> bytes:
    """The question bytes of a query made by make_upstream_query (with their case)."""
    return packet[wire.HEADER_LEN : wire.HEADER_LEN + len(query.question.wire)]


def echoes_question(data: bytes, question: bytes) -> bool:
    """The reply repeats our question byte for byte (case included), right after the header."""
    return data[wire.HEADER_LEN : wire.HEADER_LEN + len(question)] == question


def reply_matches(reply: wire.Message, msg_id: int, query: wire.Query) -> bool:
    """An upstream reply counts only if it is a response with our ID and our exact question,
    and carries a transaction signature only when our query did (a TSIG or SIG(0) in the
    answer to an unsigned query makes clients reject the whole answer)."""
    if reply.msg_id != msg_id or not reply.flags & wire.QR or len(reply.questions) != 1:
        return False
    if query.signed is None and any(
        r.rtype == wire.TYPE_TSIG or (r.rtype == wire.TYPE_SIG and r.section == wire.ADDITIONAL)
        for r in reply.records
    ):
        return False
    question = query.question
    got = reply.questions[0]
    return (got.name, got.qtype, got.qclass) == (question.name, question.qtype, question.qclass)


def names_question(data: bytes, msg_id: int, question: wire.Question, exact: bytes | None) -> bool:
    """Whether a reply that cannot be read (walk failed) still carries our ID, wire.QR and our
    question, read as raw bytes right after the header: the upstream's own broken answer,
    not a forgery (a forger who could match ID, port and question could as well forge a
    readable one). Case-insensitive unless 0x20 sent `exact`."""
    sent = exact if exact is not None else question.wire
    end = wire.HEADER_LEN + len(sent)
    if len(data) < end or data[2] & 0x80 == 0 or data[4:6] != b"\x00\x01":
        return False
    if (data[0] << 8) | data[1] != msg_id:
        return False
    got = data[wire.HEADER_LEN : end]
    return got == sent if exact is not None else got.lower() == sent.lower()


def make_probe() -> tuple[int, bytes]:
    """A health probe: `health.splitdns.` TXT in class CH. splitdns answers it (REFUSED) without
    asking any upstream, so an answer proves the server is alive and nothing more."""
    msg_id = secrets.randbits(16)
    return msg_id, wire.HEADER.pack(msg_id, 0, 1, 0, 0, 0) + wire.encode_name(
        "health.splitdns"
    ) + struct.pack("!HH", 16, 3)


def is_answer_to(data: bytes, msg_id: int) -> bool:
    return (
        len(data) >= wire.HEADER_LEN
        and wire.HEADER.unpack_from(data)[0] == msg_id
        and bool(data[2] & 0x80)
    )
