"""The DHCP recipes, proven: dnsmasq hands out a lease with the shipped recipe in a network
namespace, a real DHCP client (busybox udhcpc) receives exactly one DNS server, splitdns's
address, and dig from that client through it gets the rewritten answer. Kea's recipe passes
`kea-dhcp4 -t`.

The recipes are written for 192.168.1.0/24; the test serves them on the documentation LAN
192.0.2.0/24 by replacing that prefix, and the interface name by its own veth.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.servers import NSD
from tests.support.tools import need

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "deploy" / "dhcp"
SPLITDNS_ADDRESS = "192.0.2.53"
ZONE = """\
$ORIGIN example.test.
$TTL 300
@   SOA ns1 hostmaster 1 3600 600 86400 60
@   NS  ns1
ns1 A   198.51.100.53
www A   203.0.113.1
"""
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


def run(*argv: str, check: bool = True, timeout: float = 30) -> str:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: {out.stdout}{out.stderr}")
    return out.stdout + out.stderr


class TwoHosts:
    """A LAN of two namespaces joined by a veth pair: `srv` (192.0.2.53) and `cli` (no address
    until DHCP gives one). Processes started here are stopped by PID; the namespaces go too."""

    def __init__(self) -> None:
        tag = os.getpid() % 100000
        self.srv, self.cli = f"sdh{tag}-srv", f"sdh{tag}-cli"
        self.srv_if, self.cli_if = f"dhs{tag}", f"dhc{tag}"
        self.procs: list[subprocess.Popen[str]] = []
        for ns in (self.srv, self.cli):
            run("ip", "netns", "add", ns)
            run("ip", "-n", ns, "link", "set", "lo", "up")
        run("ip", "link", "add", self.srv_if, "netns", self.srv, "type", "veth", "peer",
            "name", self.cli_if, "netns", self.cli)  # fmt: skip
        run("ip", "-n", self.srv, "addr", "add", f"{SPLITDNS_ADDRESS}/24", "dev", self.srv_if)
        run("ip", "-n", self.srv, "link", "set", self.srv_if, "up")
        run("ip", "-n", self.cli, "link", "set", self.cli_if, "up")

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


@pytest.fixture
def lan() -> Iterator[TwoHosts]:
    if os.geteuid() != 0:
        reason = "the DHCP test needs root for network namespaces"
        if os.environ.get("SPLITDNS_REQUIRE_REAL") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    net = TwoHosts()
    try:
        yield net
    finally:
        net.close()
    left = run("ip", "netns", "list")
    assert net.srv not in left and net.cli not in left


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
