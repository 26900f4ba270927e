"""The NAT model: the rules that serve the router's port forwards, as plain data.

Built from the `nat:` section (splitdns.config.nat) into an ordered list of `NatRule`s.
Each renderer (one module per target) is a pure function of that list, so the three
targets can never disagree about what the rules mean.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace

from splitdns.config.nat import NatSettings, PortRange

HAIRPIN_MODES = ("needed", "all", "none")


@dataclass(frozen=True)
class NatRule:
    """One rule, target-neutral. kind: dnat | masquerade | hairpin (the nat table) | reject
    (the filter table's forward chain)."""

    kind: str
    comment: str
    proto: str | None = None
    src: ipaddress.IPv4Network | None = None
    dst: ipaddress.IPv4Address | None = None
    dst_ports: PortRange | None = None
    out_interface: str | None = None
    to_address: ipaddress.IPv4Address | None = None
    to_ports: PortRange | None = None
    in_interface: str | None = None
    not_src: ipaddress.IPv4Address | None = None  # every source but this one
    not_dst: ipaddress.IPv4Address | None = None  # every destination but this one
    redirected: bool = False  # only connections a DNAT redirected (conntrack's dnat status)


DNS = PortRange(53, 53)
DOT = PortRange(853, 853)  # DNS over TLS (tcp) and over QUIC (udp)


def intercept_rules(nat: NatSettings) -> list[NatRule]:
    """`intercept_dns:` as rules: LAN DNS not for splitdns sent to it (not splitdns's own:
    its upstream queries leave as they are); the masquerade that makes the answer reach the
    client when splitdns is not the router; 853 to anyone else refused."""
    intercept = nat.intercept
    if intercept is None:
        return []
    server = intercept.server
    rules: list[NatRule] = []
    for proto in ("udp", "tcp"):
        rules.append(
            NatRule(
                "dnat",
                f"DNS ({proto}/53) from the LAN to anyone else: to splitdns",
                proto=proto,
                dst_ports=DNS,
                in_interface=nat.lan_interface,
                not_src=server,
                not_dst=server,
                to_address=server,
            )
        )
    if not intercept.on_router:
        for proto in ("udp", "tcp"):
            rules.append(
                NatRule(
                    "masquerade",
                    f"redirected DNS ({proto}): answered through the router (splitdns sees "
                    f"{intercept.router})",
                    proto=proto,
                    dst=server,
                    dst_ports=DNS,
                    out_interface=nat.lan_interface,
                    redirected=True,
                )
            )
    if intercept.block_dot:
        for proto, what in (("tcp", "DNS over TLS"), ("udp", "DNS over QUIC")):
            rules.append(
                NatRule(
                    "reject",
                    f"{what} ({proto}/853) to anyone but splitdns: refused",
                    proto=proto,
                    dst_ports=DOT,
                    in_interface=nat.lan_interface,
                    not_dst=server,
                )
            )
    return rules


def build_rules(
    nat: NatSettings, hairpin: str, rewritten_targets: frozenset[ipaddress.IPv4Address]
) -> list[NatRule]:
    """DNAT per forward, masquerade out of the WAN, then hairpin masquerade per `hairpin`.

    `needed` keeps only the forwards DNS rewriting cannot serve: port-translated ones, and
    ones whose target no rewrite rule hands to LAN clients.
    """
    rules: list[NatRule] = []
    for fwd in nat.forwards:
        rules.append(
            NatRule(
                "dnat",
                fwd.describe(),
                proto=fwd.proto,
                dst=nat.public,
                dst_ports=fwd.ports,
                to_address=fwd.target,
                to_ports=fwd.target_ports if fwd.translated else None,
            )
        )
    rules += [r for r in intercept_rules(nat) if r.kind == "dnat"]
    rules.append(NatRule("masquerade", "LAN to the internet", out_interface=nat.wan_interface))
    rules += [r for r in intercept_rules(nat) if r.kind != "dnat"]
    for fwd in nat.forwards:
        if hairpin == "none":
            break
        if hairpin == "needed" and not fwd.translated and fwd.target in rewritten_targets:
            continue
        for lan in nat.lan:
            if fwd.target not in lan:
                continue
            same = next(
                (
                    i
                    for i, r in enumerate(rules)
                    if r.kind == "hairpin"
                    and (r.proto, r.src, r.dst, r.dst_ports)
                    == (fwd.proto, lan, fwd.target, fwd.target_ports)
                ),
                None,
            )
            if same is not None:  # two forwards onto one inner port share one hairpin rule
                merged = f"{rules[same].comment}, {fwd.describe()}"
                rules[same] = replace(rules[same], comment=merged)
                continue
            rules.append(
                NatRule(
                    "hairpin",
                    f"hairpin for {fwd.describe()}",
                    proto=fwd.proto,
                    src=lan,
                    dst=fwd.target,
                    dst_ports=fwd.target_ports,  # after DNAT the packet carries the inner port
                    out_interface=nat.lan_interface,
                )
            )
    return rules
