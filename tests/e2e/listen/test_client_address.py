"""The real client behind a hop: PROXY v2 from trusted proxies (UDP and TCP), and a full-length
EDNS Client Subnet from trusted blockers (dnsmasq with --add-subnet in front, as Pi-hole does).

Views by client: 127.0.0.2 `a` (www -> 192.0.2.2), 127.0.0.3 `b` (www -> 192.0.2.3), anyone
else allowed gets the public 203.0.113.1. The proxy is 127.0.0.10, the blocker 127.0.0.20.
"""

from __future__ import annotations

import json
import socket
import ssl
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dns.edns
import dns.message
import dns.query
import dns.rcode
import pytest

from splitdns.listen.proxyv2 import build
from tests.support.encrypted import unverified_context
from tests.support.metrics import scrape, total
from tests.support.servers import NSD, SplitDNS, free_port
from tests.support.tools import need

VIEWS = """\
upstreams: ["127.0.0.1:{nsd}"]
allow: [127.0.0.0/8, "2001:db8::/32"]
trusted_proxies: [127.0.0.10/32]
trusted_ecs: [127.0.0.20/32]
metrics: "127.0.0.1:{metrics}"
query_log: {{path: "{log}"}}
views:
  - name: a
    clients: [127.0.0.2/32, "2001:db8::2/128"]
    rewrite: [{{from: 203.0.113.1, to: 192.0.2.2}}]
  - name: b
    clients: [127.0.0.3/32]
    rewrite: [{{from: 203.0.113.1, to: 192.0.2.3}}]
"""


@pytest.fixture(scope="module")
def split(nsd: NSD, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SplitDNS]:
    work = tmp_path_factory.mktemp("client-address")
    metrics = free_port()
    proc = SplitDNS(work, VIEWS.format(nsd=nsd.port, metrics=metrics, log=work / "query.log"))
    proc.metrics_port = metrics  # type: ignore[attr-defined]
    proc.log_path = work / "query.log"  # type: ignore[attr-defined]
    yield proc
    assert proc.stop() == 0, proc.output


def ask_udp(split: SplitDNS, payload: bytes, source: str) -> dns.message.Message | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        sock.settimeout(1.5)
        sock.sendto(payload, ("127.0.0.1", split.port))
        try:
            return dns.message.from_wire(sock.recv(4096))
        except TimeoutError:
            return None


def query(name: str = "www.example.test") -> bytes:
    return dns.message.make_query(name, "A").to_wire()


def exchange(sock: socket.socket) -> dns.message.Message:
    """One query over a stream (TCP or TLS), RFC 7766 framing."""
    wire = query()
    sock.sendall(struct.pack("!H", len(wire)) + wire)
    (length,) = struct.unpack("!H", sock.recv(2))
    data = b""
    while len(data) < length:
        data += sock.recv(length - len(data))
    return dns.message.from_wire(data)


def answer_of(msg: dns.message.Message | None) -> list[str]:
    assert msg is not None, "no answer"
    return [r.to_text() for rrset in msg.answer for r in rrset]


def each_view_through(ask: Callable[[str], list[str]]) -> None:
    """Asked through something in front (once it answers), from 127.0.0.2, .3 and .4, each
    client gets its own view's answer: the front named the client."""
    deadline = time.monotonic() + 10
    while not ask("127.0.0.2") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ask("127.0.0.2") == ["192.0.2.2"]
    assert ask("127.0.0.3") == ["192.0.2.3"]
    assert ask("127.0.0.4") == ["203.0.113.1"]


def stopped(proc: subprocess.Popen[str]) -> None:
    """Stop a front we started (by its PID) and close its pipe."""
    proc.terminate()
    proc.wait(10)
    assert proc.stderr is not None
    proc.stderr.close()


def proxy_count(split: SplitDNS, result: str) -> float:
    return total(scrape(split.metrics_port), "splitdns_proxy_headers_total", result=result)  # type: ignore[attr-defined]


def test_udp_proxy_header_names_the_client(split: SplitDNS) -> None:
    cases = [("127.0.0.2", "192.0.2.2"), ("127.0.0.3", "192.0.2.3"),
             ("127.0.0.9", "203.0.113.1"), ("2001:db8::2", "192.0.2.2")]  # fmt: skip
    for client, expected in cases:
        dest = "::1" if ":" in client else "127.0.0.1"
        header = build(client, 4000, dest, 53, stream=False)
        assert answer_of(ask_udp(split, header + query(), "127.0.0.10")) == [expected], client
    lines = [json.loads(x) for x in split.log_path.read_text().splitlines()]  # type: ignore[attr-defined]
    assert {e["client"] for e in lines} >= {"127.0.0.2", "127.0.0.3", "2001:db8::2"}
    assert "127.0.0.10" not in {e["client"] for e in lines}


def test_headers_only_from_trusted_proxies_and_only_with_one(split: SplitDNS) -> None:
    before = {k: proxy_count(split, k) for k in ("untrusted", "missing", "malformed", "local")}
    header = build("127.0.0.2", 4000, "127.0.0.1", 53, stream=False)
    assert ask_udp(split, header + query(), "127.0.0.11") is None  # untrusted sender: dropped
    assert ask_udp(split, query(), "127.0.0.10") is None  # the proxy without a header: dropped
    assert ask_udp(split, header[:20], "127.0.0.10") is None  # truncated header: dropped
    local = build("127.0.0.1", 0, "127.0.0.1", 53, stream=False, local=True)
    assert answer_of(ask_udp(split, local + query(), "127.0.0.10")) == ["203.0.113.1"]
    after = {k: proxy_count(split, k) for k in before}
    assert {k: after[k] - before[k] for k in before} == {
        "untrusted": 1, "missing": 1, "malformed": 1, "local": 1,
    }  # fmt: skip


def test_tcp_proxy_header_once_per_connection(split: SplitDNS) -> None:
    with socket.create_connection(("127.0.0.1", split.port), source_address=("127.0.0.10", 0),
                                  timeout=5) as sock:  # fmt: skip
        sock.sendall(build("127.0.0.3", 5000, "127.0.0.1", 53, stream=True))
        for _ in range(2):  # two queries on the connection, both for 127.0.0.3
            assert answer_of(exchange(sock)) == ["192.0.2.3"]
    with socket.create_connection(("127.0.0.1", split.port), source_address=("127.0.0.11", 0),
                                  timeout=5) as sock:  # fmt: skip
        sock.sendall(build("127.0.0.3", 5000, "127.0.0.1", 53, stream=True))
        assert sock.recv(100) == b""  # an untrusted sender's header: the connection is closed


def ecs_query(address: str, prefix: int) -> bytes:
    option = dns.edns.ECSOption(address, prefix)
    return dns.message.make_query("www.example.test", "A", use_edns=0, options=[option]).to_wire()


def test_full_length_ecs_from_a_trusted_sender_names_the_client(split: SplitDNS) -> None:
    assert answer_of(ask_udp(split, ecs_query("127.0.0.2", 32), "127.0.0.20")) == ["192.0.2.2"]
    assert answer_of(ask_udp(split, ecs_query("127.0.0.3", 32), "127.0.0.20")) == ["192.0.2.3"]
    shorter = ask_udp(split, ecs_query("127.0.0.0", 24), "127.0.0.20")
    assert shorter is not None and shorter.rcode() == dns.rcode.REFUSED
    # ECS from anyone else is ignored: the sender is the client.
    assert answer_of(ask_udp(split, ecs_query("127.0.0.2", 32), "127.0.0.9")) == ["203.0.113.1"]
    assert answer_of(ask_udp(split, query(), "127.0.0.20")) == ["203.0.113.1"]


def test_dnsmasq_with_add_subnet_in_front(split: SplitDNS, tmp_path: Path) -> None:
    """Pi-hole's shape: dnsmasq is the LAN's DNS (here with no cache: a cache in front of
    splitdns would hand one view's answer to everyone) and forwards to splitdns with the
    client in ECS; two clients in two views get their own answers through it."""
    dnsmasq = need("dnsmasq", "dnsmasq-base")
    dig = need("dig", "bind9-dnsutils")
    port = free_port("127.0.0.20")
    proc = subprocess.Popen(
        [dnsmasq, "--no-daemon", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
         f"--port={port}", "--listen-address=127.0.0.20", "--bind-interfaces",
         "--cache-size=0", "--add-subnet=32,128", f"--server=127.0.0.1#{split.port}@127.0.0.20",
         f"--pid-file={tmp_path / 'dnsmasq.pid'}", "--user=root"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:

        def through(source: str) -> list[str]:
            out = subprocess.run(
                [dig, "@127.0.0.20", "-p", str(port), "-b", source, "+short", "+tries=1",
                 "+time=2", "www.example.test"],
                capture_output=True, text=True, timeout=20,
            )  # fmt: skip
            return out.stdout.split()

        each_view_through(through)
    finally:
        stopped(proc)


def test_dot_behind_a_proxy_names_the_client(nsd: NSD, tmp_path: Path) -> None:
    """A PROXY header before the TLS handshake (as dnsdist sends it to a DoT backend) names the
    client for a trusted proxy; other clients speak TLS straight away."""

    dot = free_port()
    text = VIEWS.format(nsd=nsd.port, metrics=free_port(), log=tmp_path / "q.log")
    proc = SplitDNS(tmp_path, text + f"state_dir: {tmp_path / 'state'}\n",
                    "--listen", f"tls://127.0.0.1:{dot}")  # fmt: skip
    context = unverified_context()

    def ask(source: str, header: bytes) -> list[str]:
        with socket.create_connection(("127.0.0.1", dot), source_address=(source, 0),
                                      timeout=5) as raw:  # fmt: skip
            raw.sendall(header)
            with context.wrap_socket(raw) as tls:
                return answer_of(exchange(tls))

    try:
        header = build("127.0.0.3", 5000, "127.0.0.1", dot, stream=True)
        assert ask("127.0.0.10", header) == ["192.0.2.3"]
        assert ask("127.0.0.2", b"") == ["192.0.2.2"]  # not a proxy: TLS at once, its own view
    finally:
        assert proc.stop() == 0, proc.output


def test_doh_behind_a_trusted_http_proxy_takes_x_forwarded_for(nsd: NSD, tmp_path: Path) -> None:
    """An HTTP reverse proxy (nginx, Caddy, Traefik) in front of the DoH listener names the
    client in X-Forwarded-For; only a trusted_proxies peer may, and must."""
    import base64

    import httpcore

    doh = free_port()
    text = VIEWS.format(nsd=nsd.port, metrics=free_port(), log=tmp_path / "q.log")
    proc = SplitDNS(tmp_path, text + f"state_dir: {tmp_path / 'state'}\n",
                    "--listen", f"https://127.0.0.1:{doh}/dns-query")  # fmt: skip
    context = unverified_context()
    encoded = base64.urlsafe_b64encode(query()).rstrip(b"=").decode()

    def get(source: str, forwarded: str | None) -> tuple[int, list[str]]:
        headers = [("x-forwarded-for", forwarded)] if forwarded else []
        with httpcore.ConnectionPool(ssl_context=context, local_address=source) as pool:
            r = pool.request("GET", f"https://127.0.0.1:{doh}/dns-query?dns={encoded}",
                             headers=headers)  # fmt: skip
        return r.status, answer_of(dns.message.from_wire(r.content)) if r.status == 200 else []

    try:
        assert get("127.0.0.10", "198.51.100.7, 127.0.0.3") == (200, ["192.0.2.3"])
        assert get("127.0.0.10", None)[0] == 400  # a trusted proxy must name the client
        assert get("127.0.0.2", "127.0.0.3") == (200, ["192.0.2.2"])  # anyone else: ignored
    finally:
        assert proc.stop() == 0, proc.output


def _doh_http1(tls: socket.socket, wire: bytes) -> tuple[int, list[str]]:
    """One DoH GET over HTTP/1.1 on an open TLS socket: (status, answers)."""
    import base64

    encoded = base64.urlsafe_b64encode(wire).rstrip(b"=").decode()
    tls.sendall(
        f"GET /dns-query?dns={encoded} HTTP/1.1\r\nHost: resolver.test\r\n"
        "Accept: application/dns-message\r\nConnection: close\r\n\r\n".encode()
    )
    data = b""
    while chunk := tls.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, answer_of(dns.message.from_wire(body)) if status == 200 else []


def test_doh_behind_a_tcp_proxy_names_the_client(nsd: NSD, tmp_path: Path) -> None:
    """A proxy that passes TLS through (HAProxy `mode tcp` with `send-proxy-v2`, the way to
    route by SNI) puts a PROXY v2 header before the handshake: from a trusted proxy it names
    the client; the same proxy may also speak TLS at once (an HTTP proxy with X-Forwarded-For);
    a broken header is counted and closed; anyone else's header is no TLS and gets nothing."""
    doh, metrics = free_port(), free_port()
    text = VIEWS.format(nsd=nsd.port, metrics=metrics, log=tmp_path / "q.log")
    proc = SplitDNS(tmp_path, text + f"state_dir: {tmp_path / 'state'}\n"
                    "limits: {handshake_timeout: 1}\n",
                    "--listen", f"https://127.0.0.1:{doh}/dns-query")  # fmt: skip
    proc.metrics_port = metrics  # type: ignore[attr-defined]
    context = unverified_context()
    context.set_alpn_protocols(["http/1.1"])

    def ask(source: str, header: bytes) -> tuple[int, list[str]]:
        with socket.create_connection(("127.0.0.1", doh), source_address=(source, 0),
                                      timeout=5) as raw:  # fmt: skip
            raw.sendall(header)
            with context.wrap_socket(raw, server_hostname="resolver.test") as tls:
                return _doh_http1(tls, query())

    try:
        header = build("127.0.0.3", 5000, "127.0.0.1", doh, stream=True)
        assert ask("127.0.0.10", header) == (200, ["192.0.2.3"])
        assert proxy_count(proc, "ok") == 1  # type: ignore[arg-type]
        assert ask("127.0.0.10", b"")[0] == 400  # TLS at once: it must name the client by XFF
        assert ask("127.0.0.2", b"") == (200, ["192.0.2.2"])
        with pytest.raises((ssl.SSLError, OSError)):  # not a proxy: its header is no TLS
            ask("127.0.0.2", header)
        broken = header[:13] + b"\x99" + header[14:]  # (an unknown family)
        with pytest.raises((ssl.SSLError, OSError)):
            ask("127.0.0.10", broken)
        assert proxy_count(proc, "malformed") == 1  # type: ignore[arg-type]
        assert ask("127.0.0.3", b"") == (200, ["192.0.2.3"])  # and still serving

        def handshakes_failed() -> float:
            return total(scrape(metrics), "splitdns_connections_closed_total", result="handshake")

        before = handshakes_failed()
        with socket.create_connection(("127.0.0.1", doh), source_address=("127.0.0.10", 0),
                                      timeout=5) as silent:  # fmt: skip
            assert silent.recv(1) == b""  # a trusted sender that never speaks: closed (1 s)
        assert handshakes_failed() == before + 1
    finally:
        assert proc.stop() == 0, proc.output


def test_doh_through_haproxy_send_proxy_v2(nsd: NSD, tmp_path: Path) -> None:
    """The real thing: HAProxy in TCP mode passing DoH's TLS through with `send-proxy-v2`,
    kdig +https from two LAN addresses: each gets its own view's answer."""
    haproxy = need("haproxy", "haproxy")
    kdig = need("kdig", "knot-dnsutils")
    doh, front = free_port(), free_port()
    text = VIEWS.format(nsd=nsd.port, metrics=free_port(), log=tmp_path / "q.log")
    proc = SplitDNS(tmp_path, text + f"state_dir: {tmp_path / 'state'}\n",
                    "--listen", f"https://127.0.0.1:{doh}/dns-query")  # fmt: skip
    conf = tmp_path / "haproxy.cfg"
    conf.write_text(
        "global\n  maxconn 100\n"
        "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n"
        "  timeout server 30s\n"
        f"frontend doh\n  bind 127.0.0.1:{front}\n  default_backend splitdns\n"
        f"backend splitdns\n  server s1 127.0.0.1:{doh} send-proxy-v2 source 127.0.0.10\n"
    )
    balancer = subprocess.Popen(
        [haproxy, "-db", "-f", str(conf)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip

    def via(source: str) -> list[str]:
        out = subprocess.run(
            [kdig, "@127.0.0.1", "-p", str(front), "-b", source, "+https=/dns-query",
             "+tls-sni=resolver.test", "+short", "+timeout=3", "+retry=0", "www.example.test"],
            capture_output=True, text=True, timeout=20,
        )  # fmt: skip
        return out.stdout.split()

    try:
        each_view_through(via)
    finally:
        stopped(balancer)
        assert proc.stop() == 0, proc.output
