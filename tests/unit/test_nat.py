"""NAT rendering: golden files per target, validity checked by the real nft and
iptables-restore (in a throwaway network namespace), cross-checks, and bad input."""

from __future__ import annotations

import difflib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from splitdns import nat
from splitdns.config import crosscheck
from splitdns.config import model as config
from splitdns.config.tree import ConfigError
from tests.support.tools import need

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden"
EXAMPLES = ["reference", "port-forwards", "intercept"]
TARGETS = sorted(nat.TARGETS)


def rendered(example: str, target: str, hairpin: str) -> str:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "splitdns",
            "nat",
            "-c",
            f"zones/{example}.yaml",
            "--target",
            target,
            "--hairpin",
            hairpin,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.parametrize("hairpin", ["all", "needed"])
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("example", EXAMPLES)
def test_golden(example: str, target: str, hairpin: str) -> None:
    got = rendered(example, target, hairpin)
    path = GOLDEN / f"{example}.{hairpin}.{target}"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.write_text(got)
    want = path.read_text()
    diff = "".join(
        difflib.unified_diff(want.splitlines(True), got.splitlines(True), str(path), "now")
    )
    assert got == want, diff


def test_reference_rules_match_the_story() -> None:
    """The reference's three RouterOS rules, field for field (to-addresses is the full name
    of the reference's to-address)."""
    lines = [
        line.split(" comment=")[0]
        for line in rendered("reference", "routeros", "all").splitlines()
        if line.startswith("add ")
    ]
    assert lines == [
        "add chain=dstnat dst-address=1.1.1.1 protocol=tcp dst-port=80 action=dst-nat "
        "to-addresses=192.168.1.2",
        "add chain=srcnat out-interface=WAN action=masquerade",
        "add chain=srcnat src-address=192.168.1.0/24 dst-address=192.168.1.2 protocol=tcp "
        "dst-port=80 out-interface=LAN action=masquerade",
    ]
    # With splitdns rewriting the name, the hairpin rule is not needed.
    assert "hairpin for" not in rendered("reference", "routeros", "needed")
    assert "hairpin for" not in rendered("reference", "routeros", "none")
    assert "hairpin for" in rendered("reference", "routeros", "all")


def in_fresh_netns(argv: list[str], stdin: str) -> subprocess.CompletedProcess[str]:
    """Run a firewall tool in a new, empty network namespace: the host's rules are never seen."""
    unshare = need("unshare", "util-linux")
    if os.geteuid() != 0:
        pytest.skip("needs root to create a network namespace for nft/iptables checks")
    return subprocess.run(
        [unshare, "--net", *argv], input=stdin, capture_output=True, text=True, timeout=30
    )


@pytest.mark.parametrize("hairpin", ["all", "needed", "none"])
@pytest.mark.parametrize("example", EXAMPLES)
def test_nft_accepts(example: str, hairpin: str, tmp_path: Path) -> None:
    nft = need("nft", "nftables")
    rules = tmp_path / "rules.nft"
    rules.write_text(rendered(example, "nftables", hairpin))
    out = in_fresh_netns([nft, "-c", "-f", str(rules)], "")
    assert out.returncode == 0, out.stderr
    # It really loads, and loads again (the file replaces its own table), in that namespace.
    load = in_fresh_netns(
        ["sh", "-c", f"{nft} -f {rules} && {nft} -f {rules} && {nft} list table ip splitdns_nat"],
        "",
    )
    assert load.returncode == 0, load.stderr
    assert load.stdout.count("dnat to") == rules.read_text().count("dnat to")


@pytest.mark.parametrize("hairpin", ["all", "needed", "none"])
@pytest.mark.parametrize("example", EXAMPLES)
def test_iptables_restore_accepts(example: str, hairpin: str) -> None:
    restore = need("iptables-restore", "iptables")
    out = in_fresh_netns([restore, "--test"], rendered(example, "iptables", hairpin))
    assert out.returncode == 0, out.stderr


def test_check_warns_about_the_port_translated_forward() -> None:
    cfg = config.load(ROOT / "zones" / "port-forwards.yaml")
    warnings = crosscheck.cross_check(cfg)
    assert len(warnings) == 1
    assert warnings[0].startswith("nat.forwards[2]: names rewritten to 192.168.1.2 send LAN")
    assert "192.168.1.2:8443" in warnings[0]


def test_check_warns_about_disagreements() -> None:
    cfg = config.loads(
        """
views:
  - name: lan
    clients: [192.168.1.0/24]
    rewrite:
      - {from: 198.51.100.1, to: 192.168.1.7}
nat:
  public: 203.0.113.1
  lan: [192.168.1.0/24]
  forwards: [{proto: tcp, port: 80, to: 192.168.1.2}]
""",
        "t.yaml",
    )
    warnings = crosscheck.cross_check(cfg)
    assert any("192.168.1.7 is not the target of any nat forward" in w for w in warnings)
    assert any("does not contain nat.public 203.0.113.1" in w for w in warnings)


NAT_OK = "nat:\n  public: 203.0.113.1\n  lan: [192.168.1.0/24]\n  forwards:\n"


@pytest.mark.parametrize(
    ("forward", "expected"),
    [
        (
            "{proto: tcp, port: 70000, to: 192.168.1.2}",
            "nat.forwards[0].port: '70000': ports are 1-65535",
        ),
        (
            "{proto: sctp, port: 80, to: 192.168.1.2}",
            "nat.forwards[0].proto: must be one of tcp, udp",
        ),
        ("{proto: tcp, port: 80, to: 10.0.0.2}", "nat.forwards[0].to: 10.0.0.2 is not in the LAN"),
        (
            "{proto: udp, port: '27020-27015', to: 192.168.1.9}",
            "nat.forwards[0].port: '27020-27015': the range runs backwards",
        ),
        (
            "{proto: udp, port: '1-2-3', to: 192.168.1.9}",
            "nat.forwards[0].port: '1-2-3' is not a port",
        ),
        (
            "{proto: tcp, port: '80-81', to: '192.168.1.2:443'}",
            "nat.forwards[0].to: port range sizes differ",
        ),
        ("{proto: tcp, port: 80}", "nat.forwards[0]: missing 'to'"),
    ],
)
def test_bad_nat_input(forward: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.loads(NAT_OK + f"    - {forward}\n", "t.yaml")
    assert str(info.value).startswith("t.yaml:5: " + expected)


def test_unknown_target_is_refused() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "splitdns", "nat", "-c", "zones/reference.yaml", "--target", "pf"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2 and "invalid choice: 'pf'" in out.stderr


@pytest.mark.parametrize(
    ("intercept", "expected"),
    [
        ("{}", "t.yaml:6: nat.intercept_dns: missing 'server'"),
        ("{server: 10.0.0.5, router: 192.168.1.1}", "nat.intercept_dns.server: 10.0.0.5 is not"),
        ("{server: 192.168.1.53}", "nat.intercept_dns: missing 'router' (the router's LAN"),
        ("{server: 192.168.1.53, on_router: yes, router: 192.168.1.1}",
         "nat.intercept_dns.router: on_router: true: splitdns's address is the router's"),
        ("{server: 192.168.1.53, router: 192.168.1.1, mode: x}", "intercept_dns.mode: unknown key"),
    ],
)  # fmt: skip
def test_bad_intercept_input(intercept: str, expected: str) -> None:
    text = (
        NAT_OK
        + "    - {proto: tcp, port: 80, to: 192.168.1.2}\n"
        + f"  intercept_dns: {intercept}\n"
    )
    with pytest.raises(config.ConfigError) as info:
        config.loads(text, "t.yaml")
    assert expected in str(info.value), str(info.value)


def test_check_warns_where_intercepted_devices_land() -> None:
    base = (
        'listen: ["192.168.1.53:53"]\nallow: [192.168.1.0/24]\nviews:\n  - name: lan\n'
        "    clients: [192.168.1.128/25]\n    rewrite: [{from: 203.0.113.1, to: 192.168.1.2}]\n"
    )
    nat_text = NAT_OK + "    - {proto: tcp, port: 80, to: 192.168.1.2}\n"
    cfg = config.loads(base + nat_text + "  intercept_dns: {server: 192.168.1.53, "
                       "router: 192.168.1.1}\n", "t.yaml")  # fmt: skip
    warned = crosscheck.cross_check(cfg)
    assert any("which no view that rewrites holds" in w for w in warned), warned
    on_router = "  intercept_dns: {server: 192.168.1.9, on_router: true}\n"
    cfg = config.loads(base.replace("192.168.1.128/25", "192.168.1.0/24") + nat_text + on_router,
                       "t.yaml")  # fmt: skip
    warned = crosscheck.cross_check(cfg)
    assert any("the rules send LAN DNS to 192.168.1.9:53, but splitdns listens" in w
               for w in warned), warned  # fmt: skip
    assert not any("no view" in w for w in warned)
    assert crosscheck.cross_check(config.load(ROOT / "zones" / "intercept.yaml")) == []
