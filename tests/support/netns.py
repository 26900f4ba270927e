"""Two hosts on a test LAN: network namespaces joined by a veth pair, documentation addresses
only. Processes started in them are stopped by PID and the namespaces are deleted on close."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def run(*argv: str, check: bool = True, timeout: float = 30) -> str:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: {out.stdout}{out.stderr}")
    return out.stdout + out.stderr


class TwoHosts:
    """`srv` and `cli`, their interfaces up with no address (tests add what they need)."""

    def __init__(self, prefix: str) -> None:
        tag = os.getpid() % 100000
        self.srv, self.cli = f"{prefix}{tag}-srv", f"{prefix}{tag}-cli"
        self.srv_if, self.cli_if = f"{prefix}s{tag}", f"{prefix}c{tag}"
        self.procs: list[subprocess.Popen[str]] = []
        for ns in (self.srv, self.cli):
            run("ip", "netns", "add", ns)
            run("ip", "-n", ns, "link", "set", "lo", "up")
        run("ip", "link", "add", self.srv_if, "netns", self.srv, "type", "veth", "peer",
            "name", self.cli_if, "netns", self.cli)  # fmt: skip
        run("ip", "-n", self.srv, "link", "set", self.srv_if, "up")
        run("ip", "-n", self.cli, "link", "set", self.cli_if, "up")

    def address(self, ns: str, interface: str, cidr: str) -> None:
        extra = ["nodad"] if ":" in cidr else []  # IPv6: usable at once, no duplicate detection
        run("ip", "-n", ns, "addr", "add", cidr, "dev", interface, *extra)

    def spawn(self, ns: str, *argv: str, log: Path) -> subprocess.Popen[str]:
        """Start a process in `ns`, its output going to `log` (read it when a step fails)."""
        with log.open("w") as out:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, *argv], stdout=out, stderr=subprocess.STDOUT, text=True
            )
        self.procs.append(proc)
        return proc

    def exec(self, ns: str, *argv: str, check: bool = True, timeout: float = 30) -> str:
        return run("ip", "netns", "exec", ns, *argv, check=check, timeout=timeout)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        for ns in (self.srv, self.cli):
            run("ip", "netns", "del", ns, check=False)


def two_hosts(prefix: str) -> Iterator[TwoHosts]:
    """For fixtures: the pair, torn down afterwards (and checked gone)."""
    if os.geteuid() != 0:
        reason = "network namespaces need root"
        if os.environ.get("SPLITDNS_REQUIRE_REAL") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    net = TwoHosts(prefix)
    try:
        yield net
    finally:
        net.close()
    left = run("ip", "netns", "list")
    assert net.srv not in left and net.cli not in left
