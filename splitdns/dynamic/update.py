"""RFC 2136 UPDATE: the zone, the prerequisites and the changes of one message, judged.

Pure: it reads the store and returns the rcode and the operations to apply, never applies
them (serve/updates.py journals and applies them, in order, one update at a time). The
prerequisites are section 2.4's (and so RFC 4703's conflict resolution as kea-dhcp-ddns
sends it, with DHCID): name in use, name not in use, RRset exists (value-independent and
value-dependent), RRset does not exist.
"""

from __future__ import annotations

from splitdns import wire
from splitdns.dynamic.message import CLASS_ANY, CLASS_NONE, RR, Update
from splitdns.dynamic.store import Op, Store, Zone

NOTAUTH = 9
NOTZONE = 10
YXDOMAIN = 6
YXRRSET = 7
NXRRSET = 8
MAX_NAMES = 65536  # names an update may make in one zone (a LAN has a few hundred)
#: types an update may not add (RFC 2136 section 3.4.1.2), and the ones splitdns keeps itself
NOT_ADDABLE = frozenset({255, 252, 251, 253, 254, wire.TYPE_SOA, wire.TYPE_NS, 250, 41})


def _inside(name: str, zone: Zone) -> bool:
    return name == zone.name or name.endswith("." + zone.name)


def judge(update: Update, store: Store) -> tuple[int, Zone | None, list[Op]]:
    """(rcode, zone, operations) for an UPDATE: NOERROR with the operations to apply, or the
    rcode that refuses it (FORMERR, NOTAUTH, NOTZONE, NXDOMAIN, YXDOMAIN, ...)."""
    if len(update.zone) != 1 or update.zone[0][1] != wire.TYPE_SOA:
        return wire.FORMERR, None, []
    name, _, zone_class = update.zone[0]
    zone = store.zones.get(name)
    if zone is None or zone_class != wire.CLASS_IN:
        return NOTAUTH, None, []
    rcode = _prerequisites(update.prerequisites, zone)
    if rcode != wire.NOERROR:
        return rcode, zone, []
    ops: list[Op] = []
    for rr in update.updates:
        if not _inside(rr.name, zone):
            return NOTZONE, zone, []
        if rr.rclass == wire.CLASS_IN:  # add to an RRset
            if rr.rtype in (wire.TYPE_SOA, wire.TYPE_NS):
                continue  # the zone's own: splitdns keeps them (ignored, as at the apex)
            if rr.rtype in NOT_ADDABLE:
                return wire.FORMERR, zone, []
            ops.append(("add", rr.name, rr.rtype, rr.ttl, rr.rdata))
        elif rr.ttl != 0:
            return wire.FORMERR, zone, []
        elif rr.rclass == CLASS_ANY:  # delete an RRset, or every RRset of a name
            if rr.rdata:
                return wire.FORMERR, zone, []
            kind = "del_name" if rr.rtype == 255 else "del_rrset"
            ops.append((kind, rr.name, rr.rtype, 0, b""))
        elif rr.rclass == CLASS_NONE:  # delete an RR from an RRset
            if rr.rtype not in (255, wire.TYPE_SOA, wire.TYPE_NS):
                ops.append(("del_rr", rr.name, rr.rtype, 0, rr.rdata))
        else:
            return wire.FORMERR, zone, []
    added = {n for kind, n, *_ in ops if kind == "add" and n not in zone.names}
    if len(zone.names) + len(added) > MAX_NAMES:  # a key holder cannot fill the memory
        return wire.REFUSED, zone, []
    return wire.NOERROR, zone, ops


def _prerequisites(section: list[RR], zone: Zone) -> int:
    """Section 3.2: NOERROR when every prerequisite holds, else the rcode of the first that
    does not."""
    wanted: dict[tuple[str, int], set[bytes]] = {}
    for rr in section:
        if not _inside(rr.name, zone):
            return NOTZONE
        if rr.ttl != 0:
            return wire.FORMERR
        owner = zone.owner(rr.name)
        present = owner.rrsets if owner is not None else {}
        if rr.rclass == CLASS_ANY:
            if rr.rdata:
                return wire.FORMERR
            if rr.rtype == 255:
                if not zone.exists(rr.name):
                    return wire.NXDOMAIN
            elif rr.rtype not in present:
                return NXRRSET
        elif rr.rclass == CLASS_NONE:
            if rr.rdata:
                return wire.FORMERR
            if rr.rtype == 255:
                if owner is not None:
                    return YXDOMAIN
            elif rr.rtype in present:
                return YXRRSET
        elif rr.rclass == wire.CLASS_IN:
            wanted.setdefault((rr.name, rr.rtype), set()).add(rr.rdata)
        else:
            return wire.FORMERR
    for (name, rtype), rdatas in wanted.items():  # value-dependent: the whole RRset, exactly
        owner = zone.owner(name)
        held = owner.rrsets.get(rtype) if owner is not None else None
        if held is None or set(held[1]) != rdatas:
            return NXRRSET
    return wire.NOERROR
