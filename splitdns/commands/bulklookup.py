"""Many A/AAAA questions asked of one upstream at once: `splitdns import` of a large list.

One UDP socket, up to PARALLEL questions in flight, each with a random ID; a reply counts
only from the upstream's address with an ID in flight and our question echoed. What this
cannot settle (silence, truncation, an rcode other than NOERROR/NXDOMAIN, a malformed reply)
is left out, for the caller's one-by-one path (every upstream, TCP on truncation). Bounded:
each question has its `timeout` and one more try at the end, PARALLEL in flight at most.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from splitdns import wire
from splitdns.config.model import Endpoint
from splitdns.migrate.entries import IPAddress
from splitdns.upstream import packets

PARALLEL = 256
RETRIES = 1  # a question that timed out is asked once more, at the end
Key = tuple[str, str]  # (name, "A" | "AAAA")
Found = tuple[IPAddress, ...] | None
#: the answers, by type, then by name (no (name, type) tuple per question: 400k of them)
Answers = dict[str, dict[str, Found]]
SWEEP = 0.1  # seconds between looks for questions past their timeout
TYPES = {"A": wire.TYPE_A, "AAAA": wire.TYPE_AAAA}


class _Asker(asyncio.DatagramProtocol):
    """Questions taken from an iterator, at most PARALLEL in flight on one socket, the next
    sent as soon as one is settled or has timed out: no task, future or timer per question
    (400k questions at once as tasks held 809 MiB; one by one took minutes)."""

    def __init__(
        self,
        questions: Iterator[Key],
        server: tuple[str, int],
        timeout: float,
        found: Answers,
        asking: Callable[[str], str],
        done: asyncio.Future[None],
    ) -> None:
        self.questions = questions
        self.server = server
        self.timeout = timeout
        self.found = found
        self.asking = asking
        self.done = done
        self.transport: asyncio.DatagramTransport | None = None
        #: ID -> (question, its wire question section, deadline, tries left)
        self.waiting: dict[int, tuple[Key, bytes, float, int]] = {}
        self.again: list[tuple[Key, int]] = []  # timed out, to be asked once more
        self.clock = asyncio.get_running_loop().time

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.fill()

    def fill(self) -> None:
        """Send questions until PARALLEL are in flight; done when none is left anywhere."""
        while len(self.waiting) < PARALLEL:
            left = RETRIES
            key = next(self.questions, None)
            if key is None:
                if not self.again:
                    break
                key, left = self.again.pop()
            elif key[0] in self.found[key[1]]:
                continue  # (asked already: a name two entries share)
            self._send(key, left)
        if not self.waiting and not self.done.done():
            self.done.set_result(None)

    def _send(self, key: Key, left: int) -> None:
        assert self.transport is not None
        msg_id = packets.random_id()
        while msg_id in self.waiting:
            msg_id = packets.random_id()
        packet = wire.make_query(self.asking(key[0]), TYPES[key[1]], msg_id=msg_id)
        self.waiting[msg_id] = (key, packet[wire.HEADER_LEN :], self.clock() + self.timeout, left)
        self.transport.sendto(packet)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if (addr[0], addr[1]) != self.server or len(data) < wire.HEADER_LEN:
            return
        msg_id = (data[0] << 8) | data[1]
        pending = self.waiting.get(msg_id)
        if pending is None or not packets.echoes_question(data, pending[1]):
            return
        del self.waiting[msg_id]
        key = pending[0]
        settled, addresses = _addresses(data, TYPES[key[1]])
        if settled:
            self.found[key[1]][key[0]] = addresses
        self.fill()

    def expire(self) -> None:
        """Questions past their deadline: asked once more later, else left to the caller."""
        now = self.clock()
        for msg_id, (key, _, deadline, left) in list(self.waiting.items()):
            if deadline <= now:
                del self.waiting[msg_id]
                if left > 0:
                    self.again.append((key, left - 1))
        self.fill()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def ask_all(
    questions: Iterable[Key],
    server: Endpoint,
    timeout: float = 2.0,
    found: Answers | None = None,
    asking: Callable[[str], str] = str,
) -> Answers:
    """The answers `server` settled, by type and name, added to `found` (questions whose
    name is there already are skipped); `asking(name)` is the name put on the wire."""
    loop = asyncio.get_running_loop()
    found = found if found is not None else {"A": {}, "AAAA": {}}
    done: asyncio.Future[None] = loop.create_future()
    asker = _Asker(iter(questions), (server.host, server.port), timeout, found, asking, done)
    transport, _ = await loop.create_datagram_endpoint(
        lambda: asker, remote_addr=(server.host, server.port)
    )
    try:
        while not done.done():
            await asyncio.wait([done], timeout=SWEEP)
            asker.expire()
    finally:
        transport.close()
    return found


def _addresses(data: bytes, rtype: int) -> tuple[bool, Found]:
    """(whether the reply settles the question, its addresses of `rtype`; None: none)."""
    flags = (data[2] << 8) | data[3]
    if flags & wire.TC or wire.rcode_of(data) not in (wire.NOERROR, wire.NXDOMAIN):
        return False, None
    if not (data[6] << 8) | data[7]:  # no answer records: settled from the header alone
        return True, None
    try:
        message = wire.walk(data)
    except wire.WireError:
        return False, None
    size = 4 if rtype == wire.TYPE_A else 16
    addresses = tuple(
        ipaddress.ip_address(data[r.rdata_offset : r.rdata_offset + size])
        for r in message.records
        if r.section == wire.ANSWER and r.rtype == rtype and r.rdlength == size
    )
    return True, addresses or None
