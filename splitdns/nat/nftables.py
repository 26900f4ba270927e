"""An `nft -f` file with its own table, so loading it touches no other ruleset."""

from __future__ import annotations

from splitdns.nat.model import NatRule

TABLE = "splitdns_nat"


def _match(rule: NatRule) -> list[str]:
    parts = []
    if rule.in_interface:
        parts.append(f'iifname "{rule.in_interface}"')
    if rule.src is not None:
        parts.append(f"ip saddr {rule.src}")
    if rule.not_src is not None:
        parts.append(f"ip saddr != {rule.not_src}")
    if rule.dst is not None:
        parts.append(f"ip daddr {rule.dst}")
    if rule.not_dst is not None:
        parts.append(f"ip daddr != {rule.not_dst}")
    if rule.proto and rule.dst_ports is not None:
        parts.append(f"{rule.proto} dport {rule.dst_ports.text()}")
    elif rule.proto:
        parts.append(f"meta l4proto {rule.proto}")
    if rule.out_interface:
        parts.append(f'oifname "{rule.out_interface}"')
    if rule.redirected:
        parts.append("ct status dnat")
    return parts


def render(rules: list[NatRule], header: str) -> str:
    lines = [f"# {line}" for line in header.splitlines()]
    lines += [
        f"table ip {TABLE}",
        f"delete table ip {TABLE}",
        f"table ip {TABLE} {{",
        "\tchain prerouting {",
        "\t\ttype nat hook prerouting priority dstnat; policy accept;",
    ]
    for rule in (r for r in rules if r.kind == "dnat"):
        target = str(rule.to_address)
        if rule.to_ports is not None:
            target += f":{rule.to_ports.text()}"
        lines.append(f'\t\t{" ".join(_match(rule))} dnat to {target} comment "{rule.comment}"')
    lines += [
        "\t}",
        "\tchain postrouting {",
        "\t\ttype nat hook postrouting priority srcnat; policy accept;",
    ]
    for rule in (r for r in rules if r.kind in ("masquerade", "hairpin")):
        lines.append(f'\t\t{" ".join(_match(rule))} masquerade comment "{rule.comment}"')
    lines.append("\t}")
    rejects = [r for r in rules if r.kind == "reject"]
    if rejects:
        lines += [
            "\tchain forward {",
            "\t\ttype filter hook forward priority filter; policy accept;",
        ]
        for rule in rejects:
            how = "reject with tcp reset" if rule.proto == "tcp" else "reject"
            lines.append(f'\t\t{" ".join(_match(rule))} {how} comment "{rule.comment}"')
        lines.append("\t}")
    lines.append("}")
    return "\n".join(lines) + "\n"
