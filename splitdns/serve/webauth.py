"""Who may open the dashboard: the password check, sessions, and the brakes on guessing.

A session is a random token in an HttpOnly, SameSite=Strict cookie (Secure under https),
kept in memory (a restart logs everyone out). Failed logins are slowed per address: each
waits a second before its answer, and after FREE_FAILURES the address is locked out for a
time that doubles. One scrypt check runs at a time, in a thread, so guessing cannot starve the
DNS work of the event loop. The password file is read again when it changes; a file the
dropped-root server may not read keeps the hash read at start.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from splitdns.config.passwords import PasswordError, read_hash, verify

log = logging.getLogger(__name__)

COOKIE = "splitdns_session"
SESSION_SECONDS = 12 * 3600
SESSIONS_KEPT = 256
FREE_FAILURES = 5
FAILURE_DELAY = 1.0
MAX_LOCKOUT = 900.0
ADDRESSES_KEPT = 4096


@dataclass(slots=True)
class Failures:
    count: int = 0
    locked_until: float = 0.0
    last: float = 0.0


class PasswordFile:
    """The hash in `path()` (the current config's file), read again when the file changes."""

    def __init__(self, path: Callable[[], str | None]) -> None:
        self.path = path
        self._hash: str | None = None
        self._stamp: tuple[str, int, int] | None = None
        self.current()

    def current(self) -> str | None:
        path = self.path()
        if path is None:
            return None
        try:
            st = os.stat(path)
            stamp = (path, st.st_ino, st.st_mtime_ns)
            if stamp != self._stamp:
                self._hash = read_hash(path)
                self._stamp = stamp
        except PermissionError:
            if self._stamp is None or self._stamp[0] != path:
                log.error("dashboard: cannot read %s as this user: nobody can log in", path)
                self._hash = None
            # else: the one read at start (as root) stays
        except (OSError, PasswordError) as exc:
            log.error("dashboard: %s: %s; keeping the password read before", path, exc)
        return self._hash


class Gate:
    """Logins, sessions and the per-address brakes."""

    def __init__(self, password: PasswordFile, clock: Callable[[], float] = time.monotonic):
        self.password = password
        self.clock = clock
        self.sessions: dict[str, float] = {}  # token -> expiry
        self.failures: dict[str, Failures] = {}
        self._checking = asyncio.Lock()

    @property
    def required(self) -> bool:
        return self.password.path() is not None

    def valid(self, token: str | None) -> bool:
        if not self.required:
            return True
        if not token:
            return False
        expiry = self.sessions.get(token)
        if expiry is None:
            return False
        if expiry < self.clock():
            del self.sessions[token]
            return False
        return True

    def locked_for(self, host: str) -> float:
        """Seconds until `host` may try again (0: now)."""
        failures = self.failures.get(host)
        if failures is None:
            return 0.0
        return max(0.0, failures.locked_until - self.clock())

    async def login(self, host: str, password: str) -> str | None:
        """A new session token, or None (after the failure's delay)."""
        line = self.password.current()
        ok = False
        if line is not None and password:
            async with self._checking:
                ok = await asyncio.get_running_loop().run_in_executor(None, verify, password, line)
        if ok:
            self.failures.pop(host, None)
            return self._new_session()
        self._failed(host)
        await asyncio.sleep(FAILURE_DELAY)
        return None

    def logout(self, token: str | None) -> None:
        if token:
            self.sessions.pop(token, None)

    def _new_session(self) -> str:
        now = self.clock()
        if len(self.sessions) >= SESSIONS_KEPT:
            live = sorted((e, t) for t, e in self.sessions.items() if e > now)
            self.sessions = {t: e for e, t in live[-(SESSIONS_KEPT // 2) :]}
        token = secrets.token_urlsafe(32)
        self.sessions[token] = now + SESSION_SECONDS
        return token

    def _failed(self, host: str) -> None:
        now = self.clock()
        if host not in self.failures and len(self.failures) >= ADDRESSES_KEPT:
            self.failures = {
                h: f for h, f in self.failures.items() if f.locked_until > now or now - f.last < 600
            }
            if len(self.failures) >= ADDRESSES_KEPT:
                self.failures.clear()
        failures = self.failures.setdefault(host, Failures())
        if now - failures.last > MAX_LOCKOUT * 2:
            failures.count = 0  # a forgotten password long ago: start afresh
        failures.count += 1
        failures.last = now
        if failures.count >= FREE_FAILURES:
            lockout = min(MAX_LOCKOUT, 5.0 * 2 ** (failures.count - FREE_FAILURES))
            failures.locked_until = now + lockout
            log.warning(
                "dashboard: %d failed logins from %s: locked out for %g s",
                failures.count,
                host,
                lockout,
            )
