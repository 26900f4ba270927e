"""The dashboard's password file: one line, `scrypt$N$r$p$SALT$HASH` (base64), nothing else.

scrypt (RFC 7914) because it is in the standard library and costs memory as well as time, so
a stolen file is slow to guess from; the salt is random per file. The check compares in
constant time. Written by `splitdns passwd`, read by the server and by `check`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets

SCHEME = "scrypt"
N, R, P = 2**15, 8, 1  # ~40 ms and 32 MiB per check: fine for a login, slow for a guesser
DKLEN = 32
MAXMEM = 64 * 1024 * 1024
MIN_LENGTH = 8


class PasswordError(ValueError):
    """A password file that is not one line this module wrote."""


def make_hash(password: str, n: int = N) -> str:
    """The file's line for `password`, with a fresh salt."""
    if len(password) < MIN_LENGTH:
        raise PasswordError(f"a password needs at least {MIN_LENGTH} characters")
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=R, p=P, dklen=DKLEN, maxmem=MAXMEM)
    return "$".join((SCHEME, str(n), str(R), str(P), _b64(salt), _b64(digest)))


def parse_hash(line: str) -> tuple[int, int, int, bytes, bytes]:
    """(n, r, p, salt, digest) of a file's line; PasswordError says what is wrong."""
    parts = line.strip().split("$")
    if len(parts) != 6 or parts[0] != SCHEME:
        raise PasswordError("not a password file splitdns wrote (expected scrypt$N$r$p$SALT$HASH)")
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt, digest = (
            base64.b64decode(parts[4], validate=True),
            base64.b64decode(parts[5], validate=True),
        )
    except ValueError:
        raise PasswordError("its numbers or base64 fields are damaged") from None
    if n < 2**10 or n & (n - 1) or not 1 <= r <= 32 or not 1 <= p <= 16 or len(digest) < 16:
        raise PasswordError("its scrypt parameters are out of range")
    if len(salt) < 8:
        raise PasswordError("its salt is too short")
    return n, r, p, salt, digest


def read_hash(path: str) -> str:
    """The file's one line, checked; OSError (missing, unreadable) or PasswordError."""
    with open(path, encoding="utf-8") as handle:
        lines = [line for line in handle.read().splitlines() if line.strip()]
    if len(lines) != 1:
        raise PasswordError(f"expected one line, found {len(lines)}")
    parse_hash(lines[0])
    return lines[0].strip()


def verify(password: str, line: str) -> bool:
    """Whether `password` is the one `line` was made from (constant-time comparison)."""
    n, r, p, salt, digest = parse_hash(line)
    candidate = hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, dklen=len(digest), maxmem=MAXMEM
    )
    return hmac.compare_digest(candidate, digest)


def write_hash(path: str, line: str) -> None:
    """Write the file readable by its owner only, replacing any old one in one step."""
    temporary = f"{path}.tmp-{os.getpid()}"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(line + "\n")
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
