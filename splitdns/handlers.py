"""The handler chain: every query walks these links in one direction.

Each link is a small object with `async __call__(request) -> Response` that either answers or
calls the next link and looks at what comes back. `build_chain` is the one place that orders
them, with the reason for each position. Responses are *bare* messages (no OPT, any ID); the
server finalises them for the client (ID, question case, EDNS, truncation).
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from splitdns import localanswers, rewrite, wire
from splitdns.config import Config, IPAddress, View
from splitdns.upstream import UpstreamFailure, Upstreams
from splitdns.views import is_allowed, select_view

log = logging.getLogger(__name__)


class Outcome(enum.StrEnum):
    """What happened to a query: a low-cardinality label for logs and metrics."""

    FORWARDED = "forwarded"
    REWRITTEN = "rewritten"
    LOCAL = "local"
    FILTERED = "filtered"
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


class DropShadowedAAAA:
    """`aaaa: drop`: no public IPv6 beside a rewritten IPv4 answer.

    A dual-stack client prefers AAAA, so a public IPv6 address would bypass the IPv4 rewrite.
    The A lookup runs at the same time as the AAAA one, through the same chain below.
    """

    def __init__(self, next_link: Handler) -> None:
        self.next = next_link

    async def __call__(self, req: Request) -> Response:
        view = req.view
        if (
            view is None
            or view.aaaa != "drop"
            or req.query.question.qtype != wire.TYPE_AAAA
            or not any(r.source.version == 4 for r in view.rules)
        ):
            return await self.next(req)
        a_req = Request(req.query.with_type(wire.TYPE_A), req.client, req.transport, view)
        aaaa, a = await asyncio.gather(self.next(req), self.next(a_req))
        if (
            a.outcome is Outcome.REWRITTEN
            and aaaa.outcome is not Outcome.REWRITTEN
            and wire.rcode_of(aaaa.bare) == wire.NOERROR
        ):
            empty = wire.make_answer(req.query, [], aa=False)
            return Response(empty, Outcome.FILTERED, a.changes, aaaa.upstream)
        return aaaa


class Rewrite:
    """Rewrite public addresses in what came from upstream, for the client's view."""

    def __init__(self, next_link: Handler) -> None:
        self.next = next_link

    async def __call__(self, req: Request) -> Response:
        resp = await self.next(req)
        if resp.outcome is not Outcome.FORWARDED or req.view is None or not req.view.rules:
            return resp
        result = rewrite.rewrite(resp.bare, req.query.question.name, req.view)
        if not result.changes:
            return resp
        return Response(result.data, Outcome.REWRITTEN, result.changes, resp.upstream)


class Forward:
    """Ask the upstreams; any failure is SERVFAIL, never NXDOMAIN."""

    def __init__(self, upstreams: Upstreams) -> None:
        self.upstreams = upstreams

    async def __call__(self, req: Request) -> Response:
        try:
            reply = await self.upstreams.resolve(req.query)
        except UpstreamFailure as exc:
            log.debug("SERVFAIL for %s: %s", req.query.question.name, exc)
            return Response(
                wire.make_error(req.query, wire.SERVFAIL), Outcome.SERVFAIL, notes=[str(exc)]
            )
        bare = wire.strip_opt(reply.data, reply.message)
        return Response(bare, Outcome.FORWARDED, upstream=reply.upstream)


def build_chain(config: Config, upstreams: Upstreams) -> Handler:
    """The order of the links, outermost first (each reason is why it stands there)."""
    handler: Handler = Forward(upstreams)  # last: only what nobody else answered leaves the LAN
    handler = Rewrite(handler)  # right above forward: rewrites only upstream answers, never hosts
    handler = DropShadowedAAAA(handler)  # above rewrite: it needs to know the A was rewritten
    handler = LocalHosts(handler)  # before anything is forwarded
    handler = SelectView(config, handler)  # everything below depends on the view
    handler = RefuseUnsupported(handler)  # cheap protocol policy before any work
    handler = RefuseOutsiders(config, handler)  # first: outsiders get nothing but REFUSED
    return handler
