"""The `nat:` section of the zone mapping: the router's port forwards as plain data.

Parsed here with the rest of the file so one load validates everything; splitdns.nat turns
these settings into rules and renders them.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from splitdns.config.tree import Node, dynamic_source

PROTOCOLS = ("tcp", "udp")


@dataclass(frozen=True)
class PortRange:
    low: int
    high: int

    @property
    def single(self) -> bool:
        return self.low == self.high

    @property
    def size(self) -> int:
        return self.high - self.low + 1

    def text(self, sep: str = "-") -> str:
        return str(self.low) if self.single else f"{self.low}{sep}{self.high}"


@dataclass(frozen=True)
class PortForward:
    """`proto` traffic to the public address on `ports` goes to `target` on `target_ports`."""

    index: int
    proto: str
    ports: PortRange
    target: ipaddress.IPv4Address
    target_ports: PortRange

    @property
    def translated(self) -> bool:
        """The internal port differs: a LAN client told the internal address would dial the
        public port and miss, so DNS rewriting cannot serve this forward."""
        return self.ports != self.target_ports

    def describe(self) -> str:
        to = f"{self.target}:{self.target_ports.text()}" if self.translated else str(self.target)
        return f"forward[{self.index}] {self.proto}/{self.ports.text()} -> {to}"


@dataclass(frozen=True)
class InterceptDns:
    """`intercept_dns:`: LAN DNS not addressed to splitdns is sent to it (devices with a
    resolver of their own: smart TVs, consoles, apps with 8.8.8.8 built in), and DNS over TLS
    or QUIC (853) to anyone else is refused, so Android's automatic Private DNS falls back to
    splitdns (strict mode with a public provider fails visibly instead of going around).

    `server`: splitdns's LAN address. `on_router`: splitdns runs on the router (that address is
    the router's): DNAT alone. Otherwise the router must also masquerade what it redirects, or
    splitdns would answer the client directly from its own address, which the client (asking
    8.8.8.8) drops: the hairpin problem, for DNS. Then splitdns sees those clients as `router`
    (the router's LAN address), and they get the view that holds it.
    """

    server: ipaddress.IPv4Address
    on_router: bool = False
    router: ipaddress.IPv4Address | None = None
    block_dot: bool = True


@dataclass(frozen=True)
class NatSettings:
    public: ipaddress.IPv4Address
    wan_interface: str
    lan_interface: str
    lan: tuple[ipaddress.IPv4Network, ...]
    forwards: tuple[PortForward, ...]
    public_follow: str | None = None  # `public: {follow: NAME}`: resolved when rules are made
    public_interface: str | None = None  # `public: {interface: IFACE}`
    intercept: InterceptDns | None = None  # `intercept_dns:`

    @property
    def dynamic(self) -> bool:
        return bool(self.public_follow or self.public_interface)


# --------------------------------------------------------------------------- parsing


NAT_KEYS = frozenset(
    {"public", "wan_interface", "lan_interface", "lan", "forwards", "intercept_dns"}
)
INTERCEPT_KEYS = frozenset({"server", "on_router", "router", "block_dot"})
FORWARD_KEYS = frozenset({"proto", "port", "to"})


def _ports(node: Node, text: str) -> PortRange:
    parts = text.split("-")
    if len(parts) > 2 or not all(p.strip().isdigit() for p in parts):
        raise node.error(f"{text!r} is not a port or a range like 27015-27020")
    low, high = int(parts[0]), int(parts[-1])
    if not (1 <= low <= 65535 and 1 <= high <= 65535):
        raise node.error(f"{text!r}: ports are 1-65535")
    if high < low:
        raise node.error(f"{text!r}: the range runs backwards")
    return PortRange(low, high)


def _interface(node: Node) -> str:
    name = node.text()
    if not name or len(name) > 15 or any(c in name for c in " \"'/;\\"):
        raise node.error(f"{name!r} is not an interface name")
    return name


def _ipv4(node: Node) -> ipaddress.IPv4Address:
    text = node.text().strip()
    try:
        return ipaddress.IPv4Address(text)
    except ValueError:
        raise node.error(f"{text!r} is not an IPv4 address") from None


def parse_nat(node: Node) -> NatSettings:
    keys = node.mapping(NAT_KEYS)
    for needed in ("public", "lan", "forwards"):
        if needed not in keys:
            raise node.error(f"missing '{needed}'")
    dynamic = dynamic_source(keys["public"])
    follow_name = dynamic[1] if dynamic and dynamic[0] == "follow" else None
    interface_name = dynamic[1] if dynamic and dynamic[0] == "interface" else None
    public = ipaddress.IPv4Address(0) if dynamic else _ipv4(keys["public"])
    wan = _interface(keys["wan_interface"]) if "wan_interface" in keys else "wan"
    lan_if = _interface(keys["lan_interface"]) if "lan_interface" in keys else "lan"
    lan: list[ipaddress.IPv4Network] = []
    for item in keys["lan"].items(allow_scalar=True):
        text = item.text().strip()
        try:
            lan.append(ipaddress.IPv4Network(text))
        except ValueError:
            raise item.error(f"{item.text()!r} is not an IPv4 network") from None
    if not lan:
        raise keys["lan"].error("must list at least one network")
    forwards: list[PortForward] = []
    for index, item in enumerate(keys["forwards"].items()):
        fkeys = item.mapping(FORWARD_KEYS)
        for needed in ("proto", "port", "to"):
            if needed not in fkeys:
                raise item.error(f"missing '{needed}'")
        proto = fkeys["proto"].choice(PROTOCOLS)
        ports = _ports(fkeys["port"], fkeys["port"].text())
        target_text = fkeys["to"].text().strip()
        host, _, port_text = target_text.partition(":")
        try:
            target = ipaddress.IPv4Address(host)
        except ValueError:
            raise fkeys["to"].error(f"{host!r} is not an IPv4 address") from None
        if not any(target in net for net in lan):
            raise fkeys["to"].error(f"{target} is not in the LAN ({', '.join(map(str, lan))})")
        target_ports = _ports(fkeys["to"], port_text) if port_text else ports
        if target_ports.size != ports.size:
            raise fkeys["to"].error(
                f"port range sizes differ: {ports.text()} has {ports.size}, "
                f"{target_ports.text()} has {target_ports.size}"
            )
        forward = PortForward(index, proto, ports, target, target_ports)
        for other in forwards:
            if other.proto == proto and not (
                ports.high < other.ports.low or other.ports.high < ports.low
            ):
                raise fkeys["port"].error(f"overlaps {other.describe()}")
        forwards.append(forward)
    intercept = _intercept(keys["intercept_dns"], lan) if "intercept_dns" in keys else None
    return NatSettings(
        public, wan, lan_if, tuple(lan), tuple(forwards), follow_name, interface_name, intercept
    )


def _intercept(node: Node, lan: list[ipaddress.IPv4Network]) -> InterceptDns:
    keys = node.mapping(INTERCEPT_KEYS)
    if "server" not in keys:
        raise node.error("missing 'server' (splitdns's LAN address)")
    server = _ipv4(keys["server"])
    if not any(server in net for net in lan):
        raise keys["server"].error(f"{server} is not in the LAN ({', '.join(map(str, lan))})")
    on_router = keys["on_router"].boolean() if "on_router" in keys else False
    router = _ipv4(keys["router"]) if "router" in keys else None
    if not on_router and router is None:
        raise node.error(
            "missing 'router' (the router's LAN address: redirected clients reach splitdns "
            "from it), or on_router: true when splitdns runs on the router"
        )
    if on_router and router is not None and router != server:
        raise keys["router"].error(
            f"on_router: true: splitdns's address is the router's ({server})"
        )
    block_dot = keys["block_dot"].boolean() if "block_dot" in keys else True
    return InterceptDns(server, on_router, None if on_router else router, block_dot)


# --------------------------------------------------------------------------- rules
