"""A plan as a splitdns zone mapping (YAML, a comment on every rule naming the entries it
replaces) and as the report a person reads."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

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
    return "".join(line + "\n" for line in mapping_lines(plan, upstreams, when))


def mapping_lines(plan: Plan, upstreams: list[str], when: str) -> Iterator[str]:
    """The mapping a line at a time, so a large import is written as it is made (100k
    entries: the whole text and its list of lines beside the plan were 50 MiB of the peak)."""
    source = plan.source
    yield f"# splitdns zone mapping, imported from {source.path} ({source.format}) by"
    yield f"# `splitdns import` on {when}: {summary(plan)}."
    yield "# Check it with `splitdns check -c FILE`; docs/configuration.md has every key."
    if upstreams:
        yield f"upstreams: [{', '.join(_q(u) for u in upstreams)}]"
    clients = [str(c) for v in plan.views for c in v.clients]
    if clients:
        yield f'allow: [127.0.0.0/8, "::1/128", {", ".join(_q(c) for c in clients)}]'
    yield "# The dashboard, on this machine only (for the LAN: `splitdns passwd FILE`, then"
    yield "# password_file: FILE and a LAN listen address)."
    yield DASHBOARD
    yield "views:"
    for view in plan.views:
        yield from _view(view)


def _view(view: PlanView) -> Iterator[str]:
    yield f"  - name: {view.name}"
    yield f"    clients: [{', '.join(_q(str(c)) for c in view.clients)}]"
    if view.rules:
        yield "    rewrite:"
        for rule in view.rules:
            yield f"      # replaces {len(rule.replaces)}: {'; '.join(rule.replaces)}"
            names = f", names: [{', '.join(_q(n) for n in rule.names)}]" if rule.names else ""
            yield (f"      - {{from: {_q(str(_one(rule.source)))}, to: "
                   f"{_q(str(_one(rule.target)))}{names}}}")  # fmt: skip
    if view.leaks:
        yield f"    # public AAAA leaked before for: {', '.join(sorted(view.leaks))}"
        yield "    aaaa: drop"
    if view.hosts:
        yield "    hosts:"
        for name, addresses in view.hosts.items():
            each = [_q(str(a)) for a in addresses]
            value = each[0] if len(each) == 1 else f"[{', '.join(each)}]"
            yield f"      {_q(name)}: {value}  # {view.host_origins.get(name, '')}"


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
    return "".join(line + "\n" for line in report_lines(plan))


def report_lines(plan: Plan) -> Iterator[str]:
    """The report a line at a time (written as it is made, as the mapping is)."""
    yield summary(plan)
    if plan.offline:
        yield (
            "offline: no upstream was asked, so rules could not be inferred; every entry is a "
            "hosts entry (run again with --upstream to get rules by public address)"
        )
    for view in plan.views:
        yield f"view {view.name} (clients {', '.join(map(str, view.clients))}):"
        for rule in view.rules:
            scope = f" for {', '.join(rule.names)}" if rule.names else ""
            yield f"  rule {_one(rule.source)} -> {_one(rule.target)}{scope} replaces:"
            yield from (f"    {r}" for r in rule.replaces)
            if not rule.names:
                yield (
                    f"    and from now on every other name whose public address is "
                    f"{_one(rule.source)} (names the list forgot) gets {_one(rule.target)} too"
                )
        for name, addresses in view.hosts.items():
            yield (f"  host {name} -> {', '.join(map(str, addresses))} "
                   f"({view.host_origins.get(name, '')})")  # fmt: skip
        if view.leaks:
            yield (
                f"  the public AAAA of {', '.join(sorted(view.leaks))} reached LAN clients "
                "before (an A override alone does not stop it); now `aaaa: drop` answers NODATA"
            )
    for entry, covering in plan.covered:
        yield f"covered by rule {covering}: {entry}"
    for origin, why in plan.unimportable:
        yield f"not importable: {origin}: {why}"
    for origin, name in plan.disabled:
        yield f"disabled, not imported: {origin}: {name}"
