"""Which `Host` the operator listener answers to: the defence against DNS rebinding.

A web page the admin visits can point its own name at 127.0.0.1 (or the dashboard's LAN
address) and then read the dashboard "same-origin" from the browser, password or not: the
browser sends that page's name as `Host`. So every request names a host the operator really
uses, or is refused (421) before any route runs: loopback's names and addresses, the listen
address (any address of this machine when it listens on all), this machine's own name, the
mapping's `resolver_name`, and `dashboard.names`. An attacker controls none of those: the
browser only sends a name the admin typed or followed. `Origin` (on forms) must name one of
them too, never compared with the request's own `Host`.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

_OWN_NAMES: tuple[str, ...] | None = None


def own_names() -> tuple[str, ...]:
    """This machine's name as a browser on the LAN may type it (short, full, and .local)."""
    global _OWN_NAMES
    if _OWN_NAMES is None:
        name = socket.gethostname().lower().rstrip(".")
        short = name.split(".", 1)[0]
        _OWN_NAMES = tuple(n for n in {name, short, f"{short}.local"} if n)
    return _OWN_NAMES


class Hosts:
    """The names and addresses one listener answers to (`names()` is read per request: a
    reload may add `dashboard.names`)."""

    def __init__(self, listen_host: str, names: Callable[[], Iterable[str]]) -> None:
        self.listen = ipaddress.ip_address(listen_host)
        self.names = names

    def allowed(self, host: str) -> bool:
        """Whether `host` (a Host header's or Origin's host part, no port) is ours."""
        host = host.lower().rstrip(".")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            address = None
        if address is not None:
            return address.is_loopback or address == self.listen or self.listen.is_unspecified
        if host == "localhost" or host.endswith(".localhost"):  # RFC 6761: always loopback
            return True
        return host in own_names() or host in {n.lower().rstrip(".") for n in self.names()}

    def origin_allowed(self, origin: str) -> bool:
        """An Origin header's value names one of ours (`null` and junk do not)."""
        try:
            parts = urlsplit(origin)
            host = parts.hostname
        except ValueError:
            return False
        return parts.scheme in ("http", "https") and host is not None and self.allowed(host)


def host_part(value: str) -> str:
    """`name`, `name:port`, `[v6]` or `[v6]:port` -> the host alone."""
    if value.startswith("["):
        return value.split("]", 1)[0] + "]"
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class CheckHost:
    """ASGI middleware: 421 Misdirected Request for a Host this listener does not answer to."""

    def __init__(self, app: ASGIApp, hosts: Hosts) -> None:
        self.app = app
        self.hosts = hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = next((v for k, v in scope["headers"] if k == b"host"), None)
        if host is None or self.hosts.allowed(host_part(host.decode("latin-1"))):
            await self.app(scope, receive, send)  # (no Host: HTTP/1.0, not a browser)
            return
        shown = host.decode("latin-1")[:100]
        body = (
            f'{{"error":"this dashboard does not answer to the name {_json_safe(shown)}: open it '
            f'by its address or add the name to dashboard.names"}}'
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 421,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"cache-control", b"no-store"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _json_safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in ".-:[]_" else "?" for c in text)
