"""The hairpin story on a real kernel: namespaces, a bridge in its own box, rules rendered by
splitdns loaded with `nft -f` and `iptables-restore`, splitdns and NSD serving real DNS."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from splitdns.commands import lab
from tests.support.tools import need_root


@pytest.fixture(autouse=True)
def _needs_root() -> None:
    need_root(("nft", "nftables"), ("iptables-restore", "iptables"), ("nsd", "nsd"),
              ("dig", "bind9-dnsutils"), ("ss", "iproute2"))  # fmt: skip


@pytest.mark.parametrize("kind", ["nftables", "iptables"])
def test_the_four_flows(kind: str) -> None:
    with lab.Lab() as net:
        names = set(net.created)
        steps = {s.title.split(".")[0]: s for s in lab.story(net, kind)}
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(name in left for name in names), left  # torn down
    failed = [f"{s.title} -> {s.observed}" for s in steps.values() if not s.ok]
    assert not failed, "\n".join(failed)
    # The figures behind each verdict, pinned explicitly:
    assert steps["1"].observed == lab.OUTSIDE  # the server sees the real outside client
    assert steps["2a"].observed.startswith(
        "no connection"
    )  # the reference's broken flow really breaks
    assert steps["2b"].observed == lab.ROUTER_LAN  # hairpin works but hides the client
    assert steps["3a"].observed == lab.SERVER  # splitdns rewrote the public answer
    assert steps["3b"].observed == lab.CLIENT  # and the server sees the real LAN client
    assert steps["3c"].observed == lab.PUBLIC  # outside still gets the public address
    assert steps["4a"].observed.startswith(
        "no connection"
    )  # the rewrite alone cannot serve 8443->443
    assert steps["4b"].observed == lab.ROUTER_LAN  # the `needed` hairpin rule does


def test_lab_command_prints_the_story() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "splitdns", "lab", "--rules", "nftables", "-c", "zones/home.yaml"],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=Path(__file__).parents[2],
    )
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert sum(line.startswith("ok (breaks as expected)") for line in lines) == 2, out.stdout
    assert sum(line.startswith("ok  ") for line in lines) == 6, out.stdout
    assert not any(line.startswith("FAIL") or "PASS" in line for line in lines), out.stdout
    assert "3b." in out.stdout and lab.CLIENT in out.stdout
    assert (
        "lab: zones/home.yaml has no nat: section; using the lab's forwards 80 -> 80, 8443 -> 443"
        in out.stdout
    )
    assert "lab: zones/home.yaml's addresses, views and rewrite rules are not used" in out.stdout


def test_doctor_tells_whether_the_router_hairpins(tmp_path: Path) -> None:
    from splitdns import nat
    from splitdns.config import crosscheck
    from splitdns.config import model as config

    with lab.Lab() as net:
        text = lab.lab_config(net, lab.DEFAULT_FORWARDS, 53)
        conf = tmp_path / "lab.yaml"
        conf.write_text(text.replace('upstreams: ["198.51.100.53"]', 'upstreams: ["192.0.2.1"]'))
        cfg = config.loads(text, "lab.yaml")
        assert cfg.nat is not None
        net.start_peer_server(80, 443)

        def doctor() -> list[str]:
            out = net.exec(
                "client",
                sys.executable,
                "-m",
                "splitdns",
                "doctor",
                "-c",
                str(conf),
                "--timeout",
                "1",
                check=False,
                timeout=60,
            )
            return [line for line in out.splitlines() if "forward[" in line]

        targets = crosscheck.rewrite_targets(cfg)
        net.load_rules(nat.render(cfg.nat, "nftables", "none", targets, "lab"), "nftables")
        without = doctor()
        net.load_rules(nat.render(cfg.nat, "nftables", "all", targets, "lab"), "nftables")
        with_rules = doctor()
    assert without[0].startswith(
        "warn  forward[0] tcp/80 -> 192.0.2.2: not reachable via 203.0.113.1:80"
    )
    assert "does not hairpin" in without[0]
    assert with_rules[0].startswith(
        "ok    forward[0] tcp/80 -> 192.0.2.2: reached via 203.0.113.1:80"
    )
    assert with_rules[1].startswith("ok    forward[1] tcp/8443 -> 192.0.2.2:443: reached")


def test_never_an_open_resolver_even_on_all_addresses(tmp_path: Path) -> None:
    """On the router, listening on 0.0.0.0: the LAN is served, a client on the internet side
    gets REFUSED, and the process no longer runs as root. (The lab's LAN is a documentation
    range, which the default `allow` of private ranges does not cover, so it is listed.)"""
    conf = tmp_path / "open.yaml"
    conf.write_text(
        f'listen: ["0.0.0.0:5353"]\nallow: [{lab.LAN_NET}]\nupstreams: ["{lab.AUTH_DNS}"]\n'
        "timeout: 1\n"
    )
    with lab.Lab() as net:
        server = net.spawn("router", sys.executable, "-m", "splitdns", "serve", "-c", str(conf))

        def dig(role: str, target: str) -> str:
            return net.exec(
                role,
                "dig",
                f"@{target}",
                "-p",
                "5353",
                "+tries=1",
                "+time=2",
                "www.example.test",
                check=False,
            )

        assert lab.wait_until(lambda: "status:" in dig("client", lab.ROUTER_LAN), timeout=15)
        lan = dig("client", lab.ROUTER_LAN)
        outside = dig("outside", lab.PUBLIC)
        uid = next(
            line.split()[1]
            for line in Path(f"/proc/{server.pid}/status").read_text().splitlines()
            if line.startswith("Uid:")
        )
    assert "status: REFUSED" not in lan  # the LAN may ask (SERVFAIL here: no upstream runs)
    assert "status: REFUSED" in outside, outside
    assert uid != "0"


def test_queries_only_from_the_gateway_log_the_container_trap(tmp_path: Path) -> None:
    """splitdns on a LAN host whose every query arrives from its default gateway (the picture
    behind a docker bridge network with published ports): one warning says what to do."""
    conf = tmp_path / "trap.yaml"
    conf.write_text(
        f'listen: ["{lab.SERVER}:5353"]\nallow: [{lab.LAN_NET}]\nupstreams: ["{lab.AUTH_DNS}"]\n'
        f"timeout: 0.5\nviews:\n  - name: lan\n    clients: [{lab.LAN_NET}]\n"
        '    hosts:\n      "*.example.test": 192.0.2.99\n'  # answered at once, locally
    )
    with lab.Lab() as net:
        server = subprocess.Popen(
            [
                *("ip", "netns", "exec", net.ns("server"), sys.executable, "-m", "splitdns"),
                *("serve", "-c", str(conf)),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:

            def dig(*names: str) -> str:
                return net.exec(
                    "router", "dig", f"@{lab.SERVER}", "-p", "5353", "+tries=1", "+time=1",
                    *names, check=False, timeout=120,
                )  # fmt: skip

            assert lab.wait_until(lambda: "status:" in dig("ready.example.test"), timeout=15)
            dig(*(f"n{i}.example.test" for i in range(210)))
        finally:
            server.terminate()
            output, _ = server.communicate(timeout=15)
    warnings = [line for line in output.splitlines() if "views cannot tell clients apart" in line]
    assert len(warnings) == 1, output
    assert f"{lab.ROUTER_LAN}, this host's gateway" in warnings[0]


def test_a_killed_labs_namespaces_are_swept_by_the_next_and_a_live_ones_kept() -> None:
    """A lab killed before its teardown (SIGKILL) leaves sd<PID>-<role> namespaces; the next
    lab deletes those of dead processes, with what runs in them, and keeps a live one's."""
    import os
    import signal
    import time

    from splitdns.commands.lab import sweep_leftovers
    from tests.support.tools import need_root

    need_root(("ip", "iproute2"))
    sleeper = subprocess.Popen(["sleep", "60"])  # a PID that is ours and will be dead
    dead = sleeper.pid
    sleeper.kill()
    sleeper.wait(10)
    gone, kept = f"sd{dead}-router", f"sd{os.getpid()}-server"
    for name in (gone, kept):
        subprocess.run(["ip", "netns", "add", name], check=True, timeout=30)
    inside = subprocess.Popen(["ip", "netns", "exec", gone, "sleep", "60"])
    try:
        time.sleep(0.2)
        swept = sweep_leftovers()
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                                check=True, timeout=30).stdout  # fmt: skip
        assert gone in swept and gone not in listed
        assert kept not in swept and kept in listed
        assert inside.wait(10) == -signal.SIGKILL  # what ran in it went with it
    finally:
        if inside.poll() is None:
            inside.kill()
            inside.wait(10)
        for name in (gone, kept):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


@pytest.mark.parametrize("on_router", [False, True], ids=["splitdns-on-lan-host", "on-router"])
@pytest.mark.parametrize("kind", ["nftables", "iptables"])
def test_devices_with_their_own_resolver_are_caught(kind: str, on_router: bool) -> None:
    """Issue 37: nat.intercept_dns's rules, rendered and loaded on the router, send a device's
    DNS for a public resolver (the lab's 198.51.100.53) to splitdns and refuse its DoT."""
    from splitdns.commands import labintercept

    with lab.Lab() as net:
        names = set(net.created)
        steps = {s.title.split(".")[0]: s for s in labintercept.story(net, kind, on_router)}
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(name in left for name in names), left
    failed = [f"{s.title} -> {s.observed}" for s in steps.values() if not s.ok]
    assert not failed, "\n".join(failed)
    assert steps["I1"].observed == lab.PUBLIC  # without the rules: the public address
    assert steps["I3"].observed == lab.SERVER  # with them: splitdns's answer
    assert steps["I3b"].observed == (lab.CLIENT if on_router else lab.ROUTER_LAN)
    assert steps["I5"].observed == lab.CLIENT  # and the server sees the device itself
    assert "refused" in steps["I6"].observed.lower()  # DoT to the public resolver
    assert steps["I7"].observed == lab.PUBLIC  # splitdns's own upstream traffic flows
