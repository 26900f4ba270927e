"""UDP and TCP listeners, the error boundary, and the server's lifecycle.

Protocol classes only move bytes: they hand each message to `Server.respond`, which parses
it, runs the handler chain and finalises the answer. `respond` is the one error boundary: an
unexpected exception becomes SERVFAIL with the query's ID and question, never a crash.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import replace
from ipaddress import IPv6Address, IPv6Network
from typing import Any, cast

from splitdns import wire
from splitdns.answer.cache import Cache, Entry, Key
from splitdns.answer.chain import (
    EmbeddedPublic,
    Outcome,
    Request,
    Response,
    Synthesize,
    build_chain,
)
from splitdns.answer.ratelimit import RateLimiter
from splitdns.answer.views import client_address, is_allowed
from splitdns.config.dns64 import prefix_from_probe
from splitdns.config.model import Config, Endpoint, IPAddress, IPNetwork, View
from splitdns.limits import budgets
from splitdns.limits.connections import Connection, ConnectionBudget
from splitdns.limits.inflight import InFlight
from splitdns.listen import proxyv2
from splitdns.listen.certs import CertificateError
from splitdns.listen.encrypted import EncryptedListeners
from splitdns.listen.ports import bind_problem
from splitdns.listen.privileges import service_user
from splitdns.listen.wildcardudp import WildcardUdp, enable_pktinfo, is_wildcard
from splitdns.serve import follow, replay
from splitdns.serve.clienttrap import ClientTrap
from splitdns.serve.express import DatagramSender, Express, ViewPlan, nat64_ranges
from splitdns.serve.published import QTYPES, TAP_SIZE, Counts, Tapped, query_key
from splitdns.serve.querylog import QueryLog
from splitdns.serve.samples import History
from splitdns.upstream.forwarder import Forwarder
from splitdns.upstream.plain import ask_once
from splitdns.upstream.transport import Handover

log = logging.getLogger(__name__)

ENCRYPTED = frozenset({"dot", "doh"})  # transports whose answers are padded (RFC 8467)

CLIENT_MEMO_SIZE = 4096  # client address -> its view's plan (None: not allowed), for the fast paths
_HIT_LABELS = {qtype: query_key("udp", qtype, "cached") for qtype in QTYPES}  # made once


class Server:
    """Owns the listeners, the in-flight tasks and the current handler chain."""

    def __init__(self, config: Config, upstreams: Forwarder | None = None) -> None:
        self.config = config
        self.upstreams = upstreams or Forwarder(config)
        self.pipeline = build_chain(config, self.upstreams)
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
        self._tcp_writers: set[asyncio.StreamWriter] = set()
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
        self.pipeline = build_chain(config, upstreams, cache)
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
        """RFC 7050: ask the upstreams for ipv4only.arpa AAAA; an upstream doing DNS64 answers
        with its own NAT64 prefix, whose AAAA answers embed public addresses (the DNS64 views
        make them again from their rewritten A). Once, at start; logged."""
        query = wire.parse_query(wire.make_query("ipv4only.arpa", wire.TYPE_AAAA))
        plain = [u for u in self.config.upstreams if u.scheme == "dns" and not u.needs_bootstrap]
        reply = None
        for spec in plain:  # asked quietly: a probe that fails marks no upstream down
            reply = await ask_once(spec.host, spec.port, query, min(self.config.timeout, 2.0))
            if reply is not None:
                break
        if reply is None:
            log.info("NAT64 prefix discovery (RFC 7050): no answer from the plain upstreams")
            return
        data, message = reply
        found: list[IPv6Network] = []
        for record in message.records:
            if record.section == wire.ANSWER and record.rtype == wire.TYPE_AAAA:
                raw = data[record.rdata_offset : record.rdata_offset + record.rdlength]
                prefix = prefix_from_probe(IPv6Address(raw))
                if prefix is not None and prefix not in found:
                    found.append(prefix)
        if found:
            log.info(
                "NAT64 prefix discovered from the upstreams (RFC 7050): %s; their AAAA answers "
                "there that embed a public address a view rewrites are made again (or removed)",
                ", ".join(map(str, found)),
            )
        else:
            log.info("NAT64 prefix discovery (RFC 7050): the upstreams do no DNS64")
        self.nat64_prefixes = tuple(found)
        self._tell_synthesis(self.nat64_prefixes)

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
        loop = asyncio.get_running_loop()
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
                family = socket.AF_INET6 if endpoint.family_v6 else socket.AF_INET
                sock = socket.socket(family, socket.SOCK_DGRAM)
                try:
                    if family == socket.AF_INET6:
                        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    if self.config.workers > 1:  # workers share the port; the kernel spreads load
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                    if is_wildcard(endpoint.host):
                        enable_pktinfo(sock)  # answer from the address each query came to
                    sock.bind((endpoint.host, endpoint.port))
                except OSError as exc:
                    sock.close()
                    raise bind_problem(endpoint, "udp", exc) from None
                port = sock.getsockname()[1]
                if is_wildcard(endpoint.host):
                    self._udp.append(WildcardUdp(sock, self.datagram))
                else:
                    transport, _ = await loop.create_datagram_endpoint(
                        lambda: UdpProtocol(self), sock=sock
                    )
                    self._udp.append(transport)
                try:
                    tcp = await asyncio.start_server(
                        self.tcp_client,
                        endpoint.host,
                        port or endpoint.port,
                        reuse_address=True,
                        reuse_port=self.config.workers > 1,
                        backlog=256,
                    )
                except OSError as exc:
                    raise bind_problem(Endpoint(endpoint.host, port), "tcp", exc) from None
                self._tcp.append(tcp)
                self.bound.append(("udp+tcp", Endpoint(endpoint.host, port)))
            for kind, shown in await self.encrypted.start():
                self.bound.append((kind, shown))
            self._follow = asyncio.ensure_future(
                follow.follow_forever(lambda: self.config, lambda: self.upstreams, self._followed)
            )
            self._sampling = asyncio.ensure_future(self.history.run())
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
        for writer in list(self._tcp_writers):
            writer.close()
        self.connections.stop()
        for tcp in self._tcp:
            await tcp.wait_closed()
        self._tcp.clear()
        self.querylog.close()
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

    def fast_answer(self, data: bytes, host: str) -> bytes | None:
        """Answer a cache hit without the chain, parser or a task; None means "take the chain".

        Only the common query shape is handled (wire.peek); clients not allowed, misses and
        entries due for prefetch all go the full way, so this path never decides policy.
        """
        peeked, remembered = wire.peek_remembered(data)
        if peeked is None or not self.cache.enabled:
            return None
        plan = self._clients[host] if host in self._clients else self._classify(host)
        if plan is None:
            return None
        key = hit_key(data, peeked, plan)
        now = self.cache.clock()
        entry = self.cache.fresh(key, now)
        if entry is None:
            return None
        return self._hit(data, host, peeked, remembered, key, entry, now) or None

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
    ) -> bytes:
        """fast_answer for an allowed client's hit (`key`: the question's in its view; `entry`:
        the cache's fresh entry for it at `now`), but b"" for a hit due for prefetch (the
        chain's cache link answers it and refreshes it), so the express lane can tell it from
        a miss. The caller looks the entry up, so a miss costs no call here. (`remembered`:
        `peeked` came from wire's memo, else a hit is kept there; `replies`: the client's
        view's replayed hits, for a UDP answer.)"""
        cache = self.cache
        msg_id, flags, name_end, qend, edns, do, limit = peeked
        view = key[0]
        if cache.settings.prefetch and cache.prefetch_due(entry, now):
            return b""  # the chain's cache link counts it and starts the refresh
        cache.stats.hits += 1
        if not remembered:
            wire.remember(data, peeked)
        answer = wire.assemble(msg_id, flags, data[12:qend], entry.aged(now), edns, do, limit)
        qtype = (data[name_end] << 8) | data[name_end + 1]
        label = _HIT_LABELS.get(qtype) or query_key("udp", qtype, "cached")
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

    # ------------------------------------------------------------------ TCP (RFC 7766)

    async def tcp_client(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        transport: str = "tcp",
        client: str | None = None,
        conn: Connection | None = None,
    ) -> None:
        """One TCP (or, behind TLS, DoT) connection: RFC 7766 framing, pipelined queries
        answered as they complete, a deadline per message, the connection budget. `client` is
        the address a PROXY header already named and `conn` the budget's record (DoT reads and
        admits both before the TLS handshake); plain TCP is admitted here, at accept."""
        peer = writer.get_extra_info("peername")
        if conn is None:
            if peer is None or self.closing:
                writer.transport.abort()
                return
            conn = self.connections.admit(peer[0], transport, self.allowed(peer[0]))
            if conn is None:
                writer.transport.abort()  # RST: nothing lingers in TIME_WAIT on our side
                return
            conn.transport = cast(asyncio.Transport, writer.transport)
        try:
            host = client or peer[0]
            trusted = self.config.trusted_proxies and self.trusted(
                host, self.config.trusted_proxies
            )
            if client is None and trusted:
                named = await self.read_proxy_header(reader.readexactly, host)
                if named is None:
                    return
                host = named
            if not self.trap.done:
                self.trap.saw(host)
            self._tcp_writers.add(writer)
            await self._serve_stream(reader, writer, host, transport, conn)
        finally:
            self.connections.release(conn)
            self._tcp_writers.discard(writer)
            writer.close()

    async def _serve_stream(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        host: str,
        transport: str,
        conn: Connection,
    ) -> None:
        pending: set[asyncio.Task[Any]] = set()
        idle = self.config.tcp_idle_timeout
        streams = self.config.limits.streams_per_connection

        def finished(task: asyncio.Task[Any]) -> None:
            pending.discard(task)
            conn.finished()

        while (data := await self._next_message(reader, idle)) is not None:
            conn.started()
            task = self.spawn(self._tcp_answer(data, host, writer, transport))
            pending.add(task)
            task.add_done_callback(finished)
            if len(pending) >= streams:
                await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        if pending:
            await asyncio.wait(pending, timeout=self.config.timeout + 1)

    def allowed(self, host: str) -> bool:
        """Whether `host` may query at all (memoised): a connection from elsewhere is the
        first the connection budget closes when it needs room."""
        return self.trusted(host, self.config.allow) or self._proxy_sender(host)

    async def _next_message(self, reader: asyncio.StreamReader, idle: float) -> bytes | None:
        """The next RFC 7766 message, or None: the connection is done (closed, idle, a zero
        length, or a PROXY header from a sender not trusted to send one)."""
        try:
            # One deadline per message: a client trickling bytes cannot hold us forever.
            async with asyncio.timeout(idle):
                (length,) = struct.unpack("!H", await reader.readexactly(2))
                if length == 0:
                    return None
                if length == 0x0D0A:  # "\r\n": perhaps a PROXY header, not a length
                    head = await reader.readexactly(10)
                    if head == proxyv2.SIGNATURE[2:]:
                        self.counts.proxy["untrusted"] += 1  # from anyone else: closed
                        return None
                    return head + await reader.readexactly(length - 10)
                return await reader.readexactly(length)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            return None

    async def read_proxy_header(
        self, read_exactly: Callable[[int], Awaitable[bytes]], host: str
    ) -> str | None:
        """The client a trusted proxy's stream speaks for (its own address for LOCAL), read
        with `read_exactly` (a StreamReader's, or exact reads off a raw socket before TLS);
        None (counted) when the header is missing, malformed or slow."""
        try:
            async with asyncio.timeout(self.config.tcp_idle_timeout):
                fixed = await read_exactly(proxyv2.FIXED)
                total = proxyv2.header_length(fixed)
                header = proxyv2.parse(fixed + await read_exactly(total - proxyv2.FIXED))
        except proxyv2.ProxyError:
            self.counts.proxy["malformed"] += 1
            return None
        except (TimeoutError, EOFError, OSError):  # incl. IncompleteReadError, ConnectionError
            self.counts.proxy["missing"] += 1
            return None
        return self.proxied_client(header, host)

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

    async def _tcp_answer(
        self, data: bytes, host: str, writer: asyncio.StreamWriter, transport: str = "tcp"
    ) -> None:
        limited, refusal = self.over_limit(data, host)
        answer = refusal if limited else await self.respond(data, host, transport)
        if answer is not None and not writer.is_closing():
            writer.write(struct.pack("!H", len(answer)) + answer)
            try:
                # A client that never reads is cut off, not waited for.
                async with asyncio.timeout(self.config.tcp_idle_timeout):
                    await writer.drain()
            except (ConnectionError, TimeoutError):
                writer.close()


def listener_changes(old: Config, new: Config) -> str:
    """What a reload would change of the listeners (sockets are bound once, at start): "" if
    nothing, else each address added (+) or removed (-)."""
    before = {str(e) for e in old.listen} | {str(e) for e in old.encrypted} | _operator(old)
    after = {str(e) for e in new.listen} | {str(e) for e in new.encrypted} | _operator(new)
    return ", ".join(
        [f"+ {a}" for a in sorted(after - before)] + [f"- {a}" for a in sorted(before - after)]
    )


def _operator(config: Config) -> set[str]:
    """The dashboard's and metrics' addresses, as listener_changes shows them."""
    shown = set()
    if config.dashboard is not None:
        shown.add(f"dashboard {config.dashboard}")
    if config.metrics is not None:
        shown.add(f"metrics {config.metrics}")
    return shown


def hit_key(data: bytes, peeked: wire.Peeked, plan: ViewPlan) -> Key:
    """The cache key of a question wire.peek read, for a client in `plan`'s view
    (`Server.datagram` makes it inline: a call per UDP query)."""
    _, flags, name_end, qend, _, do, _ = peeked
    return (plan.name, data[12:name_end].lower(), data[name_end:qend], do, bool(flags & wire.CD))


class UdpProtocol(asyncio.DatagramProtocol):
    """Hands each datagram to the server; nothing else."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport is not a subclass of asyncio.DatagramTransport, so cast.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if self.transport is not None:
            self.server.datagram(data, addr, self.transport)

    def error_received(self, exc: Exception) -> None:
        log.debug("UDP socket error: %s", exc)
