"""One log line per kind of dropped connection a minute, not one per connection.

asyncio (and hypercorn) log each connection a client drops mid-way ("SSL connection is
closed", "Fatal error on SSL transport", a reset peer): under an attack or a flaky Wi-Fi that
is hundreds of identical lines that bury the one that matters. The filter lets the first of a
kind through each minute and says how many of it it held back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

WINDOW = 60.0
NOISY = ("asyncio", "splitdns.dashboard.http", "hypercorn.error")


class OncePerKind(logging.Filter):
    """Passes a record when its kind (logger and message template) has not passed within
    WINDOW seconds; the next one that passes says how many were held back."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.clock = clock
        self.passed: dict[tuple[str, str], float] = {}
        self.held: dict[tuple[str, str], int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.CRITICAL:
            return True
        kind = (record.name, str(record.msg)[:80])
        now = self.clock()
        last = self.passed.get(kind)
        if last is not None and now - last < WINDOW:
            self.held[kind] = self.held.get(kind, 0) + 1
            return False
        if len(self.passed) >= 256:
            self.passed.clear()
        self.passed[kind] = now
        quiet = self.held.pop(kind, 0)
        if quiet:
            record.msg = f"{record.msg} (and {quiet} more like it in the last minute)"
        return True


def install() -> None:
    """Put the filter on the loggers that speak once per connection."""
    for name in NOISY:
        logging.getLogger(name).addFilter(OncePerKind())
