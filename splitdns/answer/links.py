"""What every link of the handler chain speaks: the request, the response, the outcome, and
the Link with its two ways to run (answer/chain.py's docstring tells them)."""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from splitdns import wire
from splitdns.answer import rewrite
from splitdns.config.model import IPAddress, View
from splitdns.upstream.transport import Handover

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
