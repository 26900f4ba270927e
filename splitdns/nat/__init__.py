"""NAT companion: hairpin rules rendered from the same zone mapping as the DNS rewrite."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from splitdns.config.nat import NatSettings
from splitdns.nat import iptables, nftables, routeros
from splitdns.nat.model import HAIRPIN_MODES, NatRule, build_rules

#: Renderers by target name: each a pure function of the rule list.
TARGETS: dict[str, Callable[[list[NatRule], str], str]] = {
    "routeros": routeros.render,
    "nftables": nftables.render,
    "iptables": iptables.render,
}


def render(
    nat: NatSettings,
    target: str,
    hairpin: str,
    rewritten_targets: frozenset[ipaddress.IPv4Address],
    source: str,
) -> str:
    """The complete, commented, deterministic ruleset for `target`."""
    rules = build_rules(nat, hairpin, rewritten_targets)
    header = f"splitdns NAT rules for {target} from {source} (hairpin: {hairpin})"
    return TARGETS[target](rules, header)


__all__ = ["HAIRPIN_MODES", "TARGETS", "NatSettings", "render"]
