"""The LAN's own names: RFC 2136 UPDATEs signed with TSIG, from BIND's nsupdate, into zones
splitdns answers itself; dig asks from a LAN view, from a view the zones are not served to, and
with -x; the refusals (wrong key, no key, a clock out of the fudge, a sender not allowed, a zone
not held) change nothing; the names outlive a SIGKILL; dnsmasq's lease file is read.
"""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.tsig
import dns.update
import pytest

from tests.support.fakeupstream import FakeUpstream
from tests.support.servers import SplitDNS, free_port
from tests.support.tools import need

ZONE = "lan.home.test"
REVERSE = "2.0.192.in-addr.arpa"
SECRET = base64.b64encode(b"splitdns-test-key-32-bytes-long!").decode()
WRONG = base64.b64encode(b"another-key-with-the-same-name!!").decode()


def keyfile(path: Path, secret: str, name: str = "ddns-key") -> Path:
    path.write_text(f'key "{name}" {{\n\talgorithm hmac-sha256;\n\tsecret "{secret}";\n}};\n')
    path.chmod(0o600)
    return path


def config(upstream: str, keys: Path, state: Path, leases: Path | None = None) -> str:
    lease = f"  leases: [{{file: {leases}, zone: {ZONE}}}]\n" if leases else ""
    return (
        f'upstreams: ["{upstream}"]\nallow: [127.0.0.0/8]\nstate_dir: {state}\n'
        "views:\n  - name: lan\n    clients: [127.0.0.1/32, 127.0.0.2/32]\n"
        "  - name: guests\n    clients: [127.0.0.3/32]\n"
        f"dynamic:\n  zones: [{ZONE}, {REVERSE}]\n  views: [lan]\n  keys_file: {keys}\n"
        f"  allow_update: [127.0.0.1/32]\n{lease}"
    )


def nsupdate(server: SplitDNS, keys: Path | None, *commands: str, tcp: bool = False,
             local: str = "127.0.0.1") -> subprocess.CompletedProcess[str]:  # fmt: skip
    binary = need("nsupdate", "bind9-dnsutils")
    script = f"server 127.0.0.1 {server.port}\nlocal {local}\nzone {ZONE}\n"
    script += "\n".join(commands) + "\nsend\n"
    argv = [binary, *(["-k", str(keys)] if keys else []), *(["-v"] if tcp else []), "-t", "5"]
    return subprocess.run(argv, input=script, capture_output=True, text=True, timeout=30)


@pytest.fixture
def state() -> Iterator[Path]:
    """A state directory the service user can reach (started as root, splitdns writes its
    journal as `nobody`; pytest's own tmp_path is root's alone), removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix="splitdns-dynamic-"))
    base.chmod(0o755)
    yield base / "state"
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def upstream() -> FakeUpstream:
    fake = FakeUpstream().add("www.example.test. 300 IN A 203.0.113.1").start()
    yield fake
    fake.stop()


@pytest.fixture
def served(tmp_path: Path, upstream: FakeUpstream, state: Path) -> SplitDNS:
    keys = keyfile(tmp_path / "ddns.key", SECRET)
    server = SplitDNS(tmp_path, config(upstream.address, keys, state))
    yield server
    server.stop()


def answer(server: SplitDNS, name: str, rdtype: str = "A", source: str = "127.0.0.2",
           tcp: bool = False) -> dns.message.Message:  # fmt: skip
    return server.query(name, rdtype, source=source, tcp=tcp)


def test_nsupdate_adds_and_deletes_and_dig_sees_both_names(
    served: SplitDNS, tmp_path: Path
) -> None:
    keys = tmp_path / "ddns.key"
    done = nsupdate(served, keys, f"update add laptop.{ZONE} 300 A 192.0.2.10")
    assert done.returncode == 0, done.stderr
    done = nsupdate(
        served, keys, f"zone {REVERSE}", f"update add 10.{REVERSE} 300 PTR laptop.{ZONE}.", tcp=True
    )
    assert done.returncode == 0, done.stderr
    got = answer(served, f"laptop.{ZONE}")
    assert got.rcode() == dns.rcode.NOERROR and got.flags & 0x0400  # AA: ours
    assert [r.to_text() for rr in got.answer for r in rr] == ["192.0.2.10"]
    dig = served.dig("-x", "192.0.2.10", "+short", source="127.0.0.2")
    assert dig.strip() == f"laptop.{ZONE}.", dig
    # the guests view is not served the zone: its question goes upstream (NXDOMAIN there)
    assert not answer(served, f"laptop.{ZONE}", source="127.0.0.3").answer
    done = nsupdate(served, keys, f"update delete laptop.{ZONE} A")
    assert done.returncode == 0, done.stderr
    gone = answer(served, f"laptop.{ZONE}")
    assert gone.rcode() == dns.rcode.NXDOMAIN
    assert gone.authority and gone.authority[0].rdtype == dns.rdatatype.SOA


def test_refused_updates_change_nothing(served: SplitDNS, tmp_path: Path) -> None:
    wrong = keyfile(tmp_path / "wrong.key", WRONG)
    other = keyfile(tmp_path / "other.key", SECRET, name="not-ours")
    add = f"update add intruder.{ZONE} 300 A 192.0.2.66"
    for keys in (wrong, other):
        done = nsupdate(served, keys, add)
        assert done.returncode != 0, done.stdout
        assert "tsig" in done.stderr.lower() or "notauth" in done.stderr.lower(), done.stderr
    done = nsupdate(served, None, add)  # unsigned
    assert done.returncode != 0 and "REFUSED" in done.stderr, done.stderr
    done = nsupdate(served, tmp_path / "ddns.key", add, local="127.0.0.2")  # not allowed
    assert done.returncode != 0 and "REFUSED" in done.stderr, done.stderr
    assert answer(served, f"intruder.{ZONE}").rcode() == dns.rcode.NXDOMAIN
    # a clock 20 minutes off: BADTIME (the fudge is 5 minutes), signed, nothing changed
    ring = {dns.name.from_text("ddns-key"): dns.tsig.Key("ddns-key", SECRET, "hmac-sha256")}
    update = dns.update.UpdateMessage(ZONE, keyring=ring, keyname="ddns-key")
    update.add(f"intruder.{ZONE}.", 300, "A", "192.0.2.66")
    with mock.patch("time.time", return_value=time.time() - 1200):
        wire_bytes = update.to_wire()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(wire_bytes, ("127.0.0.1", served.port))
        raw = sock.recv(4096)
    reply = dns.message.from_wire(raw, keyring=False)
    assert reply.rcode() == 9  # NOTAUTH
    assert reply.tsig is not None and reply.tsig[0].error == 18  # BADTIME
    assert answer(served, f"intruder.{ZONE}").rcode() == dns.rcode.NXDOMAIN
    # a zone splitdns does not hold, and a name outside the zone
    done = nsupdate(served, tmp_path / "ddns.key", "zone example.test",
                    "update add x.example.test 300 A 192.0.2.1")  # fmt: skip
    assert done.returncode != 0 and "NOTAUTH" in done.stderr, done.stderr
    done = nsupdate(served, tmp_path / "ddns.key", "update add x.elsewhere.test 300 A 192.0.2.1")
    assert done.returncode != 0 and "NOTZONE" in done.stderr, done.stderr


def test_prerequisites_as_kea_sends_them(served: SplitDNS, tmp_path: Path) -> None:
    """RFC 4703's first try (name not in use, then add A and DHCID), then another client's
    same try (YXDOMAIN: the name is taken), then the owner's update (DHCID matches)."""
    keys = tmp_path / "ddns.key"
    dhcid = "AAIBY2/AuCccgoJbsaxcQc9TUapptP69lOjxfNuVAA2kjEA="
    first = nsupdate(served, keys, f"prereq nxdomain nas.{ZONE}",
                     f"update add nas.{ZONE} 300 A 192.0.2.20",
                     f"update add nas.{ZONE} 300 DHCID {dhcid}")  # fmt: skip
    assert first.returncode == 0, first.stderr
    other = nsupdate(served, keys, f"prereq nxdomain nas.{ZONE}",
                     f"update add nas.{ZONE} 300 A 192.0.2.99")  # fmt: skip
    assert other.returncode != 0 and "YXDOMAIN" in other.stderr, other.stderr
    owner = nsupdate(served, keys, f"prereq yxrrset nas.{ZONE} DHCID {dhcid}",
                     f"update delete nas.{ZONE} A",
                     f"update add nas.{ZONE} 300 A 192.0.2.21")  # fmt: skip
    assert owner.returncode == 0, owner.stderr
    got = answer(served, f"nas.{ZONE}")
    assert [r.to_text() for rr in got.answer for r in rr] == ["192.0.2.21"]
    stranger = nsupdate(served, keys, f"prereq yxrrset nas.{ZONE} DHCID AAEBAAAA",
                        f"update delete nas.{ZONE} A")  # fmt: skip
    assert stranger.returncode != 0 and "NXRRSET" in stranger.stderr, stranger.stderr
    soa = answer(served, ZONE, "SOA")
    assert soa.answer and soa.flags & 0x0400


def test_names_outlive_a_sigkill(tmp_path: Path, upstream: FakeUpstream, state: Path) -> None:
    keys = keyfile(tmp_path / "ddns.key", SECRET)
    text = config(upstream.address, keys, state)
    server = SplitDNS(tmp_path, text)
    try:
        for n in range(20):
            done = nsupdate(server, keys, f"update add host{n}.{ZONE} 300 A 192.0.2.{n + 100}")
            assert done.returncode == 0, done.stderr
    finally:
        server.stop(sig=9)
    again = SplitDNS(tmp_path, text)
    try:
        for n in range(20):
            got = answer(again, f"host{n}.{ZONE}")
            assert [r.to_text() for rr in got.answer for r in rr] == [f"192.0.2.{n + 100}"]
    finally:
        again.stop()


def test_dnsmasq_lease_file_names_and_their_reverse(
    tmp_path: Path, upstream: FakeUpstream, state: Path
) -> None:
    keys = keyfile(tmp_path / "ddns.key", SECRET)
    leases = state.parent / "dnsmasq.leases"  # (where the service user can read it)
    soon = int(time.time()) + 3600
    leases.write_text(
        f"{soon} 02:00:00:00:00:01 192.0.2.31 printer 01:02:00:00:00:00:01\n"
        f"{soon} 02:00:00:00:00:02 192.0.2.32 evil.{ZONE} *\n"  # a dot: no name taken
        f"{soon} 02:00:00:00:00:03 192.0.2.33 * *\n"
        f"{int(time.time()) - 10} 02:00:00:00:00:04 192.0.2.34 expired *\n"
        f"{soon} 02:00:00:00:00:05 192.0.2.35 printer *\n"  # another device's name: not taken
    )
    port = free_port()
    text = config(upstream.address, keys, state, leases)
    text += f"dashboard: {{listen: 127.0.0.1:{port}}}\nquery_log: {{path: '-'}}\n"
    server = SplitDNS(tmp_path, text)
    try:
        got = answer(server, f"printer.{ZONE}")
        assert [r.to_text() for rr in got.answer for r in rr] == ["192.0.2.31"]
        # the dashboard lists it (who, where, from what); /metrics counts it; the log marks it
        names = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/names").read())
        (row,) = [r for r in names["names"] if r["name"] == f"printer.{ZONE}"]
        assert row["records"] == ["A 192.0.2.31"] and row["source"].startswith("lease file")
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
        assert f'splitdns_dynamic_names{{source="lease",zone="{ZONE}"}} 1.0' in metrics
        server.wait_for(f'"upstream":"dynamic zone {ZONE}"')
        conf = next(tmp_path.glob("splitdns-*.yaml"))
        said = subprocess.run(
            [sys.executable, "-m", "splitdns", "explain", "-c", str(conf), f"printer.{ZONE}",
             "--client", "127.0.0.2"], capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert f"dynamic zone {ZONE}: from lease file {leases}" in said.stdout, said
        assert "192.0.2.31" in said.stdout.split("final answer:")[-1], said.stdout
        assert server.dig("-x", "192.0.2.31", "+short", source="127.0.0.2").strip() == (
            f"printer.{ZONE}."
        )
        assert answer(server, f"expired.{ZONE}").rcode() == dns.rcode.NXDOMAIN
        assert answer(server, f"evil.{ZONE}").rcode() == dns.rcode.NXDOMAIN
        # a new lease shows within the poll (a rewrite in place, as dnsmasq does it)
        with leases.open("a") as handle:
            handle.write(f"{soon} 02:00:00:00:00:06 192.0.2.36 laptop *\n")
        deadline = time.monotonic() + 5
        while answer(server, f"laptop.{ZONE}").rcode() != dns.rcode.NOERROR:
            assert time.monotonic() < deadline, "the new lease was not served within 5 s"
            time.sleep(0.2)
        os.unlink(leases)  # the file gone: its names with it
        deadline = time.monotonic() + 5
        while answer(server, f"printer.{ZONE}").rcode() != dns.rcode.NXDOMAIN:
            assert time.monotonic() < deadline, "the names of a removed lease file stayed"
            time.sleep(0.2)
    finally:
        server.stop()


def test_acknowledged_updates_survive_ten_sigkills(
    tmp_path: Path, upstream: FakeUpstream, state: Path
) -> None:
    """1,000 acknowledged updates, the server SIGKILLed at a random moment while they arrive
    (at least ten times, at most 40 rounds): after each restart every update it acknowledged is
    answered, and the store loads."""
    keys = keyfile(tmp_path / "ddns.key", SECRET)
    text = config(upstream.address, keys, state)
    ring = {dns.name.from_text("ddns-key"): dns.tsig.Key("ddns-key", SECRET, "hmac-sha256")}
    rng = random.Random(2136)
    acknowledged: list[int] = []
    sent = kills = 0
    while (len(acknowledged) < 1000 or kills < 10) and kills < 40:
        kills += 1
        server = SplitDNS(tmp_path, text)
        try:
            for n in acknowledged:  # every acknowledged one, after the last crash
                got = answer(server, f"h{n}.{ZONE}", "AAAA")
                assert [r.to_text() for rr in got.answer for r in rr] == [_address(n)], n
            killer = threading.Timer(rng.uniform(0.02, 0.4), os.kill, (server.proc.pid, 9))
            killer.start()
            for _ in range(100):
                update = dns.update.UpdateMessage(ZONE, keyring=ring, keyname="ddns-key")
                update.add(f"h{sent}.{ZONE}.", 300, "AAAA", _address(sent))
                try:
                    reply = dns.query.tcp(update, "127.0.0.1", port=server.port, timeout=2)
                except (OSError, EOFError, dns.exception.DNSException):
                    break  # killed: this one may or may not be on disk, but was never acknowledged
                assert reply.rcode() == dns.rcode.NOERROR
                acknowledged.append(sent)
                sent += 1
            killer.join()
        finally:
            server.stop(sig=9)
    print(f"\n{len(acknowledged)} updates acknowledged across {kills} SIGKILLs")
    assert len(acknowledged) >= 1000 and kills >= 10
    last = SplitDNS(tmp_path, text)
    try:
        for n in acknowledged:
            got = answer(last, f"h{n}.{ZONE}", "AAAA")
            assert [r.to_text() for rr in got.answer for r in rr] == [_address(n)], n
    finally:
        last.stop()


def _address(n: int) -> str:
    return f"2001:db8::{n + 1:x}"


def test_an_update_flood_from_the_lan_is_refused_at_once_and_logged_once(
    served: SplitDNS, tmp_path: Path
) -> None:
    """2,000 UPDATE datagrams from a LAN address outside allow_update: each REFUSED (a header,
    no task, no parse), one log line for all, and the LAN's queries answered meanwhile."""
    update = dns.update.UpdateMessage(ZONE)
    update.add(f"flood.{ZONE}.", 300, "A", "192.0.2.77")
    data = update.to_wire()
    refused = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.2", 0))
        sock.settimeout(2)
        for _ in range(40):  # in bursts of 50, each burst's answers read before the next
            for _ in range(50):
                sock.sendto(data, ("127.0.0.1", served.port))
            assert answer(served, "www.example.test").answer  # the same device's query
            for _ in range(50):
                try:
                    reply = sock.recv(512)
                except TimeoutError:
                    break
                refused += dns.message.from_wire(reply).rcode() == dns.rcode.REFUSED
    assert refused >= 1900, refused  # (UDP on loopback: a few may be dropped by the kernel)
    assert answer(served, f"flood.{ZONE}").rcode() == dns.rcode.NXDOMAIN
    time.sleep(0.3)
    assert served.output.count("not in dynamic.allow_update") == 1, served.output[-2000:]
