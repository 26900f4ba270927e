"""`splitdns doctor` against live parts on loopback: a taken port, a live and a dead upstream,
a stale public address behind a DDNS name, a hairpinned and a not-hairpinned forward."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from tests.support.fakeupstream import FakeUpstream
from tests.support.servers import free_port


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
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "splitdns",
                "doctor",
                "-c",
                str(conf),
                "--ddns",
                "home.example.test",
                "--timeout",
                "1",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    lines = out.stdout.splitlines()
    assert out.returncode == 1, out.stdout + out.stderr
    assert lines[0].startswith(f"FAIL  listen 127.0.0.1:{busy}: taken by ")
    assert "(pid " in lines[0]
    assert lines[1].startswith(f"ok    upstream {fake.address}: answered over udp in ")
    assert lines[2].startswith(f"FAIL  upstream 127.0.0.1:{dead}: no usable answer")
    assert lines[3] == "ok    public address: home.example.test is 203.0.113.9"
    assert lines[4].startswith(
        "FAIL  views.lan.rewrite[0]: 'from' 203.0.113.1/32 no longer holds the public address "
        "203.0.113.9"
    )
    assert lines[5].startswith(f"ok    forward[0] tcp/{open_port} -> 192.0.2.2: reached via")
    assert lines[6].startswith(f"warn  forward[1] tcp/{closed_port} -> 192.0.2.2: not reachable")
    assert "does not hairpin" in lines[6]
    assert lines[7] == "warn  forward[2] udp/27015 -> 192.0.2.9: UDP cannot be probed; skipped"
