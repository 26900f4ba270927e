"""A real network on one machine: the hairpin NAT story, live, in network namespaces.

Topology (documentation ranges only; nothing touches the host's interfaces or firewall):

    outside ns (198.51.100.10 client, 198.51.100.53 authoritative DNS)
        |  veth (WAN link)
    router ns  WAN 203.0.113.1 + 198.51.100.1, LAN 192.0.2.1, ip_forward on, rules loaded here
        |  veth
    switch ns  (a bridge of its own, as a real switch is a box of its own: with br_netfilter
        |       loaded, a bridge inside the router ns would pass LAN frames through the
        |       router's netfilter and silently "fix" the broken flow)
    server ns 192.0.2.2 (reports the peer address it sees), client ns 192.0.2.10

Used by tests (tests/lab) and by `splitdns lab`. Needs root; always tears itself down.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self, TypeVar

from splitdns.commands.loading import load_or_report

PUBLIC = "203.0.113.1"
ROUTER_LAN = "192.0.2.1"
SERVER = "192.0.2.2"
CLIENT = "192.0.2.10"
OUTSIDE = "198.51.100.10"
AUTH_DNS = "198.51.100.53"
ROUTER_OUT = "198.51.100.1"
LAN_NET = "192.0.2.0/24"

#: A TCP server that answers every connection with the peer address it sees.
PEER_SERVER = textwrap.dedent(
    """
    import socket, sys, threading
    def serve(port):
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port)); s.listen(16)
        while True:
            c, a = s.accept(); c.sendall(a[0].encode()); c.close()
    for p in sys.argv[1:]:
        threading.Thread(target=serve, args=(int(p),), daemon=True).start()
    threading.Event().wait()
    """
)

#: Connect, print what the server says, or "no connection: reason" within a short timeout.
DIAL = textwrap.dedent(
    """
    import socket, sys
    try:
        c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)
        c.settimeout(2); print(c.recv(100).decode())
    except OSError as e:
        print("no connection:", e)
    """
)


L = TypeVar("L", bound="Lab")


class LabError(RuntimeError):
    """The lab cannot be built here (not root, no iproute2...)."""


def check_possible() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab needs root (it creates network namespaces): run it with sudo")
    if not shutil.which("ip"):
        raise LabError("the lab needs iproute2 ('ip'): apt-get install iproute2")


ROLES = frozenset({"switch", "client", "client6", "router", "server", "outside"})
_LEFTOVER = re.compile(r"sd(\d+)-(\w+)$")


def stop_on_signals() -> dict[int, object]:
    """SIGTERM and SIGHUP end the lab as Ctrl-C does (a KeyboardInterrupt through its
    `with`), so its namespaces go even when a test runner or a terminal is stopped, and the
    runner stops too; the old handlers, to put back. Only the main thread may set them."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def stop(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    return {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}


def restore_signals(saved: dict[int, object]) -> None:
    for sig, handler in saved.items():
        signal.signal(sig, handler)  # type: ignore[arg-type]
    saved.clear()


def sweep_leftovers() -> list[str]:
    """Delete the namespaces an earlier lab left (killed before its teardown: SIGKILL, a
    power cut): those named sd<PID>-<a lab role> whose process <PID> is gone, with what still
    runs in them and the /etc/netns folder `ip netns exec` reads. A live owner's are kept."""
    swept = []
    for line in run("ip", "netns", "list", check=False).splitlines():
        name = line.split()[0] if line.split() else ""
        found = _LEFTOVER.match(name)
        if found is None or found.group(2) not in ROLES or _alive(int(found.group(1))):
            continue
        for pid in run("ip", "netns", "pids", name, check=False).split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)  # the dead lab's nsd, unbound, tayga...
        run("ip", "netns", "del", name, check=False)
        shutil.rmtree(f"/etc/netns/{name}", ignore_errors=True)
        swept.append(name)
    return swept


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run(*argv: str, check: bool = True, timeout: float = 30) -> str:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise LabError(f"{' '.join(argv)}: {out.stderr.strip() or out.stdout.strip()}")
    return out.stdout


@dataclass
class Lab:
    """Namespaces named with the process's ID, so parallel labs never collide and a dead
    run's leftovers are told from a live one's."""

    tag: str = field(default_factory=lambda: str(os.getpid()))  # (sweep_leftovers reads it)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    _signals: dict[int, object] = field(default_factory=dict)

    def ns(self, role: str) -> str:
        return f"sd{self.tag}-{role}"

    def exec(self, role: str, *argv: str, check: bool = True, timeout: float = 30) -> str:
        return run("ip", "netns", "exec", self.ns(role), *argv, check=check, timeout=timeout)

    def spawn(self, role: str, *argv: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns(role), *argv],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.processes.append(proc)
        return proc

    # ------------------------------------------------------------------ build / tear down

    def __enter__(self) -> Self:
        check_possible()
        sweep_leftovers()
        self._signals = stop_on_signals()
        try:
            self.build()
        except BaseException:
            self.teardown()
            restore_signals(self._signals)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.teardown()
        finally:
            restore_signals(self._signals)

    def build(self) -> None:
        self.wan(("router", "switch", "server", "client", "outside"), (OUTSIDE, AUTH_DNS))
        t = self.tag
        # LAN: a bridge in the switch namespace, one port per box
        self.exec("switch", "ip", "link", "add", "br0", "type", "bridge")
        self.exec("switch", "ip", "link", "set", "br0", "up")
        for role, address in (("router", ROUTER_LAN), ("server", SERVER), ("client", CLIENT)):
            inner, port = f"l{t}{role[0]}", f"p{t}{role[0]}"
            self._veth(inner, role, port, "switch")
            self.exec("switch", "ip", "link", "set", port, "master", "br0")
            self.exec(role, "ip", "addr", "add", f"{address}/24", "dev", inner)
            if role != "router":
                self.exec(role, "ip", "route", "add", "default", "via", ROUTER_LAN)
        self.exec("router", "sysctl", "-qw", "net.ipv4.ip_forward=1")

    def wan(self, roles: tuple[str, ...], outside: tuple[str, ...]) -> None:
        """The namespaces of `roles`, and the WAN link: router (the public address) <->
        outside (`outside`'s addresses, routed through the router)."""
        for role in roles:
            run("ip", "netns", "add", self.ns(role))
            self.created.append(self.ns(role))
            self.exec(role, "ip", "link", "set", "lo", "up")
        t = self.tag
        self._veth(f"w{t}r", "router", f"w{t}o", "outside")
        self.exec("router", "ip", "addr", "add", f"{PUBLIC}/24", "dev", f"w{t}r")
        self.exec("router", "ip", "addr", "add", f"{ROUTER_OUT}/24", "dev", f"w{t}r")
        for address in outside:
            self.exec("outside", "ip", "addr", "add", f"{address}/24", "dev", f"w{t}o")
        self.exec("outside", "ip", "route", "add", "default", "via", ROUTER_OUT)

    def _veth(self, a: str, ns_a: str, b: str, ns_b: str) -> None:
        run(
            "ip",
            "link",
            "add",
            a,
            "netns",
            self.ns(ns_a),
            "type",
            "veth",
            "peer",
            "name",
            b,
            "netns",
            self.ns(ns_b),
        )
        self.exec(ns_a, "ip", "link", "set", a, "up")
        self.exec(ns_b, "ip", "link", "set", b, "up")

    @property
    def wan_interface(self) -> str:
        return f"w{self.tag}r"

    @property
    def lan_interface(self) -> str:
        return f"l{self.tag}r"

    def teardown(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
            if proc.stderr is not None:
                proc.stderr.close()
        self.processes.clear()
        for name in reversed(self.created):
            run("ip", "netns", "del", name, check=False)
        self.created.clear()

    # ------------------------------------------------------------------ services and probes

    def start_peer_server(self, *ports: int) -> None:
        self.spawn("server", sys.executable, "-c", PEER_SERVER, *map(str, ports))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if all(f":{p} " in self.exec("server", "ss", "-ltnH") for p in ports):
                return
            time.sleep(0.05)
        raise LabError("the LAN server did not start listening")

    def dial(self, role: str, host: str, port: int) -> str:
        """What the server reports as our address, or 'no connection: ...'."""
        return self.exec(role, sys.executable, "-c", DIAL, host, str(port), timeout=15).strip()

    def load_rules(self, text: str, kind: str) -> None:
        """Load a rendered ruleset into the router namespace (after clearing its nat rules)."""
        self.exec("router", "nft", "flush", "ruleset", check=False)
        self.exec("router", "iptables", "-t", "nat", "-F", check=False)
        self.exec("router", "iptables", "-F", "FORWARD", check=False)
        path = Path(f"/tmp/{self.ns('router')}.{kind}")
        path.write_text(text)
        try:
            if kind == "nftables":
                self.exec("router", "nft", "-f", str(path))
            else:
                self.exec("router", "iptables-restore", str(path))
        finally:
            path.unlink(missing_ok=True)


def wait_until(probe: Callable[[], bool], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe():
            return True
        time.sleep(0.1)
    return False


# --------------------------------------------------------------------------- the story


@dataclass
class Step:
    title: str
    observed: str
    ok: bool  # the step behaved as the story says it should
    breaks: bool = False  # the story says it should break (the hairpin problem, shown live)

    @property
    def verdict(self) -> str:
        """Three words that cannot be misread: ok, ok (breaks as expected), FAIL."""
        if not self.ok:
            return "FAIL"
        return "ok (breaks as expected)" if self.breaks else "ok"


@dataclass(frozen=True)
class LabForward:
    port: int
    inner: int


DEFAULT_FORWARDS = (LabForward(80, 80), LabForward(8443, 443))
ZONE = """$ORIGIN example.test.
$TTL 60
@ SOA ns hostmaster 1 3600 600 86400 60
@ NS ns
ns A 198.51.100.53
www A 203.0.113.1
"""


def lab_config(lab: Lab, forwards: tuple[LabForward, ...], dns_port: int) -> str:
    lines = [
        f'listen: ["{SERVER}:{dns_port}"]',
        f'upstreams: ["{AUTH_DNS}"]',
        f"allow: [{LAN_NET}]",
        "views:",
        "  - name: lan",
        f"    clients: [{LAN_NET}]",
        f"    rewrite: [{{from: {PUBLIC}, to: {SERVER}}}]",
        "nat:",
        f"  public: {PUBLIC}",
        f"  wan_interface: {lab.wan_interface}",
        f"  lan_interface: {lab.lan_interface}",
        f"  lan: [{LAN_NET}]",
        "  forwards:",
    ]
    for fwd in forwards:
        to = SERVER if fwd.port == fwd.inner else f"{SERVER}:{fwd.inner}"
        lines.append(f'    - {{proto: tcp, port: {fwd.port}, to: "{to}"}}')
    return "\n".join(lines) + "\n"


def start_outside_dns(lab: Lab, workdir: Path) -> None:
    """NSD on the outside's 198.51.100.53, authoritative for example.test (ZONE), its files in
    `workdir` (made readable: splitdns, once it drops root, reads its mapping there too)."""
    (workdir / "zone").write_text(ZONE)
    (workdir / "nsd.conf").write_text(
        f'server:\n  ip-address: {AUTH_DNS}\n  port: 53\n  username: ""\n  chroot: ""\n'
        f'  zonesdir: {workdir}\n  pidfile: {workdir}/nsd.pid\n  database: ""\n'
        f"  zonelistfile: {workdir}/zone.list\n  xfrdfile: {workdir}/xfrd.state\n"
        f"  xfrdir: {workdir}\n  logfile: {workdir}/nsd.log\n  server-count: 1\n"
        f"remote-control:\n  control-enable: no\nzone:\n  name: example.test\n"
        f"  zonefile: {workdir}/zone\n"
    )
    os.chmod(workdir, 0o755)
    lab.spawn("outside", shutil.which("nsd") or "/usr/sbin/nsd", "-d", "-c",
              str(workdir / "nsd.conf"))  # fmt: skip


def story(
    lab: Lab,
    kind: str,
    forwards: tuple[LabForward, ...] = DEFAULT_FORWARDS,
    say: Callable[[Step], None] = lambda step: None,
) -> list[Step]:
    """Run the reference's flows with rules of `kind` (nftables | iptables); every step's
    verdict is reported through `say` as it happens."""
    from splitdns import nat
    from splitdns.config import crosscheck
    from splitdns.config import model as configmod

    steps: list[Step] = []

    def record(title: str, observed: str, ok: bool, breaks: bool = False) -> None:
        steps.append(Step(title, observed, ok, breaks))
        say(steps[-1])

    dns_port = 53
    text = lab_config(lab, forwards, dns_port)
    cfg = configmod.loads(text, "lab.yaml")
    assert cfg.nat is not None
    targets = crosscheck.rewrite_targets(cfg)
    plain = next(f for f in forwards if f.port == f.inner)
    translated = [f for f in forwards if f.port != f.inner]
    lab.start_peer_server(*sorted({f.inner for f in forwards}))

    def render(hairpin: str) -> str:
        assert cfg.nat is not None
        return nat.render(cfg.nat, kind, hairpin, targets, "lab.yaml")

    lab.load_rules(render("none"), kind)
    seen = lab.dial("outside", PUBLIC, plain.port)
    record(
        f"1. outside {OUTSIDE} -> {PUBLIC}:{plain.port}: DNAT to the server, which sees",
        seen,
        seen == OUTSIDE,
    )
    seen = lab.dial("client", PUBLIC, plain.port)
    record(
        f"2a. LAN client {CLIENT} -> {PUBLIC}:{plain.port} without hairpin rules (the "
        "server answers the client directly; the client drops it)",
        seen,
        seen.startswith("no connection"),
        breaks=True,
    )
    lab.load_rules(render("all"), kind)
    seen = lab.dial("client", PUBLIC, plain.port)
    record(
        "2b. same, with the rendered hairpin rules: works, but the server sees the router",
        seen,
        seen == ROUTER_LAN,
    )

    # 3. splitdns in the LAN, the authoritative server outside.
    lab.load_rules(render("needed"), kind)
    workdir = Path(f"/tmp/{lab.ns('lab')}")
    workdir.mkdir(exist_ok=True)
    (workdir / "splitdns.yaml").write_text(text)
    try:
        start_outside_dns(lab, workdir)
        lab.spawn(
            "server",
            sys.executable,
            "-m",
            "splitdns",
            "serve",
            "-c",
            str(workdir / "splitdns.yaml"),
        )

        def dig(role: str, server: str) -> str:
            return lab.exec(
                role,
                "dig",
                "+short",
                "+time=1",
                "+tries=1",
                f"@{server}",
                "www.example.test",
                check=False,
            ).strip()

        wait_until(lambda: dig("outside", AUTH_DNS) == PUBLIC)
        wait_until(lambda: dig("client", SERVER) in (SERVER, PUBLIC))
        answer = dig("client", SERVER)
        record(
            f"3a. LAN client asks splitdns ({SERVER}) for www.example.test",
            answer,
            answer == SERVER,
        )
        seen = lab.dial("client", answer if answer == SERVER else PUBLIC, plain.port)
        record(
            f"3b. LAN client connects to {answer}:{plain.port} directly; the server sees",
            seen,
            seen == CLIENT,
        )
        outside_answer = dig("outside", AUTH_DNS)
        record(
            "3c. outside client asks the authoritative server: still the public address",
            outside_answer,
            outside_answer == PUBLIC,
        )
        for fwd in translated:
            seen = lab.dial("client", SERVER, fwd.port)
            record(
                f"4a. port-translated forward {fwd.port} -> {fwd.inner}: the rewritten address "
                f"{SERVER}:{fwd.port} does not serve it (check warns)",
                seen,
                seen.startswith("no connection"),
                breaks=True,
            )
            seen = lab.dial("client", PUBLIC, fwd.port)
            record(
                f"4b. via {PUBLIC}:{fwd.port} with the hairpin rule `--hairpin needed` renders",
                seen,
                seen == ROUTER_LAN,
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return steps


def command(args: argparse.Namespace) -> int:
    """`splitdns lab`: the story on a throwaway namespace network, one verdict per step."""
    forwards: tuple[LabForward, ...] = DEFAULT_FORWARDS
    if args.config:
        config = load_or_report(args.config)
        if config is None:
            return 1
        tcp = (
            [f for f in config.nat.forwards if f.proto == "tcp" and f.ports.single]
            if (config.nat is not None)
            else []
        )
        defaults = ", ".join(f"{f.port} -> {f.inner}" for f in DEFAULT_FORWARDS)
        print(
            f"lab: {args.config}'s addresses, views and rewrite rules are not used: the lab "
            "plays the story on a network of its own (the addresses below) with a mapping "
            "made for it; only the file's TCP forwards (nat:) are taken"
        )
        if config.nat is None:
            print(f"lab: {args.config} has no nat: section; using the lab's forwards {defaults}")
        elif not any(f.ports == f.target_ports for f in tcp):
            print(
                f"lab: {args.config} has no single-port TCP forward to the same port; using "
                f"the lab's forwards {defaults}"
            )
        else:
            forwards = tuple(LabForward(f.ports.low, f.target_ports.low) for f in tcp)
            used = ", ".join(f"{f.port} -> {f.inner}" for f in forwards)
            print(f"lab: TCP forwards {used} from {args.config}, played by the lab's server")
    print(
        f"lab: outside {OUTSIDE} | router {PUBLIC} / {ROUTER_LAN} | "
        f"server {SERVER} | client {CLIENT} | rules: {args.rules}"
    )

    return run_story(Lab, lambda net, say: story(net, args.rules, forwards, say))


def run_story(
    make: Callable[[], L], tell: Callable[[L, Callable[[Step], None]], list[Step]]
) -> int:
    """Build a lab, tell its story one verdict a line, tear it down: 0 when every step
    behaved as the story says."""

    def say(step: Step) -> None:
        print(f"{step.verdict:23}  {step.title}: {step.observed}", flush=True)

    try:
        with make() as net:
            steps = tell(net, say)
    except LabError as exc:
        print(f"splitdns lab: {exc}", file=sys.stderr)
        return 1
    print("lab: torn down")
    return 0 if steps and all(s.ok for s in steps) else 1
