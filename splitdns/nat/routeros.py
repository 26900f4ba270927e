"""RouterOS `/ip firewall nat` commands, in the syntax of the hairpin NAT reference."""

from __future__ import annotations

from splitdns.nat.model import NatRule


def render(rules: list[NatRule], header: str) -> str:
    lines = [f"# {line}" for line in header.splitlines()]
    lines.append("/ip firewall nat")
    for rule in rules:
        parts = ["add"]
        if rule.kind == "dnat":
            parts += ["chain=dstnat", f"dst-address={rule.dst}"]
        else:
            parts.append("chain=srcnat")
            if rule.src is not None:
                parts.append(f"src-address={rule.src}")
            if rule.dst is not None:
                parts.append(f"dst-address={rule.dst}")
        if rule.proto:
            parts.append(f"protocol={rule.proto}")
        if rule.dst_ports is not None:
            parts.append(f"dst-port={rule.dst_ports.text()}")
        if rule.out_interface:
            parts.append(f"out-interface={rule.out_interface}")
        if rule.kind == "dnat":
            parts += ["action=dst-nat", f"to-addresses={rule.to_address}"]
            if rule.to_ports is not None:
                parts.append(f"to-ports={rule.to_ports.text()}")
        else:
            parts.append("action=masquerade")
        parts.append(f'comment="{rule.comment}"')
        lines.append(" ".join(parts))
    return "\n".join(lines) + "\n"
