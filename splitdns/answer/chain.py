"""The handler chain: every query walks these links in one direction.

Each link is a small object with `async __call__(request) -> Response` that either answers or
calls the next link and looks at what comes back. `build_chain` is the one place that orders
them, with the reason for each position. Responses are *bare* messages (no OPT, any ID); the
server finalises them for the client (ID, question case, EDNS, truncation).
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

from splitdns import wire
from splitdns.answer import ddr, localanswers, rewrite, svcb
from splitdns.answer.cache import Cache, make_key
from splitdns.answer.rebinding import Guard
from splitdns.answer.views import is_allowed, select_view
from splitdns.config.model import Config, IPAddress, View
from splitdns.config.upstreams import Forwarding, local_reverse_zone
from splitdns.upstream.forwarder import Forwarder
from splitdns.upstream.transport import UpstreamFailure, UpstreamStats

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


@dataclass(slots=True)
class Response:
    bare: bytes
    outcome: Outcome
    changes: tuple[rewrite.Change, ...] = ()
    upstream: str | None = None
    notes: list[str] = field(default_factory=list)
    ttl_hint: int | None = None  # cache lifetime for answers without TTLs of their own
    rewritten: bool = False  # some address in it was rewritten (also when served from cache)
    final: bool = False  # the client gets these bytes as they are, but for the ID (signed)
    message: wire.Message | None = None  # the walk of `bare`, when one is at hand


Handler = Callable[[Request], Awaitable[Response]]


class RefuseOutsiders:
    """Clients outside `allow` get REFUSED: splitdns is never an open resolver."""

    def __init__(self, config: Config, next_link: Handler) -> None:
        self.allow = config.allow
        self.next = next_link

    async def __call__(self, req: Request) -> Response:
        if not is_allowed(self.allow, req.client):
            return Response(wire.make_error(req.query, wire.REFUSED), Outcome.REFUSED)
        return await self.next(req)


class RefuseUnsupported:
    """Zone transfers and non-IN classes are not a forwarder's business (and CH leaks versions)."""

    def __init__(self, next_link: Handler) -> None:
        self.next = next_link

    async def __call__(self, req: Request) -> Response:
        q = req.query.question
        if q.qclass != wire.CLASS_IN or q.qtype in (wire.TYPE_AXFR, wire.TYPE_IXFR):
            return Response(wire.make_error(req.query, wire.REFUSED), Outcome.REFUSED)
        return await self.next(req)


class RelaySigned:
    """TSIG- and SIG(0)-signed queries go upstream unchanged and their answers come back
    unchanged (RFC 8945 §5.5: a forwarder without the key forwards the message as it is).

    The signature covers every byte but the ID, so nothing may be rewritten, answered locally,
    cached or shared with another query: the client verifies the upstream's signed answer.
    """

    def __init__(self, upstreams: Forwarder, next_link: Handler) -> None:
        self.upstreams = upstreams
        self.next = next_link

    async def __call__(self, req: Request) -> Response:
        if req.query.signed is None:
            return await self.next(req)
        try:
            reply = await self.upstreams.resolve(req.query)
        except UpstreamFailure as exc:
            return Response(
                wire.make_error(req.query, wire.SERVFAIL), Outcome.SERVFAIL, notes=[str(exc)]
            )
        return Response(reply.data, Outcome.FORWARDED, upstream=reply.upstream, final=True)


class DesignatedResolvers:
    """`_dns.resolver.arpa` SVCB (DDR) answered here: splitdns's own encrypted endpoints, never
    an upstream's (see answer/ddr.py)."""

    def __init__(self, config: Config, next_link: Handler) -> None:
        self.config = config
        self.next = next_link

    async def __call__(self, req: Request) -> Response:
        local = ddr.answer(req.query, self.config)
        if local is not None:
            return Response(local, Outcome.LOCAL)
        return await self.next(req)


class DohCanary:
    """`use-application-dns.net` gets NXDOMAIN, so Firefox keeps using this resolver (and its
    rewrites) instead of switching to DNS over HTTPS on its own."""

    NAME = "use-application-dns.net"

    def __init__(self, next_link: Handler) -> None:
        self.next = next_link

    async def __call__(self, req: Request) -> Response:
        if req.query.question.name == self.NAME:
            return Response(wire.make_error(req.query, wire.NXDOMAIN), Outcome.LOCAL)
        return await self.next(req)


class SelectView:
    """Pick the client's view once, so every later link sees the same one."""

    def __init__(self, config: Config, next_link: Handler) -> None:
        self.views = config.views
        self.next = next_link

    async def __call__(self, req: Request) -> Response:
        req.view = select_view(self.views, req.client)
        return await self.next(req)


class LocalHosts:
    """A view's `hosts` answer locally and authoritatively, and are never forwarded."""

    def __init__(self, next_link: Handler) -> None:
        self.next = next_link

    async def __call__(self, req: Request) -> Response:
        if req.view is not None:
            local = localanswers.answer(req.query, req.view)
            if local is not None:
                return Response(local, Outcome.LOCAL)
        return await self.next(req)


class LocalReverse:
    """Reverse lookups of private and special ranges (RFC 6303) are answered here, empty.

    Sending them to a public resolver leaks the LAN's layout and gets nothing back; a
    `upstreams.domains` entry (usually the router for its DHCP names) takes them over.
    """

    def __init__(self, forwarding: Forwarding, next_link: Handler) -> None:
        self.forwarding = forwarding
        self.next = next_link

    async def __call__(self, req: Request) -> Response:
        zone = local_reverse_zone(self.forwarding, req.query.question.name)
        if zone is not None:
            return Response(wire.make_empty_zone_answer(req.query, zone), Outcome.LOCAL)
        return await self.next(req)


class ShadowedAnswers:
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

    async def __call__(self, req: Request) -> Response:
        view = req.view
        qtype = req.query.question.qtype
        if view is None or not view.rules:
            return await self.next(req)
        v4 = any(r.source.version == 4 for r in view.rules)
        v6 = any(r.source.version == 6 for r in view.rules)
        if qtype == wire.TYPE_AAAA and view.aaaa == "drop" and v4:
            return await self.drop_aaaa(req)
        if qtype in svcb.TYPES and view.https == "drop":
            return await self.drop_https(req, v4, v6)
        if qtype in svcb.TYPES and view.https == "rewrite" and view.aaaa == "drop" and v4:
            return await self.drop_v6_hints(req, view)
        return await self.next(req)

    def _sibling(self, req: Request, qtype: int) -> Awaitable[Response]:
        query = req.query.with_type(qtype)
        return self.lookup(Request(query, req.client, req.transport, req.view))

    async def drop_aaaa(self, req: Request) -> Response:
        aaaa, a = await asyncio.gather(self.next(req), self._sibling(req, wire.TYPE_A))
        if a.rewritten and not aaaa.rewritten and wire.rcode_of(aaaa.bare) == wire.NOERROR:
            removed = _addresses(aaaa, wire.TYPE_AAAA)
            changes = a.changes + tuple(
                rewrite.Change(req.query.question.name, old, None, -1) for old in removed
            )
            return self.nodata(req, a, aaaa.upstream, changes)
        return aaaa

    async def drop_https(self, req: Request, v4: bool, v6: bool) -> Response:
        asks = [self.next(req)]
        asks += [self._sibling(req, wire.TYPE_A)] if v4 else []
        asks += [self._sibling(req, wire.TYPE_AAAA)] if v6 else []
        answer, *addresses = await asyncio.gather(*asks)
        rewritten = [r for r in (answer, *addresses) if r.rewritten]
        if not rewritten or wire.rcode_of(answer.bare) != wire.NOERROR:
            return answer
        changes = tuple(c for r in rewritten for c in r.changes)
        return self.nodata(req, rewritten[-1], answer.upstream, changes)

    async def drop_v6_hints(self, req: Request, view: View) -> Response:
        answer, a = await asyncio.gather(self.next(req), self._sibling(req, wire.TYPE_A))
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

    def nodata(
        self,
        req: Request,
        evidence: Response,
        upstream: str | None,
        changes: tuple[rewrite.Change, ...],
    ) -> Response:
        """NODATA with an SOA no longer-lived than the rewritten answer that caused it."""
        ttl = evidence.ttl_hint if evidence.ttl_hint is not None else _smallest_ttl(evidence)
        empty = wire.make_nodata(req.query, req.query.question.name, ttl)
        return Response(empty, Outcome.FILTERED, changes, upstream, ttl_hint=ttl)


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


class Rewrite:
    """Rewrite public addresses in what came from upstream, for the client's view."""

    def __init__(self, next_link: Handler) -> None:
        self.next = next_link

    async def __call__(self, req: Request) -> Response:
        resp = await self.next(req)
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
            rewritten=True,
            message=None if result.rebuilt else resp.message,
        )


class CacheLink:
    """Answer from the per-view cache; store what comes back; serve stale when upstreams fail.

    The server answers most hits before the chain (see Server.fast_answer); this link serves
    TCP and unusual queries, and is where answers are stored.
    """

    def __init__(self, cache: Cache, next_link: Handler) -> None:
        self.cache = cache
        self.next = next_link
        self._refreshing: set[asyncio.Task[Response]] = set()

    async def __call__(self, req: Request) -> Response:
        if not self.cache.enabled:
            return await self.next(req)
        key = self.key(req)
        now = self.cache.clock()
        entry = self.cache.get(key, now)
        if entry is not None:
            if self.cache.wants_prefetch(entry, now):
                self.refresh(req)
            return Response(
                entry.aged(now),
                Outcome.CACHED,
                ttl_hint=entry.ttl,
                rewritten=entry.outcome == Outcome.REWRITTEN,
            )
        return await self.fetch(req, key)

    def key(self, req: Request) -> tuple[str, bytes, bytes, bool, bool]:
        view = req.view.name if req.view is not None else ""
        return make_key(view, req.query.question, req.query.do, req.query.cd)

    async def fetch(self, req: Request, key: tuple[str, bytes, bytes, bool, bool]) -> Response:
        resp = await self.next(req)
        now = self.cache.clock()
        if resp.outcome is Outcome.SERVFAIL:
            stale = self.cache.stale(key, now)
            if stale is not None:
                return Response(stale.stale_copy(), Outcome.STALE, notes=resp.notes)
        if resp.outcome in _CACHEABLE and req.query.rd:  # RD=0 answers are nobody else's
            entry = self.cache.put(
                key, resp.bare, str(resp.outcome), now, resp.ttl_hint, resp.message
            )
            if entry is not None:
                # Clamped TTLs, the same as later hits will show. A copy: with coalescing the
                # response may be shared by other views' requests.
                return replace(resp, bare=entry.aged(now), ttl_hint=entry.ttl, message=None)
        return resp

    def refresh(self, req: Request) -> None:
        """Fetch again in the background (prefetch); the hit is answered meanwhile."""
        task = asyncio.ensure_future(self.fetch(req, self.key(req)))
        self._refreshing.add(task)
        task.add_done_callback(self._refreshing.discard)


_CACHEABLE = frozenset({Outcome.FORWARDED, Outcome.REWRITTEN, Outcome.FILTERED, Outcome.SERVFAIL})


class Coalesce:
    """Identical questions in flight share one upstream query (views do not matter here).

    RD is part of "identical": a non-recursive question may be REFUSED where a recursive one
    gets the answer, and must never hand that refusal to anyone else.
    """

    MAX_INFLIGHT = 10000

    def __init__(self, next_link: Handler) -> None:
        self.next = next_link
        self.inflight: dict[tuple[bytes, bytes, bool, bool, bool], asyncio.Future[Response]] = {}
        self.coalesced = 0

    async def __call__(self, req: Request) -> Response:
        q = req.query
        key = (q.question.wire[:-4].lower(), q.question.wire[-4:], q.do, q.cd, q.rd)
        leader = self.inflight.get(key)
        if leader is not None:
            self.coalesced += 1
            await asyncio.wait([leader])
            if not leader.cancelled() and leader.exception() is None:
                return leader.result()
            return await self.next(req)  # the leader failed oddly: ask on our own
        if len(self.inflight) >= self.MAX_INFLIGHT:
            return await self.next(req)
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self.inflight[key] = future
        try:
            resp = await self.next(req)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: followers re-ask instead
            raise
        finally:
            del self.inflight[key]
        future.set_result(resp)
        return resp


class Forward:
    """Ask the upstreams; any failure is SERVFAIL, never NXDOMAIN."""

    def __init__(self, upstreams: Forwarder) -> None:
        self.upstreams = upstreams

    async def __call__(self, req: Request) -> Response:
        try:
            reply = await self.upstreams.resolve(req.query)
        except UpstreamFailure as exc:
            log.debug("SERVFAIL for %s: %s", req.query.question.name, exc)
            return Response(
                wire.make_error(req.query, wire.SERVFAIL), Outcome.SERVFAIL, notes=[str(exc)]
            )
        bare, message = wire.strip_opt(reply.data, reply.message)
        bare = wire.as_forwarder(wire.zero_negative_ttls(bare, message))
        return Response(bare, Outcome.FORWARDED, upstream=reply.upstream, message=message)


class GuardRebinding:
    """`rebinding_guard`: private addresses never come from a public upstream's answer."""

    def __init__(self, guard: Guard, stats: UpstreamStats, next_link: Handler) -> None:
        self.guard = guard
        self.stats = stats
        self.next = next_link

    async def __call__(self, req: Request) -> Response:
        resp = await self.next(req)
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


@dataclass(slots=True)
class Pipeline:
    """The chain and the parts the server reaches into directly (the cache for fast hits)."""

    handler: Handler
    cache: Cache
    coalesce: Coalesce


def build_chain(config: Config, upstreams: Forwarder, cache: Cache | None = None) -> Pipeline:
    """The order of the links, outermost first (each reason is why it stands there)."""
    cache = cache or Cache(config.cache)
    handler: Handler = Forward(upstreams)  # last: only what nobody else answered leaves the LAN
    guard = Guard(config)
    if guard.enabled:
        handler = GuardRebinding(
            guard, upstreams.stats, handler
        )  # on the raw upstream answer, before rewrites
    coalesce = Coalesce(handler)  # right above forward: one upstream query per question
    handler = Rewrite(coalesce)  # above the shared answer: each view rewrites its own copy
    shadowed = ShadowedAnswers(handler)  # above rewrite: it needs to know the A was rewritten
    handler = CacheLink(cache, shadowed)  # stores final answers, after rewrite and AAAA policy
    shadowed.lookup = handler  # its A/AAAA lookups are answered from (and stored in) the cache
    if config.forwarding.local_reverse:
        handler = LocalReverse(
            config.forwarding, handler
        )  # private reverse zones never leave the LAN
    handler = LocalHosts(handler)  # before the cache: local data is never aged or stale
    if config.doh_canary:
        handler = DohCanary(handler)  # before the cache: a local policy answer, never stored
    handler = DesignatedResolvers(config, handler)  # before any forwarding: never upstream's
    handler = SelectView(config, handler)  # everything below depends on the view
    handler = RelaySigned(upstreams, handler)  # signed: nothing below may touch the bytes
    handler = RefuseUnsupported(handler)  # cheap protocol policy before any work
    handler = RefuseOutsiders(config, handler)  # first: outsiders get nothing but REFUSED
    return Pipeline(handler, cache, coalesce)
