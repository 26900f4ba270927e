"""The server's side of the LAN's own names: the store's place on disk, the UPDATE handler, and
the lease files watched (polled every LEASE_POLL seconds: a rename into place or a rewrite in
place both change the stamp; a file that goes away takes its names with it).

The store lives in `state_dir`/dynamic (made for the service user when splitdns starts as root,
so the journal stays writable after root is dropped). A reload that keeps the zones keeps the
store and its names; one that changes them opens the store again from disk.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import time
from pathlib import Path

from splitdns import wire
from splitdns.config.dynamic import DynamicSettings
from splitdns.config.encrypted import default_state_dir
from splitdns.config.model import Config
from splitdns.dynamic import leases as leasefiles
from splitdns.dynamic.store import Name, Store
from splitdns.listen.privileges import service_user
from splitdns.serve.updates import Updates

log = logging.getLogger(__name__)

LEASE_POLL = 1.0


def store_directory(config: Config) -> Path:
    return Path(config.state_dir or default_state_dir()) / "dynamic"


class LocalNames:
    """The dynamic zones of one server: made when the mapping has `dynamic:`."""

    def __init__(self, config: Config) -> None:
        assert config.dynamic is not None
        self.settings: DynamicSettings = config.dynamic
        directory = store_directory(config)
        _make_for(directory, service_user(config.user))
        self.store = Store(config.dynamic.zones, directory)
        self.updates = Updates(config.dynamic, self.store)
        self._stamps: dict[str, tuple[int, int, int] | None] = {}
        self._owners: dict[str, str] = {}  # lease name -> the client that holds it
        self._task: asyncio.Task[None] | None = None
        self.serving = False  # only a serving store writes (explain and doctor only read it)
        self.read_leases()

    def reload(self, config: Config) -> tuple[LocalNames | None, list[str]]:
        """What the new config makes of these: the same store when the zones stay."""
        if config.dynamic is None:
            self.stop()
            return None, ["dynamic zones off"]
        if config.dynamic.zones != self.settings.zones or store_directory(config) != (
            self.store.directory
        ):
            self.stop()
            fresh = LocalNames(config)
            if self.serving:
                fresh.start()
            return fresh, ["dynamic zones changed: read again from disk"]
        self.settings = config.dynamic
        updates = Updates(config.dynamic, self.store)
        updates.counts = self.updates.counts
        self.updates = updates
        self._stamps = {}  # lease files read again (their list or zones may have changed)
        self.read_leases()
        return self, []

    def start(self) -> None:
        self.serving = True
        if self.settings.leases and self._task is None:
            self._task = asyncio.ensure_future(self._poll())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self.serving:
            try:
                self.store.snapshot()  # the journal folded in: the next start reads one file
            except OSError as exc:
                log.warning("dynamic zones: no snapshot at stop (%s); the journal keeps all", exc)
        self.store.close()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(LEASE_POLL)
            try:
                self.read_leases()
            except Exception:  # a bug here must not end the watch
                log.exception("reading the lease files")

    def read_leases(self) -> bool:
        """Read the lease files again when one changed; True when the names were replaced."""
        stamps = {lf.path: _stamp(lf.path) for lf in self.settings.leases}
        if stamps == self._stamps:
            return False
        self._stamps = stamps
        now = time.time()
        by_zone: dict[str, dict[str, Name]] = {z: {} for z in self.store.zones}
        owners: dict[str, str] = {}
        for lease_file in self.settings.leases:
            try:
                with open(lease_file.path, encoding="utf-8", errors="replace") as handle:
                    text = handle.read(leasefiles.MAX_BYTES)
            except OSError as exc:
                if stamps[lease_file.path] is not None:
                    log.warning("lease file %s: %s", lease_file.path, exc)
                continue
            read = leasefiles.READERS[lease_file.format]
            found = leasefiles.assign(read(text, now), self._owners)
            source = f"lease file {lease_file.path}"
            for label, held in found.items():
                fqdn = f"{label}.{lease_file.zone}"
                if fqdn in owners:  # another lease file named it first
                    continue
                owners[fqdn] = held[0].client
                forward = by_zone[lease_file.zone].setdefault(fqdn, Name(since=now, source=source))
                for lease in held:
                    rtype = wire.TYPE_A if lease.address.version == 4 else wire.TYPE_AAAA
                    ttl, rdatas = forward.rrsets.get(rtype, (self.settings.lease_ttl, []))
                    forward.rrsets[rtype] = (ttl, [*rdatas, lease.address.packed])
                    reverse = lease.address.reverse_pointer
                    zone = self.store.zone_of(reverse)
                    if zone is not None and reverse not in by_zone[zone.name]:
                        pointer = Name(since=now, source=source)
                        pointer.rrsets[wire.TYPE_PTR] = (
                            self.settings.lease_ttl,
                            [wire.encode_name(fqdn)],
                        )
                        by_zone[zone.name][reverse] = pointer
        self._owners = {fqdn.partition(".")[0]: client for fqdn, client in owners.items()}
        for name, names in by_zone.items():
            self.store.zones[name].leased = names
        return True


def _stamp(path: str) -> tuple[int, int, int] | None:
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_ino, found.st_mtime_ns, found.st_size


def _make_for(directory: Path, user: str) -> None:
    """The store's directory, owned by the service user when we are root (it writes the
    journal after root is dropped)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    if os.geteuid() != 0:
        return
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return  # serve stops with its own message about the user
    for path in (directory, *directory.iterdir()):
        os.chown(path, entry.pw_uid, entry.pw_gid)
