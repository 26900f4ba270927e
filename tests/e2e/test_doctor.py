"""`splitdns doctor` against live parts on loopback: a taken port, a live and a dead upstream,
a stale public address behind a DDNS name, a hairpinned and a not-hairpinned forward."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from tests.support.fakeupstream import Action, FakeUpstream
from tests.support.servers import free_port
from tests.support.zones import example_zone


def doctor(conf: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`splitdns doctor -c CONF ARGS...` as a user runs it, its output kept."""
    argv = [sys.executable, "-m", "splitdns", "doctor", "-c", str(conf), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def test_doctor_verdicts(tmp_path: Path, fake: FakeUpstream) -> None:
    fake.add("home.example.test. 60 IN A 203.0.113.9")
    dead = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken, socket.socket() as service:
        taken.bind(("127.0.0.1", 0))
        busy = taken.getsockname()[1]
        service.bind(("127.0.0.1", 0))
        service.listen(4)
        open_port = service.getsockname()[1]
        closed_port = free_port()
        conf = tmp_path / "doctor.yaml"
        conf.write_text(
            f'listen: ["127.0.0.1:{busy}"]\n'
            f'upstreams: ["{fake.address}", "127.0.0.1:{dead}"]\ntimeout: 1\n'
            "views:\n  - name: lan\n    clients: [192.0.2.0/24]\n    rewrite:\n"
            "      - {from: 203.0.113.1, to: 192.0.2.2}\n"
            "nat:\n  public: 127.0.0.1\n  lan: [192.0.2.0/24]\n  forwards:\n"
            f"    - {{proto: tcp, port: {open_port}, to: 192.0.2.2}}\n"
            f"    - {{proto: tcp, port: {closed_port}, to: 192.0.2.2}}\n"
            "    - {proto: udp, port: 27015, to: 192.0.2.9}\n"
        )
        out = doctor(conf, "--ddns", "home.example.test", "--timeout", "1")
    said, *lines = out.stdout.splitlines()
    assert said.startswith("ok    config: ") and said.endswith(" (from -c)"), said
    assert out.returncode == 1, out.stdout + out.stderr
    assert lines[0].startswith(f"FAIL  listen 127.0.0.1:{busy}: taken by ")
    assert "(pid " in lines[0]
    assert lines[1].startswith(f"ok    upstream {fake.address}: answered . NS (NXDOMAIN) over udp")
    assert lines[2].startswith(f"FAIL  upstream 127.0.0.1:{dead}: no usable answer to . NS")
    assert lines[3] == "ok    public address: home.example.test is 203.0.113.9"
    assert lines[4].startswith(
        "FAIL  views.lan.rewrite[0]: 'from' 203.0.113.1/32 no longer holds the public address "
        "203.0.113.9"
    )
    assert lines[5].startswith(f"ok    forward[0] tcp/{open_port} -> 192.0.2.2: reached via")
    assert lines[6].startswith(f"warn  forward[1] tcp/{closed_port} -> 192.0.2.2: not reachable")
    assert "does not hairpin" in lines[6]
    assert lines[7] == "warn  forward[2] udp/27015 -> 192.0.2.9: UDP cannot be probed; skipped"


def test_doctor_on_a_healthy_setup_with_a_domain_only_upstream(tmp_path: Path, fakes: list) -> None:
    """The running splitdns holding its own port is fine; an authoritative upstream that
    refuses `. NS` but answers its domain is fine; rcodes by name."""
    from tests.support.servers import SplitDNS

    general = FakeUpstream().add("www.example.test. 60 IN A 203.0.113.1").start()
    authority = FakeUpstream().add("router.lan. 60 IN SOA ns hostmaster 1 2 3 4 5").start()
    authority.default = Action(rcode=5)  # refuses what is not its own
    authority.actions["router.lan"] = Action()
    fakes += [general, authority]
    text = (
        f'upstreams:\n  default: ["{general.address}"]\n'
        f'  domains:\n    router.lan: ["{authority.address}"]\ntimeout: 1\n'
    )
    proc = SplitDNS(tmp_path, text)
    conf = next(tmp_path.glob("splitdns-*.yaml"))
    conf.write_text(f'listen: ["127.0.0.1:{proc.port}"]\n' + text)
    try:
        out = doctor(conf, "--timeout", "1")
    finally:
        proc.stop()
    said, *lines = out.stdout.splitlines()
    assert said.startswith("ok    config: ") and said.endswith(" (from -c)"), said
    assert out.returncode == 0, out.stdout + out.stderr
    assert lines[0].startswith(f"ok    listen 127.0.0.1:{proc.port}: served by splitdns (pid ")
    assert lines[0].endswith("with this file")
    assert lines[1].startswith(f"ok    upstream {general.address}: answered . NS (NXDOMAIN)")
    assert lines[2].startswith(f"ok    upstream {authority.address}: answered router.lan SOA")


SIGNED_ZONE = example_zone(
    "www  A   203.0.113.1",
)


def test_doctor_warns_about_rewritten_names_of_a_signed_zone(tmp_path: Path) -> None:
    """A zone signed with ldns-signzone, served by NSD: doctor names the zone whose rewritten
    answers a validating resolver downstream would reject; an unsigned zone gets no warning."""
    from tests.support.servers import NSD
    from tests.support.tools import need

    keygen, signzone = need("ldns-keygen", "ldnsutils"), need("ldns-signzone", "ldnsutils")
    zone = tmp_path / "example.test.zone"
    zone.write_text(SIGNED_ZONE)
    key = subprocess.run(
        [keygen, "-a", "ECDSAP256SHA256", "-k", "example.test"],
        cwd=tmp_path, capture_output=True, text=True, check=True, timeout=30,
    ).stdout.strip()  # fmt: skip
    subprocess.run([signzone, "-n", str(zone), key], cwd=tmp_path, check=True, timeout=30)
    signed = (tmp_path / "example.test.zone.signed").read_text()
    nsd = NSD(tmp_path / "nsd", {"example.test": signed, "plain.test": SIGNED_ZONE.replace(
        "example.test.", "plain.test.")})  # fmt: skip
    try:
        conf = tmp_path / "doctor.yaml"
        conf.write_text(
            f'listen: ["127.0.0.1:{free_port()}"]\nupstreams: ["127.0.0.1:{nsd.port}"]\n'
            "views:\n  - name: lan\n    clients: [192.0.2.0/24]\n    rewrite:\n"
            "      - {from: 203.0.113.1, to: 192.0.2.2, names: [www.example.test]}\n"
            "      - {from: 203.0.113.1, to: 192.0.2.3, names: [www.plain.test]}\n"
        )
        out = doctor(conf, "--timeout", "2")
    finally:
        nsd.stop()
    signed_lines = [line for line in out.stdout.splitlines() if "DNSSEC" in line]
    assert signed_lines == [
        "warn  views.lan.rewrite[0]: www.example.test is in the DNSSEC-signed zone example.test: "
        "splitdns removes the signatures of its rewritten answers, so a validating resolver "
        "downstream of splitdns answers SERVFAIL for it. Validate upstream of splitdns instead, "
        'or mark it insecure there (unbound: domain-insecure: "example.test")'
    ], out.stdout + out.stderr


def test_doctor_compares_two_resolvers_for_the_rules_names(tmp_path: Path) -> None:
    """Two splitdns for one LAN (DHCP hands out both): the same mapping answers the same; a
    peer left on an old mapping is caught, naming both answers."""
    from tests.support.servers import SplitDNS

    fake = FakeUpstream().add("www.example.test. 60 IN A 203.0.113.1").start()
    mapping = (
        f'upstreams: ["{fake.address}"]\nviews:\n  - name: lan\n    clients: [127.0.0.0/8]\n'
        "    rewrite:\n      - {{from: 203.0.113.1, to: {to}, names: [www.example.test]}}\n"
    )
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "c").mkdir()
    first = SplitDNS(tmp_path / "a", mapping.format(to="192.0.2.2"))
    same = SplitDNS(tmp_path / "b", mapping.format(to="192.0.2.2"))
    stale = SplitDNS(tmp_path / "c", mapping.format(to="192.0.2.9"))
    conf = tmp_path / "doctor.yaml"
    conf.write_text(f'listen: ["127.0.0.1:{first.port}"]\n' + mapping.format(to="192.0.2.2"))

    def peer_lines(peer: int) -> list[str]:
        out = doctor(conf, "--timeout", "1", "--peer", f"127.0.0.1:{peer}")
        return [line for line in out.stdout.splitlines() if " peer " in line]

    try:
        assert peer_lines(same.port) == [
            f"ok    peer 127.0.0.1:{same.port}: www.example.test -> 192.0.2.2 on both"
        ]
        assert peer_lines(stale.port) == [
            f"FAIL  peer 127.0.0.1:{stale.port}: www.example.test -> 192.0.2.2 here "
            f"(127.0.0.1:{first.port}) but 192.0.2.9 there: the two resolvers disagree (same "
            "mapping on both? reloaded?)"
        ]
    finally:
        for proc in (first, same, stale):
            proc.stop()
        fake.stop()
