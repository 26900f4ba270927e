"""`iptables-restore` input for the nat table (use with --noflush to keep other rules)."""

from __future__ import annotations

from splitdns.nat.model import NatRule


def _match(rule: NatRule) -> list[str]:
    parts = []
    if rule.in_interface:
        parts.append(f"-i {rule.in_interface}")
    if rule.src is not None:
        parts.append(f"-s {rule.src}")
    if rule.not_src is not None:
        parts.append(f"! -s {rule.not_src}/32")
    if rule.dst is not None:
        parts.append(f"-d {rule.dst}/32")
    if rule.not_dst is not None:
        parts.append(f"! -d {rule.not_dst}/32")
    if rule.out_interface:
        parts.append(f"-o {rule.out_interface}")
    if rule.proto:
        parts.append(f"-p {rule.proto} -m {rule.proto}")
    if rule.dst_ports is not None:
        parts.append(f"--dport {rule.dst_ports.text(':')}")
    if rule.redirected:
        parts.append("-m conntrack --ctstate DNAT")
    parts.append(f'-m comment --comment "{rule.comment}"')
    return parts


def render(rules: list[NatRule], header: str) -> str:
    lines = [f"# {line}" for line in header.splitlines()]
    lines += ["*nat", ":PREROUTING ACCEPT [0:0]", ":POSTROUTING ACCEPT [0:0]"]
    for rule in rules:
        if rule.kind == "reject":
            continue
        if rule.kind == "dnat":
            target = str(rule.to_address)
            if rule.to_ports is not None:
                target += f":{rule.to_ports.text()}"
            lines.append(
                f"-A PREROUTING {' '.join(_match(rule))} -j DNAT --to-destination {target}"
            )
        else:
            lines.append(f"-A POSTROUTING {' '.join(_match(rule))} -j MASQUERADE")
    lines.append("COMMIT")
    rejects = [r for r in rules if r.kind == "reject"]
    if rejects:  # first in FORWARD: before any rule that accepts the LAN's traffic
        lines.append("*filter")
        for n, rule in enumerate(rejects, 1):
            how = "tcp-reset" if rule.proto == "tcp" else "icmp-port-unreachable"
            lines.append(f"-I FORWARD {n} {' '.join(_match(rule))} -j REJECT --reject-with {how}")
        lines.append("COMMIT")
    return "\n".join(lines) + "\n"
