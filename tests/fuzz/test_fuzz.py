"""Fuzzing with hypothesis: the wire decoder, the whole request path fed fuzzed upstream replies,
TCP framing against the real server, and the config loader.

A finding is any exception that escapes the error boundary (the server logs "internal error"),
a hang, or an answer that dnspython cannot parse. CI runs a bounded budget (about a minute in
all); `SPLITDNS_FUZZ_EXAMPLES=200000 .venv/bin/python -m pytest tests/fuzz --timeout 0` runs for
hours (see tests/fuzz/README.md). Inputs that found bugs live on in tests/fuzz/corpus/ and
run every time as plain regression tests.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.exception
import dns.message
import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from splitdns import wire
from splitdns.config import model as config
from splitdns.serve.server import Server
from tests.fuzz import seeds
from tests.support.datagrams import datagrams
from tests.support.fakeupstream import FakeUpstream
from tests.support.servers import NSD, SplitDNS

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = int(os.environ.get("SPLITDNS_FUZZ_EXAMPLES", "0"))


def budget(default: int, long_run_share: float = 1.0) -> Any:
    """`default` examples in CI; SPLITDNS_FUZZ_EXAMPLES (times a share for slow targets)."""
    return settings(
        max_examples=max(default, int(EXAMPLES * long_run_share)) if EXAMPLES else default,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


# --------------------------------------------------------------------------- inputs

INTERESTING = [0x00, 0x01, 0x3F, 0x40, 0x7F, 0x80, 0xC0, 0xC0, 0xFF]


@st.composite
def mutation_of(draw: st.DrawFn, pool: list[bytes]) -> bytes:
    """A seed with a few byte-level edits: the classic mutational fuzzer's moves."""
    data = bytearray(draw(st.sampled_from(pool)))
    for _ in range(draw(st.integers(0, 6))):
        move = draw(st.integers(0, 6))
        pos = draw(st.integers(0, len(data)))
        at = min(pos, len(data) - 1)
        if move == 0 and data:
            data[at] = draw(st.integers(0, 255))
        elif move == 1 and data:
            data[at] = draw(st.sampled_from(INTERESTING))
        elif move == 2:
            data[pos:pos] = draw(st.binary(min_size=1, max_size=12))
        elif move == 3:
            del data[pos : pos + draw(st.integers(1, 12))]
        elif move == 4:
            del data[pos:]
        elif move == 5:
            end = pos + draw(st.integers(1, 24))
            data[end:end] = data[pos:end]
        elif move == 6 and len(data) >= 12:  # header counts are where parsers go wrong
            field = 4 + 2 * draw(st.integers(0, 3))
            data[field : field + 2] = struct.pack(
                "!H", draw(st.sampled_from([0, 1, 2, 255, 65535]))
            )
    return bytes(data)


def fuzz_input(pool: list[bytes]) -> st.SearchStrategy[bytes]:
    return st.one_of(mutation_of(pool), mutation_of(pool), st.binary(max_size=700))


@pytest.fixture(scope="module")
def queries() -> list[bytes]:
    made = [dns.message.make_query(n, t).to_wire() for n, t in seeds.NAMES]
    made += [dns.message.make_query(n, t, want_dnssec=True).to_wire() for n, t in seeds.NAMES]
    return seeds.client_queries() + made + [p.read_bytes() for p in seeds.corpus_files()]


@pytest.fixture(scope="module")
def answers(nsd: NSD) -> list[bytes]:
    return seeds.nsd_answers(nsd) + seeds.built_answers()


# --------------------------------------------------------------------------- the decoder


def check_decoder(data: bytes) -> None:
    """Only WireError may come out, and the fast-path peek must agree with the full parser."""
    try:
        query: wire.Query | None = wire.parse_query(data)
    except wire.WireError:
        query = None
    with contextlib.suppress(wire.WireError):
        wire.walk(data)
    peeked = wire.peek(data)
    assert wire.peek_remembered(data)[0] == peeked  # (remembered or not: the memo never differs)
    if peeked is not None:
        wire.remember(data, peeked)
        assert wire.peek_remembered(data)[0] == peeked
        twin = bytes([data[0] ^ 0xFF, data[1]]) + data[2:]  # another ID: read from the memo
        assert wire.peek_remembered(twin)[0] == wire.peek(twin)
        assert query is not None, "peek accepted what the parser refuses"
        msg_id, flags, _, qend, edns, do, limit = peeked
        assert (msg_id, flags, edns, do) == (query.msg_id, query.flags, query.edns, query.do)
        assert data[12:qend] == query.question.wire
        assert limit == query.udp_limit()


def test_fuzz_decoder(queries: list[bytes], answers: list[bytes]) -> None:
    @budget(3000)
    @given(st.data())
    def run(data: st.DataObject) -> None:
        check_decoder(data.draw(fuzz_input(queries + answers)))

    run()


# --------------------------------------------------------------------------- the request path


class ScriptedUpstream(asyncio.DatagramProtocol):
    """In-process upstream on the test's loop: sends the scripted (fuzzed) reply with the query's
    ID, then a plain valid reply, so a rejected fuzz reply costs no timeout."""

    def __init__(self) -> None:
        self.reply = b""
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        assert self.transport is not None
        query = wire.parse_query(data)
        if len(self.reply) >= 2:
            self.transport.sendto(data[:2] + self.reply[2:], addr)
        fallback = wire.HEADER.pack(query.msg_id, 0x8180, 1, 0, 0, 0) + query.question.wire
        self.transport.sendto(fallback, addr)


class ErrorLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def in_process() -> Iterator[tuple[asyncio.AbstractEventLoop, Server, ScriptedUpstream, ErrorLog]]:
    loop = asyncio.new_event_loop()
    upstream = ScriptedUpstream()
    transport, _ = loop.run_until_complete(
        loop.create_datagram_endpoint(lambda: upstream, local_addr=("127.0.0.1", 0))
    )
    port = transport.get_extra_info("sockname")[1]
    cfg = config.loads(
        f"""\
upstreams: ["127.0.0.1:{port}"]
timeout: 1
views:
  - name: lan
    clients: [127.0.0.1/32]
    aaaa: drop
    rewrite:
      - {{from: 203.0.113.1, to: 192.0.2.2}}
      - {{from: "2001:db8:ffff::1", to: "fd00::2"}}
    hosts:
      printer.lan: 192.0.2.40
""",
        "fuzz.yaml",
    )
    server = Server(cfg)
    errors = ErrorLog()
    logging.getLogger("splitdns").addHandler(errors)
    yield loop, server, upstream, errors
    logging.getLogger("splitdns").removeHandler(errors)
    loop.run_until_complete(server.upstreams.aclose())
    transport.close()
    for task in asyncio.all_tasks(loop):
        task.cancel()
    loop.run_until_complete(asyncio.sleep(0.1))  # let closed transports finish closing
    loop.close()


async def flat_walk(server: Server, query: bytes) -> bytes | None:
    """A datagram as UDP takes it (cache hit, flat walk or task): its one answer, or None
    when it was dropped."""
    sent = await datagrams(server, [query])
    assert len(sent) <= 1, sent
    return sent[0] if sent else None


def check_answer(query: bytes, answer: bytes | None) -> None:
    if answer is None:
        return
    try:
        message = dns.message.from_wire(answer)
    except dns.exception.DNSException as exc:
        raise AssertionError(f"answer does not parse ({exc!r}): {answer.hex()}") from None
    assert message.id == struct.unpack("!H", query[:2])[0]


def check_replay(loop: asyncio.AbstractEventLoop, server: Server, query: bytes) -> None:
    """The same bytes twice more with other IDs, the clock held: when the first is kept as a
    replayed hit (serve/replay.py), the replay must be that answer with the new ID."""
    clock = server.cache.clock
    now = clock()
    server.cache.clock = lambda: now
    try:
        again = bytes([query[0] ^ 0x5A, query[1]]) + query[2:]
        kept = loop.run_until_complete(flat_walk(server, again))
        check_answer(again, kept)
        plan = server._clients.get("127.0.0.1")
        if kept is None or plan is None or query[2:] not in plan.replies:
            return
        event("replayed hit")
        third = bytes([query[0] ^ 0xA5, query[1] ^ 0xFF]) + query[2:]
        replayed = loop.run_until_complete(flat_walk(server, third))
        assert replayed == third[:2] + kept[2:], (query.hex(), kept.hex(), replayed)
    finally:
        server.cache.clock = clock


def test_fuzz_request_path(
    in_process: tuple[asyncio.AbstractEventLoop, Server, ScriptedUpstream, ErrorLog],
    queries: list[bytes],
    answers: list[bytes],
) -> None:
    loop, server, upstream, errors = in_process

    @budget(3000)
    @given(st.data())
    def run(data: st.DataObject) -> None:
        fuzz_reply = data.draw(st.booleans())
        if fuzz_reply:
            # A clean client question for a seed answer's name; the answer is what is fuzzed.
            seed = data.draw(st.sampled_from(answers))
            upstream.reply = data.draw(mutation_of([seed]))
            asked = wire.walk(seed).questions[0]
            query = wire.make_query(asked.name, asked.qtype)
            if data.draw(st.booleans()):
                query = dns.message.make_query(
                    asked.name, asked.qtype, want_dnssec=data.draw(st.booleans())
                ).to_wire()
        else:
            upstream.reply = data.draw(st.sampled_from(answers))
            query = data.draw(fuzz_input(queries))
        server.cache.clear()
        transport = data.draw(st.sampled_from(["udp", "udp-flat", "tcp"]))
        forged = server.upstreams.stats.forged
        if transport == "udp-flat":  # what a UDP datagram really takes: the flat walk
            answer = loop.run_until_complete(flat_walk(server, query))
        else:
            answer = loop.run_until_complete(
                asyncio.wait_for(server.respond(query, "127.0.0.1", transport), 5)
            )
        if fuzz_reply:
            rejected = server.upstreams.stats.forged > forged
            event("fuzzed reply refused" if rejected else "fuzzed reply used")
        check_answer(query, answer)
        if answer is not None and transport != "tcp":
            hit = server.fast_answer(query, "127.0.0.1")
            check_answer(query, hit)
        if answer is not None and transport == "udp-flat":
            check_replay(loop, server, query)
        assert not errors.messages, errors.messages

    run()


@pytest.mark.parametrize("path", seeds.corpus_files(), ids=lambda p: p.name)
def test_corpus_regressions(
    path: Path,
    in_process: tuple[asyncio.AbstractEventLoop, Server, ScriptedUpstream, ErrorLog],
    answers: list[bytes],
) -> None:
    """Every input a fuzzer once broke the server with, as a client query and as a reply."""
    loop, server, upstream, errors = in_process
    data = path.read_bytes()
    check_decoder(data)
    upstream.reply = answers[0]
    server.cache.clear()
    check_answer(data, loop.run_until_complete(server.respond(data, "127.0.0.1", "udp")))
    server.cache.clear()
    check_answer(data, loop.run_until_complete(flat_walk(server, data)))
    if len(data) > 12:
        upstream.reply = data
        asked = wire.walk(answers[0]).questions[0]
        query = wire.make_query(asked.name, asked.qtype)
        server.cache.clear()
        check_answer(query, loop.run_until_complete(server.respond(query, "127.0.0.1", "udp")))
        server.cache.clear()
        check_answer(query, loop.run_until_complete(flat_walk(server, query)))
    assert not errors.messages, errors.messages


# --------------------------------------------------------------------------- TCP framing


@pytest.fixture(scope="module")
def tcp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SplitDNS]:
    up = FakeUpstream().add("www.example.test. 300 IN A 203.0.113.1").start()
    proc = SplitDNS(
        tmp_path_factory.mktemp("fuzz-tcp"),
        f'upstreams: ["{up.address}"]\ntcp_idle_timeout: 1\n'
        "views:\n  - name: lan\n    clients: [127.0.0.1/32]\n"
        "    rewrite:\n      - {from: 203.0.113.1, to: 192.0.2.2}\n",
    )
    yield proc
    code = proc.stop()
    up.stop()
    assert code == 0, proc.output
    assert "internal error" not in proc.output, proc.output


def read_frames(sock: socket.socket) -> list[bytes]:
    """Complete answer frames until the server closes. A reset (the server closed on a bad frame
    while our later bytes were unread) may cut the last frame: only whole frames count then."""
    buf = b""
    reset = False
    try:
        while chunk := sock.recv(65535):
            buf += chunk
    except ConnectionResetError:
        reset = True
    frames = []
    while len(buf) >= 2:
        (length,) = struct.unpack("!H", buf[:2])
        if len(buf) < 2 + length and reset:
            return frames
        frames.append(buf[2 : 2 + length])
        assert len(frames[-1]) == length, "a truncated frame from the server"
        buf = buf[2 + length :]
    assert buf == b"" or reset
    return frames


def test_fuzz_tcp_framing(tcp_server: SplitDNS, queries: list[bytes]) -> None:
    @budget(150, long_run_share=0.05)  # a lying length costs a 1 s idle wait
    @given(st.data())
    def run(data: st.DataObject) -> None:
        stream = b""
        for _ in range(data.draw(st.integers(1, 4))):
            message = data.draw(fuzz_input(queries))
            length = len(message)
            if data.draw(st.integers(0, 5)) == 0:  # a lying length prefix
                length = data.draw(st.integers(0, 65535))
            stream += struct.pack("!H", length) + message
        cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=5)))
        with socket.create_connection(("127.0.0.1", tcp_server.port), timeout=5) as sock:
            start = 0
            try:
                for cut in [*cuts, len(stream)]:
                    sock.sendall(stream[start:cut])
                    start = cut
                sock.shutdown(socket.SHUT_WR)
            except OSError:  # EPIPE, ECONNRESET, ENOTCONN: the server closed on a bad frame
                pass  # the server closed on a bad frame (a zero length): allowed
            for frame in read_frames(sock):
                dns.message.from_wire(frame)
        assert tcp_server.proc.poll() is None

    run()
    answer = tcp_server.query("www.example.test", tcp=True)
    assert [str(rd) for rrset in answer.answer for rd in rrset] == ["192.0.2.2"]


# --------------------------------------------------------------------------- the config loader


def config_texts() -> list[str]:
    paths = [
        *sorted((ROOT / "zones").glob("*.yaml")),
        ROOT / "splitdns" / "config" / "default.yaml",
    ]
    return [p.read_text() for p in paths]


@st.composite
def mutated_text(draw: st.DrawFn) -> str:
    lines = draw(st.sampled_from(config_texts())).splitlines()
    for _ in range(draw(st.integers(1, 4))):
        if not lines:
            break
        at = draw(st.integers(0, len(lines) - 1))
        move = draw(st.integers(0, 4))
        if move == 0:
            del lines[at]
        elif move == 1:
            lines.insert(at, lines[draw(st.integers(0, len(lines) - 1))])
        elif move == 2:
            line = lines[at]
            cut = draw(st.integers(0, len(line)))
            lines[at] = line[:cut] + draw(st.text(max_size=8)) + line[cut:]
        elif move == 3:
            lines[at] = " " * draw(st.integers(0, 6)) + lines[at].lstrip()
        else:
            value = draw(st.sampled_from(["-1", "0", "''", "[]", "{}", "~", "1e9", "yes", "::"]))
            key = lines[at].split(":", 1)[0]
            lines[at] = f"{key}: {value}"
    return "\n".join(lines) + "\n"


yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
TOP_KEYS = sorted(config.TOP_KEYS)


@st.composite
def structured_text(draw: st.DrawFn) -> str:
    doc = {
        draw(st.sampled_from(TOP_KEYS)): draw(yaml_values) for _ in range(draw(st.integers(1, 3)))
    }
    return yaml.safe_dump(doc)


def test_fuzz_config_loader() -> None:
    @budget(1500)
    @given(st.one_of(mutated_text(), structured_text(), st.text(max_size=200)))
    def run(text: str) -> None:
        try:
            config.loads(text, "fuzz.yaml")
        except config.ConfigError as exc:
            assert str(exc).startswith("fuzz.yaml"), str(exc)

    run()


# --------------------------------------------------------------------------- DoH requests


@st.composite
def doh_requests(draw: st.DrawFn, queries: list[bytes]) -> tuple[str, str, bytes, bytes, bytes]:
    """(method, path, query string, content type, body): real queries, mutated ones, junk."""
    message = draw(st.one_of(mutation_of(queries), st.binary(max_size=300)))
    method = draw(st.sampled_from(["GET", "POST", "POST", "PUT", "HEAD", "get"]))
    path = draw(st.sampled_from(["/dns-query", "/dns-query", "/", "/dns-query/x", "//"]))
    encoded = base64.urlsafe_b64encode(message).rstrip(b"=")
    query = draw(
        st.sampled_from(
            [b"dns=" + encoded, b"dns=" + encoded + b"=", b"dns=%%" + encoded, b"", b"dns=&dns=a"]
        )
        | st.binary(max_size=40)
    )
    ctype = draw(
        st.sampled_from(
            [b"application/dns-message", b"text/plain", b"", b"application/dns-message; x=1"]
        )
    )
    return method, path, query, ctype, message


@budget(600)
@given(data=st.data())
def test_fuzz_doh_request_path(
    in_process: tuple[asyncio.AbstractEventLoop, Server, ScriptedUpstream, ErrorLog],
    queries: list[bytes],
    answers: list[bytes],
    data: st.DataObject,
) -> None:
    """Whatever an HTTP request carries, the DoH app answers 200 with a DNS message dnspython
    reads, or a 4xx, and never raises (hypercorn would answer 500 and log a traceback)."""
    from splitdns.listen.doh import DohApp

    loop, server, upstream, errors = in_process
    upstream.reply = answers[0]
    method, path, query, ctype, body = data.draw(doh_requests(queries))
    scope = {
        "type": "http", "method": method, "path": path, "query_string": query,
        "headers": [(b"content-type", ctype)] if ctype else [], "client": ("127.0.0.1", 5),
    }  # fmt: skip
    chunks = [body[:100], body[100:]]

    async def receive() -> dict[str, Any]:
        chunk = chunks.pop(0) if chunks else b""
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    status, headers, payload = loop.run_until_complete(
        DohApp(server, "/dns-query").handle(scope, receive)
    )
    assert status in (200, 400, 404, 405, 413, 415), status
    if status == 200:
        dns.message.from_wire(payload)
        assert (b"content-type", b"application/dns-message") in headers
    assert not errors.messages, errors.messages


# --------------------------------------------------------------------------- PROXY v2


@st.composite
def proxy_inputs(draw: st.DrawFn) -> bytes:
    """Real headers (v4, v6, LOCAL, with TLVs), mutated, cut short, or junk after the signature."""
    from splitdns.listen import proxyv2

    v6 = draw(st.booleans())
    source = "2001:db8::1" if v6 else "192.0.2.1"
    tlvs = draw(st.binary(max_size=20))
    header = proxyv2.build(source, 1, "2001:db8::2" if v6 else "192.0.2.2", 53,
                           stream=draw(st.booleans()), tlvs=tlvs,
                           local=draw(st.booleans()))  # fmt: skip
    data = bytearray(header + draw(st.binary(max_size=30)))
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, len(data) - 1))
        data[at] = draw(st.sampled_from([0x00, 0x01, 0x0F, 0x10, 0x21, 0x22, 0xFF]))
    cut = draw(st.integers(0, len(data)))
    return bytes(data[:cut]) if draw(st.booleans()) else bytes(data)


@budget(2000)
@given(data=proxy_inputs())
def test_fuzz_proxy_header_parser(data: bytes) -> None:
    """Whatever follows the signature: a Header whose length fits the input, or ProxyError."""
    from splitdns.listen import proxyv2

    try:
        header = proxyv2.parse(data)
    except proxyv2.ProxyError:
        return
    assert proxyv2.FIXED <= header.length <= len(data)
    assert header.local or header.source is not None
