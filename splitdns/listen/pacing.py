"""What a DNS stream session and an HTTP/2 DoH session share: how they pace a client.

Reading pauses while `limits.streams_per_connection` answers are pending (a pipelining or
stream-opening client waits; nobody else does) and while the client does not read what is
written to it; such a client gets `tcp_idle_timeout` to catch up before `_idle` cuts it off.
Each answer's task is counted out here; a session that is draining closes once the last one
is done. The sessions say what idle means and what closing does.
"""

from __future__ import annotations

import asyncio
from typing import Any


class Paced(asyncio.Protocol):
    """The pacing half of a session (serve/streams.py's StreamSession, h2session.py's)."""

    __slots__ = ("_draining", "_last", "_paused", "_pending", "_timer", "_transport", "_writable")

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._pending: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._paused = False  # reading paused: too many answers pending, or not writable
        self._writable = True  # the client reads what we write
        self._draining = False  # no more requests: close once the pending are answered
        self._last = 0.0  # when the last request came (the loop's clock)

    # what the session says
    def _bounds(self) -> tuple[float, int]:
        """(tcp_idle_timeout, limits.streams_per_connection) as the session's config says."""
        raise NotImplementedError

    def _idle(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def _resumed(self) -> None:
        """Reading resumed: take what was read before the pause (nothing by default)."""

    # the pacing
    def _start_idle(self) -> None:
        """The idle deadline, from now (the connection has just come up)."""
        loop = asyncio.get_running_loop()
        self._last = loop.time()
        self._timer = loop.call_at(self._last + self._bounds()[0], self._idle)

    def _pause(self) -> None:
        if not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()

    def _resume(self) -> None:
        if self._paused and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
            self._resumed()

    def _track(self, task: asyncio.Task[Any]) -> None:
        """An answer in a task of its own: counted pending until done; reading pauses at the
        bound."""
        self._pending.add(task)
        task.add_done_callback(self._answered)
        if len(self._pending) >= self._bounds()[1]:
            self._pause()

    def _answered(self, task: asyncio.Task[Any]) -> None:
        self._pending.discard(task)
        if self._draining:
            if not self._pending:
                self.close()
        elif self._paused and self._writable:
            self._resume()

    def pause_writing(self) -> None:
        """The client does not read: take no more of its requests; `_idle` cuts it off if it
        does not catch up within the idle timeout."""
        self._writable = False
        self._pause()
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(self._bounds()[0], self._idle)

    def resume_writing(self) -> None:
        self._writable = True
        if len(self._pending) < self._bounds()[1]:
            self._resume()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
