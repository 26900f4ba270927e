"""Plain DNS listeners: a UDP socket and a TCP server on one address and port.

Bound once, at start (a reload that changes them needs a restart: `listener_changes` says
what it would change). A wildcard address answers from the address each query came to
(listen/wildcardudp.py); `workers` processes share the port (SO_REUSEPORT).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any, cast

from splitdns.config.model import Config, Endpoint
from splitdns.listen.ports import bind_problem
from splitdns.listen.wildcardudp import WildcardUdp, enable_pktinfo, is_wildcard

log = logging.getLogger(__name__)

#: The server's per-datagram entry: (data, the sender's address, where to answer)
Datagram = Callable[[bytes, tuple[Any, ...], Any], None]
#: The protocol for each TCP connection (serve/streams.py's session)
StreamProtocol = Callable[[], asyncio.Protocol]


async def bind_plain(
    endpoint: Endpoint, workers: int, datagram: Datagram, stream_protocol: StreamProtocol
) -> tuple[asyncio.DatagramTransport | WildcardUdp, asyncio.Server, int]:
    """(UDP transport, TCP server, port) on `endpoint`; port 0 picks one for both. OSError
    (bind_problem: the address, the protocol and who holds the port) if either cannot bind."""
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if endpoint.family_v6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if workers > 1:  # workers share the port; the kernel spreads load
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if is_wildcard(endpoint.host):
            enable_pktinfo(sock)  # answer from the address each query came to
        sock.bind((endpoint.host, endpoint.port))
    except OSError as exc:
        sock.close()
        raise bind_problem(endpoint, "udp", exc) from None
    port = sock.getsockname()[1]
    udp: asyncio.DatagramTransport | WildcardUdp
    if is_wildcard(endpoint.host):
        udp = WildcardUdp(sock, datagram)
    else:
        udp, _ = await loop.create_datagram_endpoint(lambda: UdpProtocol(datagram), sock=sock)
    try:
        tcp = await loop.create_server(
            stream_protocol,
            endpoint.host,
            port or endpoint.port,
            reuse_address=True,
            reuse_port=workers > 1,
            backlog=256,
        )
    except OSError as exc:
        udp.close()
        raise bind_problem(Endpoint(endpoint.host, port), "tcp", exc) from None
    return udp, tcp, port


def listener_changes(old: Config, new: Config) -> str:
    """What a reload would change of the listeners (sockets are bound once, at start): "" if
    nothing, else each address added (+) or removed (-)."""
    before = {str(e) for e in old.listen} | {str(e) for e in old.encrypted} | _operator(old)
    after = {str(e) for e in new.listen} | {str(e) for e in new.encrypted} | _operator(new)
    return ", ".join(
        [f"+ {a}" for a in sorted(after - before)] + [f"- {a}" for a in sorted(before - after)]
    )


def _operator(config: Config) -> set[str]:
    """The dashboard's and metrics' addresses, as listener_changes shows them."""
    shown = set()
    if config.dashboard is not None:
        shown.add(f"dashboard {config.dashboard}")
    if config.metrics is not None:
        shown.add(f"metrics {config.metrics}")
    return shown


class UdpProtocol(asyncio.DatagramProtocol):
    """Hands each datagram to the server; nothing else."""

    def __init__(self, datagram: Datagram) -> None:
        self.datagram = datagram
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport is not a subclass of asyncio.DatagramTransport, so cast.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if self.transport is not None:
            self.datagram(data, addr, self.transport)

    def error_received(self, exc: Exception) -> None:
        log.debug("UDP socket error: %s", exc)
