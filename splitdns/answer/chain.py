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
import functools
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Protocol

from splitdns import wire
from splitdns.answer import ddr, localanswers, rewrite
from splitdns.answer.cache import Cache, make_key
from splitdns.answer.dynamicnames import DynamicNames
from splitdns.answer.ipv6 import EmbeddedPublic, ShadowedAnswers, Synthesize, SynthesizedPointers
from splitdns.answer.links import TAKE_CHAIN, Handler, Link, Outcome, Request, Response
from splitdns.answer.rebinding import Guard
from splitdns.answer.views import Admission
from splitdns.config.model import Config
from splitdns.config.upstreams import Forwarding, local_reverse_zone
from splitdns.dynamic.store import Store
from splitdns.upstream.forwarder import Forwarder
from splitdns.upstream.transport import OnDone, Reply, UpstreamFailure, UpstreamStats

log = logging.getLogger(__name__)


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


def build_chain(
    config: Config, upstreams: Forwarder, cache: Cache | None = None, names: Store | None = None
) -> Pipeline:
    """The order of the links, outermost first (each reason is why it stands there); `names`:
    the dynamic zones' store, when the mapping has `dynamic:`."""
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
    if names is not None and config.dynamic is not None:
        handler = DynamicNames(names, config, handler)  # above the reverse zones: it holds some
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
