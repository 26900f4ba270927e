"""Many A/AAAA questions asked of one upstream at once: `splitdns import` of a large list.

One UDP socket, up to PARALLEL questions in flight, each with a random ID; a reply counts
only from the upstream's address with an ID in flight and our question echoed. What this
cannot settle (silence, truncation, an rcode other than NOERROR/NXDOMAIN, a malformed reply)
is left out, for the caller's one-by-one path (every upstream, TCP on truncation). Bounded:
each question has one `timeout`, the whole run `PARALLEL` sockets' worth of work at most.
"""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any

from splitdns import wire
from splitdns.config.model import Endpoint
from splitdns.migrate.entries import IPAddress
from splitdns.upstream import packets

PARALLEL = 256
Key = tuple[str, str]  # (name, "A" | "AAAA")
Found = tuple[IPAddress, ...] | None


class _Exchange(asyncio.DatagramProtocol):
    def __init__(self, server: tuple[str, int]) -> None:
        self.server = server
        self.waiting: dict[int, tuple[bytes, asyncio.Future[bytes]]] = {}

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if (addr[0], addr[1]) != self.server or len(data) < wire.HEADER_LEN:
            return
        msg_id = (data[0] << 8) | data[1]
        pending = self.waiting.get(msg_id)
        if pending is None or not packets.echoes_question(data, pending[0]):
            return
        del self.waiting[msg_id]
        if not pending[1].done():
            pending[1].set_result(data)


async def ask_all(keys: list[Key], server: Endpoint, timeout: float = 2.0) -> dict[Key, Found]:
    """The answers `server` settled, by question."""
    loop = asyncio.get_running_loop()
    exchange = _Exchange((server.host, server.port))
    transport, _ = await loop.create_datagram_endpoint(
        lambda: exchange, remote_addr=(server.host, server.port)
    )
    found: dict[Key, Found] = {}
    gate = asyncio.Semaphore(PARALLEL)

    async def one(key: Key) -> None:
        async with gate:
            msg_id = packets.random_id()
            while msg_id in exchange.waiting:
                msg_id = packets.random_id()
            packet = wire.make_query(key[0], wire.type_code(key[1]))
            packet = msg_id.to_bytes(2, "big") + packet[2:]
            future: asyncio.Future[bytes] = loop.create_future()
            exchange.waiting[msg_id] = (packet[wire.HEADER_LEN :], future)
            transport.sendto(packet)
            try:
                data = await asyncio.wait_for(future, timeout)
            except TimeoutError:
                exchange.waiting.pop(msg_id, None)
                return
        settled, addresses = _addresses(data, wire.type_code(key[1]))
        if settled:
            found[key] = addresses

    try:
        await asyncio.gather(*(one(key) for key in keys))
    finally:
        transport.close()
    return found


def _addresses(data: bytes, rtype: int) -> tuple[bool, Found]:
    """(whether the reply settles the question, its addresses of `rtype`; None: none)."""
    try:
        message = wire.walk(data)
    except wire.WireError:
        return False, None
    rcode = wire.rcode_of(data)
    if message.flags & wire.TC or rcode not in (wire.NOERROR, wire.NXDOMAIN):
        return False, None
    size = 4 if rtype == wire.TYPE_A else 16
    addresses = tuple(
        ipaddress.ip_address(data[r.rdata_offset : r.rdata_offset + size])
        for r in message.records
        if r.section == wire.ANSWER and r.rtype == rtype and r.rdlength == size
    )
    return True, addresses or None
