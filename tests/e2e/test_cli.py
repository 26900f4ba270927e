"""The command-line contract: check, --version, --help, python -m, bad flags."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from splitdns import __version__

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "splitdns", *args], capture_output=True, text=True, timeout=30
    )


def test_check_broken_file_names_file_line_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "home.yaml"
    bad.write_text(
        "upstreams: [192.0.2.1]\nviews:\n  - name: lan\n    clients: [192.0.2.0/24]\n"
        "    rewrite:\n      - from: 203.0.113.1\n        to: 192.0.2.300\n"
    )
    out = run("check", "-c", str(bad))
    assert out.returncode == 1
    assert out.stderr.strip() == (
        f"{bad}:7: views[0].rewrite[0].to: '192.0.2.300' is not an address or network"
    )


def test_check_good_file_prints_a_summary() -> None:
    out = run("check", "-c", str(ROOT / "zones" / "home.yaml"))
    assert out.returncode == 0, out.stderr
    assert "view lan: clients 192.168.1.0/24, 127.0.0.0/8; 1 rewrite rule(s)" in out.stdout
    assert "rewrite[0] 203.0.113.1 -> 192.168.1.2" in out.stdout
    assert "upstreams (config): 192.168.1.1:53, 9.9.9.9:53" in out.stdout


def test_serve_refuses_a_broken_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("listen: [nope]\n")
    out = run("serve", "-c", str(bad))
    assert out.returncode == 1
    assert f"{bad}:1: listen[0]: 'nope' is not an IP address" in out.stderr


def test_serve_reports_a_port_in_use() -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        out = run("serve", "--listen", f"127.0.0.1:{port}", "--upstream", "127.0.0.1:9")
    assert out.returncode == 1
    pid = __import__("os").getpid()
    assert out.stderr.strip() == (
        f"splitdns: cannot listen on 127.0.0.1:{port} (udp): Address already in use; the port "
        f"is taken by {Path(f'/proc/{pid}/comm').read_text().strip()} (pid {pid}); stop it, or "
        "pass --listen with another address or port"
    )


def test_serve_on_a_privileged_port_without_root_says_what_to_do() -> None:
    import os
    import shutil

    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv (util-linux) to start splitdns as nobody")
    out = subprocess.run(
        ["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups",
         sys.executable, "-m", "splitdns", "serve", "--listen", "127.0.0.1:53"],
        capture_output=True, text=True, timeout=30, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 1
    assert out.stderr.strip() == (
        "splitdns: cannot listen on 127.0.0.1:53 (udp): Permission denied; ports below 1024 "
        "need root (splitdns binds, then becomes `user`) or CAP_NET_BIND_SERVICE (the systemd "
        "unit and the container grant it); or pass --listen 127.0.0.1:5353 for an unprivileged "
        "port"
    )


@pytest.mark.parametrize("sub", [[], ["serve"], ["check"]])
def test_version_and_help_everywhere(sub: list[str]) -> None:
    version = run(*sub, "--version")
    assert version.returncode == 0 and version.stdout.strip() == f"splitdns {__version__}"
    helped = run(*sub, "--help")
    assert helped.returncode == 0 and "usage: splitdns" in helped.stdout


def test_bad_flag_values() -> None:
    out = run("serve", "--listen", "127.0.0.1", "--upstream", "127.0.0.1")
    assert out.returncode == 2 and "needs a port" in out.stderr
