"""The optional compiled build (mypyc, scripts/build-compiled) runs the same tests as the pure
Python package: it is built in place in a copy of the tree, its hot modules are checked to be
the compiled ones, and the unit tests and the server's end-to-end tests run against it (real
NSD, scripted and hostile upstreams, DoT/DoH, PROXY v2, failover, reloads), in a process
that imports the copy. It found two places where compiled code is stricter than CPython.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: What runs against the compiled modules: the unit tests and the end-to-end tests of what
#: they do (forwarding, rewriting, caching, hostile replies, answer shapes, DoT/DoH, PROXY v2
#: and ECS, failover, reloads). Left to the pure run: the commands (cli, doctor: not compiled),
#: the floods and the unbound upstream, to keep the whole suite near 8 minutes.
SUITES = [
    "tests/unit",
    *(
        f"tests/e2e/{name}.py" if "/" in name else f"tests/e2e/test_{name}.py"
        for name in (
            "fake_upstream",
            "nsd_upstream",
            "hostile_upstream",
            "answer_shapes",
            "listen/test_encrypted_listeners",
            "protocol_edges",
            "listen/test_client_address",
            "upstream_routing",
            "reload",
        )
    ),
]


@pytest.mark.timeout(900)
def test_compiled_build_passes_the_miss_path_tests(tmp_path: Path) -> None:
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        if os.environ.get("SPLITDNS_REQUIRE_REAL"):
            pytest.fail("no C compiler: scripts/install-test-deps installs gcc")
        pytest.skip("no C compiler (gcc): the compiled build cannot be made here")
    tree = tmp_path / "tree"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    built = subprocess.run(
        ["bash", "scripts/build-compiled", "--tree", str(tree)],
        cwd=ROOT,
        # -O0: the same compiled code, built in a third of the time (users get -O3)
        env={**env, "PYTHON": sys.executable, "SPLITDNS_OPT_LEVEL": "0"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    assert "PURE PYTHON" not in built.stdout, built.stdout
    assert built.stdout.count(": compiled (") == 3, built.stdout
    shutil.copytree(ROOT / "tests", tree / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    ran = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", *SUITES],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert ran.returncode == 0, ran.stdout[-6000:] + ran.stderr[-2000:]
    assert " passed" in ran.stdout.splitlines()[-1], ran.stdout[-2000:]
