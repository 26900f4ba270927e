"""`splitdns import` (issue #29): one realistic file per format (tests/fixtures/import, written
from each project's documented syntax), a real NSD serving the public zone the names live in,
the mapping made checked and `--verify`'d, and a real dig against splitdns serving it.

The public zone: ten names at 203.0.113.1, ten at 203.0.113.2 (the LAN servers 192.168.1.2 and
192.168.1.3), a block 203.0.113.16/30, a public AAAA beside www's A, and names nobody listed
(forgotten.example.test) that the rules now rewrite too.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.servers import NSD, SplitDNS
from tests.support.tools import need
from tests.support.zones import example_zone

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "import"
FIRST = ["www", "git", "wiki", "photos", "cloud", "mail", "media", "docs", "chat", "notes"]
SECOND = [
    "vpn",
    "nas-web",
    "grafana",
    "home",
    "status",
    "music",
    "books",
    "recipes",
    "code",
    "files",
]
PUBLIC = [
    *(f"{n} A 203.0.113.1" for n in FIRST),
    *(f"{n} A 203.0.113.2" for n in SECOND),
    "www AAAA 2001:db8::1",
    "alias CNAME www",
    "printer A 203.0.113.1",
    "apps A 203.0.113.2",
    "*.apps A 203.0.113.2",
    "forgotten A 203.0.113.1",
    *(f"block{i} A 203.0.113.{16 + i}" for i in range(4)),
]


@pytest.fixture(scope="module")
def public(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NSD]:
    server = NSD(tmp_path_factory.mktemp("public"), {"example.test": example_zone(*PUBLIC)})
    yield server
    server.stop()


def import_(public: NSD, fixture: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "splitdns", "import", str(FIXTURES / fixture), "--upstream",
         f"127.0.0.1:{public.port}", *extra],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip


def check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "splitdns", "check", "-c", str(path)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip


@pytest.mark.parametrize(
    "fixture",
    ["AdGuardHome.yaml", "pihole.toml", "custom.list", "dnsmasq.conf", "unbound.conf",
     "split-horizon.json", "Corefile", "blocky.yml", "hosts"],
)  # fmt: skip
def test_every_format_imports_checks_and_verifies(
    public: NSD, fixture: str, tmp_path: Path
) -> None:
    out = tmp_path / "splitdns.yaml"
    made = import_(public, fixture, "-o", str(out), "--verify")
    print(f"\n{fixture}:\n{made.stdout}")
    assert made.returncode == 0, made.stdout + made.stderr
    checked = check(out)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "verify: " in made.stdout and " DIFFERENT" not in made.stdout, made.stdout


def test_adguard_twenty_names_on_two_addresses_become_two_rules(
    public: NSD, tmp_path: Path
) -> None:
    out = tmp_path / "splitdns.yaml"
    made = import_(public, "AdGuardHome.yaml", "-o", str(out))
    assert made.returncode == 0, made.stderr
    text = out.read_text()
    assert "- {from: 203.0.113.1, to: 192.168.1.2}" in text
    assert "- {from: 203.0.113.2, to: 192.168.1.3}" in text
    rules = [line for line in text.splitlines() if line.strip().startswith("- {from: ")]
    assert len([r for r in rules if "names:" not in r]) == 2, text  # the twenty names' two
    # the printer ($dnsrewrite in user_rules) maps its public address elsewhere: its own rule
    assert "- {from: 203.0.113.1, to: 192.168.1.7, names: [printer.example.test]}" in text
    report = made.stdout
    assert report.splitlines()[0] == (
        "25 entries -> 3 rules, 1 hosts, 1 covered by a rule, 1 not importable, 1 disabled "
        "(not imported)"
    ), report
    for name in FIRST + SECOND:  # the report names all twenty
        assert f"{name}.example.test (" in report, name
    assert "disabled, not imported: " in report and ": old.example.test" in report
    assert "ipv6only.example.test: keeps the upstream's answer" in report
    assert "covered by rule 203.0.113.1/32: alias.example.test -> www.example.test" in report
    assert "host nas.home.arpa -> 192.168.1.5" in report
    assert "aaaa: drop" in text and "www.example.test" in text.split("aaaa: drop")[0]


def test_pihole_names_without_a_public_record_become_hosts(public: NSD, tmp_path: Path) -> None:
    out = tmp_path / "splitdns.yaml"
    made = import_(public, "pihole.toml", "-o", str(out))
    assert made.returncode == 0, made.stderr
    text = out.read_text()
    assert "nas.home.arpa: 192.168.1.5" in text
    assert "- {from: 203.0.113.1, to: 192.168.1.2}" in text


def test_unbound_views_become_views_and_a_redirect_a_wildcard(public: NSD, tmp_path: Path) -> None:
    out = tmp_path / "splitdns.yaml"
    made = import_(public, "unbound.conf", "-o", str(out))
    assert made.returncode == 0, made.stderr
    text = out.read_text()
    assert "  - name: lan\n    clients: [192.168.1.0/24]" in text, text
    assert "  - name: guests\n    clients: [192.168.50.0/24]" in text, text
    guests = text.split("name: guests")[1]
    assert "- {from: 203.0.113.1, to: 192.168.50.2}" in guests


def test_dnsmasq_alias_and_an_aligned_block_are_rules(public: NSD, tmp_path: Path) -> None:
    out = tmp_path / "splitdns.yaml"
    made = import_(public, "dnsmasq.conf", "-o", str(out))
    assert made.returncode == 0, made.stderr
    assert "- {from: 203.0.113.16/30, to: 192.168.1.16/30}" in out.read_text()


def test_offline_every_entry_is_a_host_and_the_report_says_why(tmp_path: Path) -> None:
    out = tmp_path / "splitdns.yaml"
    made = subprocess.run(
        [sys.executable, "-m", "splitdns", "import", str(FIXTURES / "custom.list"), "--offline",
         "-o", str(out)], capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert "rules could not be inferred" in made.stdout
    assert "rewrite:" not in out.read_text() and "www.example.test: 192.168.1.2" in out.read_text()
    assert check(out).returncode == 0


def test_bad_input_is_named(tmp_path: Path) -> None:
    odd = tmp_path / "notes.txt"
    odd.write_text("just some words\nnothing a DNS server reads\n")
    made = subprocess.run([sys.executable, "-m", "splitdns", "import", str(odd), "--offline"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)  # fmt: skip
    assert made.returncode == 2
    assert made.stderr.strip() == (
        f"splitdns import: {odd}: not a format splitdns import knows (adguard, pihole, dnsmasq, "
        "unbound, technitium, coredns, blocky, hosts); name it with --from"
    )
    clash = tmp_path / "dnsmasq.conf"
    clash.write_text(
        "host-record=www.example.test,192.168.1.2\nhost-record=www.example.test,192.168.1.9\n"
    )
    made = subprocess.run([sys.executable, "-m", "splitdns", "import", str(clash), "--offline",
                           "-o", str(tmp_path / "o.yaml")],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)  # fmt: skip
    assert made.returncode == 0
    assert (
        f"not importable: {clash}:2: www.example.test: conflicts with {clash}:1; the first kept"
        in made.stdout
    ), made.stdout


def test_dig_gets_the_source_answers_and_the_forgotten_name_too(
    public: NSD, tmp_path: Path
) -> None:
    """Real clients against splitdns serving the imported mapping: every imported name answers
    as the hand list did, and a name the list forgot gets the internal address too."""
    out = tmp_path / "splitdns.yaml"
    made = import_(public, "AdGuardHome.yaml", "-o", str(out), "--lan", "127.0.0.1/32")
    assert made.returncode == 0, made.stderr
    proc = SplitDNS(tmp_path, out.read_text(), "--upstream", f"127.0.0.1:{public.port}")
    try:
        dig = need("dig", "bind9-dnsutils")

        def short(name: str, rtype: str = "A") -> str:
            return subprocess.run(
                [dig, "@127.0.0.1", "-p", str(proc.port), "+short", "+tries=1", name, rtype],
                capture_output=True, text=True, timeout=30,
            ).stdout.strip()  # fmt: skip

        for name in FIRST:
            assert short(f"{name}.example.test") == "192.168.1.2", name
        for name in SECOND:
            assert short(f"{name}.example.test") == "192.168.1.3", name
        assert short("nas.home.arpa") == "192.168.1.5"
        assert short("forgotten.example.test") == "192.168.1.2"  # the list never had it
        assert short("www.example.test", "AAAA") == ""  # the leak, closed by aaaa: drop
    finally:
        assert proc.stop() == 0, proc.output


WILDCARD_PUBLIC = [
    "www A 203.0.113.1", "git A 203.0.113.1", "mail A 203.0.113.1", "jellyfin A 203.0.113.1",
]  # fmt: skip


@pytest.mark.parametrize(
    "fixture",
    ["AdGuardHome.yaml", "05-pihole-custom.conf", "dnsmasq.conf", "unbound.conf", "blocky.yml"],
)
def test_exact_entries_beside_a_wildcard_keep_their_own_answers(
    fixture: str, tmp_path: Path
) -> None:
    """Issue 38: a wildcard over the names (AdGuard `*.example.test`, dnsmasq's and Pi-hole's
    `address=/example.test/`, an Unbound redirect zone, Blocky's mapping) became a hosts
    wildcard, which answered before the rules made for the exact names: jellyfin got .2
    instead of .4. The source's precedence
    (a name's own entry wins) is carried over, and --verify finds every name the same."""
    nsd = NSD(tmp_path / "nsd", {"example.test": example_zone(*WILDCARD_PUBLIC)})
    try:
        source = ROOT / "tests" / "fixtures" / "import-wildcard" / fixture
        out = tmp_path / "mine.yaml"
        made = subprocess.run(
            [sys.executable, "-m", "splitdns", "import", str(source), "--upstream",
             f"127.0.0.1:{nsd.port}", "-o", str(out), "--verify"],
            capture_output=True, text=True, timeout=120, cwd=ROOT,
        )  # fmt: skip
        assert made.returncode == 0, made.stdout + made.stderr
        assert "DIFFERENT" not in made.stdout and " the same" in made.stdout, made.stdout
        checked = check(out)
        assert checked.returncode == 0 and "warning" not in checked.stdout, checked.stdout
        server = SplitDNS(tmp_path, out.read_text().replace("192.168.0.0/16", "127.0.0.0/8"))
        try:
            for name, want in (("jellyfin", "192.168.1.4"), ("mail", "192.168.1.3"),
                               ("www", "192.168.1.2"), ("anything", "192.168.1.2")):  # fmt: skip
                assert server.dig("+short", f"{name}.example.test") == f"{want}\n", name
        finally:
            server.stop()
    finally:
        nsd.stop()
