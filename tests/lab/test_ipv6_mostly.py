"""The IPv6-mostly story on a real kernel (issue #31): an IPv6-only client, a real NAT64
(tayga) in the router, NSD outside and unbound's dns64 module as an upstream that synthesizes
by itself; `splitdns lab --ipv6-mostly` prints the same steps."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from splitdns.commands import lab64
from tests.support.tools import need_root


@pytest.fixture(autouse=True)
def _needs_root() -> None:
    need_root(("tayga", "tayga"), ("nft", "nftables"), ("nsd", "nsd"), ("unbound", "unbound"),
              ("dig", "bind9-dnsutils"), ("ss", "iproute2"))  # fmt: skip


def test_dns64_keeps_the_split_horizon_through_a_real_nat64() -> None:
    with lab64.Lab64() as net:
        names = set(net.created)
        steps = lab64.story(net)
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(name in left for name in names), left  # torn down
    assert not Path(f"/etc/netns/{net.ns('client6')}").exists()
    for step in steps:
        print(f"\n{step.verdict:24} {step.title}\n{'':24} {step.observed}")
    assert len(steps) == 6 and all(s.ok for s in steps), [(s.title, s.observed) for s in steps]
    plain, paired, _, _, nsp, upstream = steps
    assert plain.breaks and plain.observed.startswith("2001:db8:64::cb00:7101 192.0.2.")
    assert paired.observed == "2001:db8:1::2 2001:db8:1::10"  # the client's own address
    assert nsp.observed.startswith("2001:db8:64::c000:202 192.0.2.")  # the NAT64's
    assert upstream.observed == "2001:db8:1::2 2001:db8:1::10"


def test_the_command_runs_the_story() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "splitdns", "lab", "--ipv6-mostly"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("\nok ") >= 5 and "lab: torn down" in out.stdout, out.stdout
