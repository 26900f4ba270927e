"""The LAN's own names from a real Kea: kea-dhcp4 leases an address to busybox udhcpc asking
for the name `laptop`, kea-dhcp-ddns signs the RFC 2136 updates with TSIG and sends them to
splitdns, and within 2 s another LAN client's dig gets laptop's address and `dig -x` its name;
a client outside the LAN gets nothing; the release takes both away. The shipped recipes
(deploy/dhcp/kea-dhcp4-ddns.conf, kea-dhcp-ddns.conf) are the ones run, moved onto the
documentation LAN 192.0.2.0/24 and this test's veth, with the test's key pasted in.
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.netns import TwoHosts, two_hosts
from tests.support.tools import need

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "deploy" / "dhcp"
SPLITDNS = "192.0.2.53"
OTHER_LAN_CLIENT = "192.0.2.54"
OUTSIDE = "198.51.100.7"
ZONE = "lan.home.example"
REVERSE = "2.0.192.in-addr.arpa"
UDHCPC_SCRIPT = """#!/bin/sh
case "$1" in
  bound|renew)
    echo "ip=$ip" > "{out}"
    ip addr add "$ip/$mask" dev "$interface"
    ;;
esac
"""


@pytest.fixture
def lan() -> Iterator[TwoHosts]:
    for net in two_hosts("kd"):
        net.address(net.srv, net.srv_if, f"{SPLITDNS}/24")
        net.address(net.srv, net.srv_if, f"{OTHER_LAN_CLIENT}/24")
        net.address(net.srv, "lo", f"{OUTSIDE}/32")
        yield net


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory the service user can reach (splitdns drops root; Kea's files beside)."""
    base = Path(tempfile.mkdtemp(prefix="splitdns-kea-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def moved(text: str, interface: str, secret: str) -> str:
    """A recipe on the test LAN: its prefix, zone, interface and key."""
    text = text.replace("192.168.1.", "192.0.2.").replace("1.168.192.in-addr.arpa", REVERSE)
    text = text.replace('"eth0"', f'"{interface}"')
    return text.replace("PasteTheSecretFromEtcSplitdnsDdnsKeyHere000=", secret)


def serve(lan: TwoHosts, shared: Path, dynamic: str) -> None:
    """splitdns on the LAN address holding the test zones, `dynamic` the rest of its section."""
    conf = shared / "splitdns.yaml"
    conf.write_text(
        f'listen: ["{SPLITDNS}:53"]\nupstreams: ["127.0.0.1:5399"]\n'
        f"allow: [192.0.2.0/24]\nstate_dir: {shared / 'state'}\n"
        "views:\n  - name: lan\n    clients: [192.0.2.0/24]\n"
        f"dynamic:\n  zones: [{ZONE}, {REVERSE}]\n{dynamic}"
    )
    lan.spawn(lan.srv, sys.executable, "-m", "splitdns", "serve", "-c", str(conf),
              log=shared / "splitdns.out")  # fmt: skip


def wait_for(probe: object, timeout: float, what: str) -> float:
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        if probe():  # type: ignore[operator]
            return time.monotonic() - began
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout} s")


def test_kea_leases_a_name_and_splitdns_serves_it(lan: TwoHosts, shared: Path) -> None:
    kea4 = need("kea-dhcp4", "kea-dhcp4-server")
    d2 = need("kea-dhcp-ddns", "kea-dhcp-ddns-server")
    busybox = need("busybox", "busybox")
    dig = need("dig", "bind9-dnsutils")
    secret = base64.b64encode(secrets.token_bytes(32)).decode()
    keys = shared / "ddns.key"
    keys.write_text(f'key "ddns-key" {{\n\talgorithm hmac-sha256;\n\tsecret "{secret}";\n}};\n')
    keys.chmod(0o600)
    serve(lan, shared, f"  keys_file: {keys}\n  allow_update: [{SPLITDNS}/32]\n")
    d2_conf = moved((RECIPES / "kea-dhcp-ddns.conf").read_text(), lan.srv_if, secret)
    (shared / "kea-dhcp-ddns.conf").write_text(d2_conf)
    kea_conf = moved((RECIPES / "kea-dhcp4-ddns.conf").read_text(), lan.srv_if, secret)
    kea_conf = kea_conf.replace("/var/lib/kea/kea-leases4.csv", str(shared / "leases4.csv"))
    kea_conf = kea_conf.replace('"valid-lifetime": 43200,', '"valid-lifetime": 600,')
    (shared / "kea-dhcp4.conf").write_text(kea_conf)
    env = ["env", f"KEA_PIDFILE_DIR={shared}", f"KEA_LOCKFILE_DIR={shared}"]
    lan.spawn(lan.srv, *env, d2, "-c", str(shared / "kea-dhcp-ddns.conf"),
              log=shared / "d2.out")  # fmt: skip
    lan.spawn(lan.srv, *env, kea4, "-c", str(shared / "kea-dhcp4.conf"), log=shared / "kea4.out")

    def ask(*args: str, source: str = OTHER_LAN_CLIENT) -> str:
        return lan.exec(lan.srv, dig, f"@{SPLITDNS}", "-b", source, "+tries=1", "+time=1", *args,
                        check=False)  # fmt: skip

    wait_for(lambda: "status:" in ask(f"x.{ZONE}"), 15, "splitdns answering")
    out = shared / "lease.txt"
    script = shared / "udhcpc.sh"
    script.write_text(UDHCPC_SCRIPT.format(out=out))
    script.chmod(0o755)
    # a DHCP client that stays (as a laptop's does), releasing its lease when it stops (-R)
    client = lan.spawn(lan.cli, busybox, "udhcpc", "-i", lan.cli_if, "-f", "-R", "-t", "5",
                       "-T", "2", "-x", "hostname:laptop", "-s", str(script),
                       log=shared / "udhcpc.out")  # fmt: skip
    wait_for(lambda: out.exists() and out.read_text().endswith("\n"), 30, "a lease for the client")
    leased = out.read_text().strip().removeprefix("ip=")

    def logs() -> str:  # read when a step fails
        names = ("kea4.out", "d2.out", "splitdns.out")
        return "\n".join(f"--- {n}\n{(shared / n).read_text()[-3000:]}" for n in names)

    try:
        took = wait_for(lambda: ask("+short", f"laptop.{ZONE}").split() == [leased], 2,
                        "laptop's address from another LAN client")  # fmt: skip
        print(f"\nlaptop.{ZONE} -> {leased} served {took:.2f} s after the lease")
        wait_for(lambda: ask("+short", "-x", leased).split() == [f"laptop.{ZONE}."], 2,
                 "laptop's reverse name")  # fmt: skip
        outside = ask(f"laptop.{ZONE}", source=OUTSIDE)
        assert "status: REFUSED" in outside and leased not in outside.split("ANSWER SECTION")[-1]
        # the release (udhcpc -R, stopped): Kea asks D2 to remove both names
        client.terminate()
        client.wait(10)
        wait_for(lambda: "status: NXDOMAIN" in ask(f"laptop.{ZONE}"), 5, "the name gone")
        wait_for(lambda: not ask("+short", "-x", leased).split(), 5, "the reverse name gone")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{logs()}") from None
    assert os.path.exists(shared / "state" / "dynamic" / "journal.jsonl")


def test_dnsmasq_as_the_dhcp_server_its_lease_file_names(lan: TwoHosts, shared: Path) -> None:
    """dnsmasq with its DNS off (port=0) leases an address to `laptop`; splitdns reads the
    lease file dnsmasq writes and answers laptop.<zone> and its reverse name."""
    dnsmasq = need("dnsmasq", "dnsmasq-base")
    busybox = need("busybox", "busybox")
    dig = need("dig", "bind9-dnsutils")
    leases = shared / "dnsmasq.leases"
    serve(lan, shared, f"  leases: [{{file: {leases}, format: dnsmasq, zone: {ZONE}}}]\n")
    lan.spawn(
        lan.srv, dnsmasq, "--no-daemon", "--port=0", f"--interface={lan.srv_if}",
        "--bind-interfaces", "--dhcp-range=192.0.2.100,192.0.2.199,10m",
        f"--dhcp-option=option:dns-server,{SPLITDNS}", f"--dhcp-leasefile={leases}",
        f"--pid-file={shared / 'dnsmasq.pid'}", "--user=root", "--log-dhcp",
        log=shared / "dnsmasq.out",
    )  # fmt: skip

    def ask(*args: str) -> str:
        return lan.exec(lan.srv, dig, f"@{SPLITDNS}", "-b", OTHER_LAN_CLIENT, "+tries=1",
                        "+time=1", *args, check=False)  # fmt: skip

    wait_for(lambda: "status:" in ask(f"x.{ZONE}"), 15, "splitdns answering")
    out = shared / "lease.txt"
    script = shared / "udhcpc.sh"
    script.write_text(UDHCPC_SCRIPT.format(out=out))
    script.chmod(0o755)
    lan.exec(lan.cli, busybox, "udhcpc", "-i", lan.cli_if, "-n", "-q", "-f", "-t", "5", "-T", "2",
             "-x", "hostname:laptop", "-s", str(script), timeout=60)  # fmt: skip
    leased = out.read_text().strip().removeprefix("ip=")
    took = wait_for(lambda: ask("+short", f"laptop.{ZONE}").split() == [leased], 3,
                    "laptop's address from the lease file")  # fmt: skip
    print(f"\nlaptop.{ZONE} -> {leased} served {took:.2f} s after dnsmasq's lease")
    assert ask("+short", "-x", leased).split() == [f"laptop.{ZONE}."]
