"""The README, followed literally: its quick start, its "own mapping" commands and its container
commands run as written, so the README cannot drift from what works.

Blocks marked `<!-- readme-test: NAME -->` in README.md are extracted (continuation lines
joined, comments dropped) and run with bash in a clean copy of the repository. Substitutions,
each for a reason the machine gives, not the README: a long-running `serve` is started,
checked with `splitdns health` and stopped; listen addresses on port 53 become a free loopback
port (port 53 of a CI host is not ours to take); podman runs with this machine's containers.conf
(tests/support/container.py), builds on the host network (no bridge or firewall rules on the
host) and with the host's CA bundle mounted (pip behind a TLS proxy); the optional mmdebstrap
base is reused when already built.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.container import BASE_IMAGE, HOST_CA_BUNDLE, Podman
from tests.support.servers import free_port

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def commands(name: str) -> list[str]:
    """The shell commands of the README block marked `name`, one per logical line."""
    text = README.read_text()
    match = re.search(rf"<!-- readme-test: {re.escape(name)} -->\n```sh\n(.*?)```", text, re.S)
    assert match, f"README.md has no block marked readme-test: {name}"
    joined = match.group(1).replace("\\\n", " ")
    lines = [line.split(" # ")[0].strip() for line in joined.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


@pytest.fixture(scope="module")
def clean_copy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The repository as a user's clone has it (tracked files only), with the quick start's
    venv made by the quick start itself."""
    tree = tmp_path_factory.mktemp("clone") / "splitdns"
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=30
    ).stdout.split(b"\0")
    for name in filter(None, files):
        source = ROOT / name.decode()
        if source.is_file():
            (tree / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, tree / name.decode())
    yield tree


def serve_then_stop(command: str, cwd: Path, health: list[str], timeout: float = 600) -> str:
    """Start a command that ends in `serve`, wait until `health` says healthy, stop it."""
    log = cwd / f".readme-test-{time.monotonic_ns()}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            ["bash", "-c", command], cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"{command} exited {proc.returncode}: {log.read_text()}")
            if Path(health[0]).exists():  # once pip has installed it
                probe = subprocess.run(health, cwd=cwd, capture_output=True, text=True, timeout=30)
                if probe.returncode == 0:
                    return probe.stdout
            time.sleep(0.5)
        raise AssertionError(f"{command}: not healthy within {timeout} s")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)


def test_quick_start_installs_and_serves_on_the_embedded_default(clean_copy: Path) -> None:
    (first,) = commands("quick-start")
    assert first.endswith(".venv/bin/splitdns serve"), first
    began = time.monotonic()
    said = serve_then_stop(first, clean_copy, [str(clean_copy / ".venv/bin/splitdns"), "health"])
    print(f"\nquick start: installed and healthy in {time.monotonic() - began:.1f} s")
    assert said.strip() == "healthy: 127.0.0.1:5353 answered"


def test_own_mapping_commands_work_from_the_venv(clean_copy: Path) -> None:
    check, serve = commands("own-mapping")
    if not (clean_copy / ".venv/bin/splitdns").exists():
        pytest.skip("needs the quick start's venv (test_quick_start... makes it)")
    out = subprocess.run(["bash", "-c", check], cwd=clean_copy, capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    assert out.returncode == 0 and "zones/home.yaml: OK" in out.stdout, out.stdout + out.stderr
    port = free_port()
    said = serve_then_stop(
        f"{serve} --listen 127.0.0.1:{port}", clean_copy,
        [str(clean_copy / ".venv/bin/splitdns"), "health", "--server", f"127.0.0.1:{port}"],
        timeout=30,
    )  # fmt: skip
    assert "answered" in said


def test_container_commands_build_and_run_the_image(clean_copy: Path, tmp_path: Path) -> None:
    podman = Podman(tmp_path)
    base, build = commands("container-build")
    run, health = commands("container-run")
    if not podman.image_exists(BASE_IMAGE):  # the README calls this step optional
        done = subprocess.run(
            ["bash", "-o", "pipefail", "-c", base],
            cwd=clean_copy, env=podman.env, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        if done.returncode != 0:
            pytest.skip(f"mmdebstrap could not build the base here: {done.stderr[-300:]}")
    dangling_before = set(podman.run("images", "-q", "--filter", "dangling=true").stdout.split())
    began = time.monotonic()
    # podman's RUN steps on the host network (the README's default would make a bridge and
    # firewall rules on this host, which the tests may not touch)
    on_host = build.replace("podman build", "podman build --network host")
    if HOST_CA_BUNDLE.exists():  # pip in the build trusts what this host trusts (a TLS proxy)
        on_host = on_host.replace(
            "podman build", f"podman build -v {HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro"
        )
    built = subprocess.run(
        ["bash", "-c", on_host],
        cwd=clean_copy, env=podman.env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    built_in = time.monotonic() - began
    port = free_port()
    name = "splitdns"
    podman.remove(name)
    try:
        started = subprocess.run(["bash", "-c", run.replace("0.0.0.0:53", f"127.0.0.1:{port}")],
                                 cwd=clean_copy, env=podman.env, capture_output=True, text=True,
                                 timeout=120)  # fmt: skip
        assert started.returncode == 0, started.stdout + started.stderr
        deadline = time.monotonic() + 20
        while True:
            said = subprocess.run(["bash", "-c", health], cwd=clean_copy, env=podman.env,
                                  capture_output=True, text=True, timeout=60)  # fmt: skip
            if said.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        logs = podman.run("logs", name, check=False)
        assert said.stdout.strip() == f"healthy: 127.0.0.1:{port} answered", (
            said.stdout + said.stderr + logs.stdout + logs.stderr
        )
        user = podman.run("top", name, "user").stdout.split()[1:]
        print(f"\ncontainer: built in {built_in:.1f} s from {BASE_IMAGE}; runs as {user}")
        assert user == ["splitdns"]  # the README's mapping names no user: the image's default
    finally:
        podman.remove(name)
        podman.run("rmi", "--force", "localhost/splitdns:latest", check=False)
        dangling = set(podman.run("images", "-q", "--filter", "dangling=true").stdout.split())
        for leftover in dangling - dangling_before:  # the build stage the README's build keeps
            podman.run("rmi", "--force", leftover, check=False)
