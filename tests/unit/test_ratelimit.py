"""Token buckets per client with an injected clock; LAN exempt; bounded table."""

from __future__ import annotations

import ipaddress

from splitdns.answer.ratelimit import RateLimiter
from splitdns.config.model import RateLimitSettings


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def limiter(**kw: object) -> tuple[RateLimiter, Clock]:
    clock = Clock()
    settings = RateLimitSettings(qps=10, burst=5, **kw)  # type: ignore[arg-type]
    return RateLimiter(settings, clock), clock


def test_burst_then_refill() -> None:
    rl, clock = limiter()
    assert [rl.allow("198.51.100.1") for _ in range(7)] == [True] * 5 + [False] * 2
    assert rl.limited == 2
    clock.now += 0.15  # one and a half tokens back at 10 qps
    assert rl.allow("198.51.100.1") and not rl.allow("198.51.100.1")
    # Another client is unaffected.
    assert all(rl.allow("198.51.100.2") for _ in range(5))


def test_lan_is_exempt_by_default() -> None:
    rl, _ = limiter()
    assert all(rl.allow("192.168.1.10") for _ in range(1000))
    assert all(rl.allow("::ffff:10.0.0.1") for _ in range(1000))
    assert len(rl) == 0


def test_custom_exemptions_and_disabled() -> None:
    rl, _ = limiter(exempt=(ipaddress.ip_network("198.51.100.0/24"),))
    assert all(rl.allow("198.51.100.7") for _ in range(100))
    assert not all(rl.allow("192.168.1.1") for _ in range(100))
    off, _ = limiter(enabled=False)
    assert all(off.allow("203.0.113.9") for _ in range(100))


def test_table_stays_bounded() -> None:
    rl, clock = limiter(table_size=16)
    for i in range(5000):
        rl.allow(f"203.0.113.{i % 250}")
        rl.allow(f"198.51.{i // 250}.{i % 250}")
        clock.now += 0.001
    assert len(rl) <= 16
