"""What splitdns does with one question from one client, step by step: `splitdns explain`
and the dashboard's explain form.

It walks the same pure pieces the server uses (admission, view, hosts, upstream, rewrite) and
then asks the real chain for the final answer, so what it prints is what a client would get.
"""

from __future__ import annotations

import time

from splitdns import wire
from splitdns.answer import localanswers, rewrite
from splitdns.answer.links import Outcome, Request
from splitdns.answer.rebinding import Guard
from splitdns.answer.views import client_address, is_allowed, select_view
from splitdns.config.model import Config, IPAddress
from splitdns.config.upstreams import local_reverse_zone
from splitdns.serve.server import Server
from splitdns.upstream.forwarder import Forwarder
from splitdns.upstream.transport import UpstreamFailure


async def explain(
    config: Config, name: str, client: str, qtype: str, live: Server | None = None
) -> list[str]:
    """The steps, as lines. `live`: a running server (the dashboard's), whose upstreams and
    chain (and cache) answer, as they would the client; else a server of its own is made."""
    address = client_address(client)
    data = wire.make_query(name, wire.type_code(qtype))
    query = wire.parse_query(data)
    out = [f"question: {query.question.name} {qtype.upper()} from {address}"]
    if not is_allowed(config.allow, address):
        out.append(f"allow: {address} is outside `allow` -> REFUSED")
        return out
    view = select_view(config.views, address)
    if view is None:
        out.append("view: none (allowed, in no view): plain forwarding, answers untouched")
    else:
        out.append(f"view: {view.name} (clients {', '.join(map(str, view.clients))})")
        local = localanswers.answer(query, view)
        if local is not None:
            out.append(f"hosts: answered locally from view {view.name}'s hosts (never forwarded)")
            out += [f"  {line}" for line in wire.answer_lines(local)]
            return out
    if config.dynamic is not None and config.dynamic.zone_of(query.question.name) is not None:
        served = not config.dynamic.views or (
            view is not None and view.name in config.dynamic.views
        )
        if served and (view is not None or not config.views):
            return out + await _dynamic(config, query, address, live)
        out.append("dynamic zones: not served to this client's view: forwarded as any name")
    zone = local_reverse_zone(config.forwarding, query.question.name)
    if zone is not None:
        out.append(f"reverse zone {zone}: private range, answered locally (RFC 6303) -> NXDOMAIN")
        return out
    forwarder = live.upstreams if live is not None else Forwarder(config)
    out.append(f"route: {forwarder.describe(query.question.name)}")
    try:
        reply = await forwarder.resolve(query)
    except UpstreamFailure as exc:
        out.append(f"upstream: all failed ({exc}) -> SERVFAIL")
        return out
    finally:
        if live is None:
            await forwarder.aclose()
    bare, message = wire.strip_opt(reply.data, reply.message)
    out.append(f"upstream: {reply.upstream} answered over {reply.transport}:")
    out += [f"  {line}" for line in wire.answer_lines(bare)]
    guard = Guard(config)
    if guard.applies_to(query.question.name):
        filtered = guard.filter(bare, message)
        if filtered is not None:
            bare, removed = filtered
            message = wire.walk(bare)
            out.append(f"rebinding guard: removed {removed} private address(es) from that answer")
    result = rewrite.rewrite(bare, query.question.name, view, message)
    rules = {r.index: r for r in view.rules} if view is not None else {}
    if not result.changes:
        out.append("rewrite: no rule matched: the answer passes unchanged")
    for change in result.changes:
        out.append(f"rewrite: {change.describe()} ({rules[change.rule]})")
    server = live or Server(config)
    if live is None and query.question.qtype == wire.TYPE_AAAA and view is not None:
        await server.discover_nat64()  # (as serve does at start: the upstream's own prefix)
    request = Request(query, address, "tcp")
    response = await server.handler(request)
    policy = [c for c in response.changes if c not in result.changes]
    dns64 = [c for c in policy if c.field in ("dns64", "nat64")]
    policy = [c for c in policy if c.field not in ("dns64", "nat64")]
    for change in dns64:
        out.append(f"{change.field}: {change.describe()}")
    if response.outcome is Outcome.FILTERED and view is not None and not dns64:
        why = "aaaa: drop" if query.question.qtype == wire.TYPE_AAAA else "https: drop"
        rewritten = ", ".join(sorted({c.name for c in policy if c.new is not None})) or "it"
        out.append(
            f"{why}: the view rewrites {rewritten}, so this answer is NODATA (with an SOA, "
            "so clients cache it)"
        )
        policy = [c for c in policy if c.new is None]
    for change in policy:
        out.append(f"{'aaaa: drop' if change.new is None else 'rewrite'}: {change.describe()}")
    final = wire.finalize(query, response.bare, None)
    out.append("final answer:")
    out += [f"  {line}" for line in wire.answer_lines(final)]
    return out


async def _dynamic(
    config: Config, query: wire.Query, address: IPAddress, live: Server | None
) -> list[str]:
    """A name in a dynamic zone: where it came from (an update and its key, or a lease file,
    and since when), then the answer the chain gives."""
    server = live or Server(config)
    assert server.local is not None
    zone = server.local.store.zone_of(query.question.name)
    assert zone is not None
    owner = zone.owner(query.question.name)
    if owner is None:
        out = [f"dynamic zone {zone.name}: no such name (held here, never forwarded)"]
    else:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner.since))
        out = [f"dynamic zone {zone.name}: from {owner.source}, since {since}"]
    response = await server.handler(Request(query, address, "tcp"))
    out.append("final answer:")
    out += [f"  {line}" for line in wire.answer_lines(wire.finalize(query, response.bare, None))]
    if live is None:
        server.local.stop()
    return out
