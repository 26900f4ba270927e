"""The rewrite: public addresses in upstream answers become internal ones for a view.

Pure functions over wire bytes. Only the 4 or 16 address bytes of matching A/AAAA records,
and of the ipv4hint/ipv6hint values of HTTPS/SVCB records (browsers may connect to a hint
before the A/AAAA answer arrives), change; owner names, TTLs, classes, order and every other
record and SvcParam stay as the upstream sent them. RRSIGs covering a rewritten RRset are
removed and AD is cleared, because the rewritten data no longer validates.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import NamedTuple

from splitdns import wire
from splitdns.answer import svcb
from splitdns.config.model import IPAddress, Rule, View


class Change(NamedTuple):
    """One rewritten address, for logs, metrics and `explain`."""

    name: str
    old: IPAddress
    new: IPAddress | None  # None: removed (a public ipv6hint beside a rewritten IPv4 answer)
    rule: int  # the rule's index; -1 for a removal by the view's `aaaa: drop`; -2: DNS64
    field: str = ""  # "" for an A/AAAA record, else "ipv4hint", "ipv6hint", "dns64" or "nat64"
    #: outside the answer section (glue, an HTTPS record's additional data): says nothing of
    #: where the question's own name points, so no AAAA/HTTPS policy decides on it
    glue: bool = False

    def describe(self) -> str:
        if self.field == "nat64":
            if self.new is None:
                return (
                    f"{self.name} AAAA {self.old} removed: it embeds a public address "
                    f"rewrite[{self.rule}] maps (the upstream's DNS64; the well-known prefix "
                    "cannot embed the internal one)"
                )
            return (
                f"{self.name} AAAA {self.old} -> {self.new} by rewrite[{self.rule}] (the "
                "public address embedded by the upstream's DNS64, made again)"
            )
        if self.field == "dns64":
            if self.new is None:
                return (
                    f"{self.name} AAAA for {self.old}: none (dns64: the well-known prefix must "
                    "not embed a non-global address; give the server's IPv6 address in "
                    "dns64.servers, or use a network-specific prefix)"
                )
            return f"{self.name} AAAA {self.new} made from {self.old} (dns64)"
        where = f"{self.name} {self.field}".rstrip()
        if self.new is None:
            return f"{where} {self.old} removed (aaaa: drop)"
        return f"{where} {self.old} -> {self.new} by rewrite[{self.rule}]"


class Rewritten(NamedTuple):
    data: bytes
    changes: tuple[Change, ...] = ()
    rebuilt: bool = False  # offsets changed (RRSIGs removed): an earlier walk no longer fits

    @property
    def answered(self) -> bool:
        """Whether the question's own answer (the answer section) was rewritten."""
        return any(not c.glue for c in self.changes)


def specificity(rule: Rule) -> tuple[int, int, int]:
    """Sort key: rules with `names` first, then the longest `from` prefix, then config order."""
    return (0 if rule.names else 1, -rule.source.prefixlen, rule.index)


def ordered_rules(view: View) -> tuple[Rule, ...]:
    return view_plan(view).rules


class _Plan:
    """A view's rules ready for the per-answer loop: in precedence order, and the integer
    ranges of their `from` networks, so an address no rule can map costs one comparison
    instead of an ipaddress object (most addresses in answers are not rewritten). `maps4` and
    `maps6` are the active rules as (low, high, target, index) in that order: Rule.map in
    integers, an address in [low, high] becoming target + (address - low) (the express lane
    rewrites with them)."""

    __slots__ = ("maps4", "maps6", "rules", "v4", "v6")

    def __init__(self, view: View) -> None:
        self.rules = tuple(sorted(view.rules, key=specificity))
        self.maps4 = _maps(r for r in self.rules if r.active and r.source.version == 4)
        self.maps6 = _maps(r for r in self.rules if r.active and r.source.version == 6)
        self.v4 = tuple((low, high) for low, high, _, _ in self.maps4)
        self.v6 = tuple((low, high) for low, high, _, _ in self.maps6)


def _maps(rules: Iterable[Rule]) -> tuple[tuple[int, int, int, int], ...]:
    return tuple(
        (
            int(r.source.network_address),
            int(r.source.broadcast_address),
            int(r.target.network_address),
            r.index,
        )
        for r in rules
    )


_plans: dict[int, tuple[View, _Plan]] = {}


def view_plan(view: View) -> _Plan:
    """The view's plan, made once per view object (a reload makes new views)."""
    known = _plans.get(id(view))
    if known is not None and known[0] is view:
        return known[1]
    if len(_plans) >= 256:
        _plans.clear()
    plan = _Plan(view)
    _plans[id(view)] = (view, plan)
    return plan


def mappable(ranges: tuple[tuple[int, int], ...], value: int) -> bool:
    return any(low <= value <= high for low, high in ranges)


def pick_rule(rules: tuple[Rule, ...], address: IPAddress, names: set[str]) -> Rule | None:
    """The most specific rule (from `ordered_rules`) whose `from` holds `address` and names fit."""
    for rule in rules:
        if (
            rule.active
            and rule.source.version == address.version
            and address in rule.source
            and rule.applies_to(names)
        ):
            return rule
    return None


def chain_names(data: bytes, message: wire.Message, qname: str) -> set[str]:
    """The query name plus every owner and target of CNAMEs in the answer section."""
    names = {qname}
    for record in message.records:
        if record.section == wire.ANSWER and record.rtype == wire.TYPE_CNAME:
            names.add(record.name)
            names.add(wire.read_cname_target(data, record))
    return names


def rewrite(
    data: bytes, qname: str, view: View | None, message: wire.Message | None = None
) -> Rewritten:
    """Rewrite an upstream answer (no OPT) for `view`; malformed input raises wire.WireError.

    `message` is the walk of `data` when the caller already has it (saves a second walk).
    """
    if view is None or not view.rules:
        return Rewritten(data)
    plan = view_plan(view)
    rules = plan.rules
    if message is None:
        message = wire.walk(data)
    chain: set[str] | None = None
    patched: bytearray | None = None
    changes: list[Change] = []
    rewritten_sets: set[tuple[int, str, int]] = set()
    hints = view.https != "keep"
    for record in message.records:
        if record.section == wire.AUTHORITY or record.rclass != wire.CLASS_IN:
            continue
        if record.rtype in svcb.TYPES:
            if hints:
                if chain is None:
                    chain = chain_names(data, message, qname)
                before = len(changes)
                patched = _rewrite_hints(data, record, chain, rules, patched, changes)
                if len(changes) > before:
                    rewritten_sets.add((record.section, record.name, record.rtype))
            continue
        offset = record.rdata_offset
        address: IPAddress
        if record.rtype == wire.TYPE_A and record.rdlength == 4:
            raw = data[offset : offset + 4]
            if not mappable(plan.v4, int.from_bytes(raw, "big")):
                continue
            address = ipaddress.IPv4Address(raw)
        elif record.rtype == wire.TYPE_AAAA and record.rdlength == 16:
            raw = data[offset : offset + 16]
            if not mappable(plan.v6, int.from_bytes(raw, "big")):
                continue
            address = ipaddress.IPv6Address(raw)
        else:
            continue
        if record.section == wire.ANSWER:
            if chain is None:
                chain = chain_names(data, message, qname)
            names = chain | {record.name}
        else:
            names = {record.name}
        rule = pick_rule(rules, address, names)
        if rule is None:
            continue
        new = rule.map(address)
        if patched is None:
            patched = bytearray(data)
        patched[offset : offset + record.rdlength] = new.packed
        changes.append(
            Change(record.name, address, new, rule.index, "", record.section != wire.ANSWER)
        )
        rewritten_sets.add((record.section, record.name, record.rtype))
    if patched is None:
        return Rewritten(data)
    out = wire.set_flags(bytes(patched), clear_bits=wire.AD)
    if not covered_sets(out, message, rewritten_sets):
        return Rewritten(out, tuple(changes), rebuilt=False)
    out = wire.remove_rrsigs(out, rewritten_sets)
    return Rewritten(out, tuple(changes), rebuilt=True)


def _rewrite_hints(
    data: bytes,
    record: wire.Record,
    chain: set[str],
    rules: tuple[Rule, ...],
    patched: bytearray | None,
    changes: list[Change],
) -> bytearray | None:
    """Patch the hint addresses of one HTTPS/SVCB record that a rule maps (same sizes, so in
    place). Names a rule may match: the owner, the TargetName and, in the answer section, the
    query's CNAME chain."""
    target, found = svcb.target_and_hints(data, record)
    names = {record.name} | ({target} if target else set())
    if record.section == wire.ANSWER:
        names |= chain
    for hint in found:
        rule = pick_rule(rules, hint.address, names)
        if rule is None:
            continue
        new = rule.map(hint.address)
        if patched is None:
            patched = bytearray(data)
        size = len(new.packed)
        patched[hint.offset : hint.offset + size] = new.packed
        changes.append(
            Change(
                record.name,
                hint.address,
                new,
                rule.index,
                svcb.HINT_NAMES[hint.key],
                record.section != wire.ANSWER,
            )
        )
    return patched


def covered_sets(data: bytes, message: wire.Message, rewritten: set[tuple[int, str, int]]) -> bool:
    """Whether any RRSIG in the message covers an RRset that was rewritten."""
    covered = {
        (r.section, r.name, int.from_bytes(data[r.rdata_offset : r.rdata_offset + 2], "big"))
        for r in message.records
        if r.rtype == wire.TYPE_RRSIG and r.rdlength >= 2
    }
    return bool(covered & rewritten)
