"""What every source format comes down to: per-name overrides, with where each came from."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ImportError_(ValueError):
    """A file that cannot be read as the format it claims (the message names file:line)."""


@dataclass(frozen=True)
class Entry:
    """One override: `name` answers `addresses` (an address override), or is an alias of
    `target` (a CNAME override), or keeps the upstream's answer (`keep`)."""

    name: str  # lower case, no final dot; "*.suffix" for a wildcard
    origin: str  # FILE:LINE, or FILE: key path
    addresses: tuple[IPAddress, ...] = ()
    target: str | None = None
    keep: bool = False
    enabled: bool = True
    view: str = ""  # "" for the default (LAN) view

    @property
    def wildcard(self) -> bool:
        return self.name.startswith("*.")


@dataclass(frozen=True)
class DirectRule:
    """A translation the source already states by address (dnsmasq `alias=`, Technitium's
    externalToInternalTranslation, Unbound `response-ip`): imported as a rule as it is."""

    source: IPNetwork
    target: IPNetwork
    origin: str
    view: str = ""


@dataclass(frozen=True)
class SourceView:
    """A per-client view of the source (Unbound `view:`, a Technitium group)."""

    name: str
    clients: tuple[IPNetwork, ...]


@dataclass
class Source:
    """Everything read from one file."""

    path: str
    format: str
    entries: list[Entry] = field(default_factory=list)
    rules: list[DirectRule] = field(default_factory=list)
    views: list[SourceView] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (origin, why)


def clean_name(text: str) -> str:
    return text.strip().strip('"').lower().rstrip(".")


def address(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
