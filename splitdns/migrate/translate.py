"""From a list of per-name overrides to splitdns's rules by public address, pure.

The public answers decide (looked up by the caller and handed in): the names whose public
address X all map to the same internal Y become one rule `from: X, to: Y` (which also covers
every name the hand list forgot); addresses that map 1:1 across an aligned block collapse into
one network rule; a name that maps X elsewhere keeps a rule with `names:`; a name with no public
record (nas.home.arpa) becomes a `hosts` entry; a CNAME override is covered by a rule when its
public answer is, else becomes a `hosts` entry with its target's address, else is reported.
Disabled and "keep the upstream's answer" entries are reported, never imported. With no
public answers at all (offline), every entry becomes a `hosts` entry.
"""

from __future__ import annotations

import ipaddress
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from splitdns.migrate.entries import Entry, IPAddress, IPNetwork, Source, name_problem

#: (an entry's name, "A" | "AAAA") -> the public addresses (a wildcard's: of a name below it,
#: probe_name); None when the name has no such record
Lookup = Callable[[str, str], tuple[IPAddress, ...] | None]
#: name -> the source's answer for it, in one view (a dict per view: 100k entries keyed by
#: (view, name) tuples held 22 MiB more)
Imported = dict[str, tuple[IPAddress, ...]]
PROBE_LABEL = "splitdns-import-probe"  # asked below a wildcard for its public answer


@dataclass(slots=True)
class Rule:
    source: IPNetwork
    target: IPNetwork
    names: tuple[str, ...] = ()  # a rule for these names only
    replaces: list[str] = field(default_factory=list)  # "name (origin)" of each entry


@dataclass
class PlanView:
    name: str
    clients: tuple[IPNetwork, ...]
    rules: list[Rule] = field(default_factory=list)
    hosts: dict[str, tuple[IPAddress, ...]] = field(default_factory=dict)
    host_origins: dict[str, str] = field(default_factory=dict)
    leaks: list[str] = field(default_factory=list)  # names whose public AAAA leaked before


@dataclass
class Plan:
    source: Source
    views: list[PlanView]
    unimportable: list[tuple[str, str]]  # (origin, why)
    disabled: list[tuple[str, str]]  # (origin, name)
    covered: list[tuple[str, str]]  # (entry, the rule that covers it)
    offline: bool
    imported: dict[str, Imported]  # view -> name -> the source's answer

    @property
    def entry_count(self) -> int:
        return len(self.source.entries) + len(self.source.rules)


def plan(source: Source, lan: tuple[IPNetwork, ...], lookup: Lookup | None) -> Plan:
    """The mapping for `source`; `lookup` None: offline (no rules can be inferred)."""
    views, by_name = _views(source, lan)
    unimportable = [*source.skipped]
    disabled: list[tuple[str, str]] = []
    covered: list[tuple[str, str]] = []
    imported: dict[str, Imported] = {view.name: {} for view in views}
    pairs: dict[str, list[tuple[IPAddress, IPAddress, Entry]]] = defaultdict(list)
    seen: dict[str, dict[str, Entry]] = {view.name: {} for view in views}
    aliases: list[tuple[Entry, PlanView]] = []
    for entry in source.entries:
        if not entry.enabled:
            disabled.append((entry.origin, entry.name))
            continue
        if entry.keep:
            unimportable.append((entry.origin, f"{entry.name}: keeps the upstream's answer"))
            continue
        problem = name_problem(entry.name) or (
            name_problem(entry.target) if entry.target is not None else None
        )
        if problem is not None:
            shown = entry.name[:80]
            unimportable.append((entry.origin, f"{shown!r}: not a domain name: {problem}"))
            continue
        if entry.view not in by_name:
            why = f"{entry.name}: in view {entry.view}, which names no clients"
            unimportable.append((entry.origin, why))
            continue
        for view in by_name[entry.view]:  # (a source's global entry holds in every view)
            _take(entry, view, lookup, seen[view.name], aliases, imported[view.name], pairs,
                  unimportable)  # fmt: skip
    for view in views:
        view.rules += _rules(pairs[view.name])
    stated: dict[tuple[str, IPNetwork], str] = {}
    for rule in source.rules:
        if rule.view not in by_name:
            unimportable.append((rule.origin, f"{rule.source} -> {rule.target}: in view "
                                 f"{rule.view}, which names no clients"))  # fmt: skip
            continue
        for view in by_name[rule.view]:
            earlier = stated.get((view.name, rule.source))
            if earlier is not None:
                unimportable.append((rule.origin, f"{rule.source} -> {rule.target}: the same "
                                     f"public network as {earlier}; the first kept"))  # fmt: skip
                continue
            stated[(view.name, rule.source)] = rule.origin
            view.rules.append(Rule(rule.source, rule.target, (), [f"{rule.origin} (as it is)"]))
    for entry, view in aliases:
        _alias(entry, view, lookup, imported[view.name], covered, unimportable)
    for view in views:
        view.rules.sort(key=lambda r: (not r.names, r.source.version, r.source))
        _exact_beats_wildcards(view, imported[view.name])
    return Plan(source, views, unimportable, disabled, covered, lookup is None, imported)


def _exact_beats_wildcards(view: PlanView, imported: Imported) -> None:
    """The source's precedence carried over: in AdGuard Home, Pi-hole and dnsmasq a name's own
    entry wins over a wildcard above it. In splitdns `hosts` answer before the rules, so a
    hosts wildcard would shadow a name that became a rule: each such name gets its own exact
    hosts entry with the address the source gave it (an exact entry beats a wildcard)."""
    suffixes = {name[2:] for name in view.hosts if name.startswith("*.")}
    if not suffixes:
        return
    for name, addresses in imported.items():
        if name.startswith("*.") or name in view.hosts or not addresses:
            continue
        under = _longest_suffix(name, suffixes)  # (a walk up the name: 100k wildcards
        if under is not None:  # scanned for each of 100k names was quadratic)
            view.hosts[name] = addresses
            view.host_origins[name] = (
                f"its own entry beats the wildcard *.{under}, as in the source"
            )


def _longest_suffix(name: str, suffixes: set[str]) -> str | None:
    """The longest of `suffixes` that `name` is strictly below, or None."""
    dot = name.find(".")
    while dot >= 0:
        if name[dot + 1 :] in suffixes:
            return name[dot + 1 :]
        dot = name.find(".", dot + 1)
    return None


def _take(
    entry: Entry,
    view: PlanView,
    lookup: Lookup | None,
    seen: dict[str, Entry],
    aliases: list[tuple[Entry, PlanView]],
    imported: Imported,
    pairs: dict[str, list[tuple[IPAddress, IPAddress, Entry]]],
    unimportable: list[tuple[str, str]],
) -> None:
    """One enabled entry in one view: a conflict reported, an alias kept for later, an
    address entry paired with its public answer (or made a host)."""
    earlier = seen.get(entry.name)
    if earlier is not None and (earlier.addresses, earlier.target) != (
        entry.addresses,
        entry.target,
    ):
        unimportable.append(
            (entry.origin, f"{entry.name}: conflicts with {earlier.origin}; the first kept")
        )
        return
    seen[entry.name] = entry
    if entry.target is not None:
        aliases.append((entry, view))
        return
    imported[entry.name] = entry.addresses
    _address_entry(entry, view, lookup, pairs[view.name], unimportable)


def _inside(inner: IPNetwork, outer: IPNetwork) -> bool:
    return inner.version == outer.version and inner.subnet_of(outer)  # type: ignore[arg-type]


def _views(
    source: Source, lan: tuple[IPNetwork, ...]
) -> tuple[list[PlanView], dict[str, list[PlanView]]]:
    """The source's views (the more specific clients, so first), then the LAN's for the rest;
    and which views each source view name puts an entry in ("": all of them)."""
    views = [PlanView(v.name, v.clients) for v in source.views]
    taken = {v.name for v in views}
    default = PlanView(next(n for n in ("lan", "others", "default_") if n not in taken), lan)
    views.append(default)
    kept: list[PlanView] = []
    for view in views:  # a view every client of which an earlier one takes is never used
        if kept and all(any(_inside(c, o) for k in kept for o in k.clients) for c in view.clients):
            continue
        kept.append(view)
    views = kept
    by_name: dict[str, list[PlanView]] = {v.name: [v] for v in views if v is not default}
    by_name[""] = list(views)
    for view in views:  # splitdns view names: letters, digits, - and _
        view.name = "".join(c if c.isalnum() or c in "-_" else "-" for c in view.name) or "view"
    return views, by_name


def questions(source: Source) -> Iterator[tuple[str, str]]:
    """What `plan` will ask of the upstreams for `source` (asked ahead, at once), as the
    lookup is asked: by the entry's own name."""
    for entry in source.entries:
        if not entry.enabled or entry.keep or name_problem(entry.name) is not None:
            continue
        yield entry.name, "A"
        yield entry.name, "AAAA"
        if entry.target is not None and name_problem(entry.target) is None:
            yield entry.target, "A"
            yield entry.target, "AAAA"


def probe_name(name: str) -> str:
    """What is asked for a name's public answer: below a wildcard, a label of our own."""
    return f"{PROBE_LABEL}.{name[2:]}" if name.startswith("*.") else name


def _address_entry(
    entry: Entry,
    view: PlanView,
    lookup: Lookup | None,
    pairs: list[tuple[IPAddress, IPAddress, Entry]],
    unimportable: list[tuple[str, str]],
) -> None:
    asked = entry.name  # (the lookup asks a wildcard's below it)
    internal4 = [a for a in entry.addresses if a.version == 4]
    internal6 = [a for a in entry.addresses if a.version == 6]
    as_host = lookup is None
    for internal, rtype in ((internal4, "A"), (internal6, "AAAA")):
        if not internal or as_host:
            continue
        public = lookup(asked, rtype) if lookup is not None else None
        if not public:
            as_host = True
        elif len(internal) > 1:
            unimportable.append(
                (entry.origin, f"{entry.name}: {len(internal)} internal addresses for one "
                 "public one; kept as a hosts entry"),
            )  # fmt: skip
            as_host = True
        else:
            pairs += [(p, internal[0], entry) for p in public if p.version == internal[0].version]
    if as_host:
        view.hosts[entry.name] = entry.addresses
        view.host_origins[entry.name] = entry.origin
        return
    if internal4 and not internal6 and lookup is not None and lookup(asked, "AAAA"):
        view.leaks.append(entry.name)


def _rules(pairs: list[tuple[IPAddress, IPAddress, Entry]]) -> list[Rule]:
    """One rule per public address (to the internal address most of its names map to), a
    `names:` rule for the names that map it elsewhere; then aligned 1:1 blocks merged."""
    by_public: dict[IPAddress, list[tuple[IPAddress, Entry]]] = defaultdict(list)
    for public, internal, entry in pairs:
        by_public[public].append((internal, entry))
    general: dict[IPAddress, Rule] = {}
    named: list[Rule] = []
    for public, targets in by_public.items():
        by_target: dict[IPAddress, list[Entry]] = defaultdict(list)  # (in one pass: 100k
        for t, e in targets:  # names on one public address made a scan per target)
            by_target[t].append(e)
        usual = Counter(t for t, _ in targets).most_common(1)[0][0]
        for target, entries in by_target.items():
            names = tuple(sorted({e.name for e in entries}))
            rule = Rule(
                ipaddress.ip_network(public),
                ipaddress.ip_network(target),
                () if target == usual else names,
                [f"{e.name} ({e.origin})" for e in entries],
            )
            if target == usual:
                general[public] = rule
            else:
                named.append(rule)
    return [*_collapse(general), *named]


def _collapse(general: dict[IPAddress, Rule]) -> list[Rule]:
    """Single-address rules that map an aligned block 1:1 onto an aligned block of the same
    size become one network rule (the largest blocks first)."""
    rules = dict(general)
    out: list[Rule] = []
    for public in sorted(rules, key=lambda a: (a.version, a)):
        if public not in rules:
            continue
        width = 32 if public.version == 4 else 128
        for prefix in range(width - 8, width):  # blocks of 256 down to 2
            block = ipaddress.ip_network(f"{public}/{prefix}", strict=False)
            if block.network_address != public:
                continue
            base = rules[public].target.network_address
            try:
                target = ipaddress.ip_network(f"{base}/{prefix}")
            except ValueError:
                continue  # the internal side is not aligned the same way
            members: list[IPAddress] = [ipaddress.ip_address(m) for m in block]
            if all(
                m in rules and rules[m].target.network_address == base + (int(m) - int(public))
                for m in members
            ):
                replaced = [r for m in members for r in rules.pop(m).replaces]
                out.append(Rule(block, target, (), replaced))
                break
        else:
            out.append(rules.pop(public))
    return out


def _alias(
    entry: Entry,
    view: PlanView,
    lookup: Lookup | None,
    imported: Imported,
    covered: list[tuple[str, str]],
    unimportable: list[tuple[str, str]],
) -> None:
    """A CNAME override: splitdns has no local CNAMEs, so: covered by a rule when the alias's
    public answer is rewritten anyway, else its target's internal address as a hosts entry."""
    public = lookup(entry.name, "A") if lookup is not None else None
    for rule in view.rules:
        if public and not rule.names and any(p in rule.source for p in public):
            covered.append((f"{entry.name} -> {entry.target} ({entry.origin})", str(rule.source)))
            imported[entry.name] = tuple(
                rule.target.network_address + (int(p) - int(rule.source.network_address))
                for p in public
                if p in rule.source
            )
            return
    target = imported.get(entry.target or "")
    if target:
        view.hosts[entry.name] = target
        view.host_origins[entry.name] = f"{entry.origin} (CNAME to {entry.target}, as its address)"
        imported[entry.name] = target
        return
    unimportable.append(
        (entry.origin, f"{entry.name}: CNAME to {entry.target}, which splitdns cannot answer "
         "locally (no local CNAMEs) and no imported entry gives an address for"),
    )  # fmt: skip
