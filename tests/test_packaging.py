"""The built wheel holds every module and data file of the source tree: an editable install
hides a forgotten subpackage, a user's `pip install .` (and the container image) does not."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_contains_the_whole_package(tmp_path: Path) -> None:
    # A clean copy: an egg-info left by an editable install would paper over the gap.
    tree = tmp_path / "src"
    tree.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, tree / name)
    ignore = shutil.ignore_patterns("*.pyc", "*.so")
    shutil.copytree(ROOT / "splitdns", tree / "splitdns", ignore=ignore)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(tree)],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    # No build warnings for a user to wonder about (setuptools' license-table deprecation was one).
    said = (built.stdout + built.stderr).splitlines()
    assert not [line for line in said if "eprecat" in line or "BuildBackendWarning" in line], said
    # Pure Python unless SPLITDNS_COMPILE=1 asks for mypyc: no C compiler needed to install.
    (wheel,) = tmp_path.glob("splitdns-*-py3-none-any.whl")
    packaged = {n for n in zipfile.ZipFile(wheel).namelist() if n.startswith("splitdns/")}
    source = {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "splitdns").rglob("*")
        if p.is_file() and p.suffix not in (".pyc", ".so") and "__pycache__" not in p.parts
    }
    assert source - packaged == set()
