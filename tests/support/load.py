"""Bounded load on loopback for tests and bench/soak: a windowed UDP query blaster and the
process figures (RSS, open sockets) read from /proc."""

from __future__ import annotations

import socket
import struct
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from splitdns import wire


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def sockets_of(pid: int) -> int:
    fds = Path(f"/proc/{pid}/fd")
    count = 0
    for fd in fds.iterdir():
        try:
            count += fd.readlink().name.startswith("socket:")
        except OSError:
            continue
    return count


@dataclass
class Blast:
    """What a bounded load run saw."""

    sent: int = 0
    rcodes: Counter[int] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    lost: int = 0
    seconds: float = 0.0

    @property
    def answered(self) -> int:
        return sum(self.rcodes.values())


def blast(port: int, names: list[str], window: int = 32, seconds: float = 60.0) -> Blast:
    """Queries for `names`, `window` outstanding at a time, bounded in count and time."""
    out = Blast()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(1.0)
    pending: dict[int, float] = {}
    began = time.monotonic()
    deadline = began + seconds
    queue = iter(enumerate(names))
    exhausted = False
    try:
        while (pending or not exhausted) and time.monotonic() < deadline:
            while not exhausted and len(pending) < window:
                item = next(queue, None)
                if item is None:
                    exhausted = True
                    break
                i, name = item
                data = wire.make_query(name, wire.TYPE_A)
                msg_id = i & 0xFFFF
                sock.sendto(struct.pack("!H", msg_id) + data[2:], ("127.0.0.1", port))
                pending[msg_id] = time.monotonic()
                out.sent += 1
            try:
                data = sock.recv(4096)
            except TimeoutError:
                out.lost += len(pending)
                pending.clear()
                continue
            sent_at = pending.pop(struct.unpack("!H", data[:2])[0], None)
            if sent_at is not None:
                out.rcodes[data[3] & 0xF] += 1
                out.latencies.append(time.monotonic() - sent_at)
    finally:
        sock.close()
    out.lost += len(pending)
    out.seconds = time.monotonic() - began
    return out
