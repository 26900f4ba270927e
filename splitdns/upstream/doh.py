"""DNS over HTTPS (RFC 8484) to one upstream, through httpcore's connection pool.

HTTP/2 is negotiated by ALPN where the server offers it, so concurrent questions share one
connection; HTTP/1.1 keep-alive otherwise. POST with `application/dns-message` and ID 0 (the
RFC's advice, so HTTP caches can share answers); the reply must repeat our question. The host in
the URL is what the certificate is checked against; its address comes from the bootstrap, so the
pool connects to that address while TLS and HTTP still use the name.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Iterable
from typing import Any

import httpcore

from splitdns import wire
from splitdns.config.upstreams import UpstreamSpec
from splitdns.upstream import packets
from splitdns.upstream.bootstrap import Bootstrap
from splitdns.upstream.dot import tls_context
from splitdns.upstream.transport import (
    Attempt,
    OnDone,
    Reply,
    TransportError,
    UpstreamStats,
    begin_task,
)

log = logging.getLogger(__name__)

MEDIA_TYPE = b"application/dns-message"
KEEPALIVE = 30.0


class _BootstrappedBackend(httpcore.AsyncNetworkBackend):
    """Connects to the bootstrapped address of the URL's host."""

    def __init__(self, bootstrap: Bootstrap) -> None:
        self.bootstrap = bootstrap
        self.inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        address = await self.bootstrap.address(host)
        return await self.inner.connect_tcp(
            address, port, timeout, local_address, socket_options=socket_options
        )

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise OSError("not used")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class DnsOverHttps:
    """A DoH upstream: `https://HOST[:PORT]/PATH`."""

    def __init__(
        self, spec: UpstreamSpec, stats: UpstreamStats, bootstrap: Bootstrap, ca_file: str | None
    ) -> None:
        self.spec = spec
        self.name = str(spec)
        self.stats = stats
        host = f"[{spec.host}]" if spec.family_v6 else spec.host
        self.url = f"https://{host}:{spec.port}{spec.path}"
        self.pool = httpcore.AsyncConnectionPool(
            ssl_context=tls_context(ca_file),
            http1=True,
            http2=True,
            keepalive_expiry=KEEPALIVE,
            network_backend=_BootstrappedBackend(bootstrap),
        )

    def begin(self, query: wire.Query, timeout: float, on_done: OnDone) -> Attempt:
        return begin_task(self.exchange(query, timeout), on_done)

    async def exchange(self, query: wire.Query, timeout: float) -> Reply:
        _, packet = packets.make_upstream_query(query, 0)
        headers = [
            (b"content-type", MEDIA_TYPE),
            (b"accept", MEDIA_TYPE),
        ]
        async with asyncio.timeout(timeout):
            try:
                response = await self.pool.request(
                    "POST", self.url, headers=headers, content=packet
                )
            except httpcore.ConnectError as exc:
                cause = exc.__context__ or exc.__cause__
                if isinstance(cause, ssl.SSLCertVerificationError):
                    log.error(
                        "upstream %s: certificate refused (%s): not using it",
                        self.name,
                        cause.verify_message,
                    )
                    raise TransportError(
                        "tls", f"certificate refused: {cause.verify_message}"
                    ) from None
                raise TransportError("network", f"connect failed: {exc}") from None
            except httpcore.TimeoutException:
                raise TimeoutError from None
            except httpcore.NetworkError as exc:
                raise TransportError("network", str(exc) or type(exc).__name__) from None
            except httpcore.ProtocolError as exc:
                raise TransportError("http", f"HTTP protocol error: {exc}") from None
        if response.status != 200:
            raise TransportError("http", f"HTTP status {response.status}")
        data = response.content
        try:
            message = wire.walk(data)
        except wire.WireError:
            self.stats.forged += 1
            raise TransportError("http", "reply is not a DNS message") from None
        if not packets.reply_matches(message, 0, query):
            self.stats.forged += 1
            raise TransportError("http", "reply does not answer our question")
        version = response.extensions.get("http_version", b"HTTP/1.1")
        transport = "https/2" if version == b"HTTP/2" else "https/1.1"
        return Reply(data, message, self.name, transport)

    async def aclose(self) -> None:
        await self.pool.aclose()
