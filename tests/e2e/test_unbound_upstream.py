"""A real encrypted peer: Unbound serving DNS over TLS and DNS over HTTPS/2 on loopback with a
certificate from a CA made here, splitdns forwarding to it, rewrite applied, dig asking."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.configs import REWRITE_VIEW
from tests.support.encrypted import ThrowawayCA
from tests.support.fakeupstream import FakeUpstream
from tests.support.servers import SplitDNS, Unbound

RECORDS = [
    "www.example.test. 300 IN A 203.0.113.1",
    "other.example.test. 300 IN A 198.51.100.7",
]


@pytest.fixture(scope="module")
def peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Unbound, ThrowawayCA]]:
    workdir = tmp_path_factory.mktemp("unbound")
    ca = ThrowawayCA(workdir)
    key, cert = ca.write_cert(workdir, "resolver.example.test")
    server = Unbound(workdir, RECORDS, key, cert)
    yield server, ca
    server.stop()


def test_unbound_over_tls(tmp_path: Path, peer: tuple[Unbound, ThrowawayCA]) -> None:
    unbound, ca = peer
    proc = SplitDNS(
        tmp_path,
        f'upstreams:\n  default: ["tls://127.0.0.1:{unbound.tls_port}#resolver.example.test"]\n'
        f'  ca_file: "{ca.ca_file}"\n{REWRITE_VIEW}',
    )
    try:
        assert proc.dig("+short", "www.example.test").split() == ["192.0.2.2"]
        assert proc.dig("+short", "other.example.test").split() == ["198.51.100.7"]
        assert "status: NXDOMAIN" in proc.dig("missing.example.test")
    finally:
        assert proc.stop() == 0, proc.output


def test_unbound_over_https(
    tmp_path: Path, peer: tuple[Unbound, ThrowawayCA], fake: FakeUpstream
) -> None:
    unbound, ca = peer
    fake.add("resolver.example.test. 60 IN A 127.0.0.1")
    url = f"https://resolver.example.test:{unbound.https_port}/dns-query"
    proc = SplitDNS(
        tmp_path,
        f'upstreams:\n  default: ["{url}"]\n  bootstrap: ["{fake.address}"]\n'
        f'  ca_file: "{ca.ca_file}"\n{REWRITE_VIEW}',
    )
    try:
        assert proc.dig("+short", "www.example.test").split() == ["192.0.2.2"]
        assert proc.dig("+short", "other.example.test").split() == ["198.51.100.7"]
        assert [s.name for s in fake.seen] == ["resolver.example.test"]
    finally:
        assert proc.stop() == 0, proc.output


def test_unbound_with_a_certificate_for_another_name_is_refused(
    tmp_path: Path, peer: tuple[Unbound, ThrowawayCA]
) -> None:
    unbound, ca = peer
    wrong = f"tls://127.0.0.1:{unbound.tls_port}#dot.example.net"
    proc = SplitDNS(tmp_path, f'upstreams:\n  default: ["{wrong}"]\n  ca_file: "{ca.ca_file}"\n')
    try:
        assert "status: SERVFAIL" in proc.dig("www.example.test")
        assert wrong in proc.wait_for("certificate refused")
    finally:
        assert proc.stop() == 0, proc.output
