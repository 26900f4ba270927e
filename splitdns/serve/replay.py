"""Replayed hits: a UDP cache hit's answer kept by the query's own bytes, for as long as it
would be built the same, so the same question asked the same way again is a look-up and a send.

A LAN asks a few names over and over, each client the same way every time. Everything in a hit's
answer but the ID follows from the query's bytes after its ID (flags, the question as written,
EDNS size and DO: `wire.assemble`) and from the cache entry at its age in whole seconds. So
the answer after the ID is kept per view (`ViewPlan.replies`) with the moment it stops being
that answer (`Cache.same_until`: the TTLs tick, the entry expires or falls due for prefetch),
and a query with the same bytes before then gets it with its own ID: no parse, key or
assembly. A replay is still a hit: the entry must still be the one cached under its key (not
evicted, replaced or dropped on reload; the LRU order is kept as for any hit), and the same
counters count it. Only the UDP path replays (its answers depend on the client's UDP size);
none is kept while the query log is on, since every hit must be logged. PowerDNS calls the
same idea its packet cache.
"""

from __future__ import annotations

from splitdns.answer.cache import Entry, Key

REPLAYS = 256  # answers kept per view; past it the view's replays start over (hot names come
# back within a second). Answers are at most the client's UDP size: about 1 MiB a view at most.
REPLAY_BYTES = 256  # queries longer than this (large EDNS options) are never kept

#: (answer after the ID, good until (the cache's clock), cache key, entry, query counter label)
Replay = tuple[bytes, float, Key, Entry, tuple[str, str, str]]


def keep(
    replies: dict[bytes, Replay],
    data: bytes,
    answer: bytes,
    until: float,
    key: Key,
    entry: Entry,
    label: tuple[str, str, str],
) -> None:
    """Keep a hit's `answer` to the query `data` until `until` (skipped for long queries)."""
    if len(data) > REPLAY_BYTES:
        return
    if len(replies) >= REPLAYS:
        replies.clear()
    replies[data[2:]] = (answer[2:], until, key, entry, label)
