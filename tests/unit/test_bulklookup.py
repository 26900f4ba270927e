"""commands/bulklookup.py, `splitdns import`'s many questions at once, against the fake
upstream on loopback (tests/support/fakeupstream.py): every question settled (a lost first
try asked again), replies that do not match (another ID, another question, another source
port, sent before the real one) never taken, and the names asked as `asking` puts them."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterator

import pytest

from splitdns.commands import bulklookup
from splitdns.config.model import Endpoint
from tests.support.fakeupstream import Action, FakeUpstream

HOSTS = 300


@pytest.fixture
def upstream(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeUpstream]:
    # (the fake answers from a thread per query: 256 at once outlast a short timeout)
    monkeypatch.setattr(bulklookup, "PARALLEL", 32)
    fake = FakeUpstream(default=Action(forged_first=True))
    fake.add(*(f"host{n}.example.test. 60 IN A 203.0.113.{n % 250 + 1}" for n in range(HOSTS)))
    fake.actions["host7.example.test"] = Action(forged_first=True, lost_first=True)
    fake.start()
    yield fake
    fake.stop()


def test_every_question_settled_and_only_by_its_own_reply(upstream: FakeUpstream) -> None:
    names = [f"host{n}.example.test" for n in range(HOSTS)] + ["nothing.example.test"]
    questions = [(name, rtype) for name in names for rtype in ("A", "AAAA")]
    found = asyncio.run(
        bulklookup.ask_all(questions, Endpoint("127.0.0.1", upstream.port), timeout=1)
    )
    assert len(found["A"]) == len(names) and len(found["AAAA"]) == len(names)
    for n in range(HOSTS):
        assert found["A"][f"host{n}.example.test"] == (
            ipaddress.ip_address(f"203.0.113.{n % 250 + 1}"),
        )
        assert found["AAAA"][f"host{n}.example.test"] is None  # NODATA
    assert found["A"]["nothing.example.test"] is None  # NXDOMAIN
    asked = [(s.name, s.qtype) for s in upstream.seen if s.name == "host7.example.test"]
    assert asked.count(("host7.example.test", "A")) == 2  # lost once, asked again


def test_names_are_asked_as_asking_puts_them_and_repeats_skipped(
    upstream: FakeUpstream,
) -> None:
    known: bulklookup.Answers = {"A": {"host1.example.test": None}, "AAAA": {}}
    found = asyncio.run(
        bulklookup.ask_all(
            [("host1.example.test", "A"), ("*.example.test", "A")],
            Endpoint("127.0.0.1", upstream.port),
            timeout=0.5,
            found=known,
            asking=lambda name: "host9." + name[2:] if name.startswith("*.") else name,
        )
    )
    assert [s.name for s in upstream.seen] == ["host9.example.test"]  # host1 known already
    assert found["A"]["*.example.test"] == (ipaddress.ip_address("203.0.113.10"),)
    assert found["A"]["host1.example.test"] is None


def test_a_silent_upstream_ends_within_the_timeouts() -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        found = asyncio.run(
            bulklookup.ask_all(
                [(f"host{n}.example.test", "A") for n in range(1000)],
                Endpoint("127.0.0.1", silent.getsockname()[1]),
                timeout=0.3,
            )
        )
    finally:
        silent.close()
    assert found == {"A": {}, "AAAA": {}}  # nothing settled: left to the caller's slow path
