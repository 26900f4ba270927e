"""Which mapping each command uses and what it says about it (issue #30): the same default for
every command ($SPLITDNS_CONFIG, then /etc/splitdns/splitdns.yaml, then the embedded one),
$SPLITDNS_LISTEN only where the mapping has no listen:, and the silent mistakes made loud:
an empty file, views outside allow, a replaced file behind a single-file bind mount, a reload
that adds listeners. Each message is pinned with its exact text.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest

from tests.support.fakeupstream import FakeUpstream
from tests.support.servers import Process, free_port

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "splitdns", *args],
        capture_output=True, text=True, timeout=60, env=env, cwd=ROOT,
    )  # fmt: skip


def environ(**extra: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SPLITDNS_")}
    return dict(clean, PYTHONUNBUFFERED="1", **extra)


def serve(config: Path, env: dict[str, str], *argv: str) -> Process:
    proc = Process([sys.executable, "-m", "splitdns", "serve", *argv], env=env)
    try:
        proc.wait_for("serving")
    except BaseException:
        proc.stop()
        raise
    return proc


def test_an_empty_file_is_an_error_naming_it(tmp_path: Path) -> None:
    for text in ("", "# only a comment\n\n# and another\n"):
        empty = tmp_path / "splitdns.yaml"
        empty.write_text(text)
        out = run("check", "-c", str(empty))
        assert out.returncode == 1
        assert (
            out.stderr.strip()
            == f"{empty}: empty: nothing configured; delete it to use the defaults"
        )
        out = run("serve", "-c", str(empty))
        assert out.returncode == 1 and "empty: nothing configured" in out.stderr


def test_host_bits_name_the_network_meant(tmp_path: Path) -> None:
    conf = tmp_path / "a.yaml"
    conf.write_text("allow: [192.168.1.1/24]\n")
    out = run("check", "-c", str(conf))
    assert out.stderr.strip() == (
        f"{conf}:1: allow[0]: '192.168.1.1/24' has host bits set (did you mean 192.168.1.0/24?)"
    )


def test_check_warns_of_view_clients_outside_allow(tmp_path: Path) -> None:
    conf = tmp_path / "a.yaml"
    conf.write_text(
        "upstreams: [192.0.2.53]\nallow: [192.168.1.0/24]\nviews:\n"
        "  - name: lan\n    clients: [192.168.1.0/24, 10.0.0.0/8]\n"
        "  - name: guests\n    clients: [192.168.0.0/16]\n"
    )
    out = run("check", "-c", str(conf))
    assert out.returncode == 0, out.stderr  # a warning, not an error
    warnings = [line for line in out.stdout.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: views.lan.clients: 10.0.0.0/8 is outside allow (192.168.1.0/24): those "
        "clients get REFUSED, never view lan; add 10.0.0.0/8 to allow",
        "warning: views.guests.clients: 192.168.0.0/16 is partly outside allow "
        "(192.168.1.0/24): those clients get REFUSED, never view guests; add 192.168.0.0/16 "
        "to allow",
    ]


def test_the_server_logs_a_refused_client_a_view_names_once_a_minute(tmp_path: Path) -> None:
    conf = tmp_path / "a.yaml"
    port = free_port()
    conf.write_text(
        f'listen: ["127.0.0.1:{port}"]\nupstreams: [127.0.0.1:9]\nallow: [127.0.0.1/32]\n'
        "views:\n  - name: lan\n    clients: [127.0.0.0/8]\n"
    )
    proc = serve(conf, environ(), "-c", str(conf))
    try:
        for _ in range(3):
            q = dns.message.make_query("www.example.test", "A")
            reply = dns.query.udp(q, "127.0.0.1", port=port, source="127.0.0.3", timeout=5)
            assert reply.rcode() == dns.rcode.REFUSED
        time.sleep(0.3)
        said = [line for line in proc.lines if "refused 127.0.0.3" in line]
        assert len(said) == 1, proc.output
        assert said[0].endswith(
            "WARNING splitdns.answer.views: refused 127.0.0.3: view lan names it, but it is "
            "outside allow (127.0.0.1/32); add it to allow"
        ), said
    finally:
        assert proc.stop() == 0, proc.output


def test_every_command_takes_splitdns_config_and_says_so(tmp_path: Path) -> None:
    fake = FakeUpstream().add("www.example.test. 300 IN A 203.0.113.1").start()
    port = free_port()
    conf = tmp_path / "home.yaml"
    conf.write_text(
        f'listen: ["127.0.0.1:{port}"]\nupstreams: ["{fake.address}"]\nallow: [127.0.0.0/8]\n'
        "views:\n  - name: lan\n    clients: [127.0.0.1/32]\n    rewrite:\n"
        "      - {from: 203.0.113.1, to: 192.0.2.2}\n"
    )
    env = environ(SPLITDNS_CONFIG=str(conf), SPLITDNS_LISTEN="127.0.0.1:9")
    proc = serve(conf, env)
    try:
        assert f"serving 127.0.0.1:{port} (udp+tcp) (from the mapping's listen:; " in proc.output
        assert (
            "$SPLITDNS_LISTEN ignored)" in proc.output
            and f"config {conf}: views lan" in proc.output
        )
        said = f"config: {conf} (from $SPLITDNS_CONFIG)"
        explained = run("explain", "www.example.test", env=env)
        assert explained.stdout.splitlines()[0] == said, explained.stdout + explained.stderr
        assert "192.0.2.2" in explained.stdout.split("final answer:")[1]
        doctor = run("doctor", env=env)
        assert doctor.stdout.splitlines()[0] == f"ok    {said}", doctor.stdout
        assert f"ok    listen 127.0.0.1:{port}: served by splitdns (pid " in doctor.stdout
        checked = run("check", env=env)
        assert checked.stdout.splitlines()[:2] == [f"{conf}: OK", said], checked.stdout
        health = run("health", env=env)  # the mapping's listen:, not $SPLITDNS_LISTEN's port 9
        assert health.stdout.strip() == f"healthy: 127.0.0.1:{port} answered", health.stdout
        nat = run("nat", "--target", "nftables", env=env)
        assert nat.returncode == 1
        assert nat.stderr.strip() == (
            f"{conf}: no 'nat:' section to render (zones/port-forwards.yaml has one to start "
            "from; docs/nat.md)"
        )
    finally:
        fake.stop()
        assert proc.stop() == 0, proc.output


def test_splitdns_listen_serves_a_mapping_without_listen(tmp_path: Path) -> None:
    port = free_port()
    conf = tmp_path / "home.yaml"
    conf.write_text("upstreams: [127.0.0.1:9]\n")
    env = environ(SPLITDNS_CONFIG=str(conf), SPLITDNS_LISTEN=f"127.0.0.1:{port}")
    proc = serve(conf, env)
    try:
        assert f"serving 127.0.0.1:{port} (udp+tcp) (from $SPLITDNS_LISTEN)" in proc.output
        assert run("health", env=env).returncode == 0
    finally:
        assert proc.stop() == 0, proc.output


def test_a_reload_that_adds_listeners_names_them() -> None:
    port, dot = free_port(), free_port()
    folder = Path(tempfile.mkdtemp(prefix="splitdns-paths-"))
    folder.chmod(0o755)  # (started as root, splitdns reads it again as nobody)
    conf = folder / "home.yaml"
    conf.write_text(f'listen: ["127.0.0.1:{port}"]\nupstreams: [127.0.0.1:9]\n')
    conf.chmod(0o644)
    proc = serve(conf, environ(), "-c", str(conf))
    try:
        fresh = folder / "home.yaml.new"  # written whole, then put in place (no half file)
        fresh.write_text(
            f'listen: ["127.0.0.1:{port}", "tls://127.0.0.1:{dot}"]\nupstreams: [127.0.0.1:9]\n'
            f"state_dir: {folder / 'state'}\n"
        )
        fresh.chmod(0o644)
        os.replace(fresh, conf)
        line = proc.wait_for("reloaded (", timeout=10)
        assert (
            f"listeners changed, restart splitdns to apply them: + tls://127.0.0.1:{dot}" in line
        ), line
    finally:
        assert proc.stop() == 0, proc.output
        shutil.rmtree(folder)


def test_a_replaced_file_behind_a_single_file_mount_is_warned_about() -> None:
    """As a container sees it: the file bind-mounted alone, then replaced on the host (sed -i
    writes a new file): the mount keeps the old inode, with no link left."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare (util-linux) for a private mount namespace")
    port = free_port()
    folder = Path(tempfile.mkdtemp(prefix="splitdns-paths-"))
    folder.chmod(0o755)  # (started as root, splitdns looks at it again as nobody)
    host = folder / "host.yaml"
    host.write_text(f'listen: ["127.0.0.1:{port}"]\nupstreams: [127.0.0.1:9]\n')
    host.chmod(0o644)
    seen = folder / "seen" / "splitdns.yaml"
    seen.parent.mkdir()
    seen.parent.chmod(0o755)
    seen.touch()
    script = f"mount --bind {host} {seen} && exec {sys.executable} -m splitdns serve -c {seen}"
    proc = Process(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                   env=environ())  # fmt: skip
    try:
        proc.wait_for("serving")
        replaced = folder / "host.yaml.new"
        replaced.write_text(host.read_text().replace("127.0.0.1:9", "127.0.0.1:10"))
        replaced.chmod(0o644)
        os.replace(replaced, host)  # what sed -i does
        line = proc.wait_for("was replaced on the host", timeout=10)
        assert line.endswith(
            f"{seen} was replaced on the host (sed -i, an editor, git pull), but this "
            "single-file mount still shows the old one, so the change cannot be seen: mount "
            f"the directory instead (-v DIR:{seen.parent}:ro) and restart"
        ), line
    finally:
        proc.stop(signal.SIGTERM)
        shutil.rmtree(folder)


def test_profile_warns_when_dot_is_given_an_address() -> None:
    out = run("profile", "--dot", "192.168.1.53")
    assert out.returncode == 0
    assert out.stderr.strip() == (
        "splitdns profile: warning: --dot 192.168.1.53 is an address, but iOS and macOS check "
        "the certificate against this name: give the name on the certificate (e.g. "
        "dns.home.example.com) and the address with --address 192.168.1.53"
    )
