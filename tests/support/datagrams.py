"""UDP queries handed to an in-process Server the way its listener hands them over
(Server.datagram: cache hit, flat walk or task), with the answers kept."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from splitdns.serve.server import Server


class Captured:
    """A UDP listener's reply path that keeps what the server sends."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def sendto(self, data: bytes, addr: Any) -> None:
        self.sent.append(data)

    def is_closing(self) -> bool:
        return False


async def datagrams(
    server: Server, queries: list[bytes], seconds: float = 5.0, host: str = "127.0.0.1"
) -> list[bytes]:
    """Each query through Server.datagram, from `host`; what was sent back once none is in
    flight (a dropped query sends nothing). Fails if the server is still busy after `seconds`."""
    captured = Captured()
    for data in queries:
        server.datagram(data, (host, 5300), captured)
    deadline = time.monotonic() + seconds
    while server.in_flight and time.monotonic() < deadline:
        await asyncio.sleep(0.001)
    assert not server.in_flight, "queries still in flight: the walk never finished"
    return captured.sent
