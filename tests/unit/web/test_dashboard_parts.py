"""The dashboard's pieces on their own: the password file, the config section, the samples'
quantiles and the live feed's filter and bounds."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest

from splitdns import wire
from splitdns.config.model import loads
from splitdns.config.passwords import PasswordError, make_hash, parse_hash, read_hash, verify
from splitdns.config.tree import ConfigError
from splitdns.serve.samples import quantile_ms
from splitdns.upstream.transport import LATENCY_BUCKETS
from splitdns.web import livefeed
from splitdns.web.livefeed import Filter, LiveFeed


def test_a_password_hash_verifies_only_its_password_and_salts_each_file() -> None:
    line = make_hash("correct horse", n=2**10)
    assert verify("correct horse", line)
    assert not verify("correct horsE", line)
    assert make_hash("correct horse", n=2**10) != line  # a fresh salt each time
    with pytest.raises(PasswordError, match="at least 8"):
        make_hash("short")


@pytest.mark.parametrize(
    "line",
    [
        "",
        "md5$abc",
        "scrypt$1000$8$1$c2FsdHNhbHQ=$aGFzaGhhc2hoYXNoaGFzaA==",
        "scrypt$1024$8$1$!!$aGFzaGhhc2hoYXNoaGFzaA==",
        "scrypt$1024$8$1$c2E=$aGFzaGhhc2hoYXNoaGFzaA==",
    ],
)
def test_a_damaged_password_line_is_refused(line: str) -> None:
    with pytest.raises(PasswordError):
        parse_hash(line)


def test_passwd_writes_an_owner_only_file(tmp_path: Path) -> None:
    from splitdns.config.passwords import write_hash

    path = tmp_path / "pw"
    write_hash(str(path), make_hash("correct horse", n=2**10))
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert verify("correct horse", read_hash(str(path)))


def test_the_dashboard_section_names_file_line_and_key(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("not a hash\n")
    cases = {
        "dashboard:\n  listen: 192.0.2.1:8080\n": (2, "dashboard.listen", "reachable from"),
        "dashboard:\n  listen: 127.0.0.1\n  password_file: /nonexistent/pw\n": (
            3, "dashboard.password_file", "No such file"),
        f"dashboard:\n  listen: 127.0.0.1\n  password_file: {pw}\n": (
            3, "dashboard.password_file", "not a password file splitdns wrote"),
        "dashboard:\n  listen: 127.0.0.1:99999\n": (2, "dashboard.listen", "not a port"),
        "dashboard:\n  listen: https://[::1]:8443/x\n": (2, "dashboard.listen", "no path"),
        "dashboard:\n  password: x\n": (2, "dashboard.password", "unknown key"),
    }  # fmt: skip
    for text, (line, key, message) in cases.items():
        with pytest.raises(ConfigError) as caught:
            loads("upstreams: [127.0.0.1]\n" + text, "/m.yaml")
        error = caught.value
        assert (error.source, error.line - 1, error.path) == ("/m.yaml", line, key), str(error)
        assert message in error.message
    good = loads("upstreams: [127.0.0.1]\ndashboard: https://[::1]:8443\n", "/m.yaml")
    assert good.dashboard is not None and str(good.dashboard) == "https://[::1]:8443/"
    assert good.dashboard.loopback


def test_quantiles_interpolate_inside_their_bucket() -> None:
    slots = [0.0] * (len(LATENCY_BUCKETS) + 2)
    slots[LATENCY_BUCKETS.index(0.01)] = 100  # all between 5 and 10 ms
    slots[-2], slots[-1] = 100, 0.75
    assert quantile_ms(slots, 0.5) == 7.5
    assert quantile_ms(slots, 0.99) == pytest.approx(9.95)
    slots[-2] += 1  # one beyond the last bound
    assert quantile_ms(slots, 1.0) == LATENCY_BUCKETS[-1] * 1000


def hit(name: str, host: str = "192.0.2.7", view: str = "lan") -> tuple[Any, ...]:
    return (host, view, wire.make_query(name, wire.TYPE_A))


def test_the_feed_taps_only_while_subscribed_and_bounds_what_it_sends() -> None:
    async def scenario() -> None:
        taps: list[Any] = []
        feed = LiveFeed(taps.append, lambda: False)
        everyone = feed.subscribe(Filter())
        only = feed.subscribe(Filter(client="192.0.2.9", rewritten=False))
        assert everyone is not None and only is not None and taps == [feed.tap]
        for i in range(100):
            feed.tap.append(hit(f"n{i}.example.test"))
        feed.tap.append(hit("mine.example.test", host="192.0.2.9"))
        feed.deliver()
        batch = json.loads(everyone.queue.get_nowait())
        assert len(batch["rows"]) == livefeed.ROWS_PER_TICK and batch["skipped"] == 61
        assert batch["rows"][-1]["name"] == "mine.example.test"
        mine = json.loads(only.queue.get_nowait())
        assert [r["name"] for r in mine["rows"]] == ["mine.example.test"] and not mine["skipped"]
        assert feed.top_clients()[0] == {
            "client": "192.0.2.7", "answers": 100, "view": "lan",
            "last_seen": feed.top_clients()[0]["last_seen"],
        }  # fmt: skip
        feed.unsubscribe(everyone)
        assert taps == [feed.tap]
        feed.unsubscribe(only)
        assert taps == [feed.tap, None]  # nobody watches: the server stops tapping
        assert feed.subscribe(Filter()) is not None
        for _ in range(livefeed.MAX_SUBSCRIBERS - 1):
            assert feed.subscribe(Filter()) is not None
        assert feed.subscribe(Filter()) is None
        feed.stop()

    asyncio.run(scenario())


def test_hidden_clients_stay_hidden_in_rows_and_counts() -> None:
    async def scenario() -> None:
        feed = LiveFeed(lambda tap: None, lambda: True)
        sub = feed.subscribe(Filter())
        assert sub is not None
        feed.tap.append(hit("a.example.test"))
        feed.deliver()
        rows = json.loads(sub.queue.get_nowait())["rows"]
        assert rows[0]["client"] == "hidden" and feed.top_clients() == []
        feed.stop()

    asyncio.run(scenario())


def test_check_warns_when_the_password_would_cross_the_lan_in_clear(tmp_path: Path) -> None:
    from splitdns.config.crosscheck import cross_check
    from splitdns.config.passwords import write_hash

    pw = tmp_path / "pw"
    write_hash(str(pw), make_hash("correct horse", n=2**10))
    plain = loads(f"dashboard: {{listen: 0.0.0.0:5380, password_file: {pw}}}\n", "/m.yaml")
    (warning,) = [w for w in cross_check(plain) if w.startswith("dashboard")]
    assert "plain HTTP beyond loopback" in warning and "https://" in warning
    tls = loads(f"dashboard: {{listen: https://0.0.0.0:5380, password_file: {pw}}}\n", "/m.yaml")
    loopback = loads("dashboard: {listen: 127.0.0.1:5380}\n", "/m.yaml")
    assert not [w for c in (tls, loopback) for w in cross_check(c) if w.startswith("dashboard")]


def test_a_live_stream_is_spared_the_read_timeout_and_nothing_else(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from splitdns.web import httpserver as operator

    monkeypatch.setattr(operator, "READ_TIMEOUT", 0.05)

    async def run() -> None:
        held = operator.Held("127.0.0.1")
        reader = asyncio.StreamReader()
        timed = operator.TimedReader(reader, held)
        with pytest.raises(TimeoutError):
            await timed.read(10)  # an idle request: cut
        held.streaming = 1
        later = asyncio.get_running_loop().call_later(0.3, reader.feed_data, b"bye")
        assert await timed.read(10) == b"bye"  # a live stream: waits through six timeouts
        later.cancel()

    asyncio.run(run())


def test_the_login_failure_table_evicts_the_oldest_and_is_never_cleared() -> None:
    from splitdns.web import auth as webauth

    now = [1000.0]
    gate = webauth.Gate(webauth.PasswordFile(lambda: None), clock=lambda: now[0])
    for _ in range(webauth.FREE_FAILURES):
        gate._failed("192.0.2.7")
    assert gate.locked_for("192.0.2.7") > 0
    # a flood of other addresses (each one failure) fills the table: the locked one stays
    for n in range(webauth.ADDRESSES_KEPT * 2):
        gate._failed(f"2001:db8:{n // 65536:x}:{n % 65536:x}::1")
    assert len(gate.failures) <= webauth.ADDRESSES_KEPT
    assert gate.locked_for("192.0.2.7") > 0
    # an address in a guessing prefix is locked out by its prefix, one that logged in is not
    for n in range(webauth.PREFIX_FAILURES):
        gate._failed(f"198.51.100.{n + 1}")
    assert gate.locked_for("198.51.100.200") > 0
    gate.known["198.51.100.201"] = now[0]
    assert gate.locked_for("198.51.100.201") == 0


def test_dropped_connections_are_logged_once_a_minute_per_kind() -> None:
    import logging

    from splitdns.listen.lognoise import OncePerKind

    now = [0.0]
    noise = OncePerKind(clock=lambda: now[0])

    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord("asyncio", logging.ERROR, "x", 1, msg, None, None)

    passed = [noise.filter(record("SSL connection is closed")) for _ in range(650)]
    assert sum(passed) == 1
    assert noise.filter(record("Fatal error on transport"))  # another kind passes
    now[0] = 61.0
    again = record("SSL connection is closed")
    assert noise.filter(again) and "649 more like it" in str(again.msg)
