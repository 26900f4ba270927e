"""A cache of final wire answers, per view, so a hit is a byte patch and not a parse and pack.

An entry is the bare answer exactly as the client of that view would get it (after rewriting),
plus the offset of every TTL, recorded when it is stored. A hit copies the bytes, ages the TTLs
at their offsets (once per second of age, then reused), and lets `wire.assemble` write the
client's ID, question bytes and EDNS. The clock is injected so tests move time instead of
sleeping. Bounded in entries and bytes, least recently used evicted first.
"""

from __future__ import annotations

import struct
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from splitdns import wire
from splitdns.config.model import CacheSettings

#: (view name or "", lower-cased question name in wire form, type+class bytes, DO, CD)
Key = tuple[str, bytes, bytes, bool, bool]

STALE_TTL = 30  # RFC 8767 §4: TTL of an answer served stale
ENTRY_OVERHEAD = 400  # bytes an entry costs beside its answer (objects, key, dict slot)
_TTL = struct.Struct("!I")


@dataclass(slots=True)
class CacheStats:
    hits: int = 0
    misses: int = 0
    stale: int = 0
    evictions: int = 0
    prefetches: int = 0


class Entry:
    """One stored answer and how to age it."""

    __slots__ = (
        "_aged",
        "_aged_at",
        "changes",
        "data",
        "expires",
        "outcome",
        "prefetching",
        "rewritten",
        "size",
        "stored",
        "ttl",
        "ttls",
    )

    def __init__(
        self,
        data: bytes,
        ttls: tuple[tuple[int, int], ...],
        ttl: int,
        now: float,
        outcome: str,
        exact: bool = False,
        rewritten: bool = False,
        changes: tuple[Any, ...] = (),
    ) -> None:
        """`exact`: `data` already carries `ttls` (none was clamped): at age 0 it is the answer.
        `rewritten`: the question's own answer was (links.Response's); `changes`: what was
        rewritten (rewrite.Change), for the dashboard's rows of cached answers."""
        self.data = data
        self.ttls = ttls
        self.ttl = ttl
        self.stored = now
        self.expires = now + ttl
        self.outcome = outcome
        self.rewritten = rewritten
        self.changes = changes
        self.size = len(data) + ENTRY_OVERHEAD
        self.prefetching = False
        self._aged_at = 0 if exact else -1  # clamped TTLs: computed even at age 0
        self._aged = data

    def aged(self, now: float) -> bytes:
        """The answer with every TTL reduced by the entry's age in whole seconds."""
        age = int(now - self.stored)
        if age == self._aged_at:
            return self._aged
        buf = bytearray(self.data)
        for offset, ttl in self.ttls:
            _TTL.pack_into(buf, offset, ttl - age if ttl > age else 0)
        self._aged_at = age
        self._aged = bytes(buf)
        return self._aged

    def stale_copy(self) -> bytes:
        buf = bytearray(self.data)
        for offset, ttl in self.ttls:
            _TTL.pack_into(buf, offset, min(ttl, STALE_TTL))
        return bytes(buf)


def _prefetch_at(entry: Entry) -> float:
    """When an entry enters its last tenth of life, and prefetch (if on) refreshes it."""
    return entry.expires - entry.ttl / 10


def _ttl(data: bytes, offset: int) -> int:
    """A TTL as RFC 2181 §8 reads it: with the top bit set it means 0."""
    ttl: int = _TTL.unpack_from(data, offset)[0]
    return 0 if ttl & 0x80000000 else ttl


def make_key(view: str, question: wire.Question, do: bool, cd: bool) -> Key:
    wire_q = question.wire
    return (view, wire_q[:-4].lower(), wire_q[-4:], do, cd)


def clamped_ttls(
    ttls: list[tuple[int, int]], settings: CacheSettings
) -> tuple[int, tuple[tuple[int, int], ...]]:
    """A positive answer's lifetime (its smallest TTL) and its (offset, TTL) pairs, every TTL
    held within min_ttl..max_ttl. `ttls` must not be empty."""
    low, high = settings.min_ttl, settings.max_ttl
    clamped = tuple((off, low if t < low else high if t > high else t) for off, t in ttls)
    return min(t for _, t in clamped), clamped


def lifetime(
    ttls: list[tuple[int, int]], low: int, high: int, settings: CacheSettings
) -> tuple[int, tuple[tuple[int, int], ...], bool]:
    """clamped_ttls for TTLs already known to lie within low..high, and whether none was
    clamped (then the reply's own bytes are the stored answer: `Entry`'s `exact`). The
    usual answer needs no clamp, and skipping the pass over its records was a twentieth of the
    express lane's own work."""
    if settings.min_ttl <= low and high <= settings.max_ttl:
        return low, tuple(ttls), True
    ttl, clamped = clamped_ttls(ttls, settings)
    return ttl, clamped, clamped == tuple(ttls)


def answer_ttl(
    data: bytes, settings: CacheSettings, message: wire.Message | None = None
) -> tuple[int, tuple[tuple[int, int], ...]]:
    """How long an answer may be cached (0: not at all) and its TTL offsets, clamped.

    Positive answers live for their smallest TTL; negative ones (NXDOMAIN, NODATA) for
    min(SOA TTL, SOA MINIMUM) per RFC 2308 §5, and not at all without an SOA; SERVFAIL for
    `servfail_ttl`; anything truncated or otherwise failed is not cached.
    """
    if message is None:
        message = wire.walk(data)
    if message.flags & wire.TC:
        return 0, ()
    rcode = message.rcode
    if rcode == wire.SERVFAIL:
        return settings.servfail_ttl, ()
    if rcode not in (wire.NOERROR, wire.NXDOMAIN):
        return 0, ()
    ttls: list[tuple[int, int]] = []
    answers = False
    soa: wire.Record | None = None
    for r in message.records:  # one pass: this runs for every miss
        if r.rtype == wire.TYPE_OPT:
            continue
        ttls.append((r.ttl_offset, _ttl(data, r.ttl_offset)))
        if r.section == wire.ANSWER:
            answers = True
        elif soa is None and r.section == wire.AUTHORITY and r.rtype == wire.TYPE_SOA:
            soa = r
    if rcode == wire.NOERROR and answers:
        return clamped_ttls(ttls, settings)
    if soa is None:
        return 0, ()
    _, pos = wire.read_name(data, soa.rdata_offset)
    _, pos = wire.read_name(data, pos)
    if pos + 20 > soa.rdata_offset + soa.rdlength:
        return 0, ()
    minimum = _ttl(data, pos + 16)
    soa_ttl = _ttl(data, soa.ttl_offset)
    ttl = min(soa_ttl, minimum, settings.negative_max_ttl)
    return ttl, tuple((off, min(t, ttl)) for off, t in ttls)


class Cache:
    """Final answers by Key, LRU-bounded in entries and bytes."""

    def __init__(
        self, settings: CacheSettings, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.stats = CacheStats()
        self._entries: OrderedDict[Key, Entry] = OrderedDict()
        self.bytes = 0
        self.enabled = settings.size > 0  # (read on every UDP query: a field, not a property)

    def __len__(self) -> int:
        return len(self._entries)

    def fresh(self, key: Key, now: float) -> Entry | None:
        """A fresh entry, or None; counts nothing (the cache-hit fast path counts its answers,
        and leaves everything else to `get` in the chain, so nothing is counted twice)."""
        entry = self._entries.get(key)
        if entry is not None and entry.expires > now:
            self._entries.move_to_end(key)
            return entry
        return None

    def get(self, key: Key, now: float) -> Entry | None:
        """A fresh entry, counted as a hit, or None (counted as a miss)."""
        entry = self.fresh(key, now)
        if entry is not None:
            self.stats.hits += 1
            return entry
        self.stats.misses += 1
        entry = self._entries.get(key)
        if entry is not None and not self._may_serve_stale(entry, now):
            self._drop(key)
        return None

    def stale(self, key: Key, now: float) -> Entry | None:
        """An expired entry still within the stale window (serve-stale only)."""
        entry = self._entries.get(key)
        if entry is not None and self._may_serve_stale(entry, now):
            self.stats.stale += 1
            return entry
        return None

    def _may_serve_stale(self, entry: Entry, now: float) -> bool:
        return self.settings.serve_stale and now < entry.expires + self.settings.stale_max_age

    def prefetch_due(self, entry: Entry, now: float) -> bool:
        """In its last tenth of life and not yet being refreshed (entries of TTL >= 10 s)."""
        return (
            self.settings.prefetch
            and not entry.prefetching
            and entry.ttl >= 10
            and now >= _prefetch_at(entry)
        )

    def same_until(self, entry: Entry, now: float) -> float:
        """Until when a hit on `entry` reads exactly as it does at `now` and asks for nothing
        else: its TTLs tick (`Entry.aged` counts whole seconds), it expires, or it becomes due
        for prefetch, whichever comes first (serve/replay.py keeps answers that long)."""
        until = entry.stored + int(now - entry.stored) + 1
        if entry.expires < until:
            until = entry.expires
        if self.settings.prefetch and entry.ttl >= 10 and not entry.prefetching:
            until = min(until, _prefetch_at(entry))
        return until

    def current(self, key: Key, entry: Entry) -> bool:
        """Whether `entry` is still the one cached for `key`; if so it counts as just used (the
        LRU order, as `fresh` keeps it)."""
        if self._entries.get(key) is not entry:
            return False
        self._entries.move_to_end(key)
        return True

    def wants_prefetch(self, entry: Entry, now: float) -> bool:
        """Refresh an entry in its last tenth of life (at most once), so hits never miss."""
        if not self.prefetch_due(entry, now):
            return False
        entry.prefetching = True
        self.stats.prefetches += 1
        return True

    def put(
        self,
        key: Key,
        data: bytes,
        outcome: str,
        now: float,
        ttl_hint: int | None = None,
        message: wire.Message | None = None,
        rewritten: bool = False,
        changes: tuple[Any, ...] = (),
    ) -> Entry | None:
        """Store an answer if it may be cached; returns the entry stored.

        `message` is the walk of `data` when the caller has one (saves walking it again).
        """
        if not self.enabled:
            return None
        try:
            ttl, ttls = answer_ttl(data, self.settings, message)
        except wire.WireError:
            return None
        if ttl_hint is not None:
            ttl = min(ttl_hint, self.settings.max_ttl) if ttl == 0 else min(ttl, ttl_hint)
        if ttl <= 0:
            return None
        return self.keep(key, Entry(data, ttls, ttl, now, outcome, False, rewritten, changes))

    def keep(self, key: Key, entry: Entry) -> Entry | None:
        """Store a made entry (its TTLs already decided); None if it is too big to keep."""
        if entry.size > self.settings.max_bytes:
            return None
        self._drop(key)
        self._entries[key] = entry
        self.bytes += entry.size
        while len(self._entries) > self.settings.size or self.bytes > self.settings.max_bytes:
            _, old = self._entries.popitem(last=False)
            self.bytes -= old.size
            self.stats.evictions += 1
        return entry

    def _drop(self, key: Key) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= old.size

    def drop_where(self, keep: Callable[[Key], bool]) -> int:
        """Remove every entry whose key `keep` rejects (used when the config changes)."""
        doomed = [k for k in self._entries if not keep(k)]
        for key in doomed:
            self._drop(key)
        return len(doomed)

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0
