"""Upstream addresses as users write them, and the forwarding plan built from them.

Three transports, told apart by the text alone so a zone mapping reads like a URL list:

- `192.0.2.1`, `192.0.2.1:5353`, `[2001:db8::1]:53`: classic DNS (UDP, TCP on truncation);
- `tls://198.51.100.53#resolver.example.net`: DNS over TLS (RFC 7858, port 853); the
  certificate must carry the name after `#` (or the host itself when there is no `#`);
- `https://resolver.example.net/dns-query`: DNS over HTTPS (RFC 8484).

A host given by name is resolved once through the plain `bootstrap` upstreams, never through
itself, which is why bootstrap servers must be plain addresses.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

import yaml

from splitdns.config.tree import Node

STRATEGIES = ("failover", "fastest", "parallel")
DEFAULT_PORTS = {"dns": 53, "tls": 853, "https": 443}


@dataclass(frozen=True)
class UpstreamSpec:
    """One upstream server: how to reach it and which name its certificate must carry."""

    scheme: str  # "dns", "tls" or "https"
    host: str  # an IP address (normalised) or a DNS name needing bootstrap
    port: int
    tls_name: str | None = None  # name checked against the certificate (tls/https)
    path: str = ""  # the URL path (https)

    @property
    def needs_bootstrap(self) -> bool:
        return not _is_address(self.host)

    @property
    def family_v6(self) -> bool:
        return ":" in self.host

    def __str__(self) -> str:
        host = f"[{self.host}]" if self.family_v6 else self.host
        if self.scheme == "dns":
            return f"{host}:{self.port}"
        port = "" if self.port == DEFAULT_PORTS[self.scheme] else f":{self.port}"
        if self.scheme == "https":
            return f"https://{host}{port}{self.path}"
        name = f"#{self.tls_name}" if self.tls_name and self.tls_name != self.host else ""
        return f"tls://{host}{port}{name}"


@dataclass(frozen=True)
class Forwarding:
    """Where questions go: per-domain upstream lists (longest suffix wins) and how to use them."""

    domains: tuple[tuple[str, tuple[UpstreamSpec, ...]], ...] = ()
    strategy: str = "failover"
    bootstrap: tuple[UpstreamSpec, ...] = ()
    ca_file: str | None = None
    # RFC 6303: reverse zones of private and special ranges are answered NXDOMAIN here
    # unless a `domains` entry sends them somewhere (usually the router).
    local_reverse: bool = True
    parallel_width: int = 2
    # draft-vixie-dnsext-dns0x20 on plain UDP/TCP upstreams (encrypted ones need no help)
    case_randomization: bool = False
    # long-lived connected UDP sockets per plain upstream (0: a fresh random port per query)
    socket_pool: int = 0


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _valid_hostname(name: str) -> bool:
    labels = name.rstrip(".").split(".")
    return (
        0 < len(name) <= 253
        and all(0 < len(label) <= 63 for label in labels)
        and all(ch.isalnum() or ch in "-_." for ch in name)
    )


def _port(text: str, whole: str) -> int:
    if not text.isdigit() or not 0 < int(text) <= 65535:
        raise ValueError(f"{whole!r}: {text!r} is not a port (1-65535)")
    return int(text)


def parse_upstream(text: str) -> UpstreamSpec:
    """Parse one upstream as written in the zone mapping or on the command line."""
    text = text.strip()
    if text.startswith("https://"):
        return _parse_https(text)
    if text.startswith("tls://"):
        return _parse_tls(text)
    if "://" in text:
        scheme = text.split("://", 1)[0]
        raise ValueError(
            f"{text!r}: unknown scheme {scheme!r} (use an address, tls:// or https://)"
        )
    host, port = _host_port(text, text)
    if not _is_address(host):
        raise ValueError(f"{text!r}: a plain upstream must be an IP address")
    return UpstreamSpec("dns", host, port if port is not None else 53)


def _host_port(text: str, whole: str) -> tuple[str, int | None]:
    """`HOST`, `HOST:PORT`, `[V6]`, `[V6]:PORT` or a bare IPv6 address."""
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ValueError(f"{whole!r}: missing ']'")
        host, rest = text[1:close], text[close + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"{whole!r}: expected ':PORT' after ']'")
        port = _port(rest[1:], whole) if rest else None
    elif text.count(":") == 1:
        host, port_text = text.split(":")
        port = _port(port_text, whole)
    else:
        host, port = text, None
    if _is_address(host):
        return str(ipaddress.ip_address(host)), port
    if not _valid_hostname(host):
        raise ValueError(f"{whole!r}: {host!r} is neither an IP address nor a host name")
    return host.lower().rstrip("."), port


def _parse_tls(text: str) -> UpstreamSpec:
    rest = text[len("tls://") :]
    rest, hash_sign, name = rest.partition("#")
    host, port = _host_port(rest, text)
    if hash_sign and not name:
        raise ValueError(f"{text!r}: nothing after '#' (the name the certificate must carry)")
    if name and not _valid_hostname(name) and not _is_address(name):
        raise ValueError(f"{text!r}: {name!r} is not a certificate name")
    return UpstreamSpec("tls", host, port or 853, tls_name=(name.lower() or host))


def _parse_https(text: str) -> UpstreamSpec:
    parts = urlsplit(text)
    if parts.query or parts.fragment:
        raise ValueError(f"{text!r}: no query string or fragment (the path is enough)")
    netloc = parts.netloc
    if not netloc:
        raise ValueError(f"{text!r}: missing host")
    host, port = _host_port(netloc, text)
    return UpstreamSpec("https", host, port or 443, tls_name=host, path=parts.path or "/dns-query")


def in_domain(name: str, domain: str) -> bool:
    return name == domain or name.endswith("." + domain)


def local_reverse_zone(forwarding: Forwarding, name: str) -> str | None:
    """The RFC 6303 zone answered locally for `name`, unless a `domains` entry claims it."""
    if not forwarding.local_reverse or not name.endswith(".arpa"):
        return None
    if any(in_domain(name, domain) for domain, _ in forwarding.domains):
        return None
    return next((zone for zone in LOCAL_REVERSE_ZONES if in_domain(name, zone)), None)


# RFC 6303 (and RFC 7793, RFC 6761) locally served reverse zones: asking the internet about
# them leaks LAN structure and gets nothing useful back.
LOCAL_REVERSE_ZONES: tuple[str, ...] = (
    "10.in-addr.arpa",
    *(f"{n}.172.in-addr.arpa" for n in range(16, 32)),
    "168.192.in-addr.arpa",
    "127.in-addr.arpa",
    "254.169.in-addr.arpa",
    "0.in-addr.arpa",
    *(f"{n}.100.in-addr.arpa" for n in range(64, 128)),
    "2.0.192.in-addr.arpa",
    "100.51.198.in-addr.arpa",
    "113.0.203.in-addr.arpa",
    "255.255.255.255.in-addr.arpa",
    "0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa",
    "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa",
    "d.f.ip6.arpa",
    "8.e.f.ip6.arpa",
    "9.e.f.ip6.arpa",
    "a.e.f.ip6.arpa",
    "b.e.f.ip6.arpa",
    "8.b.d.0.1.0.0.2.ip6.arpa",
)


# --------------------------------------------------------------------------- the config section

UPSTREAM_KEYS = frozenset(
    {
        "default",
        "domains",
        "strategy",
        "bootstrap",
        "ca_file",
        "local_reverse",
        "parallel_width",
        "case_randomization",
        "socket_pool",
    }
)


def _spec(node: Node) -> UpstreamSpec:
    text = node.text()  # its own ConfigError already names the place
    try:
        return parse_upstream(text)
    except ValueError as exc:
        raise node.error(str(exc)) from None


def _spec_list(node: Node) -> tuple[UpstreamSpec, ...]:
    specs = tuple(_spec(item) for item in node.items(allow_scalar=True))
    if len(set(specs)) != len(specs):
        raise node.error("lists the same upstream twice")
    return specs


def upstreams_from_node(node: Node) -> tuple[tuple[UpstreamSpec, ...], Forwarding]:
    """`upstreams:` as a plain list (the default upstreams) or the full mapping."""
    if not isinstance(node.raw, yaml.MappingNode):
        return _spec_list(node), Forwarding()
    keys = node.mapping(UPSTREAM_KEYS)
    default = _spec_list(keys["default"]) if "default" in keys else ()
    forwarding = Forwarding()
    if "domains" in keys:
        domains: list[tuple[str, tuple[UpstreamSpec, ...]]] = []
        for name, child in keys["domains"].string_mapping():
            domain = name.strip().lower().rstrip(".")
            if not domain:
                raise child.error("the root belongs in `default`, not in `domains`")
            if not _valid_hostname(domain) or any(d == domain for d, _ in domains):
                raise child.error(f"{name!r} is not a valid domain, or is listed twice")
            specs = _spec_list(child)
            if not specs:
                raise child.error("must list at least one upstream")
            domains.append((domain, specs))
        forwarding = replace(forwarding, domains=tuple(domains))
    if "strategy" in keys:
        forwarding = replace(forwarding, strategy=keys["strategy"].choice(STRATEGIES))
    if "bootstrap" in keys:
        bootstrap = _spec_list(keys["bootstrap"])
        for item, spec in zip(keys["bootstrap"].items(allow_scalar=True), bootstrap, strict=True):
            if spec.scheme != "dns":
                raise item.error("bootstrap upstreams must be plain IP addresses (no tls/https)")
        forwarding = replace(forwarding, bootstrap=bootstrap)
    if "ca_file" in keys:
        forwarding = replace(forwarding, ca_file=keys["ca_file"].text())
    if "local_reverse" in keys:
        forwarding = replace(forwarding, local_reverse=keys["local_reverse"].boolean())
    if "case_randomization" in keys:
        forwarding = replace(forwarding, case_randomization=keys["case_randomization"].boolean())
    if "parallel_width" in keys:
        width = keys["parallel_width"].integer(minimum=2, maximum=8)
        forwarding = replace(forwarding, parallel_width=width)
    if "socket_pool" in keys:
        pool = keys["socket_pool"].integer(minimum=0, maximum=1024)
        forwarding = replace(forwarding, socket_pool=pool)
    return default, forwarding
