"""The Server: its lifecycle (start, reload, stop) and the query path every transport enters.

Transports only move bytes (listen/udptcp.py, serve/streams.py, listen/encrypted.py): they hand
each message to `Server.datagram` (UDP: the cache hit and the express lane inline) or
`Server.respond`, which parses it, runs the handler chain and finalises the answer. `respond`
is the one error boundary: an unexpected exception becomes SERVFAIL with the query's ID and
question, never a crash.

One job read whole (about 740 lines): the state every query reads (the views' plans, the
client memos, the chain, the lane, the budgets) and the start, reload and stop that make and
swap it. Split, each half would have to know the other's fields; the transports, the TCP
sessions and the NAT64 probe, which need only a few, live apart.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Coroutine
from dataclasses import replace
from ipaddress import IPv6Network
from typing import Any

from splitdns import wire
from splitdns.answer.cache import Cache, Entry, Key
from splitdns.answer.chain import build_chain
from splitdns.answer.ipv6 import EmbeddedPublic, Synthesize
from splitdns.answer.links import Outcome, Request, Response
from splitdns.answer.ratelimit import RateLimiter
from splitdns.answer.views import client_address, is_allowed
from splitdns.config.model import Config, Endpoint, IPAddress, IPNetwork, View
from splitdns.dynamic.store import Store
from splitdns.limits import budgets
from splitdns.limits.connections import ConnectionBudget
from splitdns.limits.inflight import InFlight
from splitdns.listen import proxyv2
from splitdns.listen.certs import CertificateError
from splitdns.listen.encrypted import EncryptedListeners
from splitdns.listen.privileges import service_user
from splitdns.listen.udptcp import bind_plain, listener_changes
from splitdns.listen.wildcardudp import WildcardUdp
from splitdns.serve import follow, nat64probe, replay
from splitdns.serve.clienttrap import ClientTrap
from splitdns.serve.express import DatagramSender, Express, ViewPlan, nat64_ranges
from splitdns.serve.localnames import LocalNames
from splitdns.serve.published import QTYPES, TAP_SIZE, Counts, Tapped, query_key
from splitdns.serve.querylog import QueryLog
from splitdns.serve.samples import History
from splitdns.serve.streams import Streams
from splitdns.serve.updates import is_update
from splitdns.upstream.forwarder import Forwarder
from splitdns.upstream.transport import Handover

log = logging.getLogger(__name__)

ENCRYPTED = frozenset({"dot", "doh"})  # transports whose answers are padded (RFC 8467)

CLIENT_MEMO_SIZE = 4096  # client address -> its view's plan (None: not allowed), for the fast paths
_HIT_LABELS = {  # made once: a hit's counter labels, by transport and type
    transport: {qtype: query_key(transport, qtype, "cached") for qtype in QTYPES}
    for transport in ("udp", "tcp", "dot", "doh")
}


class Server:
    """Owns the listeners, the in-flight tasks and the current handler chain."""

    # Slotted: CPython 3.11 keeps an instance's attributes inline (its fastest lookups) only up
    # to 30 of them; past that every `self.x` is a dict probe, 736 instructions on a cached
    # answer (bench/instructions: 15,231 -> 14,495). tests/unit/test_attribute_layout.py.
    __slots__ = (
        "_addresses", "_clients", "_discovery", "_flat", "_follow", "_plans", "_retiring",
        "_sampling", "_tasks", "_tcp", "_trust", "_udp", "bound", "budgets", "cache", "closing",
        "config", "connections", "counts", "encrypted", "express", "follow_changes", "handler",
        "history", "inflight", "last_reload", "limiter", "local", "nat64_prefixes", "pipeline",
        "querylog", "started_at", "streams", "tap", "trap", "upstreams",
    )  # fmt: skip

    def __init__(self, config: Config, upstreams: Forwarder | None = None) -> None:
        self.config = config
        self.upstreams = upstreams or Forwarder(config)
        # the LAN's own names (`dynamic:`): their store outlives reloads that keep the zones
        self.local = LocalNames(config) if config.dynamic is not None else None
        self.pipeline = build_chain(config, self.upstreams, names=self._names())
        self.handler = self.pipeline.handler
        self.cache = self.pipeline.cache
        self.limiter = RateLimiter(config.rate_limit)
        self.querylog = QueryLog(config.query_log)
        self.counts = Counts()
        self.trap = ClientTrap(bool(config.views))
        # while a dashboard watches: one tuple per answer (web/livefeed.py), else None
        self.tap: deque[Tapped] | None = None
        self.express = self._make_express()
        self.budgets = budgets.size(config.limits, budgets.current_nofile())
        self.inflight = InFlight(self.budgets.in_flight, self.budgets.in_flight_per_client)
        self.connections = ConnectionBudget(
            self.budgets.connections,
            self.budgets.connections_per_client,
            config.tcp_idle_timeout,
            config.limits.connection_max_age,
            config.timeout + 2,
            self._proxy_sender,
        )
        self.started_at = time.time()
        self.last_reload: tuple[float, str, str | None] | None = None  # (when, why, error)
        self.follow_changes: dict[str, float] = {}  # a follow/interface source -> last change
        self.history = History(lambda: self)
        self._sampling: asyncio.Future[None] | None = None
        self._follow: asyncio.Future[None] | None = None
        self._discovery: asyncio.Future[None] | None = None
        self.nat64_prefixes: tuple[IPv6Network, ...] = ()  # the upstreams' own (RFC 7050)
        self.encrypted = EncryptedListeners(self, service_user(config.user))
        self._clients: dict[str, ViewPlan | None] = {}  # None: not allowed
        self._plans: dict[int, tuple[View | None, ViewPlan]] = {}
        self._trust: dict[tuple[str, tuple[IPNetwork, ...]], bool] = {}
        self._addresses: dict[str, IPAddress] = {}
        self._udp: list[asyncio.DatagramTransport | WildcardUdp] = []
        self._tcp: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._flat = 0  # UDP queries on the flat walk, awaiting their upstream
        self.streams = Streams(self)  # TCP and DoT connections
        self.bound: list[tuple[str, Endpoint | str]] = []
        self.closing = False
        self._retiring: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ reload

    def reload(self, config: Config) -> list[str]:
        """Swap in a validated config without losing a query; returns what the log should say.

        Queries in flight hold the chain they started on and finish with it. Cache entries are
        kept only for views whose definition is unchanged (and dropped entirely when the
        upstreams or cache settings change). Listen addresses need a restart.
        """
        old = self.config
        config = follow.carry_over(old, config)
        notes: list[str] = []
        changed = listener_changes(old, config)
        if changed:
            notes.append(f"listeners changed, restart splitdns to apply them: {changed}")
        config = replace(config, listen=old.listen, encrypted=old.encrypted, workers=old.workers)
        upstreams = self.upstreams
        cache = self.cache
        old_upstreams = (old.upstreams, old.forwarding, old.timeout)
        if (config.upstreams, config.forwarding, config.timeout) != old_upstreams:
            upstreams = Forwarder(config, self.upstreams.stats, self.upstreams.health)
            self._retire(self.upstreams)
            cache.clear()
            notes.append("upstreams changed: cache emptied")
        elif config.cache != old.cache:
            cache = Cache(config.cache, self.cache.clock)
            notes.append("cache settings changed: cache emptied")
        elif (config.doh_canary, config.block_private_relay) != (
            old.doh_canary,
            old.block_private_relay,
        ):
            cache.clear()  # (a canary's name may be cached from before: hits skip the chain)
            notes.append("canaries changed: cache emptied")
        else:
            before = {v.name: v for v in old.views}
            after = {v.name: v for v in config.views}
            unchanged = {n for n, v in after.items() if before.get(n) == v} | {""}
            dropped = cache.drop_where(lambda key: key[0] in unchanged)
            notes.append(f"{dropped} cache entries of changed views dropped")
        self.config = config
        self.upstreams = upstreams
        if self.local is not None:
            self.local, said = self.local.reload(config)
            notes += said
        elif config.dynamic is not None:
            self.local = LocalNames(config)
            if self._follow is not None:  # (started: serving, not a tool's server)
                self.local.start()
        self.pipeline = build_chain(config, upstreams, cache, self._names())
        self.handler = self.pipeline.handler
        self.cache = cache
        if config.rate_limit != old.rate_limit:
            self.limiter = RateLimiter(config.rate_limit)
        if config.limits != old.limits or config.tcp_idle_timeout != old.tcp_idle_timeout:
            self._apply_limits(budgets.size(config.limits, self.budgets.nofile))
            notes.append(f"limits: {self.budgets.describe()}")
        if config.query_log != old.query_log:
            self.querylog.close()
            self.querylog = QueryLog(config.query_log)
        self._clients = {}
        self._plans = {}
        self._trust = {}
        self.express = self._make_express()
        self._tell_synthesis(self.nat64_prefixes)  # (the new chain's links and lane)
        return notes

    def _names(self) -> Store | None:
        return self.local.store if self.local is not None else None

    def note_reload(self, why: str, error: str | None) -> None:
        """Remember the last reload's result for the dashboard (and count it)."""
        self.counts.reloads["rejected" if error else "ok"] += 1
        self.last_reload = (time.time(), why, error)

    def _followed(self, config: Config) -> list[str]:
        """A follow/interface source moved: note when, for the dashboard, then reload."""
        now = time.time()
        for key in follow.followed(config):
            if follow.current(config, key) != follow.current(self.config, key):
                self.follow_changes[key] = now
        return self.reload(config)

    def watch(self, tap: deque[Tapped] | None) -> None:
        """A dashboard began (a deque) or stopped (None) watching the live queries: every
        answer is appended to it meanwhile (cache hits, the express lane, the chain)."""
        self.tap = tap

    def _apply_limits(self, sized: budgets.Budgets) -> None:
        """Budgets in force from now on (connections and queries already admitted stay)."""
        config = self.config
        self.budgets = sized
        self.inflight.total = sized.in_flight
        self.inflight.per_client = sized.in_flight_per_client
        conns = self.connections
        conns.total, conns.per_client = sized.connections, sized.connections_per_client
        conns.idle, conns.max_age = config.tcp_idle_timeout, config.limits.connection_max_age
        conns.grace = config.timeout + 2

    def _proxy_sender(self, host: str) -> bool:
        """A trusted proxy speaks for many clients: its connections have no per-client share."""
        return bool(self.config.trusted_proxies) and self.trusted(host, self.config.trusted_proxies)

    async def discover_nat64(self) -> None:
        """The upstreams' own NAT64 prefix (RFC 7050), once, at start (serve/nat64probe.py)."""
        found = await nat64probe.discover(self.config)
        if found is not None:
            self.nat64_prefixes = found
            self._tell_synthesis(found)

    def _tell_synthesis(self, prefixes: tuple[IPv6Network, ...]) -> None:
        for link in self.pipeline.links:
            if isinstance(link, Synthesize | EmbeddedPublic):
                link.discovered = prefixes
        if self.express is not None:
            self.express.nat64 = nat64_ranges((*self.config.nat64_prefixes, *prefixes))

    def _make_express(self) -> Express | None:
        """The express lane for the current config, when it has anything to do."""
        if not isinstance(self.upstreams, Forwarder) or not Express.applies(self, self.pipeline):
            return None
        return Express(self, self.pipeline, self.upstreams)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Bind every listen address, UDP and TCP; an error here stops the start cleanly."""
        limits = self.config.limits
        nofile = budgets.raise_nofile() if limits.raise_nofile else budgets.current_nofile()
        self._apply_limits(budgets.size(limits, nofile))
        if self.budgets.scaled:
            log.warning(
                "descriptor limit %d is too low for the configured limits; in force: %s "
                "(raise LimitNOFILE / --ulimit nofile)",
                nofile,
                self.budgets.describe(),
            )
        self.connections.start()
        try:
            for endpoint in self.config.listen:
                udp, tcp, port = await bind_plain(
                    endpoint, self.config.workers, self.datagram, self.streams.tcp_session
                )
                self._udp.append(udp)
                self._tcp.append(tcp)
                self.bound.append(("udp+tcp", Endpoint(endpoint.host, port)))
            for kind, shown in await self.encrypted.start():
                self.bound.append((kind, shown))
            self._follow = asyncio.ensure_future(
                follow.follow_forever(lambda: self.config, lambda: self.upstreams, self._followed)
            )
            self._sampling = asyncio.ensure_future(self.history.run())
            if self.local is not None:
                self.local.start()
            if any(v.dns64 is not None or v.rules for v in self.config.views):
                self._discovery = asyncio.ensure_future(self.discover_nat64())
        except (OSError, CertificateError):
            await self.stop(0)
            raise

    async def stop(self, drain: float = 5.0) -> None:
        """Stop taking queries, let in-flight ones finish for up to `drain` seconds, then cancel.

        UDP sockets stay open while draining (new datagrams are ignored) so that answers to
        in-flight queries can still be sent.
        """
        self.closing = True
        if self._follow is not None:
            self._follow.cancel()
        if self._discovery is not None:
            self._discovery.cancel()
        if self._sampling is not None:
            self._sampling.cancel()
        await self.encrypted.stop()
        for tcp in self._tcp:
            tcp.close()
        until = time.monotonic() + drain
        while self._flat and time.monotonic() < until:  # flat walks hold no task to wait on
            await asyncio.sleep(0.01)
        if self._tasks and drain > 0:
            await asyncio.wait(set(self._tasks), timeout=max(0.0, until - time.monotonic()))
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for transport in self._udp:
            transport.close()
        self._udp.clear()
        self.streams.close()
        self.connections.stop()
        for tcp in self._tcp:
            await tcp.wait_closed()
        self._tcp.clear()
        self.querylog.close()
        if self.local is not None:
            self.local.stop()
        await self.upstreams.aclose()

    @property
    def in_flight(self) -> int:
        """Queries being answered now: flat UDP walks and tasks (TCP, DoT, DoH, the rest)."""
        return self._flat + len(self._tasks)

    def _retire(self, old: Forwarder) -> None:
        """Close a replaced forwarder's connections once queries still using it are done."""

        async def later() -> None:
            await asyncio.sleep(self.config.timeout + 1)
            await old.aclose()

        task = asyncio.ensure_future(later())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ------------------------------------------------------------------ the error boundary

    def address_of(self, host: str) -> IPAddress:
        """client_address with a memo: parsing the text costs ~12 us, a LAN has few clients."""
        known = self._addresses.get(host)
        if known is None:
            if len(self._addresses) >= CLIENT_MEMO_SIZE:
                self._addresses.clear()
            known = self._addresses[host] = client_address(host)
        return known

    async def respond(self, data: bytes, host: str, transport: str) -> bytes | None:
        """The answer to one message, or None to drop it."""
        if is_update(data):  # RFC 2136: the dynamic zones' (NOTIMP without them)
            return await self.update(data, host, transport)
        admitted = self.admit(data, host, transport)
        if not isinstance(admitted, Request):
            return admitted
        if not self.inflight.take(host):  # over its share: this client waits, nobody else
            response = Response(wire.make_error(admitted.query, wire.SERVFAIL), Outcome.SERVFAIL)
            return self.conclude(admitted, response)
        try:
            response = await self.handler(admitted)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception(
                "internal error answering %s from %s", admitted.query.question.name, admitted.client
            )
            response = Response(wire.make_error(admitted.query, wire.SERVFAIL), Outcome.SERVFAIL)
        finally:
            self.inflight.give_back(host)
        return self.conclude(admitted, response)

    def respond_flat(
        self,
        data: bytes,
        host: str,
        addr: tuple[Any, ...],
        transport: DatagramSender,
        handover: Handover | None = None,
    ) -> None:
        """respond() for UDP without a task: the chain's flat walk calls back with the answer.
        (`handover`: what the express lane knows of a question it gives back.) The caller took
        an in-flight slot for `host`; it is given back here, once answered."""
        admitted = self.admit(data, host, "udp")
        if not isinstance(admitted, Request):
            self.inflight.give_back(host)
            if admitted is not None:
                transport.sendto(admitted, addr)
            return
        admitted.handover = handover
        self._flat += 1

        def done(response: Response) -> None:
            self._flat -= 1
            self.inflight.give_back(host)
            try:
                answer = self.conclude(admitted, response)
            except Exception:  # a bug: logged; the client's retry may fare better
                log.exception("internal error finishing the answer to %s", host)
                return
            if not transport.is_closing():
                transport.sendto(answer, addr)

        self.pipeline.walk(admitted, done, self.spawn)

    def admit(self, data: bytes, host: str, transport: str) -> Request | bytes | None:
        """The front half of an answer: parse, the client ECS names, header checks. A Request
        for the chain, or the answer itself (bytes), or None to drop the message."""
        client = self.address_of(host)
        try:
            query = wire.parse_query(data)
        except wire.HeaderOnlyError as exc:
            if not self.pipeline.admission.decide(client)[0]:
                return None
            if exc.flags & wire.OPCODE_MASK:
                return wire.make_header_error(exc.msg_id, exc.flags, wire.NOTIMP)
            log.debug("FORMERR to %s: %s", client, exc)
            return wire.make_header_error(exc.msg_id, exc.flags, wire.FORMERR)
        except wire.WireError as error:  # (another name: mypyc types `exc` from above)
            log.debug("dropped from %s: %s", client, error)
            return None
        if self.config.trusted_ecs and self.trusted(host, self.config.trusted_ecs):
            if query.ecs is None:
                self.counts.ecs["absent"] += 1  # the sender asks for itself
            else:
                named = wire.ecs_client(query.ecs)
                if named is None:  # a subnet names no one client: no view can be chosen
                    self.counts.ecs["ambiguous"] += 1
                    refused = wire.make_error(query, wire.REFUSED)
                    limit = query.udp_limit() if transport == "udp" else 65535
                    return wire.finalize(query, refused, limit)
                self.counts.ecs["used"] += 1
                host, client = named, self.address_of(named)
            limited, refusal = self.over_limit(data, host)
            if limited:
                return refusal
        if query.opcode != 0:
            # Header only: other opcodes give the sections other meanings (UPDATE's zone
            # section must be SOA), so echoing the question can make the answer unparsable.
            return wire.make_header_error(query.msg_id, query.flags, wire.NOTIMP)
        if query.edns and query.edns_version > 0:
            return wire.make_badvers(query)
        return Request(query, client, transport, started=time.monotonic())

    def conclude(self, request: Request, response: Response) -> bytes:
        """The back half: counted, logged, and finalised for the client."""
        query, client, transport = request.query, request.client, request.transport
        limit = query.udp_limit() if transport == "udp" else 65535
        view = request.view.name if request.view is not None else None
        self.counts.query(transport, query.question.qtype, str(response.outcome))
        for change in response.changes:
            if change.field:
                self.counts.rewrites[(view or "", change.rule, change.field)] += 1
            else:
                self.counts.rewrote(view or "", change.rule, change.name)
        if self.querylog.enabled:
            self.querylog.record(
                str(client),
                query.question.name,
                query.question.qtype,
                view,
                str(response.outcome),
                time.monotonic() - request.started,
                response.changes,
                response.upstream,
            )
        if self.tap is not None:
            self.tap.append(
                (
                    str(client),
                    view or "",
                    query.question.name,
                    query.question.qtype,
                    str(response.outcome),
                    time.monotonic() - request.started,
                    response.changes or response.cached_changes,
                    response.upstream,
                    transport,
                )
            )
        if response.final:
            return wire.relayed(query, response.bare, limit)
        options = b""
        if response.ede is not None and query.edns:
            options = wire.ede_option(*response.ede)
        answer = wire.finalize(query, response.bare, limit, options)
        if query.padded and transport in ENCRYPTED:
            return wire.pad(answer, len(options))
        return answer

    # ------------------------------------------------------------------ cache hits

    def fast_answer(self, data: bytes, host: str, transport: str = "udp") -> bytes | None:
        """A cache hit answered without the chain, parser or a task (a TCP, DoT or DoH one in
        the read that brought it, with a stream's size limit; UDP's own path is `datagram`,
        which keeps replayed hits too). None takes the full way, which alone decides policy:
        a miss, a hit due for prefetch, a client not allowed, an ECS-trusted sender (the
        client is named inside), and on a stream EDNS options (padding asked for is the full
        path's to add)."""
        if not self.cache.enabled:
            return None
        if self.config.trusted_ecs and self.trusted(host, self.config.trusted_ecs):
            return None
        plan = self._clients[host] if host in self._clients else self._classify(host)
        if plan is None:
            return None
        peeked, remembered = wire.peek_remembered(data)
        if peeked is None:
            return None
        if transport != "udp" and peeked[4] and len(data) != peeked[3] + 11:  # (OPT options)
            return None
        key = hit_key(data, peeked, plan)
        now = self.cache.clock()
        entry = self.cache.fresh(key, now)
        if entry is None:
            return None
        answer = self._hit(data, host, peeked, remembered, key, entry, now, None, transport)
        tap = self.tap
        if answer and tap is not None and len(tap) < TAP_SIZE:  # a dashboard watches
            tap.append((host, plan.name, data, entry.changes, transport))
        return answer or None

    def _hit(
        self,
        data: bytes,
        host: str,
        peeked: wire.Peeked,
        remembered: bool,
        key: Key,
        entry: Entry,
        now: float,
        replies: dict[bytes, replay.Replay] | None = None,
        transport: str = "udp",
    ) -> bytes:
        """fast_answer for an allowed client's hit (`key`: the question's in its view; `entry`:
        the cache's fresh entry for it at `now`), but b"" for a hit due for prefetch (the
        chain's cache link answers it and refreshes it), so the express lane can tell it from
        a miss. The caller looks the entry up, so a miss costs no call here. (`remembered`:
        `peeked` came from wire's memo, else a hit is kept there; `replies`: the client's
        view's replayed hits, for a UDP answer; `transport`: "udp", or a stream's, whose
        answers are never cut to a datagram's size.)"""
        cache = self.cache
        msg_id, flags, name_end, qend, edns, do, limit = peeked
        view = key[0]
        if cache.settings.prefetch and cache.prefetch_due(entry, now):
            return b""  # the chain's cache link counts it and starts the refresh
        cache.stats.hits += 1
        if not remembered:
            wire.remember(data, peeked)
        if transport != "udp":
            limit = 65535
        answer = wire.assemble(msg_id, flags, data[12:qend], entry.aged(now), edns, do, limit)
        qtype = (data[name_end] << 8) | data[name_end + 1]
        label = _HIT_LABELS[transport].get(qtype) or query_key(transport, qtype, "cached")
        self.counts.queries[label] += 1
        if self.querylog.enabled:
            name = wire.read_name(data, 12)[0]
            host = str(self.address_of(host))
            self.querylog.record(host, name, qtype, view or None, "cached", 0.0)
        elif replies is not None:
            replay.keep(replies, data, answer, cache.same_until(entry, now), key, entry, label)
        return answer

    def _replayed(self, data: bytes, known: replay.Replay) -> bytes | None:
        """A kept hit's answer to the same query bytes with this query's ID, counted as a hit;
        None once it would read differently or its entry is no longer the cached one."""
        tail, until, key, entry, label = known
        cache = self.cache
        if cache.clock() >= until or not cache.current(key, entry):
            return None
        cache.stats.hits += 1
        self.counts.queries[label] += 1
        return data[:2] + tail

    def _classify(self, host: str) -> ViewPlan | None:
        """The plan of an allowed client's view (its name "" for no view), None if the client
        is not allowed; memoised per address, one plan per view."""
        allowed, view = self.pipeline.admission.decide(self.address_of(host))
        plan = None
        if allowed:
            known = self._plans.get(id(view))
            if known is None or known[0] is not view:
                known = self._plans[id(view)] = (view, ViewPlan(view))
            plan = known[1]
        if len(self._clients) >= CLIENT_MEMO_SIZE:
            self._clients.clear()
        self._clients[host] = plan
        return plan

    # ------------------------------------------------------------------ UDP

    async def update(self, data: bytes, host: str, transport: str) -> bytes | None:
        """An UPDATE message: to the dynamic zones, or NOTIMP (a header) when there are none."""
        if self.local is None:
            return self._no_updates(data, host)
        return await self.local.updates.handle(data, self.address_of(host), transport)

    def _no_updates(self, data: bytes, host: str) -> bytes | None:
        """NOTIMP (the header) for an UPDATE to a server with no dynamic zones."""
        if len(data) < wire.HEADER_LEN or not self.allowed(host):
            return None
        return wire.make_header_error((data[0] << 8) | data[1], data[2] << 8, wire.NOTIMP)

    async def _udp_update(
        self, data: bytes, host: str, addr: tuple[Any, ...], transport: DatagramSender
    ) -> None:
        answer = await self.update(data, host, "udp")
        if answer is not None and not self.closing:
            transport.sendto(answer, addr)

    def datagram(self, data: bytes, addr: tuple[Any, ...], transport: DatagramSender) -> None:
        """One UDP query: rate limit, a cache hit answered at once, else the express lane
        (the usual miss) or the chain's flat walk."""
        if self.closing:
            return
        host = addr[0]
        if self.config.trusted_proxies or data[:4] == b"\r\n\r\n":
            unwrapped = self.unwrap_proxy(data, host)
            if unwrapped is None:
                return
            data, host = unwrapped
        if self.config.trusted_ecs and self.trusted(host, self.config.trusted_ecs):
            # the client is named inside the query: limits and the cache wait for the parse
            if self.inflight.take(host, shared=True):
                self.respond_flat(data, host, addr, transport)
            return
        if not self.trap.done:
            self.trap.saw(host)
        if not self.limiter.allow(host):
            refusal = self.refusal(data)
            if refusal is not None:
                transport.sendto(refusal, addr)
            return
        answer = plan = peeked = entry = None
        try:
            if self.cache.enabled:  # (the client's view, decided once)
                plan = self._clients[host] if host in self._clients else self._classify(host)
            if plan is not None:
                after_id = None
                if plan.replies:  # the same hit asked the same way within its second
                    after_id = data[2:]
                    known = plan.replies.get(after_id)
                    if known is not None:
                        answer = self._replayed(data, known)
                if answer is None:
                    peeked, remembered = wire.peek_remembered(data, after_id)
                if peeked is not None:  # hit_key's, made once for the hit and the lane
                    _, flags, name_end, qend, _, do, _ = peeked
                    key = (
                        plan.name,
                        data[12:name_end].lower(),
                        data[name_end:qend],
                        do,
                        bool(flags & wire.CD),
                    )
                    cache = self.cache
                    now = cache.clock()
                    entry = cache.fresh(key, now)
                    if entry is not None:
                        answer = self._hit(
                            data, host, peeked, remembered, key, entry, now, plan.replies
                        )
        except Exception:  # the fast path must never cost an answer: take the full path
            log.exception("cache fast path failed; answering the slow way")
            answer = plan = None
        if answer:
            transport.sendto(answer, addr)
            tap = self.tap
            if tap is not None and plan is not None and len(tap) < TAP_SIZE:  # watched
                if entry is not None and entry.changes:  # a rewritten answer: its rewrite
                    tap.append((host, plan.name, data, entry.changes))
                else:  # (beyond TAP_SIZE a tick: not even made)
                    tap.append((host, plan.name, data))
            return
        if peeked is None and len(data) > 3 and data[2] & 0x78 == 0x28:  # UPDATE (opcode 5)
            local = self.local
            early = None if local is None else local.updates.refusal(
                data, self.address_of(host), "udp"
            )  # fmt: skip
            if local is not None and early is None:
                self.spawn(self._udp_update(data, host, addr, transport))
            else:  # turned away at once: no task for a flood
                answer = early if local is not None else self._no_updates(data, host)
                if answer is not None:
                    transport.sendto(answer, addr)
            return
        if not self.inflight.take(host):
            return  # over its share of queries in flight (or all full): dropped, counted
        express = self.express
        if answer is None and plan is not None and peeked is not None and express is not None:
            try:  # a miss (b"": a hit due for prefetch, the chain's)
                if express.take(data, peeked, plan, key, host, addr, transport):
                    return
            except Exception:  # a bug: logged; the chain answers instead
                log.exception("express lane failed on a query from %s; the chain answers", host)
        try:
            self.respond_flat(data, host, addr, transport)
        except Exception:  # a bug: logged, the message dropped, the server goes on
            self.inflight.give_back(host)
            log.exception("internal error taking a UDP query from %s", host)

    def trusted(self, host: str, networks: tuple[IPNetwork, ...]) -> bool:
        key = (host, networks)
        known = self._trust.get(key)
        if known is None:
            if len(self._trust) >= CLIENT_MEMO_SIZE:
                self._trust.clear()
            known = self._trust[key] = is_allowed(networks, self.address_of(host))
        return known

    def unwrap_proxy(self, data: bytes, host: str) -> tuple[bytes, str] | None:
        """(payload, client) of a datagram from a trusted proxy; None drops it (counted)."""
        if not self.trusted(host, self.config.trusted_proxies):
            if proxyv2.starts_with_header(data):
                self.counts.proxy["untrusted"] += 1
                return None
            return data, host
        try:
            header = proxyv2.parse(data)
        except proxyv2.ProxyError as exc:
            kind = "malformed" if proxyv2.starts_with_header(data) else "missing"
            self.counts.proxy[kind] += 1
            log.debug("PROXY header from %s %s: %s", host, kind, exc)
            return None
        return data[header.length :], self.proxied_client(header, host)

    def proxied_client(self, header: proxyv2.Header, host: str) -> str:
        """The client a valid header names (counted); LOCAL: the proxy speaks for itself."""
        if header.local or header.source is None:
            self.counts.proxy["local"] += 1
            return host
        self.counts.proxy["ok"] += 1
        return header.source

    # ------------------------------------------------------------------ every transport's limits

    def allowed(self, host: str) -> bool:
        """Whether `host` may query at all (memoised): a connection from elsewhere is the
        first the connection budget closes when it needs room."""
        return self.trusted(host, self.config.allow) or self._proxy_sender(host)

    def over_limit(self, data: bytes, host: str) -> tuple[bool, bytes | None]:
        """(limited, what to send instead): takes one of the client's tokens."""
        if self.limiter.allow(host):
            return False, None
        return True, self.refusal(data)

    def refusal(self, data: bytes) -> bytes | None:
        """What a client over its rate limit gets: REFUSED or nothing, per `rate_limit.action`."""
        if self.limiter.settings.action == "drop":
            return None
        return wire.refuse_raw(data)


def hit_key(data: bytes, peeked: wire.Peeked, plan: ViewPlan) -> Key:
    """The cache key of a question wire.peek read, for a client in `plan`'s view
    (`Server.datagram` makes it inline: a call per UDP query)."""
    _, flags, name_end, qend, _, do, _ = peeked
    return (plan.name, data[12:name_end].lower(), data[name_end:qend], do, bool(flags & wire.CD))
