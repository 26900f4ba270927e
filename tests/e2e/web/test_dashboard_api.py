"""The dashboard's HTTP side without a browser: every bad input gets a 4xx with its reason, the
brakes (explain's rate, failed logins) hold, the live stream is tapped only while someone
watches, a `metrics:` address apart serves /metrics only, and the listener survives a crowd of
connections from one address while DNS goes on answering.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from splitdns.config.passwords import make_hash, write_hash
from tests.support.metrics import scrape, total
from tests.support.servers import NSD, SplitDNS, free_port

CONFIG = """\
upstreams: ["127.0.0.1:{nsd}"]
allow: [127.0.0.0/8]
dashboard:
  listen: 127.0.0.1:{dash}
{extra}metrics: 127.0.0.1:{metrics}
views:
  - name: lan
    clients: [127.0.0.1/32]
    rewrite:
      - {{from: 203.0.113.1, to: 127.0.0.5}}
  - name: followers
    clients: [127.0.0.3/32]
    rewrite:
      - {{from: {{follow: mail.example.test}}, to: 127.0.0.9}}
"""


class Dash(SplitDNS):
    url: str
    metrics: int


def start(tmp_path: Path, nsd: NSD, extra: str = "") -> Dash:
    port, metrics = free_port(), free_port()
    server = SplitDNS(tmp_path, CONFIG.format(nsd=nsd.port, dash=port, metrics=metrics,
                                              extra=extra))  # fmt: skip
    dash = Dash.__new__(Dash)
    dash.__dict__.update(server.__dict__)
    dash.url, dash.metrics = f"http://127.0.0.1:{port}", metrics
    return dash


@pytest.fixture(scope="module")
def dash(nsd: NSD, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dash]:
    server = start(tmp_path_factory.mktemp("dashapi"), nsd)
    yield server
    server.stop()


def call(
    url: str, method: str = "GET", body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, Any, dict[str, str]]:
    """(status, JSON or text, headers) of one request; 4xx and 5xx included."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            status, raw, head = reply.status, reply.read(), dict(reply.headers)
    except urllib.error.HTTPError as exc:
        status, raw, head = exc.code, exc.read(), dict(exc.headers)
    head = {k.lower(): v for k, v in head.items()}
    text = raw.decode("utf-8", "replace")
    try:
        return status, json.loads(text), head
    except ValueError:
        return status, text, head


@pytest.mark.parametrize(
    ("path", "status", "reason"),
    [
        ("/api/stream?outcome=bogus", 400, "outcome: one of"),
        ("/api/stream?client=not-an-ip", 400, "client: 'not-an-ip' is not an IP address"),
        ("/api/stream?view=nosuch", 400, "view: no view is named 'nosuch'"),
        ("/api/stream?rewritten=maybe", 400, "rewritten: 1 or 0"),
        ("/api/stream?name=%3Cscript%3E", 400, "name: part of a domain name"),
        ("/api/stream?colour=red", 400, "unknown parameter 'colour'"),
        ("/api/explain", 400, "name: give the name to look up"),
        ("/api/explain?name=a..b", 400, "is not a domain name"),
        ("/api/explain?name=www.example.test&type=AXFR", 400, "type: 'AXFR': one of"),
        ("/api/explain?name=www.example.test&client=1.2.3", 400, "client: '1.2.3' is not an IP"),
        ("/api/status?x=1", 400, "unknown parameter 'x'"),
        ("/nowhere", 404, "nothing at /nowhere"),
        ("/static/../../etc/passwd", 404, "nothing at"),
    ],
)
def test_bad_input_gets_a_4xx_with_its_reason(
    dash: Dash, path: str, status: int, reason: str
) -> None:
    got, body, headers = call(dash.url + path)
    assert got == status, body
    assert isinstance(body, dict) and reason in body["error"], body
    assert headers["content-security-policy"].startswith("default-src 'self'")
    assert "Traceback" not in json.dumps(body)


def test_the_wrong_method_and_a_foreign_form_are_refused(dash: Dash) -> None:
    got, body, _ = call(dash.url + "/api/status", method="POST", body=b"")
    assert got == 405 and "POST is not used at /api/status" in body["error"]
    got, body, _ = call(
        dash.url + "/logout", method="POST", body=b"", headers={"Sec-Fetch-Site": "cross-site"}
    )
    assert got == 403 and "another site" in body["error"]
    got, body, _ = call(
        dash.url + "/logout", method="POST", body=b"", headers={"Origin": "http://evil.test"}
    )
    assert got == 403


@pytest.mark.parametrize(
    "path", ["/", "/api/clients", "/api/status", "/api/stream", "/api/explain?name=a.test",
             "/metrics", "/login"]
)  # fmt: skip
def test_a_rebound_name_is_refused_before_any_route(dash: Dash, path: str) -> None:
    """DNS rebinding: a page at evil.example, its name pointed at 127.0.0.1, asks the
    dashboard with its own name as Host; the default dashboard has no password."""
    port = dash.url.rsplit(":", 1)[1]
    for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1.evil.example:{port}"):
        got, body, _ = call(dash.url + path, headers={"Host": host})
        assert got == 421, (host, body)
        assert "add the name to dashboard.names" in body["error"]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "[::1]", f"{socket.gethostname()}"):
        got, body, _ = call(dash.url + "/healthz", headers={"Host": host})
        assert got == 200, (host, body)
    # a form's Origin must be one of ours, whatever Host says
    got, body, _ = call(dash.url + "/logout", "POST", b"",
                        {"Origin": f"http://evil.example:{port}"})  # fmt: skip
    assert got == 403
    got, _, _ = call(dash.url + "/logout", "POST", b"", {"Origin": f"http://localhost:{port}"})
    assert got == 200  # (the redirect to the page, followed)


def test_status_rules_and_series_read_the_running_server(dash: Dash) -> None:
    assert dash.dig("+short", "www.example.test") == "127.0.0.5\n"
    got, status, _ = call(dash.url + "/api/status")
    assert got == 200
    assert status["login"] is False and status["views"] == ["lan", "followers"]
    assert status["upstreams"][0]["up"] is True and status["upstreams"][0]["p50_ms"] > 0
    kinds = {entry["kind"] for entry in status["listeners"]}
    assert {"udp+tcp", "dashboard", "metrics"} <= kinds
    _, rules, _ = call(dash.url + "/api/rules")
    rule, followed = rules
    assert rule["from"] == "203.0.113.1/32" and rule["to"] == "127.0.0.5/32"
    assert rule["dynamic"] is None
    assert followed["view"] == "followers" and followed["from"] == "follow mail.example.test"
    dynamic = followed["dynamic"]
    assert dynamic["kind"] == "follow" and dynamic["current"] == "203.0.113.1", followed
    assert abs(dynamic["changed_at"] - time.time()) < 120
    assert rule["rewrites"] >= 1 and rule["recent"][0]["name"] == "www.example.test"
    _, series, _ = call(dash.url + "/api/series")
    assert series["interval"] == 10.0 and set(series["qps"]) >= {"cached", "rewritten"}


def test_explain_is_rate_limited_per_address(dash: Dash) -> None:
    statuses = []
    for _ in range(8):
        got, body, headers = call(dash.url + "/api/explain?name=www.example.test&client=127.0.0.2")
        statuses.append(got)
        if got == 429:
            assert "one question a second" in body["error"] and int(headers["retry-after"]) >= 1
    assert statuses[0] == 200 and 429 in statuses, statuses
    time.sleep(1.1)
    got, body, _ = call(dash.url + "/api/explain?name=www.example.test&client=127.0.0.2")
    assert got == 200 and "203.0.113.1" in body["lines"][-1] + "".join(body["lines"])


def read_event(sock: socket.socket, deadline: float) -> dict[str, Any]:
    """The next `data:` event of a server-sent event stream on a raw socket."""
    buffered = b""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            break
        buffered += chunk
        for line in buffered.split(b"\n"):
            if line.startswith(b"data: "):
                event: dict[str, Any] = json.loads(line[6:])
                return event
    raise AssertionError(f"no event: {buffered[-500:]!r}")


def streams(dash: Dash) -> float:
    return total(scrape(dash.metrics), "splitdns_dashboard_streams")


def test_the_stream_is_tapped_only_while_someone_watches(dash: Dash) -> None:
    dash.dig("www.example.test")  # cached from here on
    assert streams(dash) == 0
    port = int(dash.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(
            b"GET /api/stream?name=www.example&view=lan HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Accept: text/event-stream\r\n\r\n"
        )
        time.sleep(0.3)
        assert streams(dash) == 1
        dash.dig("www.example.test")  # a cache hit now: the express path, tapped
        dash.dig("outside.example.test")  # filtered out by name
        event = read_event(sock, time.monotonic() + 3)
        names = [row["name"] for row in event["rows"]]
        assert names == ["www.example.test"], event
        assert event["rows"][0]["outcome"] == "cached" and event["rows"][0]["view"] == "lan", (
            json.dumps(event)
        )
    deadline = time.monotonic() + 5
    while streams(dash) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert streams(dash) == 0  # the browser went: nothing is tapped any more


def test_a_metrics_address_apart_serves_metrics_only(dash: Dash) -> None:
    got, body, _ = call(f"http://127.0.0.1:{dash.metrics}/")
    assert got == 404 and "serves /metrics and /healthz" in body["error"]
    got, _, _ = call(f"http://127.0.0.1:{dash.metrics}/api/status")
    assert got == 404
    assert total(scrape(dash.metrics), "splitdns_queries_total") >= 1
    assert call(f"http://127.0.0.1:{dash.metrics}/healthz")[:2] == (200, "ok\n")


def test_failed_logins_are_slowed_then_locked_out(nsd: NSD, tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    write_hash(str(secret), make_hash("the right one"))
    server = start(tmp_path, nsd, extra=f"  password_file: {secret}\n")
    try:
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        got, page, _ = call(server.url + "/login", "POST", b"password=" + b"x" * 5000, form)
        assert got == 413 and "too large" in page
        began = time.monotonic()
        for _ in range(5):
            got, page, _ = call(server.url + "/login", "POST", b"password=guess", form)
            assert got == 401 and "Wrong password." in page
        assert time.monotonic() - began >= 5.0  # a second each
        got, page, headers = call(server.url + "/login", "POST", b"password=the+right+one", form)
        assert got == 429 and "Too many failed logins from 127.0.0.1" in page
        assert int(headers["retry-after"]) >= 1
        assert call(server.url + "/api/rules")[0] == 401
    finally:
        server.stop()


def test_a_crowd_of_connections_from_one_address_leaves_dns_and_others_served(
    dash: Dash,
) -> None:
    port = int(dash.url.rsplit(":", 1)[1])
    crowd: list[socket.socket] = []
    try:
        for _ in range(200):  # idle, half-sent and trickling: more than its share
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finished
            crowd.append(sock)
        assert dash.dig("+short", "www.example.test") == "127.0.0.5\n"
        # another address still gets in (127.0.0.2 is loopback too)
        with socket.create_connection(("127.0.0.1", port), timeout=5,
                                      source_address=("127.0.0.2", 0)) as other:  # fmt: skip
            other.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            assert other.recv(1000).startswith(b"HTTP/1.1 200")
    finally:
        for sock in crowd:
            sock.close()
    assert call(dash.url + "/healthz")[:2] == (200, "ok\n")


def test_a_reload_that_drops_the_section_keeps_the_password(nsd: NSD) -> None:
    folder = Path(tempfile.mkdtemp(prefix="splitdns-dash-"))
    folder.chmod(0o755)
    secret = folder / "pw"
    write_hash(str(secret), make_hash("the right one"))
    secret.chmod(0o644)
    server = start(folder, nsd, extra=f"  password_file: {secret}\n")
    try:
        assert call(server.url + "/api/status")[0] == 401
        path = next(folder.glob("splitdns-*.yaml"))
        text = path.read_text()
        cut = text.replace(f"dashboard:\n  listen: {server.url[7:]}\n", "")
        cut = cut.replace(f"  password_file: {secret}\n", "")
        assert "dashboard" not in cut
        path.write_text(cut)
        path.chmod(0o644)
        server.proc.send_signal(signal.SIGHUP)
        server.wait_for("restart splitdns to apply them: - dashboard")
        assert call(server.url + "/api/status")[0] == 401  # still shut
    finally:
        server.stop()
        shutil.rmtree(folder)


def test_a_miss_the_express_lane_answers_shows_its_rewrite_in_the_stream(dash: Dash) -> None:
    port = int(dash.url.rsplit(":", 1)[1])
    lane = total(scrape(dash.metrics), "splitdns_express_lane_total", result="answered")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /api/stream?rewritten=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        time.sleep(0.3)
        assert dash.dig("+short", "two.example.test") == "127.0.0.5\n198.51.100.9\n"
        event = read_event(sock, time.monotonic() + 3)
    (row,) = event["rows"]
    assert row["name"] == "two.example.test" and row["outcome"] == "rewritten", row
    assert row["upstream"] and row["ms"] > 0 and row["view"] == "lan"
    assert [(c["from"], c["to"], c["rule"]) for c in row["rewritten"]] == [
        ("203.0.113.1", "127.0.0.5", 0)
    ]
    # answered by the lane while watched (it does not stand aside)
    assert total(scrape(dash.metrics), "splitdns_express_lane_total", result="answered") > lane


@pytest.mark.parametrize("tcp", [False, True], ids=["udp-fast-path", "tcp-chain"])
def test_a_cached_rewritten_answer_shows_its_rewrite_in_the_stream(dash: Dash, tcp: bool) -> None:
    """Issue 38: most answers are cache hits; a hit of a rewritten answer says what was
    rewritten (the cache keeps it), so "Rewritten only" keeps it."""
    port = int(dash.url.rsplit(":", 1)[1])
    name = "dual.example.test" if tcp else "mail.example.test"
    dash.dig("+short", name)  # the miss: stored with its rewrite
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"GET /api/stream?rewritten=1&name={name} HTTP/1.1\r\n"
                     "Host: 127.0.0.1\r\n\r\n".encode())  # fmt: skip
        time.sleep(0.3)
        args = ["+tcp"] if tcp else []
        assert dash.dig("+short", *args, name) == "127.0.0.5\n"  # the hit
        event = read_event(sock, time.monotonic() + 3)
    (row,) = event["rows"]
    assert row["name"] == name and row["outcome"] == "cached", row
    assert [(c["from"], c["to"], c["rule"]) for c in row["rewritten"]] == [
        ("203.0.113.1", "127.0.0.5", 0)
    ]


def test_the_first_paint_holds_the_health_without_scripts(dash: Dash) -> None:
    """The page as served (before any script runs: a screenshot, a browser without scripts)
    already says what is served and how the upstreams are."""
    got, page, headers = call(dash.url + "/")
    assert got == 200 and headers["content-type"].startswith("text/html")
    assert "Loading…" not in page
    assert "queries answered" in page and "splitdns" in page
    assert f"127.0.0.1:{dash.port}" in page  # the DNS listener
    assert 'data-upstream="127.0.0.1:' in page and 'class="badge up"' in page
    assert "<script" in page and "Traceback" not in page
