"""The PROXY protocol, version 2 (haproxy's spec): the real client behind a load balancer.

dnsdist (`useProxyProtocol=true`), haproxy and cloud load balancers put a binary header before
each UDP datagram, or once at the start of a TCP connection, naming the client they forward
for. splitdns decides views by the client, so it reads that header, but only from
`trusted_proxies`; anyone else could name any client. The parser is strict and bounded:
signature, version 2, command LOCAL or PROXY, family INET/INET6 (UNSPEC only with LOCAL), the
address block complete, TLVs stepped over by their lengths and checked to fill the header.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
FIXED = 16  # signature, version/command, family/protocol, length
MAX_HEADER = FIXED + 512  # addresses and TLVs; more is not a header we accept

LOCAL, PROXY = 0, 1
INET, INET6 = 1, 2
STREAM, DGRAM = 1, 2


class ProxyError(ValueError):
    """A header that must not be trusted: the datagram or connection is dropped."""


@dataclass(frozen=True, slots=True)
class Header:
    length: int  # octets the header takes, payload follows
    local: bool  # LOCAL: the proxy speaks for itself (health checks): no client address
    source: str | None  # the client's address
    source_port: int
    stream: bool  # the proxied connection was TCP


def starts_with_header(data: bytes) -> bool:
    return data[: len(SIGNATURE)] == SIGNATURE


def header_length(fixed: bytes) -> int:
    """From the first 16 octets, the whole header's length (for reading it off a stream)."""
    if len(fixed) < FIXED or not starts_with_header(fixed):
        raise ProxyError("no PROXY v2 signature")
    total = FIXED + int.from_bytes(fixed[14:16], "big")
    if total > MAX_HEADER:
        raise ProxyError(f"header of {total} octets is too long")
    return total


def parse(data: bytes) -> Header:
    """The header at the start of `data`; ProxyError for anything but a well-formed one."""
    total = header_length(data[:FIXED])
    if len(data) < total:
        raise ProxyError("truncated header")
    version, command = data[12] >> 4, data[12] & 0x0F
    if version != 2:
        raise ProxyError(f"version {version}, not 2")
    if command not in (LOCAL, PROXY):
        raise ProxyError(f"unknown command {command}")
    family, protocol = data[13] >> 4, data[13] & 0x0F
    body = data[FIXED:total]
    if command == LOCAL:
        _check_tlvs(body[_address_size(family) :] if family in (INET, INET6) else b"")
        return Header(total, True, None, 0, protocol == STREAM)
    if family not in (INET, INET6) or protocol not in (STREAM, DGRAM):
        raise ProxyError(f"family {family} / protocol {protocol} cannot name a client")
    size = _address_size(family)
    if len(body) < size:
        raise ProxyError("address block shorter than its family needs")
    width = 4 if family == INET else 16
    source = ipaddress.ip_address(body[:width])
    (source_port,) = struct.unpack_from("!H", body, 2 * width)
    _check_tlvs(body[size:])
    return Header(total, False, str(source), source_port, protocol == STREAM)


def _address_size(family: int) -> int:
    return 12 if family == INET else 36 if family == INET6 else 0


def _check_tlvs(tlvs: bytes) -> None:
    """TLVs (type, length, value) must exactly fill what follows the addresses; skipped."""
    pos = 0
    while pos < len(tlvs):
        if pos + 3 > len(tlvs):
            raise ProxyError("truncated TLV")
        pos += 3 + struct.unpack_from("!H", tlvs, pos + 1)[0]
    if pos != len(tlvs):
        raise ProxyError("TLV runs past the header")


def build(source: str, source_port: int, dest: str, dest_port: int, stream: bool,
          tlvs: bytes = b"", local: bool = False) -> bytes:  # fmt: skip
    """A header (tests and the fuzz seeds; splitdns itself only reads them)."""
    src, dst = ipaddress.ip_address(source), ipaddress.ip_address(dest)
    family = INET if src.version == 4 else INET6
    addresses = src.packed + dst.packed + struct.pack("!HH", source_port, dest_port)
    body = addresses + tlvs
    byte13 = (2 << 4) | (LOCAL if local else PROXY)
    byte14 = (family << 4) | (STREAM if stream else DGRAM)
    return SIGNATURE + bytes([byte13, byte14]) + struct.pack("!H", len(body)) + body
