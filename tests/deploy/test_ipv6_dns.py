"""The IPv6 recipes, proven: radvd (and dnsmasq) advertise splitdns as the only IPv6 DNS server
(RDNSS, RFC 8106) in a network namespace, `rdisc6` on a client host sees exactly that address,
the client configures itself from the advertised prefix (SLAAC), and dig over IPv6 through
splitdns gets the rewritten answer.

The recipes name eth0; the test replaces it with its own veth. Addresses: fd00:1::/64, splitdns
on fd00:1::53 (as in the recipes).
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.netns import TwoHosts, two_hosts
from tests.support.servers import NSD
from tests.support.tools import need
from tests.support.zones import example_zone

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "deploy" / "dhcp"
SPLITDNS_V6 = "fd00:1::53"
ZONE = example_zone(
    "www A   203.0.113.1",
    "www AAAA 2001:db8:1::80",
)


@pytest.fixture
def lan(tmp_path: Path) -> Iterator[TwoHosts]:
    for net in two_hosts("r6"):
        net.address(net.srv, net.srv_if, f"{SPLITDNS_V6}/64")
        net.exec(net.srv, "sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1")
        nsd_conf = NSD.write_config(tmp_path / "nsd", {"example.test": ZONE}, "127.0.0.1", 5300)
        net.spawn(net.srv, need("nsd", "nsd"), "-d", "-c", str(nsd_conf), log=tmp_path / "nsd.out")
        conf = tmp_path / "splitdns.yaml"
        conf.write_text(
            f'listen: ["[{SPLITDNS_V6}]:53"]\nupstreams: ["127.0.0.1:5300"]\n'
            "allow: [fd00:1::/64]\nviews:\n  - name: lan\n    clients: [fd00:1::/64]\n"
            "    rewrite:\n      - {from: 203.0.113.1, to: 192.0.2.80}\n"
            '      - {from: "2001:db8:1::/64", to: "fd00:1::/64"}\n'
        )
        net.spawn(
            net.srv, sys.executable, "-m", "splitdns", "serve", "-c", str(conf),
            log=tmp_path / "splitdns.out",
        )  # fmt: skip
        yield net


def advertised_dns(net: TwoHosts) -> list[str]:
    """The RDNSS addresses in the router advertisements the client host solicits."""
    rdisc6 = need("rdisc6", "ndisc6")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        out = net.exec(net.cli, rdisc6, "-1", "-r", "3", "-w", "1000", net.cli_if, check=False)
        found = re.findall(r"Recursive DNS server\s*:\s*(\S+)", out)
        if found:
            return found
    raise AssertionError(f"no router advertisement with RDNSS seen: {out}")


def slaac_address(net: TwoHosts) -> str:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        out = net.exec(
            net.cli, "ip", "-6", "-o", "addr", "show", "dev", net.cli_if, "scope", "global"
        )
        match = re.search(r"inet6 (fd00:1::[0-9a-f:]+)/64", out)
        if match and "tentative" not in out:
            return match.group(1)
        time.sleep(0.2)
    raise AssertionError(f"the client configured no address from the advertised prefix: {out}")


def resolve_through_advertised(net: TwoHosts, dns: list[str]) -> None:
    dig = need("dig", "bind9-dnsutils")
    assert dns == [SPLITDNS_V6]  # exactly one IPv6 DNS server: splitdns
    client = slaac_address(net)
    deadline = time.monotonic() + 15
    while True:
        a = net.exec(net.cli, dig, f"@{dns[0]}", "+short", "+tries=1", "+time=1",
                     "www.example.test", check=False).split()  # fmt: skip
        if a or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    aaaa = net.exec(net.cli, dig, f"@{dns[0]}", "+short", "+tries=1", "www.example.test", "AAAA")
    print(f"\nclient {client}: RDNSS {dns}; A {a}; AAAA {aaaa.split()}")
    assert a == ["192.0.2.80"] and aaaa.split() == ["fd00:1::80"]


def test_radvd_recipe_advertises_only_splitdns(lan: TwoHosts, tmp_path: Path) -> None:
    radvd = need("radvd", "radvd")
    recipe = (
        (RECIPES / "radvd.conf").read_text().replace("interface eth0", f"interface {lan.srv_if}")
    )
    conf = tmp_path / "radvd.conf"
    conf.write_text(recipe)
    lan.exec(lan.srv, radvd, "--configtest", "-C", str(conf))
    lan.spawn(
        lan.srv, radvd, "-n", "-m", "stderr", "-C", str(conf), "-p", str(tmp_path / "radvd.pid"),
        log=tmp_path / "radvd.out",
    )  # fmt: skip
    resolve_through_advertised(lan, advertised_dns(lan))


def test_dnsmasq_ipv6_recipe_advertises_only_splitdns(lan: TwoHosts, tmp_path: Path) -> None:
    dnsmasq = need("dnsmasq", "dnsmasq-base")
    recipe = (RECIPES / "dnsmasq-ipv6.conf").read_text().replace("eth0", lan.srv_if)
    conf = tmp_path / "dnsmasq.conf"
    conf.write_text(recipe)
    lan.spawn(
        lan.srv, dnsmasq, "--no-daemon", f"--conf-file={conf}", "--user=root",
        f"--pid-file={tmp_path / 'dnsmasq.pid'}", f"--dhcp-leasefile={tmp_path / 'leases'}",
        log=tmp_path / "dnsmasq.out",
    )  # fmt: skip
    resolve_through_advertised(lan, advertised_dns(lan))
