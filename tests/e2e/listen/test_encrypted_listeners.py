"""DNS over TLS and HTTPS served by splitdns to LAN clients, with real clients: kdig (+tls,
+https, +tls-pin), curl (--doh-url, fetching a page from the rewritten address), dnspython's DoH
client over HTTP/2 and HTTP/1.1, a raw pipelining DoT client, DDR followed to its endpoint, a
certificate replaced under an open connection, and hostile HTTP and TLS.

Clients by loopback source: 127.0.0.1 is the LAN view (www.example.test -> 127.0.0.5, where a
tiny web server listens), 127.0.0.2 is allowed in no view (the public 203.0.113.1).
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import os
import plistlib
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dns.edns
import dns.message
import dns.query
import dns.rcode
import dns.rdtypes.svcbbase
import httpcore
import pytest

from tests.support.encrypted import ThrowawayCA, unverified_context
from tests.support.fakeupstream import Action, FakeUpstream
from tests.support.metrics import scrape, total
from tests.support.servers import NSD, SplitDNS, free_port
from tests.support.tools import need

CONFIG = """\
upstreams: ["127.0.0.1:{nsd}"]
allow: [127.0.0.0/8]
state_dir: {state}
resolver_name: dns.home.test
tcp_idle_timeout: 2
metrics: "127.0.0.1:{metrics}"
views:
  - name: lan
    clients: [127.0.0.1/32]
    rewrite:
      - {{from: 203.0.113.1, to: 127.0.0.5}}
"""


class Split(SplitDNS):
    dot: int
    doh: int
    metrics: int


def start(tmp_path: Path, upstream_port: int, extra: str = "") -> Split:
    dot, doh, metrics = free_port(), free_port(), free_port()
    text = CONFIG.format(nsd=upstream_port, state=tmp_path / "state", metrics=metrics) + extra
    proc = SplitDNS(
        tmp_path, text, "--listen", f"tls://127.0.0.1:{dot}", "--listen",
        f"https://127.0.0.1:{doh}/dns-query",
    )  # fmt: skip
    split = Split.__new__(Split)
    split.__dict__.update(proc.__dict__)
    split.dot, split.doh, split.metrics = dot, doh, metrics
    return split


@pytest.fixture(scope="module")
def split(nsd: NSD, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Split]:
    proc = start(tmp_path_factory.mktemp("enc"), nsd.port)
    yield proc
    assert proc.stop() == 0, proc.output
    assert "internal error" not in proc.output, proc.output


def pin_of(split: Split) -> str:
    return split.startup.split("pin-sha256 ")[1].strip()


def kdig(split: Split, *args: str, source: str = "127.0.0.1") -> subprocess.CompletedProcess[str]:
    binary = need("kdig", "knot-dnsutils")
    return subprocess.run(
        [binary, "@127.0.0.1", "-b", source, "+short", "+timeout=5", "+retry=0", *args],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip


def test_kdig_over_tls_and_https_gets_each_views_answer(split: Split) -> None:
    for transport, port in (("+tls", split.dot), ("+https", split.doh)):
        lan = kdig(split, "-p", str(port), transport, "www.example.test")
        outside = kdig(split, "-p", str(port), transport, "www.example.test", source="127.0.0.2")
        assert lan.stdout.split() == ["127.0.0.5"], lan.stdout + lan.stderr
        assert outside.stdout.split() == ["203.0.113.1"], outside.stdout + outside.stderr


def test_the_made_key_belongs_to_the_service_user_only(split: Split) -> None:
    import pwd
    import stat

    key = Path(split.startup.split("certificate ")[1].split(" ")[0]).with_name("key.pem")
    info = key.stat()
    assert stat.S_IMODE(info.st_mode) == 0o600
    if os.geteuid() == 0:  # made by root, handed to the user splitdns becomes
        assert info.st_uid == pwd.getpwnam("nobody").pw_uid


def test_the_printed_pin_verifies_and_a_wrong_one_fails(split: Split) -> None:
    good = kdig(split, "-p", str(split.dot), f"+tls-pin={pin_of(split)}", "www.example.test")
    assert good.stdout.split() == ["127.0.0.5"], good.stdout + good.stderr
    wrong = kdig(split, "-p", str(split.dot), "+tls-pin=" + "A" * 43 + "=", "www.example.test")
    assert wrong.stdout.strip() == "" and "handshake failed" in wrong.stderr


def test_curl_fetches_the_page_from_the_rewritten_address(split: Split) -> None:
    curl = need("curl", "curl")

    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = f"hello from {self.server.server_address[0]}\n".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    web = http.server.HTTPServer(("127.0.0.5", 0), Hello)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    try:
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        out = subprocess.run(
            [curl, "-sS", "--max-time", "10", "--noproxy", "*", "--doh-insecure", "--doh-url",
             f"https://127.0.0.1:{split.doh}/dns-query",
             f"http://www.example.test:{web.server_address[1]}/"],
            capture_output=True, text=True, timeout=30, env=env,
        )  # fmt: skip
    finally:
        web.shutdown()
        web.server_close()
    assert out.stdout == "hello from 127.0.0.5\n", out.stdout + out.stderr


@pytest.mark.parametrize("post", [False, True], ids=["GET", "POST"])
@pytest.mark.parametrize("version", ["HTTP_2", "HTTP_1"])
def test_dnspython_doh_client(split: Split, post: bool, version: str) -> None:
    q = dns.message.make_query("www.example.test", "A")
    resp = dns.query.https(
        q, f"https://127.0.0.1:{split.doh}/dns-query", post=post, verify=False,
        http_version=getattr(dns.query.HTTPVersion, version), timeout=5,
    )  # fmt: skip
    assert [r.to_text() for r in resp.answer[0]] == ["127.0.0.5"]


def raw_doh(
    split: Split, method: str, path: str, body: bytes = b"", ctype: str = ""
) -> tuple[int, dict[str, str], bytes]:
    context = unverified_context()
    headers = [("content-type", ctype)] if ctype else []
    with httpcore.ConnectionPool(ssl_context=context, http2=True) as pool:
        r = pool.request(method, f"https://127.0.0.1:{split.doh}{path}", headers=headers,
                         content=body)  # fmt: skip
        return r.status, {k.decode(): v.decode() for k, v in r.headers}, r.content


def test_doh_cache_control_and_bad_requests(split: Split) -> None:
    q = dns.message.make_query("www.example.test", "A")
    q.id = 0
    encoded = base64.urlsafe_b64encode(q.to_wire()).rstrip(b"=").decode()
    status, headers, body = raw_doh(split, "GET", f"/dns-query?dns={encoded}")
    assert status == 200 and headers["content-type"] == "application/dns-message"
    answer = dns.message.from_wire(body)
    ttl = min(rrset.ttl for rrset in answer.answer)  # the zone's 300 s, aged if cached earlier
    assert headers["cache-control"] == f"max-age={ttl}" and 290 < ttl <= 300, (headers, ttl)
    assert answer.id == 0
    assert raw_doh(split, "GET", "/dns-query")[0] == 400  # no ?dns=
    assert raw_doh(split, "GET", "/dns-query?dns=%%%")[0] == 400  # not base64url
    assert raw_doh(split, "POST", "/dns-query", q.to_wire(), "text/plain")[0] == 415
    assert raw_doh(split, "POST", "/dns-query", bytes(70000), "application/dns-message")[0] == 413
    assert raw_doh(split, "PUT", "/dns-query", q.to_wire(), "application/dns-message")[0] == 405
    assert raw_doh(split, "GET", "/elsewhere")[0] == 404
    assert raw_doh(split, "POST", "/dns-query", b"\x00\x01", "application/dns-message")[0] == 400
    formerr = raw_doh(split, "POST", "/dns-query", q.to_wire()[:14], "application/dns-message")
    assert formerr[0] == 200 and dns.message.from_wire(formerr[2]).rcode() == dns.rcode.FORMERR
    # issue #32: media types are case-insensitive (RFC 9110 8.3.1) ...
    mixed = raw_doh(split, "POST", "/dns-query", q.to_wire(), "Application/DNS-Message")
    assert mixed[0] == 200 and dns.message.from_wire(mixed[2]).answer
    # ... dns= is base64url without padding or other characters (RFC 8484 4.1) ...
    for bad in (encoded[:-2] + "+/", encoded + "==", encoded[:10] + "." + encoded[10:]):
        assert raw_doh(split, "GET", f"/dns-query?dns={bad}")[0] == 400, bad
    # ... and a message with bytes after its question is FORMERR, not answered
    trailing = raw_doh(
        split, "POST", "/dns-query", q.to_wire() + b"\0\0", "application/dns-message"
    )
    assert trailing[0] == 200 and dns.message.from_wire(trailing[2]).rcode() == dns.rcode.FORMERR


def dot_connection(port: int) -> ssl.SSLSocket:
    context = unverified_context()
    context.set_alpn_protocols(["dot"])
    raw = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=("127.0.0.1", 0))
    return context.wrap_socket(raw)


def read_message(sock: ssl.SSLSocket) -> dns.message.Message:
    (length,) = struct.unpack("!H", recv_exact(sock, 2))
    return dns.message.from_wire(recv_exact(sock, length))


def recv_exact(sock: ssl.SSLSocket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError("closed")
        data += chunk
    return data


def test_100_pipelined_dot_queries_slow_ones_do_not_block(tmp_path: Path) -> None:
    fake = (
        FakeUpstream()
        .add("slow.example.test. 60 IN A 203.0.113.9", "fast.example.test. 60 IN A 203.0.113.1")
        .start()
    )
    fake.actions["slow.example.test"] = Action(delay=1.0)
    proc = start(tmp_path, fake.port, "cache: {size: 0}\n")
    try:
        with dot_connection(proc.dot) as sock:
            sent = {}
            for i in range(100):
                name = "slow.example.test" if i % 25 == 0 else "fast.example.test"
                q = dns.message.make_query(name, "A")
                q.id = i
                sent[i] = name
                wire = q.to_wire()
                sock.sendall(struct.pack("!H", len(wire)) + wire)
            order = [read_message(sock) for _ in range(100)]
    finally:
        proc.stop()
        fake.stop()
    assert sorted(m.id for m in order) == list(range(100))
    names = [sent[m.id] for m in order]
    assert names[:96] == ["fast.example.test"] * 96  # the four slow ones come last
    assert all(m.answer[0][0].to_text() in ("127.0.0.5", "203.0.113.9") for m in order)


def test_a_read_of_pipelined_hits_is_answered_at_once_and_counted_as_dot(split: Split) -> None:
    """Cached answers to every query one read brings are written together (listen/tlsstream.py
    and serve/streams.py's session: no task each), each with its own ID and the client's
    view's rewrite, counted under the DoT transport as cache hits."""
    with dot_connection(split.dot) as sock:  # the first asks upstream and fills the cache
        first = dns.message.make_query("www.example.test", "A")
        sock.sendall(struct.pack("!H", len(first.to_wire())) + first.to_wire())
        assert read_message(sock).answer[0][0].to_text() == "127.0.0.5"
        before = scrape(split.metrics)
        burst = b""
        for i in range(200):
            q = dns.message.make_query("www.example.test", "A")
            q.id = 1000 + i
            burst += struct.pack("!H", len(q.to_wire())) + q.to_wire()
        sock.sendall(burst)
        answers = [read_message(sock) for _ in range(200)]
    assert [m.id for m in answers] == list(range(1000, 1200))  # hits: in order, all of them
    assert {m.answer[0][0].to_text() for m in answers} == {"127.0.0.5"}
    after = scrape(split.metrics)
    cached = {
        k: total(after, "splitdns_queries_total", transport=k, outcome="cached")
        - total(before, "splitdns_queries_total", transport=k, outcome="cached")
        for k in ("dot", "udp")
    }
    assert cached == {"dot": 200, "udp": 0}, cached


def test_a_dot_client_that_never_reads_its_answers_is_cut_off(split: Split) -> None:
    """Queries sent for ever, answers never read: once the answers back up, the server takes
    no more of its queries and closes it after tcp_idle_timeout (2 s here)."""
    q = dns.message.make_query("www.example.test", "A").to_wire()
    burst = (struct.pack("!H", len(q)) + q) * 500
    with dot_connection(split.dot) as sock:
        sock.settimeout(1)
        began = time.monotonic()
        closed = False
        while time.monotonic() - began < 30 and not closed:  # bounded: 30 s at most
            try:
                sock.sendall(burst)
            except TimeoutError:
                continue  # our send buffer is full: the server has stopped reading
            except OSError:
                closed = True
        if not closed:  # the last sendall may have gone through before the close: read it
            sock.settimeout(10)
            try:
                while sock.recv(65536):
                    pass
                closed = True
            except OSError:
                closed = True
    assert closed and time.monotonic() - began < 30


def test_a_trickling_dot_client_is_cut_off(split: Split) -> None:
    """A byte of a query every half second: the message never completes within the idle
    timeout (2 s), so the connection is closed, not held."""
    q = dns.message.make_query("www.example.test", "A").to_wire()
    framed = struct.pack("!H", len(q)) + q
    with dot_connection(split.dot) as sock:
        began = time.monotonic()
        with pytest.raises((OSError, EOFError)):  # (reset, or close_notify then EOF)
            for byte in framed:
                sock.sendall(bytes([byte]))
                time.sleep(0.5)
            read_message(sock)
    assert time.monotonic() - began < 6


def test_padded_queries_get_padded_answers(split: Split) -> None:
    with dot_connection(split.dot) as sock:
        padding = dns.edns.GenericOption(dns.edns.PADDING, bytes(20))
        q = dns.message.make_query("www.example.test", "A", use_edns=0, options=[padding])
        wire = q.to_wire()
        sock.sendall(struct.pack("!H", len(wire)) + wire)
        (length,) = struct.unpack("!H", recv_exact(sock, 2))
        data = recv_exact(sock, length)
    assert length % 468 == 0
    assert any(o.otype == dns.edns.PADDING for o in dns.message.from_wire(data).options)


def test_ddr_names_the_endpoints_and_a_client_follows_it(split: Split) -> None:
    resp = split.query("_dns.resolver.arpa", "SVCB")
    records = sorted(resp.answer[0], key=lambda r: r.priority)
    texts = [r.to_text() for r in records]
    assert texts == [
        f'1 dns.home.test. alpn="dot" port="{split.dot}" ipv4hint="127.0.0.1"',
        f'2 dns.home.test. alpn="h2,http/1.1" port="{split.doh}" ipv4hint="127.0.0.1" '
        'dohpath="/dns-query{?dns}"',
    ], texts
    dot = next(r for r in records if b"dot" in r.params[dns.rdtypes.svcbbase.ParamKey.ALPN].ids)
    port = dot.params[dns.rdtypes.svcbbase.ParamKey.PORT].port
    address = dot.params[dns.rdtypes.svcbbase.ParamKey.IPV4HINT].addresses[0]
    followed = kdig(split, "-p", str(port), "+tls", "www.example.test")
    assert address == "127.0.0.1" and followed.stdout.split() == ["127.0.0.5"]
    named = split.query("_dns.dns.home.test", "SVCB")
    assert len(named.answer[0]) == 2
    assert not split.query("_dns.resolver.arpa", "A").answer  # NODATA, never forwarded


def test_metrics_count_dot_and_doh(split: Split) -> None:
    kdig(split, "-p", str(split.dot), "+tls", "www.example.test")
    kdig(split, "-p", str(split.doh), "+https", "www.example.test")
    samples = scrape(split.metrics)
    assert total(samples, "splitdns_queries_total", transport="dot") >= 1
    assert total(samples, "splitdns_queries_total", transport="doh") >= 1


@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_a_reconnecting_client_resumes_its_tls_session(
    split: Split, version: str, tmp_path: Path
) -> None:
    """A phone reconnecting to DoT (and a browser to DoH) skips the key exchange: openssl
    s_client with the first session's ticket (TLS 1.3) or ID (1.2) is told "Reused", and
    the handshakes are counted full and resumed."""
    openssl = need("openssl", "openssl")
    session = tmp_path / "session.pem"
    before = scrape(split.metrics)
    for transport, port in (("dot", split.dot), ("doh", split.doh)):
        said = []
        for flag in ("-sess_out", "-sess_in"):
            # (stdin held open a moment: TLS 1.3 tickets come after the handshake)
            done = subprocess.run(
                ["bash", "-c", f"sleep 0.5 | {openssl} s_client {version} -connect "
                 f"127.0.0.1:{port} {flag} {session}"], capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            said.append(
                next((x for x in done.stdout.splitlines() if x.startswith(("New,", "Reused,"))), "")
            )
        assert said[0].startswith("New,") and said[1].startswith("Reused,"), (transport, said)
    after = scrape(split.metrics)
    for transport in ("dot", "doh"):
        for kind in ("full", "resumed"):
            grew = total(after, "splitdns_tls_handshakes_total", transport=transport, kind=kind)
            grew -= total(before, "splitdns_tls_handshakes_total", transport=transport, kind=kind)
            assert grew == 1, (transport, kind, grew)


def test_a_silent_tls_client_is_cut_off(split: Split) -> None:
    with socket.create_connection(("127.0.0.1", split.dot), timeout=10) as sock:
        began = time.monotonic()
        assert sock.recv(10) == b""  # closed by the server: the handshake never came
        assert time.monotonic() - began < 6  # tcp_idle_timeout is 2 s


def test_certificate_files_reload_without_dropping_open_connections(
    tmp_path: Path, nsd: NSD, request: pytest.FixtureRequest
) -> None:
    ca = ThrowawayCA(tmp_path)
    first_key, first_cert = ca.write_cert(tmp_path, "dns.home.test", "127.0.0.1")
    # where the service user (nobody, once root is dropped) can read them, as with certbot's
    # files and a `user:` that may read them
    shared = Path(tempfile.mkdtemp(prefix="splitdns-tls-", dir="/tmp"))
    shared.chmod(0o755)
    request.addfinalizer(lambda: shutil.rmtree(shared, ignore_errors=True))
    cert, key = shared / "cert.pem", shared / "key.pem"
    shutil.copy(first_cert, cert)
    shutil.copy(first_key, key)
    key.chmod(0o644)
    board = free_port()  # an https dashboard shares the certificate, and its renewal
    proc = start(
        tmp_path,
        nsd.port,
        f"tls: {{cert: {cert}, key: {key}}}\ndashboard: {{listen: 'https://127.0.0.1:{board}'}}\n",
    )
    try:
        assert ssl.get_server_certificate(("127.0.0.1", board)) == first_cert.read_text()
        with dot_connection(proc.dot) as old:
            before = hashlib.sha256(old.getpeercert(binary_form=True) or b"").hexdigest()
            renewed = tmp_path / "renewed"
            renewed.mkdir()
            new_key, new_cert = ca.write_cert(renewed, "dns.home.test", "127.0.0.1")
            shutil.copy(new_key, key)  # as certbot renews: in place
            shutil.copy(new_cert, cert)
            key.chmod(0o644)
            deadline = time.monotonic() + 10
            while True:
                with dot_connection(proc.dot) as fresh:
                    after = hashlib.sha256(fresh.getpeercert(binary_form=True) or b"").hexdigest()
                if after != before or time.monotonic() > deadline:
                    break
                time.sleep(0.3)
            assert after != before, "the new certificate was never served:\n" + proc.output
            assert ssl.get_server_certificate(("127.0.0.1", board)) == cert.read_text()
            q = dns.message.make_query("www.example.test", "A")
            wire = q.to_wire()
            old.sendall(struct.pack("!H", len(wire)) + wire)
            assert read_message(old).answer[0][0].to_text() == "127.0.0.5"
    finally:
        assert proc.stop() == 0, proc.output
    assert "certificate reloaded" in proc.output


def test_check_names_a_missing_or_mismatched_key(tmp_path: Path) -> None:
    ca = ThrowawayCA(tmp_path)
    key, cert = ca.write_cert(tmp_path, "dns.home.test")
    other = tmp_path / "other"
    other.mkdir()
    other_key, _ = ca.write_cert(other, "dns.home.test")

    def check(tls: str) -> subprocess.CompletedProcess[str]:
        conf = tmp_path / "c.yaml"
        conf.write_text(
            f'listen: ["tls://127.0.0.1:8853"]\nupstreams: ["127.0.0.1:9"]\ntls: {tls}\n'
        )
        return subprocess.run([sys.executable, "-m", "splitdns", "check", "-c", str(conf)],
                              capture_output=True, text=True, timeout=30)  # fmt: skip

    good = check(f"{{cert: {cert}, key: {key}}}")
    assert good.returncode == 0 and "pin-sha256: " in good.stdout, good.stderr
    missing = check(f"{{cert: {cert}, key: {tmp_path / 'nope.pem'}}}")
    assert missing.returncode == 1
    assert missing.stderr.strip().endswith(f"tls: {tmp_path / 'nope.pem'}: no such file")
    mismatched = check(f"{{cert: {cert}, key: {other_key}}}")
    assert mismatched.returncode == 1
    assert f"tls: {other_key}: does not match the certificate {cert}" in mismatched.stderr


def test_profile_is_a_plist_apple_devices_read() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "splitdns", "profile", "--doh", "https://dns.home.test/dns-query",
         "--address", "192.0.2.53"],
        capture_output=True, timeout=30, check=True,
    )  # fmt: skip
    document = plistlib.loads(out.stdout)
    (payload,) = document["PayloadContent"]
    assert payload["PayloadType"] == "com.apple.dnsSettings.managed"
    assert payload["DNSSettings"] == {
        "DNSProtocol": "HTTPS",
        "ServerURL": "https://dns.home.test/dns-query",
        "ServerAddresses": ["192.0.2.53"],
    }
