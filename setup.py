"""The optional compiled build: `SPLITDNS_COMPILE=1` compiles the hot modules with mypyc.

Without it (the default, and whenever `pip install .` runs), the package is pure Python and
needs no C compiler. The Python source stays the only source: mypyc compiles the same files,
type-checked as they are (mypy --strict). Build it with scripts/build-compiled.
"""

import os

from setuptools import setup

#: The modules every cache miss runs through (bench/README: what compiling them bought).
HOT_MODULES = [
    "splitdns/wire.py",
    "splitdns/answer/chain.py",
    "splitdns/answer/links.py",
    "splitdns/answer/ipv6.py",
    "splitdns/answer/rewrite.py",
    "splitdns/answer/cache.py",
    "splitdns/upstream/group.py",
    "splitdns/upstream/plain.py",
    "splitdns/upstream/packets.py",
    "splitdns/upstream/socketpool.py",
    "splitdns/upstream/health.py",
    "splitdns/answer/views.py",
    "splitdns/answer/ddr.py",
    "splitdns/answer/localanswers.py",
    "splitdns/answer/ratelimit.py",
    "splitdns/serve/server.py",
    "splitdns/serve/express.py",
    "splitdns/serve/lanewatch.py",
    "splitdns/serve/replay.py",
    "splitdns/answer/quickscan.py",
    "splitdns/limits/inflight.py",
    "splitdns/listen/udptcp.py",
]


def compiled_modules() -> list:  # type: ignore[type-arg]
    if os.environ.get("SPLITDNS_COMPILE") != "1":
        return []
    from mypyc.build import mypycify  # needs mypy and a C compiler: only when asked for

    # SPLITDNS_OPT_LEVEL: the C compiler's -O (the tests use 0 to build faster; same code)
    return mypycify(HOT_MODULES, opt_level=os.environ.get("SPLITDNS_OPT_LEVEL", "3"))


setup(ext_modules=compiled_modules())
