"""A plan as a splitdns zone mapping (YAML, a comment on every rule naming the entries it
replaces) and as the report a person reads."""

from __future__ import annotations

import json
import re

import yaml

from splitdns.migrate.translate import Plan, PlanView

DASHBOARD = 'dashboard: {listen: "127.0.0.1:5380"}'


_RESOLVER = yaml.resolver.Resolver()
_STR = "tag:yaml.org,2002:str"
_PLAIN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_./-]*")


def _q(text: str) -> str:
    """`text` as a YAML scalar that reads back as that string: plain when YAML would read it
    so (not `true`, `2`, `1e5`, `null`), else double-quoted."""
    resolved = _RESOLVER.resolve(yaml.ScalarNode, text, (True, False))  # type: ignore[no-untyped-call]
    if _PLAIN.fullmatch(text) and resolved == _STR:
        return text
    return json.dumps(text)


def mapping(plan: Plan, upstreams: list[str], when: str) -> str:
    source = plan.source
    out = [
        f"# splitdns zone mapping, imported from {source.path} ({source.format}) by",
        f"# `splitdns import` on {when}: {summary(plan)}.",
        "# Check it with `splitdns check -c FILE`; docs/configuration.md has every key.",
    ]
    if upstreams:
        out.append(f"upstreams: [{', '.join(_q(u) for u in upstreams)}]")
    clients = [str(c) for v in plan.views for c in v.clients]
    if clients:
        out.append(f'allow: [127.0.0.0/8, "::1/128", {", ".join(_q(c) for c in clients)}]')
    out += [
        "# The dashboard, on this machine only (for the LAN: `splitdns passwd FILE`, then",
        "# password_file: FILE and a LAN listen address).",
        DASHBOARD,
        "views:",
    ]
    for view in plan.views:
        out += _view(view)
    return "\n".join(out) + "\n"


def _view(view: PlanView) -> list[str]:
    out = [
        f"  - name: {view.name}",
        f"    clients: [{', '.join(_q(str(c)) for c in view.clients)}]",
    ]
    if view.rules:
        out.append("    rewrite:")
        for rule in view.rules:
            out.append(f"      # replaces {len(rule.replaces)}: {'; '.join(rule.replaces)}")
            names = f", names: [{', '.join(_q(n) for n in rule.names)}]" if rule.names else ""
            out.append(f"      - {{from: {_q(str(_one(rule.source)))}, to: "
                       f"{_q(str(_one(rule.target)))}{names}}}")  # fmt: skip
    if view.leaks:
        out.append(f"    # public AAAA leaked before for: {', '.join(sorted(view.leaks))}")
        out.append("    aaaa: drop")
    if view.hosts:
        out.append("    hosts:")
        for name, addresses in view.hosts.items():
            each = [_q(str(a)) for a in addresses]
            value = each[0] if len(each) == 1 else f"[{', '.join(each)}]"
            out.append(f"      {_q(name)}: {value}  # {view.host_origins.get(name, '')}")
    return out


def _one(net: object) -> object:
    """A /32 or /128 network written as its address."""
    address = getattr(net, "network_address", None)
    if address is not None and net.num_addresses == 1:  # type: ignore[attr-defined]
        return address
    return net


def summary(plan: Plan) -> str:
    rules = sum(len(v.rules) for v in plan.views)
    hosts = sum(len(v.hosts) for v in plan.views)
    text = f"{plan.entry_count} entries -> {rules} rules, {hosts} hosts"
    if plan.covered:
        text += f", {len(plan.covered)} covered by a rule"
    if plan.unimportable:
        text += f", {len(plan.unimportable)} not importable"
    if plan.disabled:
        text += f", {len(plan.disabled)} disabled (not imported)"
    return text


def report(plan: Plan) -> str:
    out = [summary(plan)]
    if plan.offline:
        out.append(
            "offline: no upstream was asked, so rules could not be inferred; every entry is a "
            "hosts entry (run again with --upstream to get rules by public address)"
        )
    for view in plan.views:
        out.append(f"view {view.name} (clients {', '.join(map(str, view.clients))}):")
        for rule in view.rules:
            scope = f" for {', '.join(rule.names)}" if rule.names else ""
            out.append(f"  rule {_one(rule.source)} -> {_one(rule.target)}{scope} replaces:")
            out += [f"    {r}" for r in rule.replaces]
            if not rule.names:
                out.append(
                    f"    and from now on every other name whose public address is "
                    f"{_one(rule.source)} (names the list forgot) gets {_one(rule.target)} too"
                )
        for name, addresses in view.hosts.items():
            out.append(f"  host {name} -> {', '.join(map(str, addresses))} "
                       f"({view.host_origins.get(name, '')})")  # fmt: skip
        if view.leaks:
            out.append(
                f"  the public AAAA of {', '.join(sorted(view.leaks))} reached LAN clients "
                "before (an A override alone does not stop it); now `aaaa: drop` answers NODATA"
            )
    for entry, covering in plan.covered:
        out.append(f"covered by rule {covering}: {entry}")
    for origin, why in plan.unimportable:
        out.append(f"not importable: {origin}: {why}")
    for origin, name in plan.disabled:
        out.append(f"disabled, not imported: {origin}: {name}")
    return "\n".join(out) + "\n"
