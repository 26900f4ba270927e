"""Encrypted DNS for LAN clients: `tls://` and `https://` listen addresses, the `tls:` section
(certificate and key files), `state_dir:` (where a self-signed certificate is kept) and
`resolver_name:` (the name DDR and the certificate carry)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DOT_PORT, DOH_PORT = 853, 443
DOH_PATH = "/dns-query"
STATE_ENV = "STATE_DIRECTORY"  # systemd's StateDirectory= sets it


@dataclass(frozen=True)
class EncryptedListener:
    """`tls://HOST:PORT` (DNS over TLS, RFC 7858) or `https://HOST:PORT/PATH` (RFC 8484)."""

    kind: str  # "dot" | "doh"
    host: str
    port: int
    path: str = DOH_PATH

    @property
    def family_v6(self) -> bool:
        return ":" in self.host

    def __str__(self) -> str:
        host = f"[{self.host}]" if self.family_v6 else self.host
        if self.kind == "dot":
            return f"tls://{host}:{self.port}"
        return f"https://{host}:{self.port}{self.path}"


@dataclass(frozen=True)
class TlsSettings:
    """`tls: {cert: FILE, key: FILE}`; without them a self-signed pair lives in state_dir."""

    cert: str | None = None
    key: str | None = None

    @property
    def given(self) -> bool:
        return self.cert is not None


def is_encrypted(text: str) -> bool:
    return text.startswith(("tls://", "https://"))


def split_url(text: str, parse_endpoint: object) -> EncryptedListener:
    """Parse `tls://HOST[:PORT]` or `https://HOST[:PORT][/PATH]`; ValueError says what is wrong.

    `parse_endpoint` is the config's own HOST:PORT parser (handed in to keep one grammar)."""
    scheme, _, rest = text.partition("://")
    kind = "dot" if scheme == "tls" else "doh"
    path = DOH_PATH
    if kind == "doh" and "/" in rest:
        rest, _, tail = rest.partition("/")
        path = "/" + tail
        if not tail or "?" in tail or "#" in tail or " " in tail:
            raise ValueError(f"{text!r}: the path must be like /dns-query (no query string)")
    elif "/" in rest:
        raise ValueError(f"{text!r}: a tls:// address has no path")
    endpoint = parse_endpoint(rest, DOT_PORT if kind == "dot" else DOH_PORT)  # type: ignore[operator]
    return EncryptedListener(kind, endpoint.host, endpoint.port, path)


def default_state_dir() -> Path:
    """systemd's StateDirectory, else /var/lib/splitdns when we may write there (root) or it
    was made for the service user (the image: root without DAC_OVERRIDE cannot write there,
    the user it becomes can), else the user's ~/.local/state/splitdns (the quick start)."""
    if os.environ.get(STATE_ENV):
        return Path(os.environ[STATE_ENV].split(":")[0])
    system = Path("/var/lib/splitdns")
    try:
        made_for_a_user = system.is_dir() and system.stat().st_uid != 0
    except OSError:
        made_for_a_user = False
    if (
        os.access(system, os.W_OK)
        or made_for_a_user
        or (not system.exists() and os.access(system.parent, os.W_OK))
    ):
        return system
    return Path.home() / ".local" / "state" / "splitdns"
