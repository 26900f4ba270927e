"""Per-upstream health learned from real traffic: smoothed latency, failures, back-off.

An upstream that fails twice in a row is taken out of rotation for a back-off period (doubling
on every failed return, capped). When the period ends it is not trusted again on the strength of
the clock alone: one probe question must succeed first (the group sends it in the background),
so a still-dead upstream costs no client any waiting. The smoothed round-trip time (RFC 6298
style) orders the `fastest` strategy and sets how long to wait before hedging to the next one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

FAILURES_TO_DOWN = 2
FIRST_BACKOFF = 2.0
MAX_BACKOFF = 60.0
#: Hedging bounds: wait at least this long before also asking the next upstream...
MIN_ATTEMPT = 0.2
#: ...and never longer than this, so a black hole costs a client well under a second.
MAX_ATTEMPT = 0.8
UNKNOWN_ATTEMPT = 0.4


@dataclass(slots=True)
class Health:
    """The health of one upstream, driven by outcomes the group reports."""

    clock: Callable[[], float] = time.monotonic
    srtt: float | None = None
    rttvar: float = 0.0
    failures: int = 0
    backoff: float = FIRST_BACKOFF
    down_until: float | None = None  # set while out of rotation
    probing: bool = False
    changes: list[str] = field(default_factory=list)  # recent transitions, for the log
    # In rotation (down_until is None), kept as a field: the express lane reads it on every
    # miss, and a property was a call each time.
    up: bool = True

    def succeeded(self, seconds: float) -> None:
        if self.srtt is None:
            self.srtt, self.rttvar = seconds, seconds / 2
        else:
            srtt = self.srtt
            deviation = srtt - seconds if srtt > seconds else seconds - srtt
            self.rttvar = 0.75 * self.rttvar + 0.25 * deviation
            self.srtt = 0.875 * srtt + 0.125 * seconds
        if self.failures:
            self.failures = 0
        if self.down_until is not None:
            self.down_until = None
            self.up = True
            self.changes.append("back up")
        self.backoff = FIRST_BACKOFF

    def failed(self) -> None:
        self.failures += 1
        if self.down_until is None and self.failures >= FAILURES_TO_DOWN:
            self.down_until = self.clock() + self.backoff
            self.up = False
            self.changes.append(f"down for {self.backoff:g} s")

    def probe_due(self) -> bool:
        """Back-off over and no probe running: time to ask one probe question."""
        return self.down_until is not None and not self.probing and self.clock() >= self.down_until

    def probe_failed(self) -> None:
        self.backoff = min(self.backoff * 2, MAX_BACKOFF)
        self.down_until = self.clock() + self.backoff
        self.changes.append(f"probe failed: down for {self.backoff:g} s")

    def attempt_timeout(self) -> float:
        """How long to wait for this upstream before also asking the next one."""
        if self.srtt is None:
            return UNKNOWN_ATTEMPT
        return min(MAX_ATTEMPT, max(MIN_ATTEMPT, self.srtt + 4 * self.rttvar))

    def take_changes(self) -> list[str]:
        out, self.changes = self.changes, []
        return out
