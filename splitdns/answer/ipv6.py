"""The links for IPv6 answers against a split horizon: no public address beside an internal one.

A rewritten IPv4 answer is bypassed by a public AAAA (dual-stack clients prefer it), by the
ipv6hint of an HTTPS record, or by an upstream's DNS64 answer that embeds the public IPv4
address: `ShadowedAnswers` applies the view's `aaaa:` and `https:` policies, `EmbeddedPublic`
makes such DNS64 answers again from the internal address, and `Synthesize` with
`SynthesizedPointers` is the view's own DNS64 (RFC 6147) and its reverse names.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
from collections.abc import Awaitable, Callable

from splitdns import wire
from splitdns.answer import rewrite, svcb
from splitdns.answer.links import TAKE_CHAIN, Handler, Link, Outcome, Request, Response
from splitdns.config.dns64 import WKP, embeds_non_global, extract, reverse_v6, synthesize
from splitdns.config.model import IPAddress, View

log = logging.getLogger(__name__)


class ShadowedAnswers(Link):
    """What a rewritten name's other answers may say: no public address beside the internal one.

    `aaaa: drop`: a dual-stack client prefers AAAA, so a public IPv6 address beside a rewritten
    IPv4 answer would bypass the rewrite: AAAA gets NODATA, and public ipv6hint values leave
    HTTPS/SVCB records. `https: drop`: HTTPS/SVCB questions for names whose A or AAAA the view
    rewrites get NODATA (no hints, no ECH config pointing at a public front end). The A/AAAA
    lookups run at the same time as the question itself, through the same chain below, and
    every NODATA made here carries an SOA so stubs can cache it (RFC 2308 §5).
    """

    def __init__(self, next_link: Handler) -> None:
        self.next = next_link
        # The A/AAAA lookups go through the cache when there is one (build_chain wires it).
        self.lookup: Handler = next_link

    def before(self, req: Request) -> Response | None:
        return None if self.policy(req) is None else TAKE_CHAIN

    def policy(self, req: Request) -> Callable[[], Awaitable[Response]] | None:
        """The policy this question falls under, if any (each asks more than one question)."""
        view = req.view
        qtype = req.query.question.qtype
        if view is None or not view.rules or qtype not in _SHADOWING:
            return None
        v4 = any(r.source.version == 4 for r in view.rules)
        v6 = any(r.source.version == 6 for r in view.rules)
        if qtype == wire.TYPE_AAAA and view.aaaa == "drop" and v4:
            return functools.partial(self.drop_aaaa, req)
        if qtype in svcb.TYPES and view.https == "drop":
            return functools.partial(self.drop_https, req, v4, v6)
        if qtype in svcb.TYPES and view.https == "rewrite" and view.aaaa == "drop" and v4:
            return functools.partial(self.drop_v6_hints, req, view)
        return None

    async def __call__(self, req: Request) -> Response:
        policy = self.policy(req)
        return await (policy() if policy is not None else self.next(req))

    def sibling(self, req: Request, qtype: int) -> Awaitable[Response]:
        """The same question for another type, through the cache (build_chain wires it)."""
        query = req.query.with_type(qtype)
        return self.lookup(Request(query, req.client, req.transport, req.view))

    async def drop_aaaa(self, req: Request) -> Response:
        aaaa, a = await _all(self.next(req), self.sibling(req, wire.TYPE_A))
        if a.rewritten and not aaaa.rewritten and wire.rcode_of(aaaa.bare) == wire.NOERROR:
            removed = _addresses(aaaa, wire.TYPE_AAAA)
            changes = a.changes + tuple(
                rewrite.Change(req.query.question.name, old, None, -1) for old in removed
            )
            return await self.nodata(req, a, aaaa.upstream, changes, (aaaa, a))
        return aaaa

    async def drop_https(self, req: Request, v4: bool, v6: bool) -> Response:
        asks = [self.next(req)]
        asks += [self.sibling(req, wire.TYPE_A)] if v4 else []
        asks += [self.sibling(req, wire.TYPE_AAAA)] if v6 else []
        answer, *addresses = await asyncio.gather(*asks)
        rewritten = [r for r in (answer, *addresses) if r.rewritten]
        if not rewritten or wire.rcode_of(answer.bare) != wire.NOERROR:
            return answer
        changes = tuple(c for r in rewritten for c in r.changes)
        seen = (answer, *addresses)
        return await self.nodata(req, rewritten[-1], answer.upstream, changes, seen)

    async def drop_v6_hints(self, req: Request, view: View) -> Response:
        answer, a = await _all(self.next(req), self.sibling(req, wire.TYPE_A))
        if not a.rewritten or wire.rcode_of(answer.bare) != wire.NOERROR:
            return answer
        internal = [r.target for r in view.rules if r.target.version == 6]

        def public(address: ipaddress.IPv6Address) -> bool:
            return not any(address in net for net in internal)

        data, removed, changed = svcb.remove_v6_hints(answer.bare, public)
        if not removed:
            return answer
        if changed:
            data = wire.remove_rrsigs(wire.set_flags(data, clear_bits=wire.AD), changed)
        drops = tuple(rewrite.Change(name, old, None, -1, "ipv6hint") for name, old in removed)
        return Response(
            data,
            Outcome.REWRITTEN,
            answer.changes + drops,
            answer.upstream,
            rewritten=True,
        )

    async def nodata(
        self,
        req: Request,
        evidence: Response,
        upstream: str | None,
        changes: tuple[rewrite.Change, ...],
        seen: tuple[Response, ...],
    ) -> Response:
        """NODATA with the zone's SOA, no longer-lived than the rewritten answer that caused
        it. The SOA comes from the answers already in hand, else from the name's SOA question
        (asked through the cache: once per zone and SOA lifetime); none if no one gives one."""
        ttl = evidence.ttl_hint if evidence.ttl_hint is not None else _smallest_ttl(evidence)
        soa = next((s for r in seen if (s := wire.find_soa(r.bare)) is not None), None)
        if soa is None:
            asked = await self.sibling(req, wire.TYPE_SOA)
            soa = wire.find_soa(asked.bare)
        empty = wire.make_nodata(req.query, soa, ttl)
        return Response(empty, Outcome.FILTERED, changes, upstream, ttl_hint=ttl)


_SHADOWING = frozenset({wire.TYPE_AAAA, *svcb.TYPES})


class EmbeddedPublic(Link):
    """An upstream doing DNS64 (a router's or ISP's resolver: unbound's dns64 module, RFC
    7050) answers AAAA with the public IPv4 address embedded in its NAT64 prefix: a dual-stack
    client prefers it and goes through NAT64 to the public address, around the rewrite. So in
    every view that rewrites IPv4 (and does no DNS64 of its own: Synthesize handles those), an
    AAAA inside a known prefix (`nat64_prefixes`, and those discovered at start) whose
    embedded address a rule maps is made again from the internal address with the same prefix
    (a network-specific one), or removed (the well-known prefix must not embed a non-global
    address: RFC 6052 section 3.1); nothing left: NODATA with the zone's SOA.
    """

    def __init__(self, prefixes: tuple[ipaddress.IPv6Network, ...], next_link: Handler) -> None:
        self.next = next_link
        self.configured = prefixes
        self.discovered: tuple[ipaddress.IPv6Network, ...] = ()  # serve/server.py tells it
        self.shadowed: ShadowedAnswers | None = None  # its NODATA (with the SOA); wired later

    @property
    def prefixes(self) -> tuple[ipaddress.IPv6Network, ...]:
        return (*self.configured, *(p for p in self.discovered if p not in self.configured))

    @staticmethod
    def applies(req: Request) -> bool:
        view = req.view
        return (
            view is not None
            and view.dns64 is None
            and req.query.question.qtype == wire.TYPE_AAAA
            and any(r.source.version == 4 for r in view.rules)
        )

    def before(self, req: Request) -> Response | None:
        return TAKE_CHAIN if self.applies(req) else None

    async def __call__(self, req: Request) -> Response:
        resp = await self.next(req)
        if not self.applies(req) or resp.outcome not in (Outcome.FORWARDED, Outcome.REWRITTEN):
            return resp
        if wire.rcode_of(resp.bare) != wire.NOERROR:
            return resp
        prefixes = self.prefixes
        found = _addresses(resp, wire.TYPE_AAAA)
        if not any(a in p for a in found for p in prefixes):
            return resp  # the usual answer: one pass over its addresses
        view = req.view
        assert view is not None
        rules = tuple(r for r in rewrite.ordered_rules(view) if r.source.version == 4)
        message = resp.message if resp.message is not None else wire.walk(resp.bare)
        names = rewrite.chain_names(resp.bare, message, req.query.question.name)
        changes: list[rewrite.Change] = []

        def make(owner: str, v6: IPAddress) -> ipaddress.IPv6Address | None:
            prefix = next((p for p in prefixes if v6 in p), None)
            if prefix is None:
                return ipaddress.IPv6Address(int(v6))
            v4 = extract(prefix, ipaddress.IPv6Address(int(v6)))
            rule = rewrite.pick_rule(rules, v4, names)
            if rule is None:
                return ipaddress.IPv6Address(int(v6))
            internal = rule.map(v4)
            assert isinstance(internal, ipaddress.IPv4Address)
            wkp = prefix == WKP  # (RFC 6052 section 3.1: it must not embed a non-global one)
            made = None if wkp and embeds_non_global(internal) else synthesize(prefix, internal)
            changes.append(rewrite.Change(owner, v6, made, rule.index, "nat64"))
            return made

        data, kept = wire.map_aaaa(req.query, resp.bare, make)
        if not changes:
            return resp
        if kept == 0 and self.shadowed is not None:
            empty = await self.shadowed.nodata(req, resp, resp.upstream, tuple(changes), (resp,))
            empty.notes.append(
                "nat64: the upstream's AAAA embeds a public address this view rewrites, and the "
                "well-known prefix cannot embed the internal one"
            )
            return empty
        return Response(
            data, Outcome.REWRITTEN, (*resp.changes, *changes), resp.upstream, rewritten=True
        )


class SynthesizedPointers(Link):
    """RFC 6147 section 5.3.1: a PTR question for an address under a DNS64 view's prefix is
    a CNAME to the in-addr.arpa name of the IPv4 address it embeds, answered from there by the
    whole chain (hosts, RFC 6303 zones, the upstreams). Above the local reverse zones: a
    network-specific prefix may sit inside one (2001:db8::/32)."""

    def __init__(self, next_link: Handler) -> None:
        self.next = next_link
        self.whole: Handler = next_link  # build_chain hands it the chain's top

    @staticmethod
    def address(req: Request) -> ipaddress.IPv4Address | None:
        view = req.view
        if view is None or view.dns64 is None or req.query.question.qtype != wire.TYPE_PTR:
            return None
        v6 = reverse_v6(req.query.question.name)
        if v6 is None or v6 not in view.dns64.prefix:
            return None
        return extract(view.dns64.prefix, v6)

    def before(self, req: Request) -> Response | None:
        return TAKE_CHAIN if self.address(req) is not None else None

    async def __call__(self, req: Request) -> Response:
        v4 = self.address(req)
        if v4 is None:
            return await self.next(req)
        target = v4.reverse_pointer
        query = req.query.with_name(target, wire.TYPE_PTR)
        answer = await self.whole(Request(query, req.client, req.transport, req.view))
        data = wire.cname_then(req.query, target, DNS64_TTL_WITHOUT_SOA, answer.bare)
        return Response(data, Outcome.LOCAL, answer.changes, answer.upstream)


DNS64_TTL_WITHOUT_SOA = 600  # RFC 6147 section 5.1.7: when the AAAA answer carries no SOA


class Synthesize(Link):
    """DNS64 (RFC 6147) for views with `dns64:`: an AAAA question whose name has no usable
    AAAA but has A records gets AAAA made from them, after the view's rewrite, so IPv6-only
    clients keep the split horizon.

    For an A the view rewrote (inside a rule's `to`): the server's own IPv6 address when the
    view names one (`servers`), else the prefix + the internal address with a network-specific
    prefix, else nothing (the well-known prefix must not embed it: RFC 6052 section 3.1);
    never the public address synthesized. An upstream's own synthesized AAAA (inside the
    view's prefix) counts as none: it embeds the public address. No AAAA made at all: NODATA
    with the zone's SOA. CD=1: no synthesis (the client validates: section 5.5).
    """

    def __init__(self, shadowed: ShadowedAnswers) -> None:
        self.next = shadowed  # below it: the AAAA policy, whose sibling lookups and NODATA
        self.shadowed = shadowed  # (with the zone's SOA) it shares
        #: the upstreams' own NAT64 prefixes, found at start (RFC 7050: serve/server.py)
        self.discovered: tuple[ipaddress.IPv6Network, ...] = ()

    @staticmethod
    def applies(req: Request) -> bool:
        view = req.view
        return (
            view is not None
            and view.dns64 is not None
            and req.query.question.qtype == wire.TYPE_AAAA
            and not req.query.flags & wire.CD
        )

    def before(self, req: Request) -> Response | None:
        return TAKE_CHAIN if self.applies(req) else None

    async def __call__(self, req: Request) -> Response:
        if not self.applies(req):
            return await self.next(req)
        aaaa = await self.next(req)
        view = req.view
        assert view is not None and view.dns64 is not None
        settings = view.dns64
        if wire.rcode_of(aaaa.bare) != wire.NOERROR:
            return aaaa  # NXDOMAIN and failures pass (section 5.1.2)
        usable = [
            a
            for a in _addresses(aaaa, wire.TYPE_AAAA)
            if not any(a in net for net in (*settings.synthetic, *self.discovered))
        ]
        if usable:
            return aaaa
        a = await self.shadowed.sibling(req, wire.TYPE_A)
        if wire.rcode_of(a.bare) != wire.NOERROR or not _addresses(a, wire.TYPE_A):
            return aaaa
        soa = wire.find_soa(aaaa.bare)
        cap = min(soa.ttl, soa.numbers[4]) if soa is not None else DNS64_TTL_WITHOUT_SOA
        targets = [r.target for r in view.rules if r.target.version == 4]
        made: list[rewrite.Change] = []

        def make(v4: ipaddress.IPv4Address) -> ipaddress.IPv6Address | None:
            internal = any(v4 in net for net in targets)
            v6 = settings.server_for(v4) if internal else None  # the server's own address
            if v6 is None and not (settings.well_known and embeds_non_global(v4)):
                v6 = synthesize(settings.prefix, v4)  # (the WKP must not embed a non-global)
            if internal or v6 is None:
                made.append(rewrite.Change(req.query.question.name, v4, v6, -2, "dns64"))
            return v6

        data, count = wire.aaaa_from_a(req.query, a.bare, make, cap)
        if count == 0:
            empty = await self.shadowed.nodata(req, a, a.upstream, tuple(made), (aaaa, a))
            empty.notes.append("dns64: no AAAA can be made for this view (see `splitdns doctor`)")
            return empty
        return Response(
            wire.set_flags(data, clear_bits=wire.AD),
            Outcome.REWRITTEN if made else Outcome.FORWARDED,
            (*a.changes, *made),
            a.upstream,
            rewritten=bool(made) or a.rewritten,
        )


async def _all(*asks: Awaitable[Response]) -> list[Response]:
    """asyncio.gather as what it returns at run time (a list; mypyc checks the type)."""
    return await asyncio.gather(*asks)


def _smallest_ttl(resp: Response) -> int:
    message = resp.message if resp.message is not None else wire.walk(resp.bare)
    ttls = [
        int.from_bytes(resp.bare[r.ttl_offset : r.ttl_offset + 4], "big")
        for r in message.records
        if r.section == wire.ANSWER
    ]
    return min(ttls, default=0)


def _addresses(resp: Response, rtype: int) -> list[IPAddress]:
    """The addresses of `rtype` records in a response's answer section."""
    message = resp.message if resp.message is not None else wire.walk(resp.bare)
    found: list[IPAddress] = []
    for r in message.records:
        if r.section == wire.ANSWER and r.rtype == rtype and r.rdlength in (4, 16):
            found.append(
                ipaddress.ip_address(resp.bare[r.rdata_offset : r.rdata_offset + r.rdlength])
            )
    return found
