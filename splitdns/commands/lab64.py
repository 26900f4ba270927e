"""The IPv6-mostly story, live: a real NAT64 (tayga) in the router, an IPv6-only client, and
what DNS64 does to the split horizon, with and without splitdns.

    outside ns  198.51.100.53 (NSD: www.example.test A 203.0.113.1), 198.51.100.54 (unbound
        |       with its dns64 module: an upstream that synthesizes by itself)
    router ns   WAN 203.0.113.1 (port 80 forwarded to the LAN server), LAN 192.0.2.1/25 and
        |       2001:db8:1::1/64, tayga: 2001:db8:64::/96 <-> pool 192.0.2.128/25
    switch ns   a bridge
    server ns   192.0.2.2 and 2001:db8:1::2 (reports the peer address it sees; runs splitdns)
    client6 ns  2001:db8:1::10 only: IPv6-only, as option 108 makes a phone

Used by tests/lab/test_ipv6_mostly.py and by `splitdns lab --ipv6-mostly`. Root only; the
namespaces (and /etc/netns/<client6>/resolv.conf, which `ip netns exec` shows the client as
its resolv.conf) are always removed afterwards.
"""

from __future__ import annotations

import functools
import ipaddress
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

from splitdns.commands.lab import ZONE, Lab, LabError, Step, run_story, wait_until

PUBLIC = "203.0.113.1"
SERVER4, SERVER6 = "192.0.2.2", "2001:db8:1::2"
ROUTER4, ROUTER6 = "192.0.2.1", "2001:db8:1::1"
CLIENT6 = "2001:db8:1::10"
NSP = "2001:db8:64::/96"
POOL = "192.0.2.128/25"
TAYGA4 = "192.0.2.129"
AUTH, DNS64_UPSTREAM = "198.51.100.53", "198.51.100.54"

#: A dual-stack TCP server that answers every connection with the peer address it sees.
PEER_SERVER6 = textwrap.dedent(
    """
    import socket, threading
    s = socket.socket(socket.AF_INET6); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", 80)); s.listen(16)
    while True:
        c, a = s.accept(); h = a[0]
        c.sendall((h[7:] if h.startswith("::ffff:") else h).encode()); c.close()
    """
)

#: getaddrinfo (glibc, through the namespace's resolv.conf), then connect to the first AAAA.
RESOLVE_AND_DIAL = textwrap.dedent(
    """
    import socket, sys
    try:
        infos = socket.getaddrinfo(sys.argv[1], 80, socket.AF_INET6, socket.SOCK_STREAM)
    except OSError as e:
        print("no address:", e); sys.exit()
    address = infos[0][4][0]
    try:
        c = socket.create_connection((address, 80), timeout=3); c.settimeout(3)
        print(address, c.recv(100).decode())
    except OSError as e:
        print(address, "no connection:", e)
    """
)


class Lab64(Lab):
    def build(self) -> None:
        if not shutil.which("tayga"):
            raise LabError("the IPv6-mostly lab needs tayga (a NAT64): apt-get install tayga")
        self.wan(("router", "switch", "server", "client6", "outside"), (AUTH, DNS64_UPSTREAM))
        t = self.tag
        self.exec("switch", "ip", "link", "add", "br0", "type", "bridge")
        self.exec("switch", "ip", "link", "set", "br0", "up")
        for role, v4, v6 in (
            ("router", ROUTER4, ROUTER6),
            ("server", SERVER4, SERVER6),
            ("client6", None, CLIENT6),
        ):
            inner, port = f"l{t}{role[0]}", f"p{t}{role[0]}"
            self._veth(inner, role, port, "switch")
            self.exec("switch", "ip", "link", "set", port, "master", "br0")
            self.exec(role, "sysctl", "-qw", f"net.ipv6.conf.{inner}.accept_dad=0")
            if v4:
                self.exec(role, "ip", "addr", "add", f"{v4}/25", "dev", inner)
            self.exec(role, "ip", "-6", "addr", "add", f"{v6}/64", "dev", inner, "nodad")
            if role != "router":
                if v4:
                    self.exec(role, "ip", "route", "add", "default", "via", ROUTER4)
                self.exec(role, "ip", "-6", "route", "add", "default", "via", ROUTER6)
        self.exec("router", "sysctl", "-qw", "net.ipv4.ip_forward=1")
        self.exec("router", "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
        self._nat64()
        self._port_forward()

    def _nat64(self) -> None:
        conf = Path(f"/tmp/{self.ns('router')}-tayga.conf")
        data = Path(f"/tmp/{self.ns('router')}-tayga")
        data.mkdir(exist_ok=True)
        conf.write_text(
            f"tun-device nat64\nipv4-addr {TAYGA4}\nprefix {NSP}\ndynamic-pool {POOL}\n"
            f"data-dir {data}\n"
        )
        self.exec("router", "tayga", "-c", str(conf), "--mktun")
        self.exec("router", "ip", "link", "set", "nat64", "up")
        self.exec("router", "ip", "route", "add", POOL, "dev", "nat64")
        self.exec("router", "ip", "-6", "route", "add", NSP, "dev", "nat64")
        self.spawn("router", "tayga", "-c", str(conf), "--nodetach")

    def _port_forward(self) -> None:
        """The router's port forward of 80, as every home router has it (no hairpin rule)."""
        rules = (
            "table ip lab64 {\n"
            "  chain pre {\n    type nat hook prerouting priority dstnat;\n"
            f"    ip daddr {PUBLIC} tcp dport 80 dnat to {SERVER4}:80\n  }}\n"
            "}\n"
        )
        path = Path(f"/tmp/{self.ns('router')}.nft")
        path.write_text(rules)
        try:
            self.exec("router", "nft", "-f", str(path))
        finally:
            path.unlink(missing_ok=True)

    def teardown(self) -> None:
        super().teardown()
        shutil.rmtree(f"/etc/netns/{self.ns('client6')}", ignore_errors=True)
        for leftover in (f"/tmp/{self.ns('router')}-tayga.conf", f"/tmp/{self.ns('router')}-tayga"):
            path = Path(leftover)
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    def resolver(self, address: str) -> None:
        """The IPv6-only client's resolv.conf (what `ip netns exec` shows it as /etc's)."""
        folder = Path(f"/etc/netns/{self.ns('client6')}")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "resolv.conf").write_text(f"nameserver {address}\n")

    def resolve_and_dial(self, name: str) -> str:
        return self.exec("client6", sys.executable, "-c", RESOLVE_AND_DIAL, name,
                         timeout=20).strip()  # fmt: skip


def splitdns_config(upstream: str, mode: str) -> str:
    """The LAN view of each step: `plain` DNS64 (what a router or ISP DNS64 does), `paired`
    (the server's own IPv6 address for its rewritten IPv4), `nsp` (the IPv4 rule alone)."""
    view = [
        "views:",
        "  - name: lan",
        f"    clients: [{CLIENT6}/128]",
    ]
    if mode != "plain":
        view.append(f"    rewrite: [{{from: {PUBLIC}, to: {SERVER4}}}]")
    servers = f', servers: {{{SERVER4}: "{SERVER6}"}}' if mode == "paired" else ""
    view.append(f'    dns64: {{prefix: "{NSP}"{servers}}}')
    view += [  # everyone else on the LAN: DNS64 without the rewrite
        "  - name: others",
        "    clients: [2001:db8:1::/64, 192.0.2.0/25]",
        f'    dns64: {{prefix: "{NSP}"}}',
    ]
    return (
        "\n".join(
            [
                f'listen: ["[{SERVER6}]:53", "{SERVER4}:53"]',
                f'upstreams: ["{upstream}"]',
                "allow: [2001:db8:1::/64, 192.0.2.0/25]",
                *view,
            ]
        )
        + "\n"
    )


def story(lab: Lab64, say: Callable[[Step], None] = lambda step: None) -> list[Step]:
    steps: list[Step] = []

    def record(title: str, observed: str, ok: bool, breaks: bool = False) -> None:
        step = Step(title, observed, ok, breaks)
        steps.append(step)
        say(step)

    work = Path(f"/tmp/{lab.ns('lab64')}")
    work.mkdir(exist_ok=True)
    work.chmod(0o755)
    try:
        _start_upstreams(lab, work)
        lab.spawn("server", sys.executable, "-c", PEER_SERVER6)
        if not wait_until(lambda: ":80 " in lab.exec("server", "ss", "-ltnH")):
            raise LabError("the LAN server did not start listening")
        lab.resolver(SERVER6)
        cases = [
            ("plain", AUTH, "a DNS64 without splitdns's rewrite (a router's or ISP's)"),
            ("paired", AUTH, "splitdns, the server's IPv6 address in the view"),
            ("nsp", AUTH, "splitdns, the IPv4 rule and a network-specific prefix only"),
            ("paired", DNS64_UPSTREAM, "splitdns in front of an upstream doing DNS64 (unbound)"),
        ]
        for mode, upstream, title in cases:
            conf = work / f"{mode}.yaml"
            conf.write_text(splitdns_config(upstream, mode))
            conf.chmod(0o644)
            proc = lab.spawn("server", sys.executable, "-m", "splitdns", "serve", "-c", str(conf))
            try:
                if not wait_until(lambda: ":53 " in lab.exec("server", "ss", "-lunH")):
                    raise LabError(f"splitdns did not start: {_said(proc)}")
                seen = lab.resolve_and_dial("www.example.test")
                _judge(title, mode, seen, record)
                if mode == "paired" and upstream == AUTH:
                    dig = lab.exec("client6", "dig", "+short", "AAAA", "www.example.test",
                                   f"@{SERVER6}", check=False).strip()  # fmt: skip
                    record(f"dig AAAA from the IPv6-only client ({title})", dig, dig == SERVER6)
                    other = lab.exec("server", "dig", "+short", "AAAA", "www.example.test",
                                     f"@{SERVER6}", "-b", SERVER6, check=False).strip()  # fmt: skip
                    record("dig AAAA from a client outside the view: the public address "
                           "synthesized", other, other == "2001:db8:64::cb00:7101")  # fmt: skip
            finally:
                proc.terminate()
                proc.wait(10)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return steps


def _in_pool(peer: str) -> bool:
    try:
        return ipaddress.ip_address(peer) in ipaddress.ip_network(POOL)
    except ValueError:
        return False


def _judge(title: str, mode: str, seen: str, record: Callable[..., None]) -> None:
    address, _, peer = seen.partition(" ")
    if mode == "plain":
        ok = address == "2001:db8:64::cb00:7101" and _in_pool(peer)
        said = (
            f"{title}: the public address synthesized, through NAT64 and the port forward; "
            "the server sees the NAT64's pool address, not the client"
        )
        record(said, seen, ok, breaks=True)
    elif mode == "paired":
        ok = address == SERVER6 and peer == CLIENT6
        record(f"{title}: the client connects to the server's IPv6 address, the server sees "
               "the client's own address", seen, ok)  # fmt: skip
    else:
        ok = address == "2001:db8:64::c000:202" and _in_pool(peer)
        record(f"{title}: through NAT64 to the internal address directly (no port forward); "
               "the server sees the NAT64's pool address, as `doctor` says", seen, ok)  # fmt: skip


def _start_upstreams(lab: Lab64, work: Path) -> None:
    """NSD with the public zone, and unbound with its dns64 module forwarding to it."""
    (work / "zone").write_text(ZONE)
    nsd_conf = work / "nsd.conf"
    nsd_conf.write_text(
        f'server:\n  ip-address: {AUTH}\n  username: ""\n  chroot: ""\n  zonesdir: {work}\n'
        f'  pidfile: {work}/nsd.pid\n  database: ""\n  zonelistfile: {work}/zone.list\n'
        f"  xfrdfile: {work}/xfrd.state\n  xfrdir: {work}\n  logfile: {work}/nsd.log\n"
        "remote-control:\n  control-enable: no\n"
        f"zone:\n  name: example.test\n  zonefile: {work}/zone\n"
    )
    lab.spawn("outside", "nsd", "-d", "-c", str(nsd_conf))
    unbound_conf = work / "unbound.conf"
    unbound_conf.write_text(
        f'server:\n  interface: {DNS64_UPSTREAM}\n  username: ""\n  chroot: ""\n'
        f'  directory: "{work}"\n  pidfile: "{work}/unbound.pid"\n  do-daemonize: no\n'
        "  access-control: 0.0.0.0/0 allow\n  access-control: ::/0 allow\n"
        '  module-config: "dns64 iterator"\n  dns64-prefix: 64:ff9b::/96\n'
        "  dns64-synthall: no\n  do-not-query-localhost: no\n"
        '  local-zone: "test." nodefault\n  domain-insecure: "example.test"\n'
        f'forward-zone:\n  name: "example.test"\n  forward-addr: {AUTH}\n'
    )
    lab.spawn("outside", "unbound", "-d", "-c", str(unbound_conf))
    for address in (AUTH, DNS64_UPSTREAM):
        if not wait_until(functools.partial(_listening, lab, address), timeout=15):
            raise LabError(f"the upstream on {address} did not start")


def _listening(lab: Lab64, address: str) -> bool:
    return f"{address}:53 " in lab.exec("outside", "ss", "-lunH")


def _said(proc: subprocess.Popen[bytes]) -> str:
    time.sleep(0.2)
    if proc.poll() is not None and proc.stderr is not None:
        return proc.stderr.read().decode(errors="replace")[-800:]
    return "still starting"


def command(args: object) -> int:
    """`splitdns lab --ipv6-mostly`: the story, one verdict per step; exit 0 when all behave."""
    print(
        f"lab: IPv6-only client {CLIENT6} | router {PUBLIC} / {ROUTER4}, {ROUTER6}, NAT64 (tayga) "
        f"{NSP} <-> {POOL} | server {SERVER4}, {SERVER6}"
    )

    return run_story(Lab64, story)
