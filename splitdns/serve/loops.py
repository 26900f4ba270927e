"""Event loop factories by name: uvloop where it imports (much faster UDP), asyncio otherwise."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


def _uvloop() -> Callable[[], asyncio.AbstractEventLoop]:
    import uvloop

    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def _auto() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        return _uvloop()
    except ImportError:
        return asyncio.new_event_loop


LOOP_FACTORIES: dict[str, Callable[[], Callable[[], asyncio.AbstractEventLoop]]] = {
    "auto": _auto,
    "asyncio": lambda: asyncio.new_event_loop,
    "uvloop": _uvloop,
}


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    return LOOP_FACTORIES[name]()


def loop_name(factory: Callable[[], asyncio.AbstractEventLoop]) -> str:
    return "uvloop" if factory.__module__.startswith("uvloop") else "asyncio"
