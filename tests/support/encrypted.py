"""Encrypted fake upstreams on loopback: DNS over TLS and DNS over HTTPS (HTTP/2 or 1.1).

Both wrap a FakeUpstream (same records, same scripted actions, same `seen` list) behind TLS
with a certificate from a CA the test makes itself (trustme) and trusts explicitly through
`upstreams.ca_file`. They count connections and HTTP versions so tests can pin connection reuse.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import struct
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import trustme

from tests.support.fakeupstream import FakeUpstream


class ThrowawayCA:
    """A throwaway CA; `ca_file` is what splitdns is told to trust."""

    def __init__(self, directory: Path) -> None:
        self.ca = trustme.CA()
        self.ca_file = directory / "test-ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))

    def server_context(self, *names: str, alpn: list[str] | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert(*names).configure_cert(context)
        if alpn:
            context.set_alpn_protocols(alpn)
        return context

    def write_cert(self, directory: Path, *names: str) -> tuple[Path, Path]:
        """Key and certificate chain files, for real servers (unbound)."""
        cert = self.ca.issue_cert(*names)
        key_path, pem_path = directory / "server.key", directory / "server.pem"
        cert.private_key_pem.write_to_path(str(key_path))
        pem_path.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
        return key_path, pem_path


class _TlsListener:
    """Accepts TLS on 127.0.0.1:<free port>, served by an asyncio loop in its own thread.

    asyncio's TLS runs on memory buffers in one thread, so a connection can read the next
    query while answers to earlier ones are written (pipelining) without sharing an SSL object
    between threads. The scripted fake's answers (which may sleep) run in an executor.
    """

    def __init__(self, fake: FakeUpstream, context: ssl.SSLContext) -> None:
        self.fake = fake
        self.context = context
        self.connections = 0
        self.handshake_failures = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server = self._call(asyncio.start_server(self._client, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]

    def _call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        port = writer.get_extra_info("peername")[1]
        try:
            await writer.start_tls(self.context, ssl_handshake_timeout=5)
        except (ssl.SSLError, OSError, TimeoutError):
            self.handshake_failures += 1
            writer.transport.abort()
            return
        self.connections += 1
        self._writers.add(writer)
        try:
            with contextlib.suppress(OSError, ssl.SSLError, asyncio.IncompleteReadError):
                await self.serve(reader, writer, port)
        finally:
            self._writers.discard(writer)
            writer.close()

    async def answer(self, data: bytes, transport: str, port: int) -> bytes | None:
        return await asyncio.get_running_loop().run_in_executor(
            None, self.fake.respond, data, transport, port
        )

    async def serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int
    ) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        async def close() -> None:
            self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()

        self._call(close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()


class FakeDoT(_TlsListener):
    """DNS over TLS: RFC 7858 framing; queries on one connection are answered concurrently.
    `close_after_reply` makes it close each connection once it has answered (a server with a
    very short idle timeout)."""

    close_after_reply = False

    async def serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int
    ) -> None:
        tasks: set[asyncio.Task[None]] = set()
        while True:
            head = await reader.read(2)
            if len(head) < 2:
                return
            data = await reader.readexactly(struct.unpack("!H", head)[0])
            task = asyncio.ensure_future(self._reply(writer, data, port))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    async def _reply(self, writer: asyncio.StreamWriter, data: bytes, port: int) -> None:
        reply = await self.answer(data, "tls", port)
        if reply is not None and not writer.is_closing():
            writer.write(struct.pack("!H", len(reply)) + reply)
            if self.close_after_reply:
                await writer.drain()
                writer.close()


class FakeDoH(_TlsListener):
    """DNS over HTTPS (RFC 8484 POST) served with the h2 library, or HTTP/1.1 when the client
    does not offer h2. `status` forces an HTTP error code for every request."""

    def __init__(
        self, fake: FakeUpstream, context: ssl.SSLContext, path: str = "/dns-query"
    ) -> None:
        super().__init__(fake, context)
        self.path = path
        self.status = 200
        self.versions: list[str] = []

    async def serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int
    ) -> None:
        if writer.get_extra_info("ssl_object").selected_alpn_protocol() == "h2":
            await self._serve_h2(reader, writer, port)
        else:
            await self._serve_h1(reader, writer, port)

    async def _reply(self, path: str, body: bytes, port: int) -> tuple[int, bytes]:
        if self.status != 200:
            return self.status, b""
        if path != self.path:
            return 404, b""
        reply = await self.answer(body, "https", port)
        return (200, reply) if reply is not None else (504, b"")

    async def _serve_h2(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int
    ) -> None:
        h2c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        h2c.initiate_connection()
        writer.write(h2c.data_to_send())
        paths: dict[int, str] = {}
        bodies: dict[int, bytes] = {}
        tasks: set[asyncio.Task[None]] = set()

        async def respond(stream_id: int) -> None:
            status, body = await self._reply(paths.pop(stream_id), bodies.pop(stream_id), port)
            headers = [
                (":status", str(status)),
                ("content-type", "application/dns-message"),
                ("content-length", str(len(body))),
            ]
            h2c.send_headers(stream_id, headers, end_stream=not body)
            if body:
                h2c.send_data(stream_id, body, end_stream=True)
            writer.write(h2c.data_to_send())

        while data := await reader.read(65535):
            for event in h2c.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    headers = {_text(k): _text(v) for k, v in event.headers}
                    paths[event.stream_id] = headers.get(":path", "")
                    bodies[event.stream_id] = b""
                elif isinstance(event, h2.events.DataReceived):
                    bodies[event.stream_id] += event.data
                    h2c.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    self.versions.append("HTTP/2")
                    task = asyncio.ensure_future(respond(event.stream_id))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
            writer.write(h2c.data_to_send())

    async def _serve_h1(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int
    ) -> None:
        while request_line := await reader.readline():
            _, path, _ = request_line.decode().split(" ", 2)
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                key, _, value = line.decode().partition(":")
                if key.strip().lower() == "content-length":
                    length = int(value)
            self.versions.append("HTTP/1.1")
            status, body = await self._reply(path, await reader.readexactly(length), port)
            head = (
                f"HTTP/1.1 {status} X\r\ncontent-type: application/dns-message\r\n"
                f"content-length: {len(body)}\r\n\r\n"
            )
            writer.write(head.encode() + body)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def unverified_context() -> ssl.SSLContext:
    """A TLS client context that takes any certificate: for tests of what comes after the
    handshake (splitdns's self-signed certificate is checked where that is the point)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context
