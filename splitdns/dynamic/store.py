"""The LAN's own names: what the DHCP server told splitdns, answered and kept across restarts.

Two sources fill a zone: RFC 2136 UPDATEs (journaled: every accepted update is appended to
`journal.jsonl` in the state directory and fsynced before its answer leaves, so an
acknowledged update survives a crash) and lease files (read again at start and on change, so
never journaled). A snapshot (`snapshot.json`, written to a temporary file, fsynced, renamed)
folds the journal in every COMPACT_EVERY updates; an update whose serial the snapshot already
holds is not applied twice, and a torn last journal line (a crash mid-write, never
acknowledged) is dropped with a warning.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from splitdns import wire
from splitdns.config.dynamic import zone_for

log = logging.getLogger(__name__)

COMPACT_EVERY = 1000
SOA_TTL = 300  # the zone's SOA TTL and negative-caching MINIMUM: a lease comes and goes
TYPE_CNAME = wire.TYPE_CNAME

#: (kind, name, rtype, ttl, rdata): kind is add, del_rr (rdata), del_rrset (rtype), del_name
Op = tuple[str, str, int, int, bytes]
Record = tuple[int, int, bytes]  # (type, ttl, rdata) of the question's name


@dataclass
class Name:
    """One owner name's records, from one source."""

    rrsets: dict[int, tuple[int, list[bytes]]] = field(
        default_factory=dict
    )  # type -> (ttl, rdatas)
    since: float = 0.0
    source: str = ""


@dataclass
class Zone:
    name: str
    serial: int
    names: dict[str, Name] = field(default_factory=dict)  # from UPDATEs
    leased: dict[str, Name] = field(default_factory=dict)  # from lease files

    def soa(self) -> wire.Soa:
        numbers = (self.serial, 3600, 600, 604800, SOA_TTL)
        return wire.Soa(self.name, f"ns.{self.name}", f"hostmaster.{self.name}", numbers, SOA_TTL)

    def owner(self, name: str) -> Name | None:
        """The records at `name` (an update's win over a lease's)."""
        return self.names.get(name) or self.leased.get(name)

    def exists(self, name: str) -> bool:
        return name == self.name or self.owner(name) is not None


def apply(zone: Zone, ops: Iterable[Op], source: str, now: float) -> None:
    """Apply an update's operations in order (RFC 2136 section 3.4.2): adds join (or refresh the
    TTL of) their RRset; a CNAME and other data never share a name (the later is ignored)."""
    for kind, name, rtype, ttl, rdata in ops:
        entry = zone.names.get(name)
        if kind == "add":
            if entry is None:
                entry = zone.names[name] = Name(since=now, source=source)
            others = [t for t in entry.rrsets if t != rtype]
            if (rtype == TYPE_CNAME and others) or (
                TYPE_CNAME in entry.rrsets and rtype != TYPE_CNAME
            ):
                continue
            _, rdatas = entry.rrsets.get(rtype, (ttl, []))
            if rtype == TYPE_CNAME:
                rdatas = []  # one CNAME: the new one replaces it
            if rdata not in rdatas:
                rdatas = [*rdatas, rdata]
            entry.rrsets[rtype] = (ttl, rdatas)
            entry.source = source
        elif entry is None:
            continue
        elif kind == "del_name":
            del zone.names[name]
        elif kind == "del_rrset":
            entry.rrsets.pop(rtype, None)
        elif kind == "del_rr" and rtype in entry.rrsets:
            ttl_now, rdatas = entry.rrsets[rtype]
            kept = [r for r in rdatas if r != rdata]
            if kept:
                entry.rrsets[rtype] = (ttl_now, kept)
            else:
                del entry.rrsets[rtype]
        if name in zone.names and not zone.names[name].rrsets:
            del zone.names[name]


class Store:
    """Every dynamic zone; journaled to `directory` when one is given (None: memory only)."""

    def __init__(self, zones: tuple[str, ...], directory: Path | None) -> None:
        self.zones = {z: Zone(z, 0) for z in zones}
        self.directory = directory
        self.since_snapshot = 0
        self._journal: int | None = None  # the open journal's descriptor
        if directory is not None:
            self._load(directory)
        for zone in self.zones.values():  # a zone new here starts its serial at the time
            zone.serial = zone.serial or int(time.time()) & 0xFFFFFFFF

    def zone_of(self, name: str) -> Zone | None:
        found = zone_for(name, self.zones)
        return self.zones[found] if found is not None else None

    def answer(
        self, name: str, qtype: int
    ) -> tuple[Zone, int, list[tuple[int, int, bytes]]] | None:
        """(zone, rcode, records) for a question in a zone held here, else None: NXDOMAIN for
        a name with nothing, NODATA (no records) for one without that type, the CNAME when the
        name is an alias."""
        zone = self.zone_of(name)
        if zone is None:
            return None
        if name == zone.name and qtype in (wire.TYPE_SOA, 255):
            soa = zone.soa()
            return zone, wire.NOERROR, [(wire.TYPE_SOA, SOA_TTL, wire.soa_rdata(soa, SOA_TTL))]
        owner = zone.owner(name)
        if owner is None:
            return zone, (wire.NOERROR if name == zone.name else wire.NXDOMAIN), []
        records: list[Record] = []
        for rtype, (ttl, rdatas) in owner.rrsets.items():
            if qtype in (rtype, 255) or (rtype == TYPE_CNAME and qtype != TYPE_CNAME):
                records += [(rtype, ttl, r) for r in rdatas]
        return zone, wire.NOERROR, records

    # ------------------------------------------------------------------ keeping it

    def apply_update(self, zone: Zone, ops: list[Op], source: str) -> str:
        """Apply an accepted update in memory (the zone's serial up by one) and return its
        journal line, for `persist` to put on disk before the update is answered."""
        now = time.time()
        apply(zone, ops, source, now)
        zone.serial = (zone.serial + 1) & 0xFFFFFFFF
        return json.dumps(
            {"zone": zone.name, "serial": zone.serial, "source": source, "time": round(now, 3),
             "ops": [[k, n, t, ttl, r.hex()] for k, n, t, ttl, r in ops]},
            separators=(",", ":"),
        )  # fmt: skip

    def persist(self, line: str) -> None:
        """Append a journal line and fsync it (OSError when the disk says no); every
        COMPACT_EVERY lines the journal is folded into the snapshot."""
        if self.directory is None:
            return
        if self._journal is None:
            self._journal = os.open(
                self.directory / "journal.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600
            )
        os.write(self._journal, (line + "\n").encode())
        os.fsync(self._journal)
        self.since_snapshot += 1
        if self.since_snapshot >= COMPACT_EVERY:
            self.snapshot()

    def commit(self, zone: Zone, ops: list[Op], source: str) -> None:
        """apply_update then persist, in this thread (tools and tests)."""
        self.persist(self.apply_update(zone, ops, source))

    def snapshot(self) -> None:
        """Fold the journal into snapshot.json (atomic, fsynced), then empty the journal."""
        if self.directory is None:
            return
        state = {
            zone.name: {
                "serial": zone.serial,
                "names": {
                    name: {"since": entry.since, "source": entry.source,
                           "rrsets": {str(t): [ttl, [r.hex() for r in rdatas]]
                                      for t, (ttl, rdatas) in entry.rrsets.items()}}
                    for name, entry in zone.names.items()
                },
            }
            for zone in self.zones.values()
        }  # fmt: skip
        target = self.directory / "snapshot.json"
        temporary = self.directory / "snapshot.json.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, json.dumps(state, separators=(",", ":")).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, target)
        _fsync_directory(self.directory)
        if self._journal is not None:
            os.close(self._journal)
            self._journal = None
        fd = os.open(self.directory / "journal.jsonl", os.O_WRONLY | os.O_TRUNC | os.O_CREAT, 0o600)
        os.fsync(fd)
        os.close(fd)
        self.since_snapshot = 0

    def close(self) -> None:
        if self._journal is not None:
            os.close(self._journal)
            self._journal = None

    def _load(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        snapshot = directory / "snapshot.json"
        if snapshot.exists():
            try:
                state = json.loads(snapshot.read_text())
            except (OSError, ValueError) as exc:  # renamed into place whole: a bug or a hand
                raise StoreError(f"{snapshot}: {exc}") from None
            for zone_name, kept in state.items():
                zone = self.zones.get(zone_name)
                if zone is None:  # a zone no longer configured: its names are not served
                    continue
                zone.serial = int(kept["serial"])
                for name, entry in kept["names"].items():
                    rrsets = {int(t): (int(v[0]), [bytes.fromhex(r) for r in v[1]])
                              for t, v in entry["rrsets"].items()}  # fmt: skip
                    zone.names[name] = Name(rrsets, float(entry["since"]), str(entry["source"]))
        journal = directory / "journal.jsonl"
        if not journal.exists():
            return
        lines = journal.read_bytes().split(b"\n")
        last = max((n for n, raw in enumerate(lines, 1) if raw.strip()), default=0)
        for number, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            try:
                entry = json.loads(raw)
                zone = self.zones.get(entry["zone"])
                if zone is None or not _newer(int(entry["serial"]), zone.serial):
                    continue
                ops = [(str(k), str(n), int(t), int(ttl), bytes.fromhex(r))
                       for k, n, t, ttl, r in entry["ops"]]  # fmt: skip
            except (ValueError, KeyError, TypeError):
                if number == last:  # the last line: a write the crash cut short
                    log.warning("%s: a torn last line dropped (never acknowledged)", journal)
                    continue
                raise StoreError(f"{journal}:{number}: not a journal line") from None
            apply(zone, ops, str(entry.get("source", "")), float(entry.get("time", 0)))
            zone.serial = int(entry["serial"])
            self.since_snapshot += 1


class StoreError(ValueError):
    """A state directory whose files splitdns cannot read (named with file and line)."""


def _newer(serial: int, than: int) -> bool:
    """RFC 1982 serial arithmetic: whether `serial` comes after `than`."""
    return serial != than and ((serial - than) & 0xFFFFFFFF) < 0x80000000


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
