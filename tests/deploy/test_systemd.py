"""The systemd unit: `systemd-analyze verify` clean (no warning at all) with the real binary,
and an offline security exposure in systemd's "OK" band."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

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
