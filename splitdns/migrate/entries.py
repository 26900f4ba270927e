"""What every source format comes down to: per-name overrides, with where each came from."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ImportError_(ValueError):
    """A file that cannot be read as the format it claims (the message names file:line)."""


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
class DirectRule:
    """A translation the source already states by address (dnsmasq `alias=`, Technitium's
    externalToInternalTranslation, Unbound `response-ip`): imported as a rule as it is."""

    source: IPNetwork
    target: IPNetwork
    origin: str
    view: str = ""


@dataclass(frozen=True, slots=True)
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


_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?", re.ASCII)


def name_problem(name: str) -> str | None:
    """Why `name` (as clean_name makes it; "*." first for a wildcard) is no domain name, or
    None: labels of 1-63 characters, 253 in all (RFC 1035), no spaces or control characters."""
    bare = name[2:] if name.startswith("*.") else name
    if not bare:
        return "an empty name"
    if len(bare) > 253:
        return f"{len(bare)} characters: a domain name has at most 253"
    for label in bare.split("."):
        if not label:
            return "an empty label (two dots in a row)"
        if len(label) > 63:
            return f"a label of {len(label)} characters: at most 63"
        if not _LABEL.fullmatch(label):
            return "a character other than letters, digits, '-' and '_' (write IDNs as xn--)"
    return None


def clean_name(text: str) -> str:
    return text.strip().strip('"').lower().rstrip(".")


def address(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
