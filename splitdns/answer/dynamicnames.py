"""The LAN's own names answered: the dynamic zones (dynamic/store.py), authoritatively.

Below `hosts` (a name the mapping gives wins over one a device claims) and above the reverse
zones of RFC 6303 and the cache: a dynamic answer is never aged or kept, so a lease that ends
is gone at once. Served to the views `dynamic.views` names (every view when none is named; every
allowed client when the mapping has no views); anyone else's question goes on as before.
"""

from __future__ import annotations

from splitdns import wire
from splitdns.answer.links import Handler, Link, Outcome, Request, Response
from splitdns.config.model import Config
from splitdns.dynamic.store import Store


class DynamicNames(Link):
    def __init__(self, store: Store, config: Config, next_link: Handler) -> None:
        self.store = store
        assert config.dynamic is not None
        self.views = frozenset(config.dynamic.views)
        self.any_client = not config.views
        self.next = next_link

    def serves(self, req: Request) -> bool:
        if req.view is None:
            return self.any_client
        return not self.views or req.view.name in self.views

    def before(self, req: Request) -> Response | None:
        q = req.query.question
        if q.qclass != wire.CLASS_IN or not self.serves(req):
            return None
        found = self.store.answer(q.name, q.qtype)
        if found is None:
            return None
        zone, rcode, records = found
        source = f"dynamic zone {zone.name}"  # (the query log's and the live feed's upstream)
        if records:
            return Response(wire.make_answer(req.query, records), Outcome.LOCAL, upstream=source)
        bare = wire.make_zone_negative(req.query, zone.soa(), rcode)
        return Response(bare, Outcome.LOCAL, upstream=source)
