"""The handler chain: every query walks these links in one direction.

Each link either answers (`before`) or lets the query pass and then looks at what comes back
(`after`). `build_chain` is the one place that orders them, with the reason for each position.
The chain runs two ways over the same links: awaited (`await pipeline.handler(request)`, for
TCP, DoT, DoH and tools) and flat (`pipeline.walk(request, done)`, for UDP): plain calls down,
one callback from the upstream, plain calls back up. No coroutine, task or future per query,
which was half of a miss's CPU. Responses are *bare* messages (no OPT, any ID); the server
finalises them for the client (ID, question case, EDNS, truncation).
"""

from __future__ import annotations

import asyncio
import enum
import functools
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Protocol

from splitdns import wire
from splitdns.answer import ddr, localanswers, rewrite, svcb
from splitdns.answer.cache import Cache, make_key
from splitdns.answer.rebinding import Guard
from splitdns.answer.views import Admission
from splitdns.config.dns64 import WKP, embeds_non_global, extract, reverse_v6, synthesize
from splitdns.config.model import Config, IPAddress, View
from splitdns.config.upstreams import Forwarding, local_reverse_zone
from splitdns.upstream.forwarder import Forwarder
from splitdns.upstream.transport import Handover, OnDone, Reply, UpstreamFailure, UpstreamStats

log = logging.getLogger(__name__)


class Outcome(enum.StrEnum):
    """What happened to a query: a low-cardinality label for logs and metrics."""

    FORWARDED = "forwarded"
    REWRITTEN = "rewritten"
    LOCAL = "local"
    FILTERED = "filtered"
    CACHED = "cached"
    STALE = "stale"
    REFUSED = "refused"
    SERVFAIL = "servfail"
    FORMERR = "formerr"
    NOTIMP = "notimp"


@dataclass(slots=True)
class Request:
    query: wire.Query
    client: IPAddress
    transport: str
    view: View | None = None
    started: float = 0.0  # time.monotonic() when it arrived, for the query log
    #: While it leads identical questions: the future its followers wait on (made when the
    #: first follower comes; most questions have none), else None.
    leader: asyncio.Future[Response] | None = None
    #: What the express lane knows when it hands the question over (see serve/express.py).
    handover: Handover | None = None


@dataclass(slots=True)
class Response:
    bare: bytes
    outcome: Outcome
    changes: tuple[rewrite.Change, ...] = ()
    upstream: str | None = None
    notes: list[str] = field(default_factory=list)
    ttl_hint: int | None = None  # cache lifetime for answers without TTLs of their own
    #: the question's own answer (its answer section, along its CNAME chain) was rewritten,
    #: also when served from the cache; glue rewritten alone leaves it False: the AAAA/HTTPS
    #: policies decide on where the name itself points
    rewritten: bool = False
    final: bool = False  # the client gets these bytes as they are, but for the ID (signed)
    message: wire.Message | None = None  # the walk of `bare`, when one is at hand
    #: An Extended DNS Error for the client (RFC 8914): info code and reason, or None.
    ede: tuple[int, str] | None = None
    #: what a cached answer's rewrite was, for the dashboard's rows (never counted again)
    cached_changes: tuple[rewrite.Change, ...] = ()


Handler = Callable[[Request], Awaitable[Response]]

#: What `before` returns when this query needs the awaited form of the link (it waits for
#: more than one answer): the flat walk then awaits the link itself, in a task.
TAKE_CHAIN = Response(b"", Outcome.SERVFAIL)


class Link:
    """One step of the chain; see the module docstring for the two ways it runs."""

    next: Handler

    def before(self, req: Request) -> Response | None:
        """An answer ends the way down (links above still see it in `after`); None passes."""
        return None

    def after(self, req: Request, resp: Response) -> Response:
        """What comes back up from the links below, changed or not."""
        return resp

    def abort(self, req: Request, exc: BaseException) -> None:
        """Something below failed unexpectedly: undo what `before` registered."""

    async def __call__(self, req: Request) -> Response:
        resp = self.before(req)
        if resp is not None:
            return resp
        return self.after(req, await self.next(req))


class RefuseOutsiders(Link):
    """Clients outside `allow` get REFUSED: splitdns is never an open resolver."""

    def __init__(self, admission: Admission, next_link: Handler) -> None:
        self.admission = admission
        self.next = next_link

    def before(self, req: Request) -> Response | None:
        allowed, view = self.admission.decide(req.client)
        if not allowed:
            if view is not None:  # a mistake in the mapping, not an outsider: say so
                self.admission.refused_in_view(req.client, view)
            refused = wire.make_error(req.query, wire.REFUSED)
            return Response(refused, Outcome.REFUSED, ede=(wire.EDE_PROHIBITED, ""))
        return None


class RefuseUnsupported(Link):
    """Zone transfers and non-IN classes are not a forwarder's business (and CH leaks versions)."""

    def __init__(self, next_link: Handler) -> None:
        self.next = next_link

    def before(self, req: Request) -> Response | None:
        q = req.query.question
        if q.qclass != wire.CLASS_IN or q.qtype in (wire.TYPE_AXFR, wire.TYPE_IXFR):
            refused = wire.make_error(req.query, wire.REFUSED)
            return Response(refused, Outcome.REFUSED, ede=(wire.EDE_NOT_SUPPORTED, ""))
        return None


class RelaySigned(Link):
    """TSIG- and SIG(0)-signed queries go upstream unchanged and their answers come back
    unchanged (RFC 8945 §5.5: a forwarder without the key forwards the message as it is).

    The signature covers every byte but the ID, so nothing may be rewritten, answered locally,
    cached or shared with another query: the client verifies the upstream's signed answer.
    """

    def __init__(self, upstreams: Forwarder, next_link: Handler) -> None:
        self.upstreams = upstreams
        self.next = next_link

    def before(self, req: Request) -> Response | None:
        return None if req.query.signed is None else TAKE_CHAIN

    async def __call__(self, req: Request) -> Response:
        if req.query.signed is None:
            return await self.next(req)
        try:
            reply = await self.upstreams.resolve(req.query)
        except UpstreamFailure as exc:
            return _unreachable(req, exc)
        return Response(reply.data, Outcome.FORWARDED, upstream=reply.upstream, final=True)


class DesignatedResolvers(Link):
    """`_dns.resolver.arpa` SVCB (DDR) answered here: splitdns's own encrypted endpoints, never
    an upstream's (see answer/ddr.py)."""

    def __init__(self, config: Config, next_link: Handler) -> None:
        self.config = config
        self.next = next_link
        self.names = ddr.names(config)

    def before(self, req: Request) -> Response | None:
        if req.query.question.name not in self.names:
            return None
        local = ddr.answer(req.query, self.config)
        return Response(local, Outcome.LOCAL) if local is not None else None


class DohCanary(Link):
    """`use-application-dns.net` gets NXDOMAIN, so Firefox keeps using this resolver (and its
    rewrites) instead of switching to DNS over HTTPS on its own."""

    NAME: ClassVar[str] = "use-application-dns.net"

    def __init__(self, next_link: Handler) -> None:
        self.next = next_link

    def before(self, req: Request) -> Response | None:
        if req.query.question.name == self.NAME:
            return Response(wire.make_error(req.query, wire.NXDOMAIN), Outcome.LOCAL)
        return None


class PrivateRelayCanary(Link):
    """`block_private_relay: true`: `mask.icloud.com` and `mask-h2.icloud.com` get NXDOMAIN,
    which Apple documents as how a network tells its devices iCloud Private Relay is not
    available here: they then resolve through this server (and its rewrites), and the user is
    told so. Opt-in: it turns a privacy feature off for the whole LAN."""

    NAMES: ClassVar[frozenset[str]] = frozenset({"mask.icloud.com", "mask-h2.icloud.com"})

    def __init__(self, next_link: Handler) -> None:
        self.next = next_link

    def before(self, req: Request) -> Response | None:
        if req.query.question.name in self.NAMES:
            return Response(wire.make_error(req.query, wire.NXDOMAIN), Outcome.LOCAL)
        return None


class SelectView(Link):
    """Pick the client's view once, so every later link sees the same one."""

    def __init__(self, admission: Admission, next_link: Handler) -> None:
        self.admission = admission
        self.next = next_link

    def before(self, req: Request) -> Response | None:
        req.view = self.admission.decide(req.client)[1]
        return None


class LocalHosts(Link):
    """A view's `hosts` answer locally and authoritatively, and are never forwarded."""

    def __init__(self, next_link: Handler) -> None:
        self.next = next_link

    def before(self, req: Request) -> Response | None:
        if req.view is not None:
            local = localanswers.answer(req.query, req.view)
            if local is not None:
                return Response(local, Outcome.LOCAL)
        return None


class LocalReverse(Link):
    """Reverse lookups of private and special ranges (RFC 6303) are answered here, empty.

    Sending them to a public resolver leaks the LAN's layout and gets nothing back; a
    `upstreams.domains` entry (usually the router for its DHCP names) takes them over.
    """

    def __init__(self, forwarding: Forwarding, next_link: Handler) -> None:
        self.forwarding = forwarding
        self.next = next_link

    def before(self, req: Request) -> Response | None:
        zone = local_reverse_zone(self.forwarding, req.query.question.name)
        if zone is not None:
            return Response(wire.make_empty_zone_answer(req.query, zone), Outcome.LOCAL)
        return None


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


class Rewrite(Link):
    """Rewrite public addresses in what came from upstream, for the client's view."""

    def __init__(self, next_link: Handler) -> None:
        self.next = next_link

    def after(self, req: Request, resp: Response) -> Response:
        if resp.outcome is not Outcome.FORWARDED or req.view is None or not req.view.rules:
            return resp
        result = rewrite.rewrite(resp.bare, req.query.question.name, req.view, resp.message)
        if not result.changes:
            return resp
        return Response(
            result.data,
            Outcome.REWRITTEN,
            result.changes,
            resp.upstream,
            rewritten=result.answered,
            message=None if result.rebuilt else resp.message,
        )


class CacheLink(Link):
    """Answer from the per-view cache; store what comes back; serve stale when upstreams fail.

    The server answers most hits before the chain (see Server.fast_answer); this link serves
    TCP and unusual queries, and is where answers are stored.
    """

    def __init__(self, cache: Cache, next_link: Handler) -> None:
        self.cache = cache
        self.next = next_link
        self._refreshing: set[asyncio.Task[Response]] = set()

    def before(self, req: Request) -> Response | None:
        if not self.cache.enabled:
            return None
        now = self.cache.clock()
        entry = self.cache.get(self.key(req), now)
        if entry is None:
            return None
        if self.cache.wants_prefetch(entry, now):
            self.refresh(req)
        return Response(
            entry.aged(now),
            Outcome.CACHED,
            ttl_hint=entry.ttl,
            rewritten=entry.rewritten,
            cached_changes=entry.changes,
        )

    def key(self, req: Request) -> tuple[str, bytes, bytes, bool, bool]:
        view = req.view.name if req.view is not None else ""
        return make_key(view, req.query.question, req.query.do, req.query.cd)

    def after(self, req: Request, resp: Response) -> Response:
        """Store what came back; a stale answer instead of SERVFAIL when one is kept."""
        if not self.cache.enabled:
            return resp
        key = self.key(req)
        now = self.cache.clock()
        if resp.outcome is Outcome.SERVFAIL:
            stale = self.cache.stale(key, now)
            if stale is not None:
                stale_answer = stale.stale_copy()
                ede = (wire.EDE_STALE, "")
                return Response(stale_answer, Outcome.STALE, notes=resp.notes, ede=ede)
        if resp.outcome in _CACHEABLE and req.query.rd:  # RD=0 answers are nobody else's
            entry = self.cache.put(
                key, resp.bare, str(resp.outcome), now, resp.ttl_hint, resp.message,
                resp.rewritten, resp.changes,
            )  # fmt: skip
            if entry is not None:
                # Clamped TTLs, the same as later hits will show. A copy: with coalescing the
                # response may be shared by other views' requests.
                return Response(
                    entry.aged(now),
                    resp.outcome,
                    resp.changes,
                    resp.upstream,
                    resp.notes,
                    entry.ttl,
                    resp.rewritten,
                    resp.final,
                    ede=resp.ede,
                )
        return resp

    def refresh(self, req: Request) -> None:
        """Fetch again in the background (prefetch); the hit is answered meanwhile."""
        task = asyncio.ensure_future(self.fetch(req))
        self._refreshing.add(task)
        task.add_done_callback(self._refreshing.discard)

    async def fetch(self, req: Request) -> Response:
        return self.after(req, await self.next(req))


_CACHEABLE = frozenset({Outcome.FORWARDED, Outcome.REWRITTEN, Outcome.FILTERED, Outcome.SERVFAIL})


#: (the question's name in wire form, lower case; type and class; DO; CD; RD)
CoalesceKey = tuple[bytes, bytes, bool, bool, bool]


class Leading(Protocol):
    """What stands in the coalescing table for a question in flight: a Request, or the
    express lane's exchange; followers put the future they wait on in `leader`."""

    leader: asyncio.Future[Response] | None


class Coalesce(Link):
    """Identical questions in flight share one upstream query (views do not matter here).

    RD is part of "identical": a non-recursive question may be REFUSED where a recursive one
    gets the answer, and must never hand that refusal to anyone else.
    """

    MAX_INFLIGHT: ClassVar[int] = 10000

    def __init__(self, next_link: Handler) -> None:
        self.next = next_link
        self.inflight: dict[CoalesceKey, Leading] = {}
        self.coalesced = 0

    @staticmethod
    def key(req: Request) -> CoalesceKey:
        q = req.query
        return (q.question.wire[:-4].lower(), q.question.wire[-4:], q.do, q.cd, q.rd)

    def before(self, req: Request) -> Response | None:
        """Lead (registered for followers to find), or follow a leader (awaited form)."""
        return None if self.lead(self.key(req), req) else TAKE_CHAIN

    def lead(self, key: CoalesceKey, leading: Leading) -> bool:
        """Register `leading` as the one asking for `key` (unless the table is full); False
        when another already leads it: follow that one."""
        if key in self.inflight:
            return False
        if len(self.inflight) < self.MAX_INFLIGHT:
            self.inflight[key] = leading
        return True

    def let_go(self, key: CoalesceKey, leading: Leading) -> asyncio.Future[Response] | None:
        """Unregister `leading` if it leads `key`; the future its followers wait on, if any
        came."""
        if self.inflight.get(key) is not leading:
            return None
        del self.inflight[key]
        return leading.leader

    def after(self, req: Request, resp: Response) -> Response:
        leader = self._release(req)
        if leader is not None:
            leader.set_result(resp)
        return resp

    def abort(self, req: Request, exc: BaseException) -> None:
        leader = self._release(req)
        if leader is not None:
            leader.set_exception(exc)
            leader.exception()  # retrieved: followers re-ask instead

    def _release(self, req: Request) -> asyncio.Future[Response] | None:
        return self.let_go(self.key(req), req)

    async def __call__(self, req: Request) -> Response:
        if self.before(req) is TAKE_CHAIN:
            return await self.follow(req)
        try:
            resp = await self.next(req)
        except BaseException as exc:
            self.abort(req, exc)
            raise
        return self.after(req, resp)

    async def follow(self, req: Request) -> Response:
        """Wait for the leader's answer; ask on our own if it failed oddly."""
        leading = self.inflight[self.key(req)]
        if leading.leader is None:
            leading.leader = asyncio.get_running_loop().create_future()
        leader = leading.leader
        self.coalesced += 1
        await asyncio.wait([leader])
        if not leader.cancelled() and leader.exception() is None:
            return leader.result()
        return await self.next(req)


class Forward:
    """Ask the upstreams; any failure is SERVFAIL, never NXDOMAIN."""

    def __init__(self, upstreams: Forwarder) -> None:
        self.upstreams = upstreams

    async def __call__(self, req: Request) -> Response:
        if req.handover is not None and req.handover.reply is not None:  # the lane's reply
            return self.response(req, req.handover.reply, None)
        try:
            reply = await self.upstreams.resolve(req.query)
        except UpstreamFailure as exc:
            return self.response(req, None, exc)
        return self.response(req, reply, None)

    def ask(self, req: Request, on_done: OnDone) -> None:
        """The flat form: `on_done` hears the reply (or failure), for `response` to turn."""
        handover = req.handover
        if handover is None:
            self.upstreams.ask(req.query, on_done)
        elif handover.reply is not None:  # the express lane's reply, already checked
            asyncio.get_running_loop().call_soon(on_done, handover.reply, None)
        else:
            self.upstreams.ask(req.query, on_done, handover)

    def response(self, req: Request, reply: Reply | None, exc: BaseException | None) -> Response:
        """The upstream's answer as a bare response; SERVFAIL for UpstreamFailure."""
        if isinstance(exc, UpstreamFailure):
            log.debug("SERVFAIL for %s: %s", req.query.question.name, exc)
            return _unreachable(req, exc)
        if exc is not None or reply is None:
            raise exc or RuntimeError("upstream answer missing")
        bare, message = wire.strip_opt(reply.data, reply.message)
        bare = wire.as_forwarder(wire.zero_negative_ttls(bare, message))
        return Response(bare, Outcome.FORWARDED, upstream=reply.upstream, message=message)


class GuardRebinding(Link):
    """`rebinding_guard`: private addresses never come from a public upstream's answer."""

    def __init__(self, guard: Guard, stats: UpstreamStats, next_link: Handler) -> None:
        self.guard = guard
        self.stats = stats
        self.next = next_link

    def after(self, req: Request, resp: Response) -> Response:
        name = req.query.question.name
        if resp.outcome is not Outcome.FORWARDED or not self.guard.applies_to(name):
            return resp
        message = resp.message if resp.message is not None else wire.walk(resp.bare)
        filtered = self.guard.filter(resp.bare, message)
        if filtered is None:
            return resp
        cleaned, removed = filtered
        self.stats.rebinding_removed += removed
        log.info("rebinding guard: removed private addresses from the answer for %s", name)
        return replace(resp, bare=cleaned, message=None, notes=[*resp.notes, "rebinding guard"])


Spawn = Callable[[Coroutine[Any, Any, Any]], Any]


@dataclass(slots=True)
class Pipeline:
    """The chain and the parts the server reaches into directly (the cache for fast hits)."""

    handler: Handler
    cache: Cache
    coalesce: Coalesce
    admission: Admission  # who may ask, in which view (the server's hit path asks it too)
    links: list[Link] = field(default_factory=list)  # outermost first, down to `forward`
    forward: Forward | None = None

    def walk(self, req: Request, done: Callable[[Response], None], spawn: Spawn) -> None:
        """The chain as plain calls: `before` down the links, the upstream's callback at the
        bottom, `after` back up, then `done` (exactly once, unless the server stops first).
        A link whose query needs waiting on several answers is awaited in a task (`spawn`)."""
        links = self.links
        depth = 0
        try:
            for depth, link in enumerate(links):
                resp = link.before(req)
                if resp is None:
                    continue
                if resp is TAKE_CHAIN:
                    spawn(self._awaited(link, depth, req, done))
                    return
                self._climb(req, depth - 1, resp, done)
                return
            assert self.forward is not None
            depth = len(links)
            self.forward.ask(req, functools.partial(self._asked, req, done))
        except Exception as exc:
            done(_broken(req, exc, links[:depth]))

    def _asked(
        self,
        req: Request,
        done: Callable[[Response], None],
        reply: Reply | None,
        exc: BaseException | None,
    ) -> None:
        assert self.forward is not None
        try:
            resp = self.forward.response(req, reply, exc)
        except Exception as error:
            resp = _broken(req, error, self.links)
            done(resp)
            return
        self._climb(req, len(self.links) - 1, resp, done)

    async def _awaited(
        self, link: Link, depth: int, req: Request, done: Callable[[Response], None]
    ) -> None:
        try:
            resp = await link(req)
        except Exception as exc:
            resp = _broken(req, exc, self.links[:depth])
            done(resp)
            return
        self._climb(req, depth - 1, resp, done)

    def _climb(
        self, req: Request, depth: int, resp: Response, done: Callable[[Response], None]
    ) -> None:
        links = self.links
        try:
            while depth >= 0:
                resp = links[depth].after(req, resp)
                depth -= 1
        except Exception as exc:
            resp = _broken(req, exc, links[: depth + 1])
        done(resp)


def _unreachable(req: Request, exc: UpstreamFailure) -> Response:
    """No upstream gave a usable answer: SERVFAIL, and why as an Extended DNS Error (22, "No
    Reachable Authority", with the upstreams' failures), for the client's `dig` or logs."""
    servfail = wire.make_error(req.query, wire.SERVFAIL)
    ede = (wire.EDE_NO_REACHABLE_AUTHORITY, str(exc))
    return Response(servfail, Outcome.SERVFAIL, notes=[str(exc)], ede=ede)


def _broken(req: Request, exc: BaseException, above: list[Link]) -> Response:
    """A bug met on the flat walk: logged, links above told, the client gets SERVFAIL."""
    log.error(
        "internal error answering %s from %s",
        req.query.question.name,
        req.client,
        exc_info=exc,
    )
    for link in above:
        link.abort(req, exc)
    return Response(wire.make_error(req.query, wire.SERVFAIL), Outcome.SERVFAIL)


def build_chain(config: Config, upstreams: Forwarder, cache: Cache | None = None) -> Pipeline:
    """The order of the links, outermost first (each reason is why it stands there)."""
    cache = cache if cache is not None else Cache(config.cache)  # (an empty one is falsy)
    handler: Handler = Forward(upstreams)  # last: only what nobody else answered leaves the LAN
    guard = Guard(config)
    if guard.enabled:
        handler = GuardRebinding(
            guard, upstreams.stats, handler
        )  # on the raw upstream answer, before rewrites
    coalesce = Coalesce(handler)  # right above forward: one upstream query per question
    handler = Rewrite(coalesce)  # above the shared answer: each view rewrites its own copy
    embedded = EmbeddedPublic(config.nat64_prefixes, handler)  # above rewrite: its rules
    handler = embedded
    shadowed = ShadowedAnswers(handler)  # above rewrite: it needs to know the A was rewritten
    embedded.shadowed = shadowed
    dns64 = Synthesize(shadowed)  # above the AAAA policy: it makes AAAA where none is left
    handler = CacheLink(cache, dns64)  # stores final answers, after rewrite and AAAA policy
    shadowed.lookup = handler  # its A/AAAA lookups are answered from (and stored in) the cache
    if config.forwarding.local_reverse:
        handler = LocalReverse(
            config.forwarding, handler
        )  # private reverse zones never leave the LAN
    pointers = SynthesizedPointers(handler)
    if any(v.dns64 is not None for v in config.views):
        handler = pointers  # above the reverse zones: a NAT64 prefix may sit inside one
    handler = LocalHosts(handler)  # before the cache: local data is never aged or stale
    if config.doh_canary:
        handler = DohCanary(handler)  # before the cache: a local policy answer, never stored
    if config.block_private_relay:
        handler = PrivateRelayCanary(handler)  # the same, for Apple's Private Relay
    handler = DesignatedResolvers(config, handler)  # before any forwarding: never upstream's
    admission = Admission(config.allow, config.views)
    handler = SelectView(admission, handler)  # everything below depends on the view
    handler = RelaySigned(upstreams, handler)  # signed: nothing below may touch the bytes
    handler = RefuseUnsupported(handler)  # cheap protocol policy before any work
    handler = RefuseOutsiders(admission, handler)  # first: outsiders get nothing but REFUSED
    pointers.whole = handler
    links: list[Link] = []
    step: Handler = handler
    while isinstance(step, Link):
        links.append(step)
        step = step.next
    assert isinstance(step, Forward)
    return Pipeline(handler, cache, coalesce, admission, links, step)
