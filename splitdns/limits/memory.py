"""Giving memory back to the system after a wave of connections has gone.

A burst of connections (an attack, or a hundred phones waking at once) leaves the heap
fragmented: CPython's small-object arenas and glibc's malloc keep the freed pages, so RSS
stays at the wave's peak long after. A full collection and `malloc_trim(0)` return what can
be returned; it takes a few milliseconds, and the connection budget calls it only when the
open connections have halved since the last peak.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging

log = logging.getLogger(__name__)

_libc: ctypes.CDLL | None = None
_looked = False


def _trim_function() -> ctypes.CDLL | None:
    global _libc, _looked
    if not _looked:
        _looked = True
        name = ctypes.util.find_library("c")
        try:
            libc = ctypes.CDLL(name) if name else None
            _libc = libc if libc is not None and hasattr(libc, "malloc_trim") else None
        except OSError:
            _libc = None
    return _libc


def give_back() -> None:
    """Collect cycles, then ask glibc to return free heap pages (a no-op elsewhere)."""
    gc.collect()
    libc = _trim_function()
    if libc is not None:
        libc.malloc_trim(0)


_pending: asyncio.TimerHandle | None = None


def trim_soon(delay: float = 1.0) -> None:
    """give_back in `delay` seconds, once however often asked meanwhile (a listener's last
    connection closing may be followed by the next at once)."""
    global _pending
    if _pending is not None and not _pending.cancelled():
        return
    loop = asyncio.get_running_loop()

    def run() -> None:
        global _pending
        _pending = None
        give_back()

    _pending = loop.call_later(delay, run)
