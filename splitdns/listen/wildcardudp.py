"""UDP on a wildcard address (0.0.0.0 or ::) that answers from the address it was asked on.

A socket bound to 0.0.0.0 lets the kernel pick each reply's source address by routing, and on
a host with several addresses (a router with WAN and LAN addresses, a NAS with a secondary IP,
a container host) that is often not the address the client asked: the client drops the reply
as coming from a stranger and the query times out. dnsmasq and unbound solve it the same way:
read each datagram's destination with IP_PKTINFO / IPV6_PKTINFO and send the reply with that
address as its source. asyncio's datagram transports cannot carry ancillary data, so this is a
small reader on the raw socket. Specific-address listeners keep the ordinary transport.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # Linux values where Python lacks the names
IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", 49)
IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)
IN_PKTINFO = struct.Struct("=I4s4s")  # ifindex, spec_dst (local address), addr (header dst)
IN6_PKTINFO = struct.Struct("=16sI")  # addr, ifindex
ANCILLARY_SPACE = socket.CMSG_SPACE(IN6_PKTINFO.size)
BATCH = 64  # datagrams read per wake-up before yielding to the loop


def is_wildcard(host: str) -> bool:
    return host in ("0.0.0.0", "::")


def enable_pktinfo(sock: socket.socket) -> None:
    """Ask the kernel for each datagram's destination address (before binding)."""
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)


def reply_ancillary(ancdata: list[tuple[int, int, bytes]]) -> list[tuple[int, int, bytes]]:
    """The ancillary data that makes a reply leave from the address the query came to."""
    for level, kind, data in ancdata:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= IN_PKTINFO.size:
            _, _, destination = IN_PKTINFO.unpack_from(data)
            return [(socket.IPPROTO_IP, IP_PKTINFO, IN_PKTINFO.pack(0, destination, bytes(4)))]
        if level == socket.IPPROTO_IPV6 and kind == IPV6_PKTINFO and len(data) >= IN6_PKTINFO.size:
            destination, ifindex = IN6_PKTINFO.unpack_from(data)
            return [(socket.IPPROTO_IPV6, IPV6_PKTINFO, IN6_PKTINFO.pack(destination, ifindex))]
    return []


class ReplyPath:
    """Looks like a datagram transport to the server: `sendto` answers from the right address."""

    __slots__ = ("_ancillary", "_listener")

    def __init__(self, listener: WildcardUdp, ancillary: list[tuple[int, int, bytes]]) -> None:
        self._listener = listener
        self._ancillary = ancillary

    def sendto(self, data: bytes, addr: Any) -> None:
        self._listener.send(data, self._ancillary, addr)

    def is_closing(self) -> bool:
        return self._listener.closed


Receiver = Callable[[bytes, tuple[Any, ...], ReplyPath], None]


class WildcardUdp:
    """Reads datagrams with their destination address; `close()` like a transport."""

    def __init__(self, sock: socket.socket, receive: Receiver) -> None:
        self.sock = sock
        self.receive = receive
        self.closed = False
        sock.setblocking(False)
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        for _ in range(BATCH):
            try:
                data, ancdata, _, addr = self.sock.recvmsg(65535, ANCILLARY_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. ICMP errors surfacing here: nothing to do
                log.debug("UDP receive error: %s", exc)
                return
            self.receive(data, addr, ReplyPath(self, reply_ancillary(ancdata)))

    def send(self, data: bytes, ancillary: list[tuple[int, int, bytes]], addr: Any) -> None:
        if self.closed:
            return
        try:
            self.sock.sendmsg([data], ancillary, 0, addr)
        except (BlockingIOError, InterruptedError):
            log.debug("UDP send buffer full: reply to %s dropped", addr[0])
        except OSError as exc:
            log.debug("UDP send to %s failed: %s", addr[0], exc)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()
