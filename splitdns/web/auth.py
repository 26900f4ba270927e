"""Who may open the dashboard: the password check, sessions, and the brakes on guessing.

A session is a random token in an HttpOnly, SameSite=Strict cookie (Secure under https),
kept in memory (a restart logs everyone out). The brakes, each because of a way around the
one before it:

- one check in flight per address (32 parallel guesses from one address are one guess);
- the failure is written before the expensive check, so parallel guesses see it, and an empty
  password is checked (and costs) like any other;
- after FREE_FAILURES an address is locked out for a time that doubles, and so is its /24
  (IPv4) or /64 (IPv6) after PREFIX_FAILURES: one device holds many IPv6 addresses;
- a rate across all addresses that never logged in (OPEN_RATE a second): many addresses
  guess no faster than one; addresses that logged in before (the admin's) have a budget of
  their own and pass the prefix lock-outs, so the admin still logs in within a second while
  the LAN guesses;
- the failure table keeps ADDRESSES_KEPT entries, evicting the longest quiet whose lock-out
  has ended, never cleared (a flood of cheap failures cannot wipe a lock-out).

One scrypt check runs at a time, in a thread, so guessing cannot starve the DNS work of the
event loop. The password file is read again when it changes; a file the dropped-root server
may not read keeps the hash read at start.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from splitdns.config.passwords import PasswordError, read_hash, verify

log = logging.getLogger(__name__)

COOKIE = "splitdns_session"
SESSION_SECONDS = 12 * 3600
SESSIONS_KEPT = 256
FREE_FAILURES = 5
PREFIX_FAILURES = 20
FAILURE_DELAY = 1.0
MAX_LOCKOUT = 900.0
ADDRESSES_KEPT = 4096
KNOWN_KEPT = 64
OPEN_RATE, OPEN_BURST = 1.0, 5.0  # checks a second for addresses that never logged in
KNOWN_RATE, KNOWN_BURST = 1.0, 5.0  # and for those that did


@dataclass(slots=True)
class Failures:
    count: int = 0
    locked_until: float = 0.0
    last: float = 0.0


class Refused(Exception):
    """A login not even checked: why, and the seconds to wait (429 + Retry-After)."""

    def __init__(self, why: str, wait: float) -> None:
        super().__init__(why)
        self.wait = wait


def prefix_of(host: str) -> str:
    """The /24 (IPv4) or /64 (IPv6) an address belongs to: one home, one device's addresses."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    bits = 24 if address.version == 4 else 64
    return str(ipaddress.ip_network(f"{address}/{bits}", strict=False))


class Bucket:
    """A token bucket: `rate` a second, `burst` at once."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate, self.burst, self.tokens, self.stamp = rate, burst, burst, now

    def take(self, now: float) -> float:
        """0 (a token taken), or the seconds until one is there."""
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


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
    """Logins, sessions and the brakes (see the module's docstring)."""

    def __init__(self, password: PasswordFile, clock: Callable[[], float] = time.monotonic):
        self.password = password
        self.clock = clock
        self.sessions: dict[str, float] = {}  # token -> expiry
        self.failures: OrderedDict[str, Failures] = OrderedDict()  # address or prefix
        self.known: OrderedDict[str, float] = OrderedDict()  # addresses that logged in
        self.checking: set[str] = set()  # addresses with a check in flight
        now = clock()
        self.open = Bucket(OPEN_RATE, OPEN_BURST, now)
        self.trusted = Bucket(KNOWN_RATE, KNOWN_BURST, now)
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
        """Seconds until `host` may try again (0: now): its own lock-out, and its prefix's
        unless it logged in before."""
        now = self.clock()
        keys = (host,) if host in self.known else (host, prefix_of(host))
        until = max((f.locked_until for k in keys if (f := self.failures.get(k))), default=0.0)
        return max(0.0, until - now)

    def admit(self, host: str) -> None:
        """Raise Refused unless a check for `host` may run now (and take its token)."""
        wait = self.locked_for(host)
        if wait > 0:
            raise Refused(f"Too many failed logins from {host}: try again in {wait:.0f} s.", wait)
        if host in self.checking:
            raise Refused(f"A login from {host} is being checked: one at a time.", 1.0)
        bucket = self.trusted if host in self.known else self.open
        wait = bucket.take(self.clock())
        if wait > 0:
            raise Refused(f"Too many logins are being tried: try again in {wait:.0f} s.", wait)

    async def login(self, host: str, password: str) -> str | None:
        """A new session token, or None (after the failure's delay); Refused when the brakes
        say no check may run now."""
        self.admit(host)
        line = self.password.current()
        self.checking.add(host)
        self._failed(host)  # written first: a parallel guess sees it; undone on success
        try:
            ok = False
            if line is not None:
                async with self._checking:  # (an empty password costs what any other does)
                    loop = asyncio.get_running_loop()
                    ok = await loop.run_in_executor(None, verify, password, line) and bool(password)
        finally:
            self.checking.discard(host)
        if ok:
            self._succeeded(host)
            return self._new_session()
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

    def _succeeded(self, host: str) -> None:
        self.failures.pop(host, None)
        prefix = self.failures.get(prefix_of(host))
        if prefix is not None and prefix.count > 0:
            prefix.count -= 1  # (the failure written before the check)
        self.known[host] = self.clock()
        self.known.move_to_end(host)
        while len(self.known) > KNOWN_KEPT:
            self.known.popitem(last=False)

    def _failed(self, host: str) -> None:
        self._count(host, FREE_FAILURES)
        if host not in self.known:
            self._count(prefix_of(host), PREFIX_FAILURES)

    def _count(self, key: str, free: int) -> None:
        now = self.clock()
        failures = self.failures.get(key)
        if failures is None:
            self._make_room(now)
            failures = self.failures[key] = Failures()
        else:
            self.failures.move_to_end(key)
        if now - failures.last > MAX_LOCKOUT * 2:
            failures.count = 0  # a forgotten password long ago: start afresh
        failures.count += 1
        failures.last = now
        if failures.count >= free:
            lockout = min(MAX_LOCKOUT, 5.0 * 2 ** (failures.count - free))
            failures.locked_until = now + lockout
            log.warning(
                "dashboard: %d failed logins from %s: locked out for %g s",
                failures.count,
                key,
                lockout,
            )

    def _make_room(self, now: float) -> None:
        """Evict the longest-quiet entry whose lock-out has ended (else the longest-quiet)."""
        if len(self.failures) < ADDRESSES_KEPT:
            return
        for key, failures in self.failures.items():
            if failures.locked_until <= now:
                del self.failures[key]
                return
        self.failures.popitem(last=False)
