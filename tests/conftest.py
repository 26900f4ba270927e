"""Shared fixtures: a scriptable fake upstream and a real NSD serving the test zone."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fakeupstream import FakeUpstream
from tests.support.servers import NSD
from tests.support.zones import example_zone


def pytest_configure(config: pytest.Config) -> None:
    """A run stopped with SIGTERM (a CI timeout, `kill`) unwinds as Ctrl-C does: every
    fixture's teardown runs, so no namespace, container or server the tests made is left."""

    def stop(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)


TEST_ZONE = example_zone(
    "@       A    203.0.113.1",
    "www     A    203.0.113.1",
    "alias   CNAME www",
    "chain   CNAME alias",
    "mail    A    203.0.113.1",
    "host5   A    203.0.113.5",
    "outside A    198.51.100.7",
    "two     A    203.0.113.1",
    "two     A    198.51.100.9",
    "v6      AAAA 2001:db8:1::10",
    "dual    A    203.0.113.1",
    "dual    AAAA 2001:db8:ffff::1",
)


def big_zone_lines() -> str:
    """40 A records on one name: about 700 bytes, more than a 512-byte UDP answer holds."""
    return "".join(f"big     A    203.0.113.{i}\n" for i in range(1, 41))


@pytest.fixture(scope="session")
def nsd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NSD]:
    server = NSD(tmp_path_factory.mktemp("nsd"), {"example.test": TEST_ZONE + big_zone_lines()})
    yield server
    server.stop()


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    upstream = FakeUpstream().start()
    yield upstream
    upstream.stop()


@pytest.fixture
def fakes() -> Iterator[list[FakeUpstream]]:
    """Fake upstreams a test starts itself (append them): stopped afterwards."""
    made: list[FakeUpstream] = []
    yield made
    for fake in made:
        fake.stop()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path
