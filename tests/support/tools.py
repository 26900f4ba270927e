"""Finding real tools: missing ones skip with a reason, or fail where CI demands real parts."""

from __future__ import annotations

import os
import shutil

import pytest


def need_root(*tools: tuple[str, str]) -> None:
    """Root (namespaces, podman) and each (binary, package); skip with the reason, or fail
    where SPLITDNS_REQUIRE_REAL=1."""
    if os.geteuid() != 0:
        reason = "needs root (it creates network namespaces)"
        if os.environ.get("SPLITDNS_REQUIRE_REAL") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    for binary, package in tools:
        need(binary, package)


def need(binary: str, package: str) -> str:
    """Path of `binary`; skip with a reason if absent (fail when SPLITDNS_REQUIRE_REAL=1)."""
    path = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/sbin")
    if path:
        return path
    reason = f"{binary} not installed (apt-get install {package})"
    if os.environ.get("SPLITDNS_REQUIRE_REAL") == "1":
        pytest.fail(f"{reason}; SPLITDNS_REQUIRE_REAL=1 forbids skipping")
    pytest.skip(reason)
