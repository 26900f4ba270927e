"""CPython 3.11 keeps an instance's attributes inline, its fastest `self.x`, only while its
class has at most 30 of them; the 31st turns every instance's into a dict probed on each
lookup. The Server crossed that line unnoticed (736 instructions more per cached answer,
bench/instructions) and Config sat on it. Every object a running server holds is checked:
slotted (or compiled: no __dict__ at all), or within the line."""

from __future__ import annotations

from typing import Any

from splitdns.config import model
from splitdns.serve.server import Server

INLINE_LIMIT = 30  # CPython's SHARED_KEYS_MAX_SIZE (Objects/dictobject.c)

MAPPING = """\
upstreams: ["127.0.0.1:53"]
listen: ["127.0.0.1:0"]
views:
  - name: lan
    clients: [192.0.2.0/24]
    rewrite: [{from: 203.0.113.1, to: 192.0.2.2}]
    hosts: {nas.example.test: 192.0.2.5}
"""


def _held(root: object, depth: int = 5) -> tuple[dict[str, int], int]:
    """Every splitdns object reachable from `root` (its attributes, and list, tuple and dict
    members) that has an instance dict: class name -> its number of attributes; and how many
    splitdns objects were reached (slotted, compiled or not)."""
    found: dict[str, int] = {}
    seen: set[int] = set()
    reached = 0

    def walk(obj: Any, left: int) -> None:
        if id(obj) in seen or left < 0 or isinstance(obj, (str, bytes, int, float, type)):
            return
        seen.add(id(obj))
        if isinstance(obj, (list, tuple, set, frozenset)):
            for item in list(obj)[:50]:
                walk(item, left - 1)
            return
        if isinstance(obj, dict):
            for item in list(obj.values())[:50]:
                walk(item, left - 1)
            return
        if not type(obj).__module__.startswith("splitdns."):
            return
        nonlocal reached
        reached += 1
        attributes = getattr(obj, "__dict__", None)
        if attributes is not None:
            found[f"{type(obj).__module__}.{type(obj).__qualname__}"] = len(attributes)
            values = list(attributes.values())
        else:
            slots = [  # (a compiled class names its attributes in __mypyc_attrs__)
                n
                for c in type(obj).__mro__
                for n in (*getattr(c, "__slots__", ()), *getattr(c, "__mypyc_attrs__", ()))
            ]
            values = [getattr(obj, n, None) for n in slots if n != "__weakref__"]
        for value in values:
            walk(value, left - 1)

    walk(root, depth)
    return found, reached


def test_no_object_a_server_holds_is_past_the_inline_limit() -> None:
    for text in (None, MAPPING):
        config = model.load_default() if text is None else model.loads(text, "t.yaml")
        held, reached = _held(Server(config))
        assert reached > 20, f"the walk reached {reached} objects: it would pass whatever"
        over = {name: count for name, count in held.items() if count > INLINE_LIMIT}
        assert not over, f"past {INLINE_LIMIT} attributes (slot them): {over}"


def test_the_server_and_its_config_are_slotted() -> None:
    """The two read on every answer: slotted whatever they grow to."""
    server = Server(model.load_default())
    assert not hasattr(server, "__dict__")
    assert not hasattr(server.config, "__dict__")
