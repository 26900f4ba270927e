"""The systemd unit: `systemd-analyze verify` clean (no warning at all) with the real binary,
and an offline security exposure in systemd's "OK" band."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.support.container import HOST_CA_BUNDLE
from tests.support.tools import need

ROOT = Path(__file__).resolve().parents[2]


def unit_with_this_install(tmp_path: Path) -> Path:
    """The shipped unit with /opt/splitdns replaced by this checkout's virtualenv, so verify
    checks commands that really exist."""
    unit = (ROOT / "deploy" / "splitdns.service").read_text()
    venv_bin = Path(sys.executable).parent
    path = tmp_path / "splitdns.service"
    path.write_text(unit.replace("/opt/splitdns/bin/", f"{venv_bin}/"))
    return path


def test_unit_verifies_without_warnings(tmp_path: Path) -> None:
    analyze = need("systemd-analyze", "systemd")
    pid1 = Path("/proc/1/comm").read_text().strip()
    if pid1 != "systemd":
        print(f"\nPID 1 is {pid1!r}, not systemd: the unit is verified offline, not started")
    out = subprocess.run(
        [analyze, "verify", str(unit_with_this_install(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    complaints = [line for line in out.stderr.splitlines() if "splitdns.service" in line]
    assert complaints == []


def test_unit_hardening_exposure_is_low(tmp_path: Path) -> None:
    analyze = need("systemd-analyze", "systemd")
    out = subprocess.run(
        [analyze, "security", "--offline=yes", "--no-pager", str(unit_with_this_install(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    found = re.search(r"Overall exposure level for splitdns.service: ([0-9.]+)", out.stdout)
    assert found, out.stdout + out.stderr
    exposure = float(found.group(1))
    print(f"\nsystemd-analyze security: exposure {exposure} (0 = locked down, 10 = none)")
    assert exposure <= 2.0


SYSTEMD_IMAGE = "localhost/debian-systemd:local"


def test_unit_starts_for_real_under_systemd_in_a_container(tmp_path: Path) -> None:
    """The shipped unit, run by a real systemd as PID 1 (a podman container of Debian packages
    made with mmdebstrap, host network): installed as the unit's comments say, enabled and
    started, it answers the health probe as a non-root dynamic user, reloads on `systemctl
    reload`, and stops cleanly."""
    import time

    from tests.support.container import Podman
    from tests.support.servers import free_port

    podman = Podman(tmp_path)
    podman.ensure_base_image(SYSTEMD_IMAGE, ("systemd", "systemd-sysv", "dbus"))
    wheel_dir = tmp_path / "wheel"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheel_dir), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = wheel_dir.glob("splitdns-*.whl")
    port = free_port()
    conf = tmp_path / "splitdns.yaml"
    conf.write_text(f'listen: ["127.0.0.1:{port}"]\nupstreams: ["127.0.0.1:9"]\n')
    name = f"splitdns-systemd-{port}"
    volumes = ["-v", f"{wheel_dir}:/wheel:ro", "-v", f"{ROOT / 'deploy'}:/deploy:ro"]
    if HOST_CA_BUNDLE.exists():
        volumes += ["-v", f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro"]
    # CAP_SYS_ADMIN: the unit's sandboxing (ProtectSystem, PrivateTmp...) makes mount
    # namespaces, which systemd on a real host may do and one in a container may not without it
    podman.run("run", "-d", "--name", name, "--systemd=always", "--cap-add", "SYS_ADMIN",
               "--network", "host", *volumes, "-v", f"{conf}:/conf.yaml:ro", SYSTEMD_IMAGE,
               "/sbin/init")  # fmt: skip

    def inside(*argv: str, timeout: float = 300) -> str:
        return podman.run("exec", name, *argv, timeout=timeout).stdout

    try:
        # until boot has finished (it mounts /tmp: a venv made meanwhile loses its files)
        deadline = time.monotonic() + 90
        booted = ""
        while booted not in ("running", "degraded") and time.monotonic() < deadline:
            time.sleep(0.5)
            booted = podman.run("exec", name, "systemctl", "is-system-running",
                                check=False, timeout=60).stdout.strip()  # fmt: skip
        assert booted in ("running", "degraded"), booted
        inside("python3", "-m", "venv", "/opt/splitdns")
        inside("/opt/splitdns/bin/pip", "install", "-q", f"/wheel/{wheel.name}")
        inside("install", "-D", "-m", "0644", "/conf.yaml", "/etc/splitdns/splitdns.yaml")
        inside("install", "-m", "0644", "/deploy/splitdns.service", "/etc/systemd/system/")
        inside("systemctl", "daemon-reload")
        inside("systemctl", "enable", "--now", "splitdns")
        health = [str(Path(sys.executable).parent / "splitdns"), "health", "--server",
                  f"127.0.0.1:{port}"]  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            probe = subprocess.run(health, capture_output=True, text=True, timeout=30)
            if probe.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        status = podman.run("exec", name, "systemctl", "status", "--no-pager", "splitdns",
                            check=False).stdout  # fmt: skip
        assert probe.returncode == 0, probe.stdout + status
        main_pid = inside("systemctl", "show", "-p", "MainPID", "--value", "splitdns").strip()
        uid = inside("awk", "/^Uid:/ {print $2}", f"/proc/{main_pid}/status").strip()
        assert uid not in ("", "0"), status
        inside("systemctl", "reload", "splitdns")
        time.sleep(1)
        journal = inside("journalctl", "-u", "splitdns", "--no-pager")
        assert "reloaded (SIGHUP)" in journal, journal
        inside("systemctl", "stop", "splitdns")
        state = inside("systemctl", "show", "-p", "ActiveState,Result", "splitdns")
        assert "ActiveState=inactive" in state and "Result=success" in state, state + journal
        print(f"\nsystemd in a container: active, uid {uid}, reloaded, stopped cleanly")
    finally:
        podman.remove(name)
