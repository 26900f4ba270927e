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
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, Protocol
from urllib.parse import parse_qs

from hypercorn.config import Config as HypercornConfig

from splitdns import wire
from splitdns.config.model import Config, IPNetwork
from splitdns.limits.connections import Connection

log = logging.getLogger(__name__)

MEDIA_TYPE = b"application/dns-message"
MAX_MESSAGE = 65535
_B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

Scope = dict[str, Any]
Reply = tuple[int, list[tuple[bytes, bytes]], bytes]  # status, headers, body
TEXT = [(b"content-type", b"text/plain")]
UNSUPPORTED: Reply = (415, TEXT, b"POST needs Content-Type: application/dns-message\n")
NO_CLIENT: Reply = (400, TEXT, b"a trusted proxy must name the client (X-Forwarded-For)\n")
NOT_DNS: Reply = (400, TEXT, b"not a DNS query\n")
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class Answerer(Protocol):
    config: Config

    def trusted(self, host: str, networks: tuple[IPNetwork, ...]) -> bool: ...

    def over_limit(self, data: bytes, host: str) -> tuple[bool, bytes | None]: ...

    def fast_answer(self, data: bytes, host: str, transport: str = ...) -> bytes | None: ...

    async def respond(self, data: bytes, host: str, transport: str) -> bytes | None: ...


def _base64url(encoded: str) -> bytes | None:
    """RFC 8484 section 4.1: base64url (RFC 4648 section 5) without padding; anything else
    (other characters, `=`, whitespace) is refused, not decoded leniently."""
    if encoded.strip(_B64URL) or len(encoded) % 4 == 1:
        return None
    try:
        return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    except (binascii.Error, ValueError):
        return None


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


def reply(answer: bytes | None) -> Reply:
    """The reply carrying `answer` (None: the message was not a DNS query)."""
    if answer is None:
        return NOT_DNS
    cache = f"max-age={max_age(answer)}".encode()
    return 200, [(b"content-type", MEDIA_TYPE), (b"cache-control", cache)], answer


class DohApp:
    """The ASGI application: one DNS message per HTTP request."""

    def __init__(self, server: Answerer, path: str) -> None:
        self.server = server
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.serve(scope, receive, send)

    async def serve(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        conn: Connection | None = None,
        peer: str | None = None,
    ) -> None:
        """One request on connection `conn` (the budget's record: its busy count and bytes)
        from `peer` (the client a trusted proxy's PROXY header named; else the scope's)."""
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
        status, headers, body = await self.handle(scope, receive, conn, peer)
        headers = [*headers, (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def handle(
        self,
        scope: Scope,
        receive: Receive,
        conn: Connection | None = None,
        peer: str | None = None,
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        headers = scope.get("headers", [])
        media = next((v for k, v in headers if k == b"content-type"), b"")
        query = scope.get("query_string", b"").decode("latin-1")
        head = self.head(scope["method"], scope["path"], query, media)
        if isinstance(head, tuple):
            return head
        if head is None:  # a POST: its body is the message
            body = await self._body(receive, conn)
            if isinstance(body, tuple):
                return body[0], TEXT, body[1]
            head = body
        if peer is None:
            peer = str((scope.get("client") or ("0.0.0.0", 0))[0])
        host = self.client_of(peer, [v for k, v in headers if k == b"x-forwarded-for"])
        if host is None:
            return NO_CLIENT
        if conn is not None:
            conn.started()
        try:
            limited, refusal = self.server.over_limit(head, host)
            answer = refusal if limited else await self.server.respond(head, host, "doh")
        finally:
            if conn is not None:
                conn.finished()
        return reply(answer)

    def head(self, method: str, path: str, query: str, media: bytes) -> Reply | bytes | None:
        """What a request's head decides: an error reply, a GET's message (bytes), or None:
        a POST of the right media type, whose body is the message."""
        if path != self.path:
            return 404, TEXT, b"not found: DNS over HTTPS is at " + self.path.encode() + b"\n"
        if method == "GET":
            values = parse_qs(query).get("dns", [])
            if len(values) != 1:
                return 400, TEXT, b"GET needs one ?dns= parameter\n"
            encoded = values[0]
            if len(encoded) > MAX_MESSAGE * 4 // 3 + 4:
                return 413, TEXT, b"message too large\n"
            data = _base64url(encoded)
            if data is None:
                return 400, TEXT, b"dns= is not base64url (RFC 4648 section 5, no padding)\n"
            return data
        if method == "POST":
            if media.split(b";")[0].strip().lower() != MEDIA_TYPE:  # (case-insensitive types:
                return UNSUPPORTED  # RFC 9110 8.3.1)
            return None
        return 405, [*TEXT, (b"allow", b"GET, POST")], b"GET or POST\n"

    async def _body(self, receive: Receive, conn: Connection | None) -> bytes | tuple[int, bytes]:
        """A POST's body within `limits.request_timeout`, its bytes counted against the
        connection's `buffered_per_connection` while they are held; or (status, why)."""
        limits = self.server.config.limits
        parts: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(limits.request_timeout):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return 400, b"the request was not finished\n"
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > MAX_MESSAGE:
                        return 413, b"message too large\n"
                    if conn is not None:
                        conn.buffered += len(chunk)
                        if conn.buffered > limits.buffered_per_connection:
                            return 413, b"too many unfinished bytes on this connection\n"
                    parts.append(chunk)
                    if not message.get("more_body", False):
                        return b"".join(parts)
        except TimeoutError:
            if conn is not None:
                conn.timed_out = True
            return 408, b"the request took too long\n"
        finally:
            if conn is not None:
                conn.buffered -= size

    def client_of(self, peer: str, forwarded: list[bytes]) -> str | None:
        """The peer, or, from a `trusted_proxies` HTTP reverse proxy (nginx, Caddy, Traefik,
        haproxy in HTTP mode), the address it puts last in X-Forwarded-For (`forwarded`: the
        header's values): the one it saw. None: a trusted proxy named no client (refused,
        never answered as the proxy)."""
        proxies = self.server.config.trusted_proxies
        if not proxies or not self.server.trusted(peer, proxies):
            return peer
        if not forwarded:
            return None
        last = forwarded[-1].decode("latin-1").split(",")[-1].strip()
        try:
            return str(ipaddress.ip_address(last.strip("[]")))
        except ValueError:
            return None


class OwnTls(HypercornConfig):
    """hypercorn's config where splitdns sets TLS up itself, on connections it accepted
    (hypercorn gets the TLS stream, or plain HTTP when `tls` is False): no context of its own,
    so a certificate reload reaches every new connection."""

    def __init__(self, tls: bool = True) -> None:
        super().__init__()
        self._tls = tls

    def create_ssl_context(self) -> ssl.SSLContext | None:
        return None

    @property
    def ssl_enabled(self) -> bool:
        return self._tls
