"""Dropping root once the sockets are bound: a DNS server facing a LAN must not keep it."""

from __future__ import annotations

import logging
import os
import pwd

log = logging.getLogger(__name__)


class PrivilegeError(RuntimeError):
    """Running as root and unable to become the configured user."""


def drop_root(user: str) -> str | None:
    """Become `user` if running as root; returns the user switched to, or None if not root."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise PrivilegeError(
            f"running as root and user {user!r} does not exist: set `user:` in the config"
        ) from None
    if entry.pw_uid == 0:
        raise PrivilegeError(f"user {user!r} is root: name an unprivileged user")
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    if os.geteuid() == 0:  # pragma: no cover - the kernel refused silently
        raise PrivilegeError("still root after setuid")
    return user


#: The user to become after binding when the config names none (the image sets `splitdns`).
USER_ENV = "SPLITDNS_USER"


def service_user(user: str | None) -> str:
    """The config's `user:`, else $SPLITDNS_USER, else nobody."""
    return user or os.environ.get(USER_ENV) or "nobody"
