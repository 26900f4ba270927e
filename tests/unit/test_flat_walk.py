"""The flat walk (what a UDP query takes) against the awaited chain: the same answers, the
same coalescing, and a bug in a link costs one SERVFAIL, never a hung or lost query."""

from __future__ import annotations

import asyncio
import logging

import dns.message
import dns.rcode
import pytest

from splitdns.answer import chain, links
from splitdns.answer.chain import Rewrite
from tests.support.datagrams import datagrams
from tests.unit.test_cache import make, query


def test_the_flat_walk_answers_as_the_chain_does() -> None:
    server, _, _ = make(size=0)  # no cache: every query walks
    names = ["www.example.test.", "other.example.test.", "nothere.example.test."]
    flat = asyncio.run(datagrams(server, [query(n, msg_id=7) for n in names]))
    by_name = {str(dns.message.from_wire(a).question[0].name): a for a in flat}
    assert sorted(by_name) == sorted(names)
    for name in names:  # byte for byte what the awaited chain answers
        assert by_name[name] == asyncio.run(
            server.respond(query(name, msg_id=7), "127.0.0.1", "udp")
        )
    rewritten = dns.message.from_wire(by_name["www.example.test."])
    assert str(rewritten.answer[0][0]) == "192.0.2.2"
    assert dns.message.from_wire(by_name["nothere.example.test."]).rcode() == dns.rcode.NXDOMAIN


def test_the_flat_walk_coalesces_identical_questions() -> None:
    server, ups, _ = make(size=0)
    ups.delay = 0.05
    answers = asyncio.run(
        datagrams(server, [query("www.example.test.", msg_id=i) for i in range(20)])
    )
    assert len(ups.asked) == 1
    assert sorted(dns.message.from_wire(a).id for a in answers) == list(range(20))
    assert server.pipeline.coalesce.coalesced == 19
    assert not server.pipeline.coalesce.inflight


def test_a_broken_link_costs_one_servfail_and_frees_the_leader(
    caplog: pytest.LogCaptureFixture,
) -> None:
    if chain.__file__ and not chain.__file__.endswith(".py"):
        pytest.skip("compiled build: a link's method cannot be replaced to inject the fault")
    server, _, _ = make(size=0)
    rewrite = next(link for link in server.pipeline.links if isinstance(link, Rewrite))
    healthy = rewrite.after
    calls = 0

    def once_broken(req: links.Request, resp: links.Response) -> links.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("injected fault")
        return healthy(req, resp)

    rewrite.after = once_broken  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="splitdns"):
        first = asyncio.run(datagrams(server, [query("www.example.test.", msg_id=1)]))
    assert [dns.message.from_wire(a).rcode() for a in first] == [dns.rcode.SERVFAIL]
    assert "internal error answering www.example.test" in caplog.text
    assert not server.pipeline.coalesce.inflight  # the leader was released
    again = asyncio.run(datagrams(server, [query("www.example.test.", msg_id=2)]))
    assert str(dns.message.from_wire(again[0]).answer[0][0]) == "192.0.2.2"
