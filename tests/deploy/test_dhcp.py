"""The DHCP recipes, proven: dnsmasq hands out a lease with the shipped recipe in a network
namespace, a real DHCP client (busybox udhcpc) receives exactly one DNS server, splitdns's
address, and dig from that client through it gets the rewritten answer. Kea's recipe passes
`kea-dhcp4 -t`.

The recipes are written for 192.168.1.0/24; the test serves them on the documentation LAN
192.0.2.0/24 by replacing that prefix, and the interface name by its own veth.
"""

from __future__ import annotations

import subprocess
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
SPLITDNS_ADDRESS = "192.0.2.53"
ZONE = example_zone(
    "www A   203.0.113.1",
)
UDHCPC_SCRIPT = """#!/bin/sh
# udhcpc calls this with "bound" once it has a lease: record what it got, take the address.
case "$1" in
  bound|renew)
    # every DNS server offered, comma-joined: one address means exactly one server
    echo "ip=$ip mask=$mask router=$router dns=$(echo $dns | tr ' ' ',')" > "{out}"
    ip addr add "$ip/$mask" dev "$interface"
    ;;
esac
"""


@pytest.fixture
def lan() -> Iterator[TwoHosts]:
    for net in two_hosts("dh"):
        net.address(net.srv, net.srv_if, f"{SPLITDNS_ADDRESS}/24")
        yield net


def wait_for(probe: object, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise TimeoutError("condition not met in time")


def test_dnsmasq_recipe_hands_out_only_splitdns(lan: TwoHosts, tmp_path: Path) -> None:
    dnsmasq = need("dnsmasq", "dnsmasq-base")
    busybox = need("busybox", "busybox")
    dig = need("dig", "bind9-dnsutils")
    nsd = need("nsd", "nsd")
    # The upstream: NSD on the server host's loopback.
    nsd_conf = NSD.write_config(tmp_path / "nsd", {"example.test": ZONE}, "127.0.0.1", 5300)
    lan.spawn(lan.srv, nsd, "-d", "-c", str(nsd_conf), log=tmp_path / "nsd.out")
    # splitdns on the LAN address, rewriting the public address for LAN clients.
    conf = tmp_path / "splitdns.yaml"
    conf.write_text(
        f'listen: ["{SPLITDNS_ADDRESS}:53"]\nupstreams: ["127.0.0.1:5300"]\n'
        "allow: [192.0.2.0/24]\nviews:\n  - name: lan\n    clients: [192.0.2.0/24]\n"
        "    rewrite:\n      - {from: 203.0.113.1, to: 192.0.2.80}\n"
    )
    splitdns_log = tmp_path / "splitdns.out"
    lan.spawn(lan.srv, sys.executable, "-m", "splitdns", "serve", "-c", str(conf), log=splitdns_log)
    # dnsmasq with the shipped recipe, moved onto the test LAN.
    recipe = (RECIPES / "dnsmasq.conf").read_text()
    recipe = recipe.replace("192.168.1.", "192.0.2.").replace(
        "interface=eth0", f"interface={lan.srv_if}"
    )
    (tmp_path / "dnsmasq.conf").write_text(recipe)
    leases = tmp_path / "leases"
    lan.spawn(
        lan.srv, dnsmasq, "--no-daemon", "--conf-file=" + str(tmp_path / "dnsmasq.conf"),
        f"--dhcp-leasefile={leases}", f"--pid-file={tmp_path / 'dnsmasq.pid'}", "--user=root",
        "--log-dhcp", log=tmp_path / "dnsmasq.out",
    )  # fmt: skip
    wait_for(
        lambda: "status:" in lan.exec(
            lan.srv, dig, f"@{SPLITDNS_ADDRESS}", "+tries=1", "+time=1", "www.example.test",
            check=False,
        )
    )  # fmt: skip
    # A real DHCP client on the other host.
    out = tmp_path / "lease.txt"
    script = tmp_path / "udhcpc.sh"
    script.write_text(UDHCPC_SCRIPT.format(out=out))
    script.chmod(0o755)
    lan.exec(
        lan.cli, busybox, "udhcpc", "-i", lan.cli_if, "-n", "-q", "-f", "-t", "5", "-T", "2",
        "-s", str(script), timeout=60,
    )  # fmt: skip
    lease = dict(item.split("=", 1) for item in out.read_text().split())
    print(f"\nudhcpc got: {lease}")
    assert lease["dns"] == SPLITDNS_ADDRESS  # exactly one DNS server: splitdns
    assert lease["router"] == "192.0.2.1"
    assert lease["ip"].startswith("192.0.2.1")  # from the recipe's pool .100-.199
    answer = lan.exec(lan.cli, dig, f"@{lease['dns']}", "+short", "+tries=2", "www.example.test")
    assert answer.split() == ["192.0.2.80"]


def test_kea_recipe_passes_its_own_check() -> None:
    kea = need("kea-dhcp4", "kea-dhcp4-server")
    out = subprocess.run(
        [kea, "-t", str(RECIPES / "kea-dhcp4.conf")], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr
    broken = (RECIPES / "kea-dhcp4.conf").read_text().replace('"domain-name-servers"', '"dns"')
    bad = subprocess.run(
        [kea, "-t", "/dev/stdin"], input=broken, capture_output=True, text=True, timeout=60
    )
    assert bad.returncode != 0  # the check is real: a wrong option name fails it
