"""RouterOS `/ip firewall nat` commands, in the syntax of the hairpin NAT reference."""

from __future__ import annotations

from splitdns.nat.model import NatRule


def render(rules: list[NatRule], header: str) -> str:
    lines = [f"# {line}" for line in header.splitlines()]
    lines.append("/ip firewall nat")
    for rule in rules:
        if rule.kind == "reject":
            continue
        parts = ["add"]
        if rule.kind == "dnat":
            parts.append("chain=dstnat")
            if rule.in_interface:
                parts.append(f"in-interface={rule.in_interface}")
            if rule.not_src is not None:
                parts.append(f"src-address=!{rule.not_src}")
            parts.append(f"dst-address={rule.dst}" if rule.dst else f"dst-address=!{rule.not_dst}")
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
        if rule.redirected:
            parts.append("connection-nat-state=dstnat")
        if rule.kind == "dnat":
            parts += ["action=dst-nat", f"to-addresses={rule.to_address}"]
            if rule.to_ports is not None:
                parts.append(f"to-ports={rule.to_ports.text()}")
        else:
            parts.append("action=masquerade")
        parts.append(f'comment="{rule.comment}"')
        lines.append(" ".join(parts))
    rejects = [r for r in rules if r.kind == "reject"]
    if rejects:
        lines.append("/ip firewall filter")
        for rule in rejects:
            how = "tcp-reset" if rule.proto == "tcp" else "icmp-port-unreachable"
            lines.append(
                f"add chain=forward in-interface={rule.in_interface} "
                f"dst-address=!{rule.not_dst} protocol={rule.proto} "
                f"dst-port={rule.dst_ports.text() if rule.dst_ports else ''} action=reject "
                f'reject-with={how} comment="{rule.comment}"'
            )
    return "\n".join(lines) + "\n"
