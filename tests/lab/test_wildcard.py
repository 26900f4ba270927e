"""Listening on 0.0.0.0 and :: on a host with two addresses of each family: every address
answers, because each UDP reply leaves from the address its query was sent to (IP_PKTINFO,
IPV6_PKTINFO). Without that, the kernel picks one source per route and clients asking the
other address drop the reply."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.netns import TwoHosts, two_hosts
from tests.support.tools import need

SERVER_ADDRESSES = ["192.0.2.1", "192.0.2.53", "2001:db8:1::1", "2001:db8:1::53"]


@pytest.fixture
def lan() -> Iterator[TwoHosts]:
    for net in two_hosts("wc"):
        for cidr in ("192.0.2.1/24", "192.0.2.53/24", "2001:db8:1::1/64", "2001:db8:1::53/64"):
            net.address(net.srv, net.srv_if, cidr)
        for cidr in ("192.0.2.10/24", "2001:db8:1::10/64"):
            net.address(net.cli, net.cli_if, cidr)
        yield net


def test_every_address_answers_from_itself(lan: TwoHosts, tmp_path: Path) -> None:
    dig = need("dig", "bind9-dnsutils")
    conf = tmp_path / "wildcard.yaml"
    conf.write_text(
        'listen: ["0.0.0.0:53", "[::]:53"]\nupstreams: ["127.0.0.1:1"]\n'
        'allow: [192.0.2.0/24, "2001:db8:1::/64"]\n'
        'views:\n  - name: lan\n    clients: [192.0.2.0/24, "2001:db8:1::/64"]\n'
        '    hosts:\n      "*.example.test": 192.0.2.99\n'
    )
    log = tmp_path / "splitdns.out"
    lan.spawn(lan.srv, sys.executable, "-m", "splitdns", "serve", "-c", str(conf), log=log)

    def ask(address: str) -> str:
        return lan.exec(
            lan.cli, dig, f"@{address}", "+short", "+tries=1", "+time=1", "www.example.test",
            check=False,
        ).strip()  # fmt: skip

    deadline = time.monotonic() + 15
    while ask(SERVER_ADDRESSES[0]) != "192.0.2.99" and time.monotonic() < deadline:
        time.sleep(0.1)
    answers = {address: ask(address) for address in SERVER_ADDRESSES}
    assert answers == dict.fromkeys(SERVER_ADDRESSES, "192.0.2.99"), (answers, log.read_text())
