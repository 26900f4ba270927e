"""A short coverage-guided run of each atheris harness (tests/fuzz/coverage.py) in CI.

About 20 s per harness, seeded with tests/fuzz/corpus/; any finding fails the test with the
input's path and the harness's message (keep the input in the corpus once it is fixed). The
long runs and their figures are in tests/fuzz/README.md. SPLITDNS_ATHERIS_SECONDS changes the
budget per harness.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
CORPUS = Path(__file__).parent / "corpus"
IMPORT_SEEDS = ROOT / "tests" / "fixtures" / "import"
SECONDS = int(os.environ.get("SPLITDNS_ATHERIS_SECONDS", "20"))


IMPORTS = ["adguard", "pihole", "dnsmasq", "unbound", "technitium", "coredns", "blocky", "hosts"]


@pytest.mark.parametrize(
    "harness",
    ["query", "reply", "differential", "update", "http2", *(f"import-{fmt}" for fmt in IMPORTS)],
)
def test_coverage_guided_harness_finds_nothing(harness: str, tmp_path: Path) -> None:
    try:
        import atheris  # noqa: F401
    except ImportError:
        if os.environ.get("SPLITDNS_REQUIRE_REAL"):
            pytest.fail("atheris is not installed (a test extra: pip install '.[test]')")
        pytest.skip("atheris is not installed (a test extra: pip install '.[test]')")
    work = tmp_path / "corpus"
    seconds = SECONDS
    if harness.startswith("import-"):  # seeded with the import tests' realistic files
        work.mkdir()
        for seed in sorted(IMPORT_SEEDS.glob("*")):
            shutil.copy(seed, work / seed.name)
        seconds = max(2, SECONDS // 10)
    elif harness in ("update", "http2"):  # seeded: valid UPDATEs; an h2 client's requests
        work.mkdir()
        made = subprocess.run(
            [sys.executable, "-c", "import sys; from tests.fuzz.coverage import "
             f"{harness}_seeds as seeds; [open(f'{{sys.argv[1]}}/seed-{{i}}', 'wb').write(s) "
             "for i, s in enumerate(seeds())]", str(work)],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
        seconds = max(2, SECONDS // 2)
    else:
        shutil.copytree(CORPUS, work)
    result = subprocess.run(
        [sys.executable, "-m", "tests.fuzz.coverage", harness, f"-max_total_time={seconds}",
         f"-artifact_prefix={tmp_path}/", "-print_final_stats=1", str(work)],
        cwd=ROOT, capture_output=True, text=True, timeout=seconds * 3 + 60,
    )  # fmt: skip
    found = sorted(tmp_path.glob("crash-*")) + sorted(tmp_path.glob("leak-*"))
    tail = "\n".join(result.stderr.splitlines()[-25:])
    assert result.returncode == 0 and not found, f"{harness}: {found}\n{tail}"
    runs = [line for line in result.stderr.splitlines() if "stat::number_of_executed_units" in line]
    print(f"{harness}: {runs[-1].split(':')[-1].strip() if runs else '?'} executions")
