"""DNS over HTTPS for LAN clients (RFC 8484): a small ASGI app served by hypercorn.

hypercorn speaks HTTP/2 and HTTP/1.1 over TLS (no HTTP framing here); this module only turns a
request into a DNS message and back: GET with `?dns=` (base64url) or POST of
`application/dns-message`, the answer with `Cache-Control: max-age` = its smallest TTL. Bad
requests get 400/405/413/415; the DNS work is the server's own `respond`, decided by the real
client address, with the `doh` transport label.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import logging
import os
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, Protocol
from urllib.parse import parse_qs

from hypercorn.asyncio import serve
from hypercorn.config import Config as HypercornConfig

from splitdns import wire
from splitdns.config.model import Config, IPNetwork

log = logging.getLogger(__name__)

MEDIA_TYPE = b"application/dns-message"
MAX_MESSAGE = 65535

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class Answerer(Protocol):
    config: Config

    def trusted(self, host: str, networks: tuple[IPNetwork, ...]) -> bool: ...

    def over_limit(self, data: bytes, host: str) -> tuple[bool, bytes | None]: ...

    async def respond(self, data: bytes, host: str, transport: str) -> bytes | None: ...


def max_age(answer: bytes) -> int:
    """RFC 8484 §5.1: no longer than the smallest TTL of the answer section (for a negative
    answer, its SOA's, as a cache would keep it); 0 when it has none."""
    try:
        message = wire.walk(answer)
    except wire.WireError:
        return 0
    section = wire.ANSWER if message.section(wire.ANSWER) else wire.AUTHORITY
    ttls = [
        int.from_bytes(answer[r.ttl_offset : r.ttl_offset + 4], "big")
        for r in message.records
        if r.section == section and r.rtype != wire.TYPE_OPT
    ]
    return min(ttls, default=0)


class DohApp:
    """The ASGI application: one DNS message per HTTP request."""

    def __init__(self, server: Answerer, path: str) -> None:
        self.server = server
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        status, headers, body = await self.handle(scope, receive)
        headers = [*headers, (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def handle(
        self, scope: Scope, receive: Receive
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        text = [(b"content-type", b"text/plain")]
        if scope["path"] != self.path:
            return 404, text, b"not found: DNS over HTTPS is at " + self.path.encode() + b"\n"
        method = scope["method"]
        if method == "GET":
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            values = query.get("dns", [])
            if len(values) != 1:
                return 400, text, b"GET needs one ?dns= parameter\n"
            encoded = values[0]
            if len(encoded) > MAX_MESSAGE * 4 // 3 + 4:
                return 413, text, b"message too large\n"
            try:
                data = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
            except (binascii.Error, ValueError):
                return 400, text, b"dns= is not base64url\n"
        elif method == "POST":
            headers = dict(scope.get("headers", []))
            if headers.get(b"content-type", b"").split(b";")[0].strip() != MEDIA_TYPE:
                return 415, text, b"POST needs Content-Type: application/dns-message\n"
            data = b""
            while True:
                message = await receive()
                data += message.get("body", b"")
                if len(data) > MAX_MESSAGE:
                    return 413, text, b"message too large\n"
                if not message.get("more_body", False):
                    break
        else:
            return 405, [*text, (b"allow", b"GET, POST")], b"GET or POST\n"
        host = self.client_of(scope)
        if host is None:
            return 400, text, b"a trusted proxy must name the client (X-Forwarded-For)\n"
        limited, refusal = self.server.over_limit(data, host)
        answer = refusal if limited else await self.server.respond(data, host, "doh")
        if answer is None:
            return 400, text, b"not a DNS query\n"
        cache = f"max-age={max_age(answer)}".encode()
        return 200, [(b"content-type", MEDIA_TYPE), (b"cache-control", cache)], answer

    def client_of(self, scope: Scope) -> str | None:
        """The peer, or, from a `trusted_proxies` HTTP reverse proxy (nginx, Caddy, Traefik,
        haproxy in HTTP mode), the address it puts last in X-Forwarded-For: the one it saw.
        None: a trusted proxy named no client (refused, never answered as the proxy)."""
        peer = (scope.get("client") or ("0.0.0.0", 0))[0]
        proxies = self.server.config.trusted_proxies
        if not proxies or not self.server.trusted(peer, proxies):
            return str(peer)
        forwarded = [v for k, v in scope.get("headers", []) if k == b"x-forwarded-for"]
        if not forwarded:
            return None
        last = forwarded[-1].decode("latin-1").split(",")[-1].strip()
        try:
            return str(ipaddress.ip_address(last.strip("[]")))
        except ValueError:
            return None


class _Config(HypercornConfig):
    """hypercorn's config with our own SSL context, so a certificate reload reaches it."""

    def __init__(self, context: ssl.SSLContext) -> None:
        super().__init__()
        self._context = context

    def create_ssl_context(self) -> ssl.SSLContext:
        return self._context

    @property
    def ssl_enabled(self) -> bool:
        return True


class DohListener:
    """One `https://` listen address: a bound socket handed to hypercorn."""

    def __init__(
        self, app: DohApp, sock: socket.socket, context: ssl.SSLContext, idle: float
    ) -> None:
        config = _Config(context)
        # hypercorn gets its own descriptor of the socket: it closes that, we close ours
        config.bind = [f"fd://{os.dup(sock.fileno())}"]
        config.alpn_protocols = ["h2", "http/1.1"]
        config.keep_alive_timeout = idle
        config.ssl_handshake_timeout = idle
        config.read_timeout = int(max(1, idle))
        config.accesslog = None
        config.errorlog = logging.getLogger("splitdns.doh.http")
        config.max_app_queue_size = 100
        self.sock = sock
        self._stopping = asyncio.Event()
        self._task = asyncio.ensure_future(
            serve(app, config, shutdown_trigger=self._stopping.wait, mode="asgi")  # type: ignore[arg-type]
        )

    async def close(self) -> None:
        self._stopping.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), 5)
        except (TimeoutError, asyncio.CancelledError):
            self._task.cancel()
        except Exception:  # hypercorn's own shutdown problems must not stop ours
            log.exception("DoH listener did not stop cleanly")
        self.sock.close()
