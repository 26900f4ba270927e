"""The express lane: the usual UDP miss answered in one pass, the chain kept for the rest.

A LAN's misses are nearly all alike: an A or AAAA question from an allowed client, one plain
UDP upstream answering with A/AAAA records (maybe a CNAME, NS and glue). For those the lane
does what the chain would, in one flat pass: a fresh random-port socket and random ID (or a
pooled socket with `socket_pool`), a reader callback, `quickscan` instead of the full walk,
the view's rewrite, the cache store, the counters, the answer. It makes no policy of its
own: it takes a question only when no link of the chain but cache, coalescing, rewrite and
forwarding would act on it (`build_chain` stays the definition), and it hands everything
else back whole:

- questions the chain answers itself (DDR, the DoH canary, `hosts`, reverse zones, signed
  or unusual queries, AAAA under `aaaa: drop`), groups it cannot ask as the group would
  (`parallel`, `fastest` with several, DoT/DoH, the first upstream out of rotation) and
  settings it does not do (query log, rebinding guard, 0x20 case randomisation) go to the
  chain before anything is sent (as do ECS-trusted senders: the server routes them first);
- replies that are valid but unusual (NXDOMAIN, NODATA, DNSSEC, other types, addresses under
  rules with `names`) are walked in full and handed to the chain as the upstream's reply;
- a truncated reply is asked again over TCP, then handed over like the unusual ones;
- SERVFAIL, REFUSED, socket errors and silence (by the hedge time, or the deadline with one
  upstream) hand the question to the chain, which asks the other upstreams within what is
  left of the same deadline (failover and serve-stale are its own).

tests/unit/test_express.py holds the lane to the chain's answers byte for byte.
"""

from __future__ import annotations

import _socket
import asyncio
import ipaddress
import logging
import time
from collections import deque
from collections.abc import Iterable
from typing import Any, Protocol

from splitdns import wire
from splitdns.answer import ddr, rewrite
from splitdns.answer.cache import Entry, lifetime
from splitdns.answer.chain import Coalesce, CoalesceKey, DohCanary, Pipeline, PrivateRelayCanary
from splitdns.answer.links import Outcome, Response
from splitdns.answer.quickscan import GLUE, scan
from splitdns.config.model import Config, View
from splitdns.limits.inflight import InFlight
from splitdns.serve import replay
from splitdns.serve.lanewatch import Deadlines, Readiness
from splitdns.serve.published import Counts, Tapped, query_key
from splitdns.serve.querylog import QueryLog
from splitdns.upstream import packets
from splitdns.upstream.forwarder import Forwarder
from splitdns.upstream.group import Member, UpstreamGroup
from splitdns.upstream.health import Health
from splitdns.upstream.plain import PlainDNS, fresh_socket
from splitdns.upstream.socketpool import Pooled, SocketPool
from splitdns.upstream.transport import Attempt, Handover, Reply, UpstreamFailure, begin_task


class DatagramSender(Protocol):
    """Where a UDP answer goes: an asyncio transport, or a wildcard listener's reply path."""

    def sendto(self, data: bytes, addr: Any) -> None: ...

    def is_closing(self) -> bool: ...


class LaneOwner(Protocol):
    """What the lane uses of serve/server.py's Server (which owns the lane)."""

    config: Config
    counts: Counts
    querylog: QueryLog
    tap: deque[Tapped] | None  # a dashboard watches: each answer is told to it
    _flat: int  # UDP questions in flight without a task (the server waits for them to stop)
    inflight: InFlight  # the server took a slot for each question the lane takes

    def respond_flat(
        self,
        data: bytes,
        host: str,
        addr: tuple[Any, ...],
        transport: DatagramSender,
        handover: Handover | None = None,
    ) -> None: ...


log = logging.getLogger(__name__)

CacheKey = tuple[str, bytes, bytes, bool, bool]  # answer.cache.Key
Reading = wire.Peeked
_A_AAAA = (b"\x00\x01\x00\x01", b"\x00\x1c\x00\x01")  # type and class IN, as on the wire
_UNUSUAL = 0xF | wire.TC  # an rcode or truncation: not the usual answer
_FORWARDED, _REWRITTEN = str(Outcome.FORWARDED), str(Outcome.REWRITTEN)
_QUERY_KEYS = {  # the query counter's labels by question type: forwarded, rewritten
    qtype_class: (query_key("udp", qtype, _FORWARDED), query_key("udp", qtype, _REWRITTEN))
    for qtype_class, qtype in zip(_A_AAAA, (wire.TYPE_A, wire.TYPE_AAAA), strict=True)
}


def _changes(
    before: bytes, after: bytes, addresses: list[tuple[int, int]], rules: list[int]
) -> list[tuple[bytes, bytes, int]]:
    """(old address, new address, rule) of each record the lane rewrote, in order, as bytes
    (only while a dashboard watches; read as text for the rows shown): the reply before and
    after, at the records' offsets."""
    if not rules:
        return []
    changed = []
    used = iter(rules)
    for rtype, offset in addresses:
        size = 4 if rtype & 0xFF == wire.TYPE_A else 16
        old, new = before[offset : offset + size], after[offset : offset + size]
        if old != new:
            changed.append((old, new, next(used, -1)))
    return changed


def nat64_ranges(prefixes: Iterable[ipaddress.IPv6Network]) -> tuple[tuple[int, int], ...]:
    """NAT64 prefixes as (first, last) integers, for the lane's one comparison per AAAA."""
    return tuple((int(p.network_address), int(p.broadcast_address)) for p in prefixes)


def _cached_changes(
    query: bytes, before: bytes, after: bytes, addresses: list[tuple[int, int]], rules: list[int]
) -> tuple[rewrite.Change, ...]:
    """What the lane rewrote, as the chain tells it (kept with the cached answer for the
    dashboard's rows of hits); only for a rewritten answer, so a plain miss pays nothing."""
    if not rules:
        return ()
    name = wire.parse_query(query).question.name
    return tuple(
        rewrite.Change(name, ipaddress.ip_address(old), ipaddress.ip_address(new), rule)
        for old, new, rule in _changes(before, after, addresses, rules)
    )


class ViewPlan:
    """What a client's view means on the fast paths, decided once per view object: its name
    (the cache-hit key's first part) and, for the lane, the rewrite rules as integer maps in
    precedence order (rewrite's plan of the view), and its replayed hits (serve/replay.py). The
    server memoises one per client address and hands it to both."""

    __slots__ = ("embeds", "maps4", "maps6", "name", "named", "replies", "shadowed_aaaa", "view")

    def __init__(self, view: View | None) -> None:
        self.view = view
        self.name = view.name if view is not None else ""
        plan = rewrite.view_plan(view) if view is not None and view.rules else None
        rules = plan.rules if plan is not None else ()
        self.maps4 = plan.maps4 if plan is not None else ()
        self.maps6 = plan.maps6 if plan is not None else ()
        self.named = any(r.names for r in rules)  # rules that look at names: the chain's
        v4_rules = any(r.source.version == 4 for r in rules)
        # ShadowedAnswers (aaaa: drop) and Synthesize (dns64) act on AAAA questions here:
        # they take the chain.
        self.shadowed_aaaa = view is not None and (
            (view.aaaa == "drop" and v4_rules) or view.dns64 is not None
        )
        # EmbeddedPublic acts on an AAAA answer inside a NAT64 prefix here: the chain's
        self.embeds = v4_rules and view is not None and view.dns64 is None
        self.replies: dict[bytes, replay.Replay] = {}  # by the query's bytes after its ID


class Express:
    """The lane for one config (made again on reload); `take` says whether it took a datagram."""

    def __init__(self, server: LaneOwner, pipeline: Pipeline, forwarder: Forwarder) -> None:
        config = server.config
        self.server = server
        self.cache = pipeline.cache
        self.coalesce: Coalesce = pipeline.coalesce
        self.forwarder = forwarder
        # hosts entries or domain routes: the name decides the route (or the chain answers)
        self.by_name = any(len(v.hosts) for v in config.views) or bool(forwarder.routes)
        special = set(ddr.names(config)) | ({DohCanary.NAME} if config.doh_canary else set())
        special |= PrivateRelayCanary.NAMES if config.block_private_relay else set()
        self.special = frozenset(wire.encode_name(n).lower() for n in special)
        # the dynamic zones' names are the chain's (answered locally, never forwarded)
        zones = config.dynamic.zones if config.dynamic is not None else ()
        self.local_zones = tuple(wire.encode_name(z).lower() for z in zones)
        self.loop: asyncio.AbstractEventLoop | None = None  # the first question's (servers are
        # made before their loop runs in some tools), and the deadlines kept on it
        self.deadlines: Deadlines
        self.readiness: Readiness
        self.route = _Route(forwarder.default)  # (the forwarder's groups are its for life)
        self._routes: dict[int, _Route] = {}  # domain routes' groups
        #: the NAT64 prefixes as integer ranges (configured; the discovered join at start)
        self.nat64 = nat64_ranges(config.nat64_prefixes)

    @staticmethod
    def applies(server: LaneOwner, pipeline: Pipeline) -> bool:
        """Whether this config leaves the lane anything to do (settings it does not do)."""
        config = server.config
        return (
            pipeline.cache.enabled
            and not server.querylog.enabled
            and not config.rebinding.enabled
            and not config.forwarding.case_randomization
        )

    def take(
        self,
        data: bytes,
        peeked: wire.Peeked,
        plan: ViewPlan,
        key: CacheKey,
        host: str,
        addr: tuple[Any, ...],
        transport: DatagramSender,
    ) -> bool:
        """Start answering a cache miss from an allowed client (`peeked`: wire.peek's reading
        of it; `plan`: the client's view; `key`: the question's cache key there, whose parts
        are the name, type and class, DO and CD); False (nothing done) when the chain must
        take it. The query goes out as packets.make_upstream_query makes it, on a fresh connected
        socket (a random port) with a random ID, or on a pooled one with an ID free there
        (`socket_pool`). One flat function: each step a call of its own cost more than it."""
        _, lname, qtype_class, do, cd = key
        flags = peeked[1]
        if qtype_class not in _A_AAAA or not flags & wire.RD:
            return False
        if lname in self.special or lname.endswith(b"\x04arpa\x00"):
            return False
        if self.local_zones and any(lname.endswith(z) for z in self.local_zones):
            return False
        if plan.shadowed_aaaa and qtype_class == _A_AAAA[1]:
            return False
        if self.by_name:
            forwarder = self.forwarder
            name = wire.read_name(data, wire.HEADER_LEN)[0]
            view = plan.view
            if view is not None and len(view.hosts) and view.hosts.lookup(name) is not None:
                return False
            group = forwarder.route(name)[1]
            route = self._routes.get(id(group))
            if route is None or route.group is not group:
                route = self._routes[id(group)] = _Route(group)
        else:
            route = self.route
        health = route.health
        if health is None or not health.up:
            return False
        if route.lone:
            wait = route.wait
        else:  # the chain takes over at the hedge time (and asks the others)
            route.group._start_due_probes()
            wait = round(min(health.attempt_timeout(), route.group.timeout), 2)
        coalescing = (lname, qtype_class, do, cd, True)
        if self.loop is None:  # (the epoll set may fail to open: then the next try again)
            loop = asyncio.get_running_loop()
            self.readiness = Readiness(loop)
            self.deadlines = Deadlines(loop, self.readiness.idle)
            self.loop = loop
        began = time.monotonic()
        exchange = _Exchange(
            self, data, host, addr, transport, plan, route, peeked, coalescing, key, began
        )
        if not self.coalesce.lead(coalescing, exchange):
            return False  # a follower: the chain waits on the leader
        pool = route.pool
        question = data[wire.HEADER_LEN : peeked[3]]
        try:
            if pool is not None:
                pooled, msg_id = pool.checkout()
                exchange.pooled = pooled
                exchange.msg_id = msg_id
                pooled.receivers[msg_id] = exchange
                self.deadlines.watch(exchange, wait)
                pooled.sock.send(packets.upstream_packet(msg_id, flags, question, do))
            else:
                upstream = route.upstream
                exchange.msg_id = msg_id = packets.random_id()
                exchange.sock = sock = fresh_socket(upstream.family, upstream.address)
                exchange.fd = fd = sock.fileno()
                self.deadlines.watch(exchange, wait)
                self.readiness.watch(fd, exchange)
                sock.send(packets.upstream_packet(msg_id, flags, question, do))
        except OSError:
            exchange.close()
            self.coalesce.let_go(coalescing, exchange)
            return False
        self.server._flat += 1
        return True


class _Route:
    """How the lane asks one group: the member the group asks first when all are up, if the
    lane can ask it as the group would (plain DNS over UDP without 0x20, no racing or
    latency order; `health` None otherwise), its pool, and the wait of a lone member."""

    __slots__ = ("group", "health", "lone", "member", "pool", "upstream", "wait")

    def __init__(self, group: UpstreamGroup) -> None:
        self.group = group
        self.lone = len(group.members) == 1
        self.wait = round(group.timeout, 2)  # (Deadlines keep a queue per wait, rounded)
        self.health: Health | None = None
        self.member: Member  # these three are set when `health` is
        self.upstream: PlainDNS
        self.pool: SocketPool | None
        if not group.members or group.strategy == "parallel":
            return
        if group.strategy == "fastest" and not self.lone:
            return
        self.member = member = group.members[0]
        upstream = member.transport
        if not isinstance(upstream, PlainDNS) or upstream.mix_case:
            return
        self.upstream = upstream
        self.pool = upstream.pool
        self.health = member.health


class _Exchange:
    """One question in the lane: its socket, deadline and what the answer needs. It stands in
    the coalescing table as the leader (followers' future in `leader`, made by them)."""

    __slots__ = (
        "addr",
        "began",
        "cache_key",
        "coalescing",
        "data",
        "express",
        "fd",
        "host",
        "leader",
        "msg_id",
        "plan",
        "pooled",
        "reply_to",
        "route",
        "sock",
        "tcp",
        "transport",
        "watched",
    )

    def __init__(
        self,
        express: Express,
        data: bytes,
        host: str,
        addr: tuple[Any, ...],
        transport: DatagramSender,
        plan: ViewPlan,
        route: _Route,
        reply_to: Reading,
        coalescing: CoalesceKey,
        cache_key: CacheKey,
        began: float,
    ) -> None:
        self.express = express
        self.data = data
        self.host = host
        self.addr = addr
        self.transport = transport
        self.plan = plan
        self.route = route
        self.reply_to = reply_to  # wire.peek's reading of the question (ID, flags, EDNS...)
        # (name in wire form, lower case; type and class; DO; CD; RD): coalescing[:2] are
        # the question as `scan` checks the reply against it
        self.coalescing = coalescing
        self.cache_key = cache_key
        self.began = began
        self.leader: asyncio.Future[Response] | None = None
        self.msg_id = 0
        self.sock: _socket.socket | None = None
        self.pooled: Pooled | None = None  # with socket_pool: the socket asked on
        self.tcp: Attempt | None = None  # the TCP exchange after a truncated reply
        self.watched = False  # by the lane's deadlines, until it ends one way or another
        self.fd: int  # the fresh socket's, set with it

    @property
    def deadline(self) -> float:
        return self.began + self.route.group.timeout

    def close(self) -> None:
        if self.tcp is not None:
            self.tcp.cancel()
            self.tcp = None
        self.watched = False
        if self.sock is not None:
            self.express.readiness.forget(self.fd)
            self.sock.close()
            self.sock = None
        if self.pooled is not None:
            SocketPool.release(self.pooled, self.msg_id)
            self.pooled = None

    def expired(self) -> None:
        """No reply by the hedge time (or the deadline): the chain asks the others, if any."""
        self.watched = False
        member = self.route.member
        self.route.group._failed(member, "timeout")
        self.hand_over(problem=f"{member.name}: timeout")

    def readable(self) -> None:
        sock = self.sock
        if sock is None:
            return
        try:
            data = sock.recv(65535)
        except BlockingIOError:
            return
        except OSError as exc:
            self.failed(exc)
            return
        self.received(data)

    def failed(self, exc: OSError) -> None:
        """A socket error (ICMP unreachable): the chain asks the others, if any."""
        member = self.route.member
        self.route.group._failed(member, "network")
        self.hand_over(problem=f"{member.name}: {exc}")

    def received(self, data: bytes) -> None:
        """A datagram from the upstream's address and port, with our ID if pooled: the usual
        answer is finished here, in one pass (a call per step cost more than the step);
        anything else goes to `unusual`."""
        try:
            coalescing = self.coalescing
            checked = scan(data, self.msg_id, coalescing[0], coalescing[1])
            if checked is None or checked[0] & _UNUSUAL or not checked[1]:
                self.unusual(data)
                return
            route = self.route
            plan = self.plan
            flags, _, opt_start, ttls, low, high, addresses = checked
            flags = (flags | wire.RA) & ~wire.AA
            if opt_start < 0:
                out = bytearray(data)
            else:  # the upstream's OPT goes (the client's own is added at the end)
                out = bytearray(data[:opt_start])
                if out[11]:
                    out[11] -= 1
                else:
                    out[10] -= 1
                    out[11] = 0xFF
            forwarded = None
            if self.leader is not None:  # followers rewrite their own copy of the plain answer
                out[2], out[3] = flags >> 8, flags & 0xFF
                forwarded = bytes(out)
            rules: list[int] = []
            for rtype, offset in addresses:
                if rtype == wire.TYPE_AAAA and plan.embeds:
                    value = int.from_bytes(out[offset : offset + 16], "big")
                    if any(low <= value <= high for low, high in self.express.nat64):
                        self.close()  # an upstream's DNS64 answer: EmbeddedPublic's
                        route.group.usable(route.member, time.monotonic() - self.began)
                        reply = Reply(data, wire.walk(data), route.member.name, "udp")
                        self.hand_over(reply=reply)
                        return
                maps = plan.maps4 if rtype & 0xFF == wire.TYPE_A else plan.maps6
                if not maps:
                    continue
                size = 4 if rtype & 0xFF == wire.TYPE_A else 16
                value = int.from_bytes(out[offset : offset + size], "big")
                for low_end, high_end, target, index in maps:
                    if low_end <= value <= high_end:
                        # a rule may depend on names, or glue (another name's address) is
                        # rewritten: the chain's rewrite, which credits each name its own
                        if plan.named or rtype & GLUE:
                            self.close()
                            route.group.usable(route.member, time.monotonic() - self.began)
                            reply = Reply(data, wire.walk(data), route.member.name, "udp")
                            self.hand_over(reply=reply)
                            return
                        out[offset : offset + size] = (target + value - low_end).to_bytes(
                            size, "big"
                        )
                        rules.append(index)
                        break
            # The exchange ends: off the deadlines, its socket or pooled ID given back. A
            # pooled ID on a socket in service is the usual case, done here; close() does the
            # rest (a fresh socket, a retiring one).
            pooled = self.pooled
            if pooled is not None and not pooled.retiring:
                del pooled.receivers[self.msg_id]
                self.pooled = None
                self.watched = False
            else:
                self.close()
            route.group.usable(route.member, time.monotonic() - self.began)
            express = self.express
            leader = express.coalesce.let_go(self.coalescing, self)
            if leader is not None:
                self.release(leader, forwarded, data)
            if rules:
                flags &= ~wire.AD
            out[2], out[3] = flags >> 8, flags & 0xFF
            bare = bytes(out)
            cache = express.cache
            ttl, kept_ttls, exact = lifetime(ttls, low, high, cache.settings)
            cache.stats.misses += 1  # as the chain's cache link counts it
            if ttl > 0:
                now = cache.clock()
                outcome = _REWRITTEN if rules else _FORWARDED
                entry = cache.keep(
                    self.cache_key,
                    Entry(bare, kept_ttls, ttl, now, outcome, exact, bool(rules),
                          _cached_changes(self.data, data, bare, addresses, rules)),
                )  # fmt: skip
                if entry is not None and not exact:
                    bare = entry.aged(now)
            server = express.server
            server._flat -= 1
            server.inflight.give_back(self.host)
            counts = server.counts
            counts.express["answered"] += 1
            counts.queries[_QUERY_KEYS[self.coalescing[1]][1 if rules else 0]] += 1
            for index in rules:
                counts.rewrote(plan.name, index, self.data[wire.HEADER_LEN : self.reply_to[2]])
            msg_id, query_flags, _, qend, edns, do, limit = self.reply_to
            question = self.data[wire.HEADER_LEN : qend]
            answer = wire.assemble(msg_id, query_flags, question, bare, edns, do, limit)
            if not self.transport.is_closing():
                self.transport.sendto(answer, self.addr)
            tap = server.tap
            if tap is not None:  # a dashboard watches (web/livefeed.py's lane shape)
                tap.append(
                    (
                        self.host,
                        plan.name,
                        self.data,
                        _REWRITTEN if rules else _FORWARDED,
                        time.monotonic() - self.began,
                        _changes(data, bare, addresses, rules),
                        route.member.name,
                    )
                )
        except Exception:  # a bug: logged; the chain answers instead
            log.exception("express lane failed on a reply; the chain answers")
            self.hand_over()

    def unusual(self, data: bytes) -> None:
        """Not the usual answer: the full walk and match decide, as for any reply."""
        route = self.route
        try:
            query = wire.parse_query(self.data)
        except wire.WireError:  # (the lane takes only queries that parse)
            query = None
        try:
            message = wire.walk(data)
            matches = query is not None and packets.reply_matches(message, self.msg_id, query)
        except wire.WireError as exc:
            matches = False
            if query is not None and packets.names_question(
                data, self.msg_id, query.question, None
            ):
                # the upstream's own broken answer: a failure now, not a forgery to wait out
                self.close()
                route.group._failed(route.member, "malformed")
                self.hand_over(problem=f"{route.member.name}: malformed reply ({exc})")
                return
        if not matches or query is None:
            route.group.stats.forged += 1  # and the real answer is still awaited
            return
        if message.flags & wire.TC:
            self.close()
            remaining = max(0.05, self.deadline - time.monotonic())
            self.tcp = begin_task(route.upstream.tcp(query, remaining), self.over_tcp)
            return
        reply = Reply(data, message, route.member.name, "udp")
        self.settled(reply)

    def over_tcp(self, reply: Reply | None, error: BaseException | None) -> None:
        self.tcp = None
        self.settled(reply, error)

    def settled(self, reply: Reply | None, error: BaseException | None = None) -> None:
        """The group's verdict on the upstream's reply (or failure); the chain goes on."""
        problems: list[str] = []
        route = self.route
        try:
            usable = route.group._settle(reply, error, route.member, self.began, problems)
        except Exception:  # an unknown failure: logged; the chain asks again
            log.exception("express lane: unexpected upstream failure")
            usable = None
        if usable is not None:
            self.hand_over(reply=usable)
        else:
            self.hand_over(problem="; ".join(problems))

    def release(
        self, leader: asyncio.Future[Response], forwarded: bytes | None, data: bytes
    ) -> None:
        """Followers (waiting on `leader`) get the plain answer the chain would give."""
        if leader.done():
            return
        if forwarded is None:  # handed over: followers ask on their own
            leader.set_exception(UpstreamFailure("the leader's question went the long way"))
            leader.exception()
            return
        message = wire.strip_opt(data, wire.walk(data))[1]
        upstream = self.route.member.name
        response = Response(forwarded, Outcome.FORWARDED, upstream=upstream, message=message)
        leader.set_result(response)

    def hand_over(self, reply: Reply | None = None, problem: str = "") -> None:
        """The chain answers this question: with the upstream's reply, or asking the other
        upstreams within the same deadline (a `problem` says why this one was left)."""
        self.close()
        leader = self.express.coalesce.let_go(self.coalescing, self)
        if leader is not None:
            self.release(leader, None, b"")
        server = self.express.server
        server._flat -= 1
        server.counts.express["handed"] += 1
        tried = self.route.member.name if reply is None and problem else None
        handover = Handover(self.deadline, reply, tried, problem)
        try:  # (the chain gives the in-flight slot back when it has answered)
            server.respond_flat(self.data, self.host, self.addr, self.transport, handover)
        except Exception:
            server.inflight.give_back(self.host)
            log.exception("internal error handing a UDP query to the chain")
