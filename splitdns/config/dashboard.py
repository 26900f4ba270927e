"""The `dashboard:` section: where the operator's web page listens and who may open it.

Loopback by default (only someone on the server itself can look). Anywhere else the page shows
who asks what on the LAN, so a listen address that is not loopback needs `password_file` (a
salted hash written by `splitdns passwd`); `https://` uses the DoT/DoH certificate.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, replace

from splitdns.config.passwords import PasswordError, read_hash
from splitdns.config.tree import Node

DEFAULT_PORT = 5380  # the port Technitium's console uses; not a DNS port, free on most hosts


@dataclass(frozen=True)
class DashboardSettings:
    """`dashboard: {listen: [https://]HOST:PORT, password_file: FILE}`."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    https: bool = False
    password_file: str | None = None
    #: Host names the page may be opened by besides loopback's, the listen address and this
    #: machine's own name (a request naming any other is refused: DNS rebinding)
    names: tuple[str, ...] = ()

    @property
    def loopback(self) -> bool:
        return ipaddress.ip_address(self.host).is_loopback

    @property
    def family_v6(self) -> bool:
        return ":" in self.host

    def __str__(self) -> str:
        host = f"[{self.host}]" if self.family_v6 else self.host
        return f"{'https' if self.https else 'http'}://{host}:{self.port}/"


KEYS = frozenset({"listen", "names", "password_file"})


def parse_dashboard(node: Node, parse_endpoint: object) -> DashboardSettings:
    """The section (a mapping, or a lone listen address); `parse_endpoint` is the config's own
    HOST:PORT grammar, handed in."""
    if node.is_null():
        return DashboardSettings()
    keys = node.mapping(KEYS) if not _is_scalar(node) else {"listen": node}
    settings = DashboardSettings()
    if "listen" in keys:
        listen = keys["listen"]
        text = listen.text().strip()
        https = text.startswith("https://")
        if "://" in text and not (https or text.startswith("http://")):
            raise listen.error(f"{text!r}: use HOST:PORT, http://HOST:PORT or https://HOST:PORT")
        bare = text.split("://", 1)[-1].rstrip("/")
        if "/" in bare:
            raise listen.error(f"{text!r}: the dashboard is at the root: no path")
        try:
            endpoint = parse_endpoint(bare, DEFAULT_PORT)  # type: ignore[operator]
        except ValueError as exc:
            raise listen.error(str(exc)) from None
        settings = DashboardSettings(endpoint.host, endpoint.port, https)
    if "password_file" in keys:
        where = keys["password_file"]
        path = where.text()
        try:
            read_hash(path)
        except PermissionError:
            pass  # root-only: the server reads it before dropping root; `check` as root sees it
        except (OSError, PasswordError) as exc:
            raise where.error(
                f"{path}: {_why(exc)} (write one with: splitdns passwd {path})"
            ) from None
        settings = replace(settings, password_file=path)
    if "names" in keys:
        settings = replace(settings, names=tuple(_host_name(n) for n in keys["names"].items()))
    if not settings.loopback and settings.password_file is None:
        place = keys.get("listen", node)
        raise place.error(
            f"{settings} is reachable from the network: set dashboard.password_file (write "
            "one with: splitdns passwd FILE), or listen on loopback (127.0.0.1)"
        )
    return settings


def _host_name(node: Node) -> str:
    """One of `names`: a DNS name the operator types in the browser's address bar."""
    text = node.text().strip().lower().rstrip(".")
    labels = text.split(".")
    if not text or len(text) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise node.error(f"{text!r} is not a host name (letters, digits, '-' and dots)")
    return text


_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")


def _is_scalar(node: Node) -> bool:
    return node.kind() not in ("a mapping", "a list")


def _why(exc: Exception) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)
