"""The zone mapping: YAML in, one frozen, validated, normalised Config out.

Every section becomes a small frozen dataclass with its defaults beside the fields. Names are
lower-cased and networks parsed once, here, so the rest of the program never re-validates.
Every error names the file, the line and the key path.

One job read whole (about 740 lines): the mapping's core sections (listen, allow, upstreams'
place, views with their rules and hosts, cache, rate limit, rebinding, query log) beside the
shapes they become, because `from_node` checks them against each other. Sections that stand
alone have their own modules (dashboard, dns64, encrypted, limits, nat, upstreams), and what
`check` only warns about is config/crosscheck.py.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path

import yaml

from splitdns.config.dashboard import DashboardSettings, parse_dashboard
from splitdns.config.dns64 import WKP, Dns64, parse_dns64, prefix_of
from splitdns.config.dynamic import DynamicSettings, check_views, parse_dynamic
from splitdns.config.encrypted import (
    EncryptedListener,
    TlsSettings,
    is_encrypted,
    split_url,
)
from splitdns.config.limits import LimitSettings, parse_limits
from splitdns.config.nat import NatSettings, parse_nat
from splitdns.config.tree import ConfigError, Node, dynamic_source, parse
from splitdns.config.upstreams import Forwarding, UpstreamSpec, parse_upstream, upstreams_from_node

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_LISTEN = "127.0.0.1:5353"
DEFAULT_TIMEOUT = 3.0
DEFAULT_HOSTS_TTL = 300
EMBEDDED_SOURCE = "<embedded default>"
RESOLV_CONF = "/etc/resolv.conf"

#: Loopback and private ranges: who may query when `allow` is not given.
PRIVATE_RANGES: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "127.0.0.0/8",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "169.254.0.0/16",
        "::1/128",
        "fc00::/7",
        "fe80::/10",
    )
)


@dataclass(frozen=True)
class Endpoint:
    """An address and port, for listeners and upstreams."""

    host: str
    port: int

    @property
    def family_v6(self) -> bool:
        return ":" in self.host

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if self.family_v6 else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)  # (slotted: an import's hosts bring 100,000 of them)
class NamePattern:
    """`mail.example.com` (exactly that name) or `*.example.com` (one or more labels below)."""

    suffix: str
    wildcard: bool

    def matches(self, name: str) -> bool:
        if self.wildcard:
            return name.endswith("." + self.suffix)
        return name == self.suffix

    def __str__(self) -> str:
        return f"*.{self.suffix}" if self.wildcard else self.suffix


@dataclass(frozen=True, slots=True)  # (an import may bring tens of thousands)
class Rule:
    """One rewrite: addresses in `source` map 1:1 onto `target` (same family and size)."""

    index: int
    source: IPNetwork
    target: IPNetwork
    names: tuple[NamePattern, ...] = ()
    follow: str | None = None  # `from: {follow: NAME}`: source is NAME's current address
    interface: str | None = None  # `from: {interface: IFACE}`: the interface's IPv4 address
    active: bool = True  # False until a followed name has been resolved once

    def map(self, address: IPAddress) -> IPAddress:
        offset = int(address) - int(self.source.network_address)
        return ipaddress.ip_address(int(self.target.network_address) + offset)

    def applies_to(self, names: Iterable[str]) -> bool:
        if not self.names:
            return True
        return any(p.matches(n) for n in names for p in self.names)

    def __str__(self) -> str:
        def show(net: IPNetwork) -> str:
            return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)

        only = f" for {', '.join(map(str, self.names))}" if self.names else ""
        source = show(self.source)
        if self.follow or self.interface:
            now = source if self.active else "not resolved yet"
            what = f"follow: {self.follow}" if self.follow else f"interface: {self.interface}"
            source = f"{{{what}}} ({now})"
        return f"{source} -> {show(self.target)}{only}"


@dataclass(frozen=True)
class Hosts:
    """Local answers: exact names and wildcard suffixes, each with its addresses."""

    exact: dict[str, tuple[IPAddress, ...]] = field(default_factory=dict)
    wildcards: tuple[tuple[NamePattern, tuple[IPAddress, ...]], ...] = ()
    # indexes made once (an imported dnsmasq file brings 100,000 wildcards: a scan of them
    # for every question not in `exact` cost milliseconds): by wildcard suffix (the first of
    # a repeated one), and the exact names by address, in config order
    _suffixes: dict[str, int] = field(default_factory=dict, init=False, repr=False, compare=False)
    _names: dict[IPAddress, list[str]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        for i, (pattern, _) in enumerate(self.wildcards):
            self._suffixes.setdefault(pattern.suffix, i)
        for name, addresses in self.exact.items():
            for address in dict.fromkeys(addresses):
                self._names.setdefault(address, []).append(name)

    def covering(self, name: str) -> tuple[NamePattern, tuple[IPAddress, ...]] | None:
        """The wildcard that answers `name` (the longest suffix: the first found walking
        down from the name's parent), or None."""
        suffixes = self._suffixes
        if not suffixes:
            return None
        dot = name.find(".")
        while dot >= 0:
            index = suffixes.get(name[dot + 1 :])
            if index is not None:
                return self.wildcards[index]
            dot = name.find(".", dot + 1)
        return None

    def lookup(self, name: str) -> tuple[IPAddress, ...] | None:
        found = self.exact.get(name)
        if found is not None:
            return found
        covered = self.covering(name)
        return None if covered is None else covered[1]

    def names_for(self, address: IPAddress) -> list[str]:
        """Exact names listing `address`, in config order (for PTR answers)."""
        return list(self._names.get(address, ()))

    def __len__(self) -> int:
        return len(self.exact) + len(self.wildcards)


@dataclass(frozen=True)
class View:
    """A group of clients and what splitdns does for them."""

    name: str
    clients: tuple[IPNetwork, ...]
    rules: tuple[Rule, ...] = ()
    aaaa: str = "keep"
    hosts: Hosts = field(default_factory=Hosts)
    hosts_ttl: int = DEFAULT_HOSTS_TTL
    https: str = "rewrite"  # rewrite | drop | keep: HTTPS/SVCB hints for rewritten names
    dns64: Dns64 | None = None  # AAAA synthesized for this view's clients (RFC 6147)

    def matches(self, client: IPAddress) -> bool:
        return any(client in net for net in self.clients)


@dataclass(frozen=True)
class CacheSettings:
    """The `cache:` section of the zone mapping."""

    size: int = 10000
    max_bytes: int = 32 * 1024 * 1024
    min_ttl: int = 0
    max_ttl: int = 86400
    negative_max_ttl: int = 3600
    servfail_ttl: int = 5
    serve_stale: bool = False
    stale_max_age: int = 86400
    prefetch: bool = False


@dataclass(frozen=True)
class RebindingSettings:
    """`rebinding_guard:` (off by default: many home setups publish private addresses on
    purpose). See splitdns/rebinding.py for what it removes and what it leaves alone."""

    enabled: bool = False
    allow: tuple[str, ...] = ()  # domains whose public answers may hold private addresses


@dataclass(frozen=True)
class RateLimitSettings:
    """The `rate_limit:` section."""

    qps: float = 100.0
    burst: float = 200.0
    exempt: tuple[IPNetwork, ...] = PRIVATE_RANGES
    action: str = "refuse"  # refuse | drop
    table_size: int = 10000
    enabled: bool = True


@dataclass(frozen=True)
class QueryLogSettings:
    """The `query_log:` section."""

    enabled: bool = False
    path: str = "-"  # "-" is standard error
    hide_clients: bool = False


@dataclass(frozen=True, slots=True)  # (30 fields: CPython 3.11 keeps an instance's attributes
class Config:  # inline, its fastest lookups, only up to 30; slots have no such limit)
    """Everything `splitdns serve` needs, validated."""

    source: str
    listen: tuple[Endpoint, ...] = (Endpoint("127.0.0.1", 5353),)
    listen_given: bool = False  # the file says `listen:` ($SPLITDNS_LISTEN then stays unused)
    upstreams: tuple[UpstreamSpec, ...] = ()  # the default list (see forwarding for domains)
    upstreams_origin: str = "config"
    forwarding: Forwarding = field(default_factory=Forwarding)
    allow: tuple[IPNetwork, ...] = PRIVATE_RANGES
    views: tuple[View, ...] = ()
    timeout: float = DEFAULT_TIMEOUT
    tcp_idle_timeout: float = 10.0
    limits: LimitSettings = field(default_factory=LimitSettings)
    user: str | None = None  # None: $SPLITDNS_USER (the image sets splitdns), else nobody
    cache: CacheSettings = field(default_factory=CacheSettings)
    workers: int = 1
    nat: NatSettings | None = None
    doh_canary: bool = True
    block_private_relay: bool = False  # mask(-h2).icloud.com NXDOMAIN: Apple's network opt-out
    query_log: QueryLogSettings = field(default_factory=QueryLogSettings)
    metrics: Endpoint | None = None
    dashboard: DashboardSettings | None = None
    rate_limit: RateLimitSettings = field(default_factory=RateLimitSettings)
    rebinding: RebindingSettings = field(default_factory=RebindingSettings)
    encrypted: tuple[EncryptedListener, ...] = ()  # tls:// and https:// listen addresses
    tls: TlsSettings = field(default_factory=TlsSettings)
    state_dir: str | None = None  # None: default_state_dir() when a certificate must be made
    resolver_name: str | None = None  # for DDR (_dns.NAME) and the certificate's name
    trusted_proxies: tuple[IPNetwork, ...] = ()  # PROXY v2 senders whose header names the client
    trusted_ecs: tuple[IPNetwork, ...] = ()  # senders whose /32 or /128 ECS names the client
    #: NAT64 prefixes an upstream may synthesize AAAA answers in (besides those discovered by
    #: RFC 7050 at start): an AAAA there that embeds a public IPv4 address a view rewrites
    #: points at the public address too (answer/ipv6.py's EmbeddedPublic)
    nat64_prefixes: tuple[ipaddress.IPv6Network, ...] = (WKP,)
    dynamic: DynamicSettings | None = None  # the LAN's own names (config/dynamic.py)

    @property
    def rule_count(self) -> int:
        return sum(len(v.rules) for v in self.views)

    def with_overrides(
        self, listen: list[str] | None = None, upstreams: list[str] | None = None
    ) -> Config:
        """Command-line flags win over the file."""
        changed = self
        if listen:
            plain, encrypted = parse_listen(listen)
            changed = replace(changed, listen=plain, encrypted=encrypted)
        if upstreams:
            changed = replace(
                changed,
                upstreams=tuple(parse_upstream(x) for x in upstreams),
                upstreams_origin="command line",
            )
        return changed


# --------------------------------------------------------------------------- parsing helpers


def parse_endpoint(text: str, default_port: int | None) -> Endpoint:
    """`HOST:PORT`, `[V6]:PORT`, or (with a default port) `HOST` / a bare IPv6 address."""
    text = text.strip()
    host, port_text = text, ""
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ValueError(f"{text!r}: missing ']'")
        host, rest = text[1:close], text[close + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{text!r}: expected ':PORT' after ']'")
            port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address") from None
    if port_text:
        if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
            raise ValueError(f"{port_text!r} is not a port (0-65535)")
        port = int(port_text)
    elif default_port is None:
        raise ValueError(f"{text!r} needs a port (HOST:PORT)")
    else:
        port = default_port
    return Endpoint(str(address), port)


def parse_listen(
    texts: list[str], default_port: int | None = None
) -> tuple[tuple[Endpoint, ...], tuple[EncryptedListener, ...]]:
    """Plain `HOST:PORT` listen addresses and `tls://` / `https://` ones, apart."""
    plain = tuple(parse_endpoint(t, default_port) for t in texts if not is_encrypted(t))
    encrypted = tuple(split_url(t, parse_endpoint) for t in texts if is_encrypted(t))
    return plain, encrypted


def _endpoint(node: Node, default_port: int | None) -> Endpoint:
    text = node.text()  # its own ConfigError already names the place
    try:
        return parse_endpoint(text, default_port)
    except ValueError as exc:
        raise node.error(str(exc)) from None


def _network(node: Node) -> IPNetwork:
    text = node.text().strip()
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError:
        try:
            ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise node.error(f"{text!r} is not an address or network") from None
        meant = ipaddress.ip_network(text, strict=False)
        raise node.error(f"{text!r} has host bits set (did you mean {meant}?)") from None


def _address(node: Node) -> IPAddress:
    text = node.text().strip()
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise node.error(f"{text!r} is not an IP address") from None


def _name(text: str, node: Node, *, wildcard_ok: bool) -> NamePattern:
    name = text.strip().lower().rstrip(".")
    if name == text:
        name = text  # (the string already held: 100k hosts names are not held twice)
    wildcard = name.startswith("*.")
    if wildcard:
        if not wildcard_ok:
            raise node.error(f"{text!r}: wildcards are not allowed here")
        name = name[2:]
    labels = name.split(".") if name else []
    if not labels or any(not 0 < len(label) <= 63 for label in labels) or len(name) > 253:
        raise node.error(f"{text!r} is not a valid domain name")
    if any(ch in name for ch in " *\\"):
        raise node.error(f"{text!r} is not a valid domain name (use '*.' only as the first label)")
    return NamePattern(name, wildcard)


# --------------------------------------------------------------------------- sections


TOP_KEYS = frozenset(
    {
        "listen",
        "upstreams",
        "allow",
        "views",
        "timeout",
        "tcp_idle_timeout",
        "tcp_max_connections",
        "limits",
        "user",
        "cache",
        "workers",
        "nat",
        "doh_canary",
        "block_private_relay",
        "rate_limit",
        "rebinding_guard",
        "query_log",
        "metrics",
        "dashboard",
        "tls",
        "state_dir",
        "resolver_name",
        "trusted_proxies",
        "trusted_ecs",
        "nat64_prefixes",
        "dynamic",
    }
)
RATE_KEYS = frozenset({"qps", "burst", "exempt", "action", "table_size", "enabled"})
CACHE_INT_KEYS = {
    "size": (0, 10_000_000),
    "max_bytes": (0, 1 << 40),
    "min_ttl": (0, 86400),
    "max_ttl": (0, 604800),
    "negative_max_ttl": (0, 86400),
    "servfail_ttl": (0, 300),
    "stale_max_age": (0, 604800),
}
CACHE_BOOL_KEYS = frozenset({"serve_stale", "prefetch"})
VIEW_KEYS = frozenset(
    {"name", "clients", "rewrite", "aaaa", "https", "hosts", "hosts_ttl", "dns64"}
)
RULE_KEYS = frozenset({"from", "to", "names"})


def _rule(node: Node, index: int) -> Rule:
    keys = node.mapping(RULE_KEYS)
    for needed in ("from", "to"):
        if needed not in keys:
            raise node.error(f"missing '{needed}'")
    target = _network(keys["to"])
    dynamic = dynamic_source(keys["from"])
    if dynamic is not None:
        if target.version != 4 or target.prefixlen != 32:
            raise keys["to"].error("with 'follow' or 'interface', 'to' must be one IPv4 address")
        kind, value = dynamic
        placeholder = ipaddress.ip_network("0.0.0.0/32")
        return Rule(
            index,
            placeholder,
            target,
            _rule_names(keys),
            follow=value if kind == "follow" else None,
            interface=value if kind == "interface" else None,
            active=False,
        )
    source = _network(keys["from"])
    if source.version != target.version:
        raise keys["to"].error(f"{target} is IPv{target.version} but 'from' is IPv{source.version}")
    if source.prefixlen != target.prefixlen:
        raise keys["to"].error(
            f"size mismatch: 'from' {source} has {source.num_addresses} addresses, "
            f"'to' {target} has {target.num_addresses} (networks map 1:1)"
        )
    return Rule(index, source, target, _rule_names(keys))


def _rule_names(keys: dict[str, Node]) -> tuple[NamePattern, ...]:
    if "names" not in keys:
        return ()
    items = keys["names"].items(allow_scalar=True)
    if not items:
        raise keys["names"].error("must list at least one name (leave the key out for all names)")
    return tuple(_name(item.text(), item, wildcard_ok=True) for item in items)


def _hosts(node: Node) -> Hosts:
    exact: dict[str, tuple[IPAddress, ...]] = {}
    wildcards: list[tuple[NamePattern, tuple[IPAddress, ...]]] = []
    shared: dict[tuple[IPAddress, ...], tuple[IPAddress, ...]] = {}  # one tuple per address set
    for key, value in node.string_mapping(release=True):
        pattern = _name(key, value, wildcard_ok=True)
        items = value.items(allow_scalar=True)
        if not items:
            raise value.error("must list at least one address")
        addresses = tuple(_address(item) for item in items)
        addresses = shared.setdefault(addresses, addresses)
        if pattern.wildcard:
            wildcards.append((pattern, addresses))
        else:
            if pattern.suffix in exact:
                raise value.error(f"{pattern.suffix} is listed twice")
            exact[pattern.suffix] = addresses
    return Hosts(exact, tuple(wildcards))


def _view(node: Node, earlier: list[View]) -> View:
    keys = node.mapping(VIEW_KEYS)
    if "name" not in keys:
        raise node.error("missing 'name'")
    name = keys["name"].text()
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise keys["name"].error(f"{name!r}: use letters, digits, '-' and '_'")
    for earlier_view in earlier:
        if earlier_view.name == name:
            raise keys["name"].error(f"duplicate view name {name!r}")
    if "clients" not in keys:
        raise node.error("missing 'clients'")
    client_nodes = keys["clients"].items(allow_scalar=True)
    if not client_nodes:
        raise keys["clients"].error("must list at least one network")
    clients: list[IPNetwork] = []
    for item in client_nodes:
        net = _network(item)
        for prev in clients:
            if net.version == prev.version and net.overlaps(prev):
                raise item.error(f"{net} overlaps {prev} in the same view")
        clients.append(net)
    _check_shadowed(keys["clients"], clients, earlier)

    rules: list[Rule] = []
    seen_from: dict[tuple[object, ...], Rule] = {}  # (a dict: an import has thousands)
    for i, item in enumerate(keys["rewrite"].items() if "rewrite" in keys else []):
        rule = _rule(item, i)
        key = (rule.source, rule.follow, rule.interface, frozenset(rule.names))
        earlier_rule = seen_from.get(key)
        if earlier_rule is not None:
            raise item.error(
                f"same 'from' {rule.source} as rewrite[{earlier_rule.index}] for the same "
                "names: which one wins would be ambiguous"
            )
        seen_from[key] = rule
        rules.append(rule)
    aaaa = keys["aaaa"].choice(("keep", "drop")) if "aaaa" in keys else "keep"
    hosts = _hosts(keys["hosts"]) if "hosts" in keys else Hosts()
    ttl = keys["hosts_ttl"].integer(minimum=0, maximum=604800) if "hosts_ttl" in keys else 300
    https = keys["https"].choice(("rewrite", "drop", "keep")) if "https" in keys else "rewrite"
    dns64 = parse_dns64(keys["dns64"]) if "dns64" in keys else None
    if dns64 is not None:
        for rule in rules:
            if rule.target.version == 6 and rule.target.overlaps(dns64.prefix):
                raise keys["dns64"].error(
                    f"prefix {dns64.prefix} overlaps rewrite[{rule.index}]'s target {rule.target}"
                )
    return View(name, tuple(clients), tuple(rules), aaaa, hosts, ttl, https, dns64)


def network_inside(inner: IPNetwork, outer: IPNetwork) -> bool:
    if isinstance(inner, ipaddress.IPv4Network) and isinstance(outer, ipaddress.IPv4Network):
        return inner.subnet_of(outer)
    if isinstance(inner, ipaddress.IPv6Network) and isinstance(outer, ipaddress.IPv6Network):
        return inner.subnet_of(outer)
    return False


def _check_shadowed(node: Node, clients: list[IPNetwork], earlier: list[View]) -> None:
    """A view whose every client network is inside earlier views would never be used."""
    covered = [net for view in earlier for net in view.clients]
    for net in clients:
        if not any(network_inside(net, outer) for outer in covered):
            return
    raise node.error(
        "every client here is already matched by an earlier view: this view is never used"
    )


def _cache(node: Node) -> CacheSettings:
    keys = node.mapping(frozenset(CACHE_INT_KEYS) | CACHE_BOOL_KEYS)
    values: dict[str, int | bool] = {}
    for key, child in keys.items():
        if key in CACHE_BOOL_KEYS:
            values[key] = child.boolean()
        else:
            low, high = CACHE_INT_KEYS[key]
            values[key] = child.integer(minimum=low, maximum=high)
    settings = replace(CacheSettings(), **values)  # type: ignore[arg-type]
    if settings.min_ttl > settings.max_ttl:
        raise keys["min_ttl"].error(f"is above max_ttl ({settings.max_ttl})")
    return settings


def _rate_limit(node: Node) -> RateLimitSettings:
    keys = node.mapping(RATE_KEYS)
    settings = RateLimitSettings()
    if "qps" in keys:
        settings = replace(settings, qps=keys["qps"].number(minimum=0.1, maximum=1e6))
    if "burst" in keys:
        settings = replace(settings, burst=keys["burst"].number(minimum=1, maximum=1e7))
    if "exempt" in keys:
        exempt = tuple(_network(i) for i in keys["exempt"].items(allow_scalar=True))
        settings = replace(settings, exempt=exempt)
    if "action" in keys:
        settings = replace(settings, action=keys["action"].choice(("refuse", "drop")))
    if "table_size" in keys:
        size = keys["table_size"].integer(minimum=16, maximum=10_000_000)
        settings = replace(settings, table_size=size)
    if "enabled" in keys:
        settings = replace(settings, enabled=keys["enabled"].boolean())
    return settings


def _rebinding(node: Node) -> RebindingSettings:
    """`rebinding_guard: true`, or a mapping with `enabled` and `allow` (domains)."""
    if not isinstance(node.raw, yaml.MappingNode):
        return RebindingSettings(enabled=node.boolean())
    keys = node.mapping(frozenset({"enabled", "allow"}))
    allow: list[str] = []
    for item in keys["allow"].items(allow_scalar=True) if "allow" in keys else []:
        domain = item.text().strip().lower().rstrip(".")
        if not domain or " " in domain or domain.startswith("*"):
            raise item.error(
                f"{item.text()!r} is not a domain (write example.com, not *.example.com)"
            )
        allow.append(domain)
    enabled = keys["enabled"].boolean() if "enabled" in keys else True
    return RebindingSettings(enabled, tuple(allow))


def from_node(root: Node) -> Config:
    keys = root.mapping(TOP_KEYS)
    config = Config(source=root.source)
    if "listen" in keys:
        items = keys["listen"].items(allow_scalar=True)
        if not items:
            raise keys["listen"].error("must list at least one address")
        plain, encrypted = [], []
        for item in items:
            if is_encrypted(item.text()):
                try:
                    encrypted.append(split_url(item.text(), parse_endpoint))
                except ValueError as exc:
                    raise item.error(str(exc)) from None
            else:
                plain.append(_endpoint(item, 53))
        config = replace(config, listen=tuple(plain), encrypted=tuple(encrypted), listen_given=True)
    if "upstreams" in keys:
        ups, forwarding = upstreams_from_node(keys["upstreams"])
        config = replace(config, upstreams=ups, forwarding=forwarding)
        if not ups and not forwarding.domains:
            config = replace(
                config, upstreams=resolv_conf_upstreams(), upstreams_origin=RESOLV_CONF
            )
    else:
        config = replace(config, upstreams=resolv_conf_upstreams(), upstreams_origin=RESOLV_CONF)
    if "allow" in keys:
        config = replace(
            config, allow=tuple(_network(i) for i in keys["allow"].items(allow_scalar=True))
        )
    views: list[View] = []
    for item in keys["views"].items() if "views" in keys else []:
        views.append(_view(item, views))
    config = replace(config, views=tuple(views))
    if "timeout" in keys:
        config = replace(config, timeout=keys["timeout"].number(minimum=0.1, maximum=60))
    if "tcp_idle_timeout" in keys:
        config = replace(
            config, tcp_idle_timeout=keys["tcp_idle_timeout"].number(minimum=0.5, maximum=3600)
        )
    if "tcp_max_connections" in keys:  # the older name of limits.connections
        cap = keys["tcp_max_connections"].integer(minimum=1, maximum=1_000_000)
        config = replace(config, limits=replace(config.limits, connections=cap))
    if "limits" in keys:
        config = replace(config, limits=parse_limits(keys["limits"], config.limits))
    if "user" in keys:
        config = replace(config, user=keys["user"].text())
    if "cache" in keys:
        config = replace(config, cache=_cache(keys["cache"]))
    if "workers" in keys:
        config = replace(config, workers=keys["workers"].integer(minimum=1, maximum=64))
    if "nat" in keys:
        config = replace(config, nat=parse_nat(keys["nat"]))
    if "rate_limit" in keys:
        config = replace(config, rate_limit=_rate_limit(keys["rate_limit"]))
    if "rebinding_guard" in keys:
        config = replace(config, rebinding=_rebinding(keys["rebinding_guard"]))
    if "query_log" in keys:
        qkeys = keys["query_log"].mapping(frozenset({"enabled", "path", "hide_clients"}))
        log_settings = QueryLogSettings(
            enabled=qkeys["enabled"].boolean() if "enabled" in qkeys else True,
            path=qkeys["path"].text() if "path" in qkeys else "-",
            hide_clients=qkeys["hide_clients"].boolean() if "hide_clients" in qkeys else False,
        )
        config = replace(config, query_log=log_settings)
    if "metrics" in keys:
        config = replace(config, metrics=_endpoint(keys["metrics"], None))
    if "dashboard" in keys:
        config = replace(config, dashboard=parse_dashboard(keys["dashboard"], parse_endpoint))
    if "doh_canary" in keys:
        config = replace(config, doh_canary=keys["doh_canary"].boolean())
    if "block_private_relay" in keys:
        config = replace(config, block_private_relay=keys["block_private_relay"].boolean())
    if "tls" in keys:
        tkeys = keys["tls"].mapping(frozenset({"cert", "key"}))
        if ("cert" in tkeys) != ("key" in tkeys):
            raise keys["tls"].error("give both 'cert' and 'key' (or neither: self-signed)")
        if tkeys:
            config = replace(config, tls=TlsSettings(tkeys["cert"].text(), tkeys["key"].text()))
    if "state_dir" in keys:
        config = replace(config, state_dir=keys["state_dir"].text())
    if "dynamic" in keys:
        dynamic = parse_dynamic(keys["dynamic"], _network)
        check_views(dynamic, [v.name for v in config.views], keys["dynamic"])
        config = replace(config, dynamic=dynamic)
    if "nat64_prefixes" in keys:
        items = keys["nat64_prefixes"].items(allow_scalar=True)
        config = replace(config, nat64_prefixes=tuple(prefix_of(i) for i in items))
    if "trusted_proxies" in keys:
        proxies = tuple(_network(i) for i in keys["trusted_proxies"].items(allow_scalar=True))
        config = replace(config, trusted_proxies=proxies)
    if "trusted_ecs" in keys:
        senders = tuple(_network(i) for i in keys["trusted_ecs"].items(allow_scalar=True))
        config = replace(config, trusted_ecs=senders)
    if "resolver_name" in keys:
        node = keys["resolver_name"]
        config = replace(
            config,
            resolver_name=_name(node.text().lower().rstrip("."), node, wildcard_ok=False).suffix,
        )
    if config.encrypted and any(a.kind == b.kind and (a.host, a.port) == (b.host, b.port)
                                for i, a in enumerate(config.encrypted)
                                for b in config.encrypted[i + 1 :]):  # fmt: skip
        raise keys["listen"].error("the same encrypted address is listed twice")
    return config


def loads(text: str, source: str) -> Config:
    return from_node(parse(text, source))


def load(path: str | os.PathLike[str]) -> Config:
    """Load and validate a zone mapping file; raises ConfigError naming file, line and key.
    An empty (or all-comment) file is an error: a mapping that says nothing is a mistake
    (a failed copy, the wrong file mounted), not a wish for the defaults."""
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(name, 0, "", f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(name, 0, "", f"not UTF-8 text: {exc.reason}") from None
    node = parse(text, name)
    if isinstance(node.raw, yaml.ScalarNode) and node.raw.tag.endswith(":null"):
        raise ConfigError(name, 0, "", "empty: nothing configured; delete it to use the defaults")
    return from_node(node)


def load_default() -> Config:
    """The embedded default: loopback:5353, resolv.conf upstreams, private ranges, no rewrites."""
    text = resources.files("splitdns.config").joinpath("default.yaml").read_text(encoding="utf-8")
    return loads(text, EMBEDDED_SOURCE)


def resolv_conf_upstreams(path: str = RESOLV_CONF) -> tuple[UpstreamSpec, ...]:
    """`nameserver` lines of resolv.conf (scoped link-local addresses are skipped)."""
    found: list[UpstreamSpec] = []
    try:
        lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ()
    for line in lines:
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver" and "%" not in parts[1]:
            try:
                found.append(UpstreamSpec("dns", str(ipaddress.ip_address(parts[1])), 53))
            except ValueError:
                continue
    return tuple(found)


__all__ = [
    "Config",
    "ConfigError",
    "Endpoint",
    "Hosts",
    "NamePattern",
    "Rule",
    "View",
    "load",
    "load_default",
    "loads",
]
