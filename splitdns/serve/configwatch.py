"""When a changed mapping file is whole: the file watch's judgement, before a reload.

Editors and `cat > file` write in place: for a moment (or, with a pause mid-write, for
seconds) the file holds a valid prefix of the new mapping, which may lack rules. Loading it
would serve public addresses until the next change. So a change is loaded only once

- nobody holds the file open for writing: inotify (Linux) reports each write (IN_MODIFY) and
  the writer's close (IN_CLOSE_WRITE); a file renamed into place (`sed -i`, git, an atomic
  save, a Kubernetes ConfigMap's link swap) is whole when it appears;
- its stamp (inode, mtime, size) has not changed for SETTLE seconds (without inotify: for
  SETTLE_BLIND, long enough for a slow writer's pauses);

and after reading, the stamp is checked again: a file that changed while it was read is read
again at the next look. Where inotify cannot be had (another OS, no descriptor left), the
settle time alone decides.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import struct
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

Stamp = tuple[int, int, int, int]  # inode, mtime (ns), size, links

SETTLE = 0.2  # seconds a change must rest, with inotify saying no writer holds it
SETTLE_BLIND = 2.0  # without inotify
STUCK = 30.0  # a writer that holds the file open longer: load what is there (said in the log)

IN_MODIFY, IN_CLOSE_WRITE, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x2, 0x8, 0x80, 0x100, 0x200
IN_NONBLOCK, IN_CLOEXEC = 0o4000, 0o2000000
_EVENT = struct.Struct("iIII")


def file_stamp(path: str) -> Stamp | None:
    """(inode, mtime, size, links) of the config file; None when it cannot be seen. stat
    follows symlinks: a Kubernetes ConfigMap update swaps the `..data` link to a new
    directory, so the inode changes even when size and time would not."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size, st.st_nlink)


class Writers:
    """Whether someone holds one file open for writing, from inotify on its directory."""

    def __init__(self, path: str) -> None:
        self.name = os.fsencode(os.path.basename(path))
        self.fd = -1
        self.writing = False
        self.since = 0.0
        libc_name = ctypes.util.find_library("c")
        try:
            libc = ctypes.CDLL(libc_name, use_errno=True) if libc_name else None
            if libc is None or not hasattr(libc, "inotify_init1"):
                return
            fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
            if fd < 0:
                return
            folder = os.fsencode(os.path.dirname(os.path.abspath(path)))
            mask = IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_DELETE
            if libc.inotify_add_watch(fd, folder, mask) < 0:
                os.close(fd)
                return
            self.fd = fd
        except (OSError, AttributeError):
            self.fd = -1

    @property
    def available(self) -> bool:
        return self.fd >= 0

    def update(self, now: float) -> None:
        """Read what inotify has said since the last look."""
        if self.fd < 0:
            return
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return
            except OSError:
                return
            if not data:
                return
            offset = 0
            while offset + _EVENT.size <= len(data):
                _, mask, _, size = _EVENT.unpack_from(data, offset)
                name = data[offset + _EVENT.size : offset + _EVENT.size + size].rstrip(b"\0")
                offset += _EVENT.size + size
                if name != self.name:
                    continue
                if mask & IN_MODIFY:
                    if not self.writing:
                        self.since = now
                    self.writing = True
                if mask & (IN_CLOSE_WRITE | IN_MOVED_TO | IN_DELETE):
                    self.writing = False

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class ConfigWatch:
    """Tells when the file has changed from what was loaded and is whole (see the module)."""

    def __init__(
        self, path: str, loaded: Stamp | None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.path = path
        self.loaded = loaded
        self.clock = clock
        self.writers = Writers(path)
        self.settle = SETTLE if self.writers.available else SETTLE_BLIND
        self.candidate: Stamp | None = None
        self.candidate_since = 0.0
        self.stuck_said = False

    def due(self) -> Stamp | None:
        """The stamp of a whole, changed file to load now, else None."""
        now = self.clock()
        self.writers.update(now)
        stamp = file_stamp(self.path)
        if stamp is None or (self.loaded is not None and stamp[:3] == self.loaded[:3]):
            self.candidate = None
            return None
        if stamp != self.candidate:
            self.candidate, self.candidate_since = stamp, now
            return None
        if now - self.candidate_since < self.settle:
            return None
        if self.writers.writing:
            if now - self.writers.since < STUCK:
                return None
            if not self.stuck_said:
                self.stuck_said = True
                log.warning(
                    "%s has been open for writing for %g s: loading what it holds now",
                    self.path,
                    STUCK,
                )
        return stamp

    def done(self, stamp: Stamp) -> None:
        """The file was read: it counts as loaded unless it changed meanwhile."""
        if file_stamp(self.path) == stamp:
            self.loaded = stamp
            self.stuck_said = False
        self.candidate = None
