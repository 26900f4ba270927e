"""An abuse harness for splitdns's listeners, run as its own process so its work never slows
the probe that measures the server (`python -m tests.support.abuse KIND PORT [options]`).

Each kind is one way a device on the LAN can try to take the server down; every one is bounded
in count and time and sends only to 127.0.0.1. It prints one JSON line: how many connections
it opened, how many the server refused at once, and when the server closed the others.

  doh-unfinished  HTTP/2 POSTs whose body never ends (`--streams` per connection)
  tls-halfopen    TCP connections to a TLS port that never send a ClientHello
  tcp-trickle     a DNS message over TCP, one byte a second
  tcp-oversized   a 65,535-byte length prefix, then a few bytes and silence
  udp-flood       new names at `--rate` a second from each address (one, or `--count` "many")
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import ssl
import struct
import time
from typing import Any

import h2.config
import h2.connection
import h2.events

from splitdns import wire


def sources(count: int, first: str) -> list[str]:
    """`count` loopback source addresses: all `first`, or 127.0.1.1, 127.0.1.2, ... ("many")."""
    if first != "many":
        return [first] * count
    return [f"127.0.{1 + i // 250}.{1 + i % 250}" for i in range(count)]


class Tally:
    def __init__(self) -> None:
        self.opened = 0
        self.refused = 0  # reset or closed before the attack could start on it
        self.lifetimes: list[float] = []  # seconds from open to the server's close, per one
        self.began = time.monotonic()

    def closed(self, opened: float) -> None:
        self.lifetimes.append(round(time.monotonic() - opened, 2))

    def report(self, **extra: Any) -> str:
        return json.dumps(
            {
                "opened": self.opened,
                "refused": self.refused,
                "closed": len(self.lifetimes),
                "still_open": self.opened - len(self.lifetimes),
                "longest": max(self.lifetimes, default=0.0),
                **extra,
            }
        )


async def _connect(port: int, source: str, tls: bool, alpn: list[str] | None = None) -> Any:
    context = None
    if tls:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        if alpn:
            context.set_alpn_protocols(alpn)
    return await asyncio.wait_for(
        asyncio.open_connection(
            "127.0.0.1", port, ssl=context, local_addr=(source, 0), server_hostname=None
        ),
        5,
    )


async def _until_closed(
    reader: asyncio.StreamReader, tally: Tally, hold: float, opened: float
) -> None:
    """Read (and drop) what the server sends until it closes, or `hold` seconds are up."""
    try:
        async with asyncio.timeout(hold - (time.monotonic() - opened)):
            while await reader.read(4096):
                pass
        tally.closed(opened)
    except TimeoutError:
        pass  # still open when the attacker gave up: the server kept it
    except (ConnectionError, ssl.SSLError, OSError):
        tally.closed(opened)


async def doh_unfinished(
    port: int, source: str, tally: Tally, hold: float, streams: int, body: int = 500
) -> None:
    try:
        reader, writer = await _connect(port, source, True, ["h2"])
    except (OSError, TimeoutError, ssl.SSLError):
        tally.refused += 1
        return
    tally.opened += 1
    opened = time.monotonic()
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    for i in range(streams):
        stream = 1 + 2 * i
        conn.send_headers(
            stream,
            [
                (":method", "POST"),
                (":path", "/dns-query"),
                (":scheme", "https"),
                (":authority", "dns.home.test"),
                ("content-type", "application/dns-message"),
                ("content-length", "60000"),
            ],
        )
        conn.send_data(stream, b"\0" * body)  # and never the rest, never END_STREAM
        # (99 streams x 500 bytes, or 32 x 1800, stay inside the first 64 KiB flow window)
    try:
        writer.write(conn.data_to_send())
        await writer.drain()
    except (ConnectionError, OSError):
        tally.closed(opened)
        return
    await _until_closed(reader, tally, hold, opened)
    writer.close()


async def _plain(port: int, source: str, tally: Tally) -> Any:
    """A plain TCP connection (reader, writer), counted as opened; None, counted as refused."""
    try:
        connection = await _connect(port, source, False)
    except (OSError, TimeoutError):
        tally.refused += 1
        return None
    tally.opened += 1
    return connection


async def tls_halfopen(port: int, source: str, tally: Tally, hold: float) -> None:
    connection = await _plain(port, source, tally)
    if connection is not None:
        await _until_closed(connection[0], tally, hold, time.monotonic())
        connection[1].close()


async def tcp_trickle(port: int, source: str, tally: Tally, hold: float, oversized: bool) -> None:
    connection = await _plain(port, source, tally)
    if connection is None:
        return
    reader, writer = connection
    opened = time.monotonic()
    message = wire.make_query("trickle.example.test", wire.TYPE_A)
    data = (b"\xff\xff" + b"\0" * 100) if oversized else struct.pack("!H", len(message)) + message

    async def feed() -> None:
        step = len(data) if oversized else 1
        for i in range(0, len(data), step):
            writer.write(data[i : i + step])
            await writer.drain()
            await asyncio.sleep(1.0)

    feeding = asyncio.ensure_future(feed())
    await _until_closed(reader, tally, hold, opened)
    feeding.cancel()
    writer.close()


def udp_flood(port: int, addresses: list[str], rate: float, seconds: float) -> str:
    """Unique names at `rate` per second from each address (in bursts of 50) for `seconds`;
    answers counted."""
    socks = []
    for source in addresses:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((source, 0))
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        socks.append(sock)
    sent = [0] * len(socks)
    answered = servfail = 0
    began = time.monotonic()
    while time.monotonic() - began < seconds:
        due = int((time.monotonic() - began) * rate)
        for i, sock in enumerate(socks):
            while sent[i] < due:
                name = f"f{i}-{sent[i]}-{int(began)}.flood.example.test"
                msg = bytearray(wire.make_query(name, wire.TYPE_A))
                with contextlib.suppress(BlockingIOError):  # a full buffer drops it, as a NIC
                    sock.sendto(bytes(msg), ("127.0.0.1", port))
                sent[i] += 1
                if sent[i] % 50 == 0:
                    break
            while True:
                try:
                    reply = sock.recv(4096)
                except BlockingIOError:
                    break
                answered += 1
                servfail += wire.rcode_of(reply) == wire.SERVFAIL
        time.sleep(0.002)
    for sock in socks:
        sock.close()
    return json.dumps({"sent": sum(sent), "answered": answered, "servfail": servfail})


async def run(args: argparse.Namespace) -> str:
    tally = Tally()
    jobs = []
    for source in sources(args.count, args.source):
        if args.kind == "doh-unfinished":
            job = doh_unfinished(args.port, source, tally, args.hold, args.streams, args.body)
        elif args.kind == "tls-halfopen":
            job = tls_halfopen(args.port, source, tally, args.hold)
        else:
            job = tcp_trickle(args.port, source, tally, args.hold, args.kind == "tcp-oversized")
        jobs.append(asyncio.ensure_future(job))
        await asyncio.sleep(0.002)  # an opening rate a device can reach, not a SYN flood
    results = await asyncio.gather(*jobs, return_exceptions=True)
    errors = sorted({repr(r) for r in results if isinstance(r, BaseException)})
    return tally.report(errors=errors[:5])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind")
    parser.add_argument("port", type=int)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--source", default="127.0.0.9", help='an address, or "many"')
    parser.add_argument("--hold", type=float, default=20.0, help="seconds each connection is kept")
    parser.add_argument("--streams", type=int, default=1)
    parser.add_argument("--body", type=int, default=500, help="bytes sent of each DoH body")
    parser.add_argument("--rate", type=float, default=5000.0)
    args = parser.parse_args()
    if args.kind == "udp-flood":
        addresses = sorted(set(sources(args.count, args.source)))
        print(udp_flood(args.port, addresses, args.rate, args.hold), flush=True)
    else:
        print(asyncio.run(run(args)), flush=True)


if __name__ == "__main__":
    main()
