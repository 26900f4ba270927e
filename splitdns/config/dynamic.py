"""The `dynamic:` section: the LAN's own names, kept by splitdns and changed by the DHCP server.

Zones named here (a forward zone such as `lan.home.example` and the LAN's reverse zones) are
answered by splitdns itself, authoritatively, to the views listed (never to outside clients).
Their names come from RFC 2136 UPDATEs signed with a TSIG key (Kea's kea-dhcp-ddns, nsupdate)
and from lease files (dnsmasq's, OpenWrt's). The keys file is BIND's `tsig-keygen` output; like
the dashboard's password file it must be readable by its owner only.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass, replace

from splitdns.config.tree import ConfigError, Node

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: TSIG algorithms as tsig-keygen and Kea name them -> dnspython's names (RFC 8945 section 6)
ALGORITHMS = {
    "hmac-md5": "hmac-md5.sig-alg.reg.int",
    "hmac-sha1": "hmac-sha1",
    "hmac-sha224": "hmac-sha224",
    "hmac-sha256": "hmac-sha256",
    "hmac-sha384": "hmac-sha384",
    "hmac-sha512": "hmac-sha512",
}
LEASE_FORMATS = ("dnsmasq", "kea", "dhcpd")  # dnsmasq: also OpenWrt's /tmp/dhcp.leases
KEYS = frozenset({"zones", "views", "keys_file", "allow_update", "leases", "lease_ttl"})
LEASE_KEYS = frozenset({"file", "format", "zone"})
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


@dataclass(frozen=True)
class TsigKey:
    name: str  # lower case, no final dot
    algorithm: str  # dnspython's name for it
    secret: bytes


@dataclass(frozen=True)
class LeaseFile:
    path: str
    format: str
    zone: str  # the forward zone its host names are put in


@dataclass(frozen=True)
class DynamicSettings:
    """`dynamic: {zones, views, keys_file, allow_update, leases, lease_ttl}`."""

    zones: tuple[str, ...]
    views: tuple[str, ...] = ()  # () : every view
    keys_file: str | None = None
    keys: tuple[TsigKey, ...] = ()
    allow_update: tuple[IPNetwork, ...] = LOOPBACK
    leases: tuple[LeaseFile, ...] = ()
    lease_ttl: int = 300

    def zone_of(self, name: str) -> str | None:
        return zone_for(name, self.zones)


def zone_for(name: str, zones: Iterable[str]) -> str | None:
    """The longest of `zones` that `name` is in (or at), else None."""
    best = None
    for zone in zones:
        if (name == zone or name.endswith("." + zone)) and (best is None or len(zone) > len(best)):
            best = zone
    return best


def _zone(node: Node) -> str:
    text = node.text().strip().lower().rstrip(".")
    labels = text.split(".")
    if not text or len(text) > 253 or any(not 0 < len(label) <= 63 for label in labels):
        raise node.error(f"{text!r} is not a zone name")
    if any(not re.fullmatch(r"[a-z0-9_-]+", label) for label in labels):
        raise node.error(f"{text!r}: letters, digits, '-' and '_' only (IDNs as xn--)")
    return text


def parse_dynamic(node: Node, network: object) -> DynamicSettings:
    """The section; `network` is the config's own network parser (handed in)."""
    keys = node.mapping(KEYS)
    if "zones" not in keys:
        raise node.error("needs 'zones': the forward and reverse zones splitdns keeps")
    zones = tuple(_zone(z) for z in keys["zones"].items(allow_scalar=True))
    if not zones:
        raise keys["zones"].error("name at least one zone")
    if len(set(zones)) != len(zones):
        raise keys["zones"].error("a zone is listed twice")
    settings = DynamicSettings(zones=zones)
    if "views" in keys:
        views = tuple(v.text() for v in keys["views"].items(allow_scalar=True))
        settings = replace(settings, views=views)
    if "keys_file" in keys:
        path = keys["keys_file"].text()
        try:
            found = read_keys(path)
        except OSError as exc:
            raise keys["keys_file"].error(f"{path}: {exc.strerror or exc}") from None
        except KeyFileError as exc:
            raise keys["keys_file"].error(str(exc)) from None
        settings = replace(settings, keys_file=path, keys=found)
    if "allow_update" in keys:
        parse = network
        assert callable(parse)
        nets = tuple(parse(n) for n in keys["allow_update"].items(allow_scalar=True))
        settings = replace(settings, allow_update=nets)
    if "lease_ttl" in keys:
        settings = replace(settings, lease_ttl=keys["lease_ttl"].integer(minimum=0, maximum=86400))
    if "leases" in keys:
        leases = []
        for item in keys["leases"].items():
            fields = item.mapping(LEASE_KEYS)
            if "file" not in fields:
                raise item.error("needs 'file': the DHCP server's lease file")
            form = fields["format"].choice(LEASE_FORMATS) if "format" in fields else "dnsmasq"
            zone = _zone(fields["zone"]) if "zone" in fields else zones[0]
            if zone not in zones:
                raise fields["zone"].error(f"{zone!r} is not one of dynamic.zones")
            leases.append(LeaseFile(fields["file"].text(), form, zone))
        settings = replace(settings, leases=tuple(leases))
    return settings


class KeyFileError(ValueError):
    """A keys file that is not tsig-keygen's format, or is readable by others."""


_KEY = re.compile(
    r'key\s+"?([A-Za-z0-9._-]+)"?\s*\{\s*algorithm\s+"?([A-Za-z0-9-]+)"?\s*;\s*'
    r'secret\s+"([A-Za-z0-9+/=]+)"\s*;\s*\}\s*;',
    re.S,
)


def read_keys(path: str) -> tuple[TsigKey, ...]:
    """The keys of a tsig-keygen file (one or more `key "NAME" {...};` blocks)."""
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        raise KeyFileError(f"{path} is readable by others (mode {mode:o}): chmod 600 {path}")
    with open(path, encoding="utf-8") as handle:
        text = handle.read(65536)
    text = re.sub(r"(#|//)[^\n]*", "", text)
    found = []
    for match in _KEY.finditer(text):
        name, algorithm, secret = match.groups()
        algorithm = algorithm.lower()
        if algorithm not in ALGORITHMS:
            raise KeyFileError(
                f"{path}: key {name}: algorithm {algorithm} (known: {', '.join(ALGORITHMS)})"
            )
        try:
            raw = base64.b64decode(secret, validate=True)
        except ValueError:
            raise KeyFileError(f"{path}: key {name}: the secret is not base64") from None
        if len(raw) < 16:
            raise KeyFileError(f"{path}: key {name}: a secret of {len(raw)} bytes is too short")
        found.append(TsigKey(name.lower().rstrip("."), ALGORITHMS[algorithm], raw))
    if not found or _KEY.sub("", text).strip():
        raise KeyFileError(
            f'{path}: not tsig-keygen\'s format (key "NAME" {{ algorithm hmac-sha256; '
            'secret "BASE64"; };)'
        )
    return tuple(found)


def check_views(settings: DynamicSettings, view_names: list[str], node: Node) -> None:
    """Every view named exists."""
    for name in settings.views:
        if name not in view_names:
            raise ConfigError(node.source, node.line, "dynamic.views", f"no view named {name!r}")
