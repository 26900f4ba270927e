"""Queries as they are answered, for the dashboards that watch, and nothing when none does.

While a browser is subscribed the server appends one small tuple per answer to `tap` (a
bounded deque: a cache hit costs one append, its name is read later); every TICK this module
counts clients off what came and hands each subscriber the newest rows its filter keeps, at
most ROWS_PER_TICK of them, made only for those (the rest are counted as skipped: a page
cannot show thousands a second anyway). When the last subscriber leaves, the tap is taken
away again.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import operator
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from splitdns import wire
from splitdns.answer.rewrite import Change
from splitdns.serve.published import QTYPES, TAP_SIZE, Tapped

TICK = 0.25
ROWS_PER_TICK = 40  # per subscriber
SCANNED = 2000  # answers looked at per subscriber and tick (newest first)
QUEUE_SIZE = 32  # ticks' batches waiting for a slow browser
MAX_SUBSCRIBERS = 8
CLIENTS_KEPT = 1024

_HOST = operator.itemgetter(0)
_VIEW = operator.itemgetter(1)


@dataclass(frozen=True)
class Filter:
    """What one subscriber wants: exact client, view and outcome, a part of the name."""

    client: str = ""
    name: str = ""
    view: str = ""
    outcome: str = ""
    rewritten: bool = False

    def keeps(self, row: dict[str, Any]) -> bool:
        if self.client and row["client"] != self.client:
            return False
        if self.view and row["view"] != self.view:
            return False
        if self.outcome and row["outcome"] != self.outcome:
            return False
        if self.rewritten and not row["rewritten"]:
            return False
        return not self.name or self.name in row["name"]


class Subscriber:
    def __init__(self, wanted: Filter, drop: Callable[[], None] | None = None) -> None:
        self.filter = wanted
        self.queue: asyncio.Queue[str] = asyncio.Queue(QUEUE_SIZE)
        self.skipped = 0
        self.since = time.monotonic()
        self.drop = drop  # ends its connection (when another needs its place)


class LiveFeed:
    """The subscribers, the tap while there are any, and the clients seen meanwhile."""

    def __init__(
        self, watched: Callable[[deque[Tapped] | None], None], hidden: Callable[[], bool]
    ) -> None:
        self.watched = watched  # tells the server to tap (a deque) or not (None)
        self.hidden = hidden  # query_log.hide_clients, read when rows are made
        self.subscribers: set[Subscriber] = set()
        self.tap: deque[Tapped] = deque(maxlen=TAP_SIZE)
        self.answers: Counter[str] = Counter()  # by client, while watched
        self.views: dict[str, str] = {}  # client -> the view it was last answered in
        self.seen: dict[str, float] = {}  # client -> when last
        self.watching_since: float | None = None
        self._task: asyncio.Task[None] | None = None

    def subscribe(
        self, wanted: Filter, drop: Callable[[], None] | None = None
    ) -> Subscriber | None:
        """A new subscriber (the tap starts with the first). When MAX_SUBSCRIBERS watch, one
        that reads nothing (its queue full) makes room, else the oldest that can be ended
        (`drop`); None when none can."""
        if len(self.subscribers) >= MAX_SUBSCRIBERS:
            droppable = [s for s in self.subscribers if s.drop is not None]
            stalled = [s for s in droppable if s.queue.full()]
            victim = min(stalled or droppable, key=lambda s: s.since, default=None)
            if victim is None or victim.drop is None:
                return None
            self.subscribers.discard(victim)
            victim.drop()
        subscriber = Subscriber(wanted, drop)
        self.subscribers.add(subscriber)
        if self._task is None:
            self.tap.clear()
            self.watching_since = self.watching_since or time.time()
            self._task = asyncio.ensure_future(self._drain())
            self.watched(self.tap)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self.subscribers.discard(subscriber)
        if not self.subscribers and self._task is not None:
            self._task.cancel()
            self._task = None
            self.watched(None)

    def stop(self) -> None:
        for subscriber in list(self.subscribers):
            self.unsubscribe(subscriber)

    async def _drain(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            self.deliver()

    def deliver(self) -> None:
        """Rows from what the tap holds, to every subscriber (one JSON batch per tick). Rows
        are made newest first and only as many as a subscriber is shown (at most SCANNED
        answers looked at per tick): with thousands a second, the page shows the latest and
        counts the rest, and the server's cost stays bounded."""
        tapped = list(self.tap)
        self.tap.clear()
        if not tapped:
            return
        hidden = self.hidden()
        now = time.time()
        if not hidden:
            self._count(tapped, now)
        made: dict[int, dict[str, Any]] = {}  # rows shared by the subscribers
        for subscriber in list(self.subscribers):
            wanted = subscriber.filter
            shown: list[dict[str, Any]] = []
            index = len(tapped)
            while index and len(shown) < ROWS_PER_TICK and len(tapped) - index < SCANNED:
                index -= 1
                item = tapped[index]
                if wanted.client and (hidden or item[0] != wanted.client):
                    continue
                row = made.get(index)
                if row is None:
                    row = made[index] = make_row(item, now, hidden)
                if wanted.keeps(row):
                    shown.append(row)
            skipped = index + subscriber.skipped  # the older ones, not looked at
            if not shown and not skipped:
                continue
            shown.reverse()
            batch = json.dumps({"rows": shown, "skipped": skipped}, separators=(",", ":"))
            try:
                subscriber.queue.put_nowait(batch)
                subscriber.skipped = 0
            except asyncio.QueueFull:  # a browser that does not read: it misses these
                subscriber.skipped = skipped + len(shown)

    def _count(self, tapped: Sequence[Tapped], now: float) -> None:
        """Every answer counts for its client: C passes over the tuples that allocate
        nothing (a Counter over the hosts, whose hashes strings keep; each host's view, last
        one wins), then a step per client seen this tick."""
        tick = Counter(map(_HOST, tapped))
        self.answers.update(tick)
        self.views.update(zip(map(_HOST, tapped), map(_VIEW, tapped), strict=True))
        self.seen.update(dict.fromkeys(tick, now))
        if len(self.answers) > CLIENTS_KEPT:  # keep the busier half
            kept = dict(self.answers.most_common(CLIENTS_KEPT // 2))
            self.answers = Counter(kept)
            self.views = {h: v for h, v in self.views.items() if h in kept}
            self.seen = {h: t for h, t in self.seen.items() if h in kept}

    def top_clients(self, count: int = 10) -> list[dict[str, Any]]:
        busiest = sorted(self.answers.items(), key=lambda kv: (-kv[1], kv[0]))[:count]
        return [
            {
                "client": host,
                "answers": n,
                "view": self.views.get(host, ""),
                "last_seen": round(self.seen.get(host, 0.0), 1),
            }
            for host, n in busiest
        ]


def make_row(item: Tapped, now: float, hidden: bool) -> dict[str, Any]:
    """A tapped answer as the page shows it."""
    if len(item) <= 5:  # a cache hit: (host, view, query bytes[, the rewrite[, transport]])
        host, view, data = item[:3]
        name, end = wire.read_name(data, wire.HEADER_LEN)
        qtype = (data[end] << 8) | data[end + 1]
        outcome, ms, upstream = "cached", 0.0, None
        transport = item[4] if len(item) == 5 else "udp"
        changes = item[3] if len(item) >= 4 else ()
    elif len(item) == 7:  # the express lane's miss: its changes as (old, new, rule)
        host, view, data, outcome, latency, lane, upstream = item
        name, end = wire.read_name(data, wire.HEADER_LEN)
        qtype = (data[end] << 8) | data[end + 1]
        ms, transport = round(latency * 1000, 3), "udp"
        rewritten = [
            {
                "name": name.lower(),
                "from": str(ipaddress.ip_address(old)),
                "to": str(ipaddress.ip_address(new)),
                "rule": rule,
                "field": "",
            }
            for old, new, rule in lane
        ]
        return _row(now, hidden, host, name, qtype, view, outcome, ms, upstream, transport,
                    rewritten)  # fmt: skip
    else:
        host, view, name, qtype, outcome, latency, changes, upstream, transport = item
        ms = round(latency * 1000, 3)
    rewritten = [_change(change) for change in cast(Sequence[Change], changes)]
    return _row(now, hidden, host, name, qtype, view, outcome, ms, upstream, transport, rewritten)


def _row(
    now: float,
    hidden: bool,
    host: str,
    name: str,
    qtype: int,
    view: str,
    outcome: str,
    ms: float,
    upstream: str | None,
    transport: str,
    rewritten: list[dict[str, Any]],
) -> dict[str, Any]:
    return {
        "time": round(now, 3),
        "client": "hidden" if hidden else host,
        "name": name.lower(),
        "type": QTYPES.get(qtype, f"TYPE{qtype}"),
        "view": view or "",
        "outcome": outcome,
        "ms": ms,
        "upstream": upstream,
        "transport": transport,
        "rewritten": rewritten,
    }


def _change(change: Change) -> dict[str, Any]:
    return {
        "name": change.name,
        "from": str(change.old),
        "to": None if change.new is None else str(change.new),
        "rule": change.rule,
        "field": change.field,
    }
