"""The container-trap detector: one warning when every query comes from the gateway."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from splitdns.serve.clienttrap import (
    MIN_QUERIES,
    WINDOW_QUERIES,
    WINDOW_SECONDS,
    ClientTrap,
    default_gateways,
)


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def trap(views: bool = True, gateways: set[str] | None = None) -> tuple[ClientTrap, Clock]:
    clock = Clock()
    return ClientTrap(views, clock, lambda: gateways or {"172.17.0.1"}), clock


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_all_queries_from_the_gateway_warn_once(caplog: pytest.LogCaptureFixture) -> None:
    t, _ = trap()
    for _ in range(WINDOW_QUERIES * 3):
        if not t.done:
            t.saw("172.17.0.1")
    assert t.done
    (message,) = warnings(caplog)
    assert "172.17.0.1, this host's gateway" in message and "network_mode: host" in message


def test_ipv4_mapped_gateway_is_recognised(caplog: pytest.LogCaptureFixture) -> None:
    t, _ = trap()
    for _ in range(WINDOW_QUERIES):
        t.saw("::ffff:172.17.0.1")
    assert len(warnings(caplog)) == 1


def test_two_sources_end_the_watch_silently(caplog: pytest.LogCaptureFixture) -> None:
    t, _ = trap()
    t.saw("172.17.0.1")
    t.saw("192.168.1.20")
    assert t.done and not warnings(caplog)


def test_a_lone_source_warns_after_the_window_only_with_views(
    caplog: pytest.LogCaptureFixture,
) -> None:
    t, clock = trap()
    for _ in range(MIN_QUERIES):
        t.saw("10.0.0.5")
    assert not t.done  # not long enough yet
    clock.now += WINDOW_SECONDS
    t.saw("10.0.0.5")
    assert t.done and "10.0.0.5 alone" in warnings(caplog)[0]
    caplog.clear()
    quiet, clock = trap(views=False)
    for _ in range(WINDOW_QUERIES):
        quiet.saw("10.0.0.5")
    assert quiet.done and not warnings(caplog)


def test_loopback_testing_is_not_a_trap(caplog: pytest.LogCaptureFixture) -> None:
    t, _ = trap()
    for _ in range(WINDOW_QUERIES):
        t.saw("127.0.0.1")
    assert t.done and not warnings(caplog)


def test_default_gateways_from_proc(tmp_path: Path) -> None:
    (tmp_path / "route").write_text(
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\n"
        "eth0\t00000000\t010011AC\t0003\t0\t0\t0\t00000000\n"
        "eth0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\n"
    )
    (tmp_path / "ipv6_route").write_text(
        "00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
        "fe800000000000000000000000000001 00000400 00000001 00000000 00000003 eth0\n"
    )
    assert default_gateways(tmp_path) == {"172.17.0.1", "fe80::1"}
    assert default_gateways(tmp_path / "missing") == set()
