"""The PROXY v2 parser on crafted headers: what it accepts, and everything it must refuse."""

from __future__ import annotations

import struct

import pytest

from splitdns.listen import proxyv2
from splitdns.listen.proxyv2 import ProxyError, build, parse


def test_ipv4_and_ipv6_headers_name_the_client() -> None:
    v4 = build("192.0.2.10", 40000, "192.0.2.53", 53, stream=False) + b"DNS"
    header = parse(v4)
    assert (header.source, header.source_port, header.local, header.stream) == (
        "192.0.2.10", 40000, False, False,
    )  # fmt: skip
    assert v4[header.length :] == b"DNS"
    v6 = build("2001:db8::10", 5, "2001:db8::53", 53, stream=True)
    assert parse(v6).source == "2001:db8::10" and parse(v6).stream


def test_local_command_and_tlvs_are_accepted() -> None:
    local = build("127.0.0.1", 0, "127.0.0.1", 53, stream=False, local=True)
    assert parse(local).local and parse(local).source is None
    tlvs = bytes([0x01]) + struct.pack("!H", 2) + b"h2" + bytes([0xEE]) + struct.pack("!H", 0)
    header = parse(build("192.0.2.10", 1, "192.0.2.53", 53, stream=False, tlvs=tlvs) + b"x")
    assert header.source == "192.0.2.10" and header.length == 16 + 12 + len(tlvs)


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda h: h[:20], "truncated"),
        (lambda h: b"X" + h[1:], "signature"),
        (lambda h: h[:12] + bytes([0x11]) + h[13:], "version"),
        (lambda h: h[:12] + bytes([0x22]) + h[13:], "command"),
        (lambda h: h[:13] + bytes([0x31]) + h[14:], "cannot name a client"),
        (lambda h: h[:13] + bytes([0x10]) + h[14:], "cannot name"),
        (lambda h: h[:14] + struct.pack("!H", 8) + h[16:24], "shorter"),
        (lambda h: h[:14] + struct.pack("!H", 4000) + h[16:], "too long"),
        (lambda h: h[:14] + struct.pack("!H", 12 + 2) + h[16:] + b"\x01\x00", "truncated TLV"),
        (lambda h: h[:14] + struct.pack("!H", 12 + 3) + h[16:] + b"\x01\x00\x09", "past"),
    ],
)
def test_malformed_headers_are_refused(mangle: object, message: str) -> None:
    good = build("192.0.2.10", 1, "192.0.2.53", 53, stream=False)
    bad = mangle(good)  # type: ignore[operator]
    with pytest.raises(ProxyError, match=message):
        parse(bad)


def test_header_length_reads_a_stream_prefix() -> None:
    header = build("192.0.2.10", 1, "192.0.2.53", 53, stream=True)
    assert proxyv2.header_length(header[:16]) == len(header)
    with pytest.raises(ProxyError):
        proxyv2.header_length(b"\x00\x1c" + bytes(14))  # a DNS-over-TCP length, not a header
