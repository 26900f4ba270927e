"""RFC 2136 UPDATE: the zone, the prerequisites and the changes of one message, judged.

Pure: it reads the store and returns the rcode and the operations to apply, never applies
them (serve/updates.py journals and applies them, in order, one update at a time). The
prerequisites are section 2.4's (and so RFC 4703's conflict resolution as kea-dhcp-ddns
sends it, with DHCID): name in use, name not in use, RRset exists (value-independent and
value-dependent), RRset does not exist.
"""

from __future__ import annotations

import dns.message
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from splitdns import wire
from splitdns.dynamic.store import Op, Store, Zone

ANY = dns.rdataclass.ANY
NONE = dns.rdataclass.NONE
NOTAUTH = 9
NOTZONE = 10
YXDOMAIN = 6
YXRRSET = 7
NXRRSET = 8
#: types an update may not add (RFC 2136 section 3.4.1.2), and the ones splitdns keeps itself
MAX_NAMES = 65536  # names an update may make in one zone (a LAN has a few hundred)
NOT_ADDABLE = frozenset({255, 252, 251, 253, 254, wire.TYPE_SOA, wire.TYPE_NS, 250, 41})


def _name(rrset: dns.rrset.RRset) -> str:
    return rrset.name.to_text(omit_final_dot=True).lower()


def _inside(name: str, zone: Zone) -> bool:
    return name == zone.name or name.endswith("." + zone.name)


def judge(msg: dns.message.Message, store: Store) -> tuple[int, Zone | None, list[Op]]:
    """(rcode, zone, operations) for an UPDATE message: NOERROR with the operations to apply,
    or the rcode that refuses it (FORMERR, NOTAUTH, NOTZONE, NXDOMAIN, YXDOMAIN, ...)."""
    zones = msg.sections[0]
    if len(zones) != 1 or zones[0].rdtype != dns.rdatatype.SOA:
        return wire.FORMERR, None, []
    zone = store.zones.get(_name(zones[0]))
    if zone is None or zones[0].rdclass != dns.rdataclass.IN:
        return NOTAUTH, None, []
    rcode = _prerequisites(msg.sections[1], zone)
    if rcode != wire.NOERROR:
        return rcode, zone, []
    ops: list[Op] = []
    for rrset in msg.sections[2]:
        name, rtype = _name(rrset), int(rrset.rdtype)
        if not _inside(name, zone):
            return NOTZONE, zone, []
        if rrset.deleting is None:  # add to an RRset
            if rrset.rdclass != dns.rdataclass.IN or rtype in NOT_ADDABLE:
                if rtype in (wire.TYPE_SOA, wire.TYPE_NS):
                    continue  # the zone's own: splitdns keeps them (ignored, as at the apex)
                return wire.FORMERR, zone, []
            ops += [("add", name, rtype, int(rrset.ttl), rd.to_wire()) for rd in rrset]
        elif rrset.ttl != 0:
            return wire.FORMERR, zone, []
        elif rrset.deleting == ANY:  # delete an RRset, or every RRset of a name
            if len(rrset):
                return wire.FORMERR, zone, []
            kind = "del_name" if rtype == 255 else "del_rrset"
            ops.append((kind, name, rtype, 0, b""))
        elif rrset.deleting == NONE:  # delete RRs from an RRset
            if rtype in (255, wire.TYPE_SOA, wire.TYPE_NS):
                continue
            ops += [("del_rr", name, rtype, 0, rd.to_wire()) for rd in rrset]
        else:
            return wire.FORMERR, zone, []
    added = {name for kind, name, *_ in ops if kind == "add" and name not in zone.names}
    if len(zone.names) + len(added) > MAX_NAMES:  # a key holder cannot fill the memory
        return wire.REFUSED, zone, []
    return wire.NOERROR, zone, ops


def _prerequisites(section: list[dns.rrset.RRset], zone: Zone) -> int:
    """Section 3.2: NOERROR when every prerequisite holds, else the rcode of the first that
    does not."""
    wanted: dict[tuple[str, int], set[bytes]] = {}
    for rrset in section:
        name, rtype = _name(rrset), int(rrset.rdtype)
        if not _inside(name, zone):
            return NOTZONE
        if rrset.ttl != 0:
            return wire.FORMERR
        owner = zone.owner(name)
        present = owner.rrsets if owner is not None else {}
        if rrset.deleting == ANY:
            if len(rrset):
                return wire.FORMERR
            if rtype == 255:
                if not zone.exists(name):
                    return wire.NXDOMAIN
            elif rtype not in present:
                return NXRRSET
        elif rrset.deleting == NONE:
            if len(rrset):
                return wire.FORMERR
            if rtype == 255:
                if owner is not None:
                    return YXDOMAIN
            elif rtype in present:
                return YXRRSET
        elif rrset.deleting is None and rrset.rdclass == dns.rdataclass.IN:
            wanted.setdefault((name, rtype), set()).update(rd.to_wire() for rd in rrset)
        else:
            return wire.FORMERR
    for (name, rtype), rdatas in wanted.items():  # value-dependent: the whole RRset, exactly
        owner = zone.owner(name)
        held = owner.rrsets.get(rtype) if owner is not None else None
        if held is None or set(held[1]) != rdatas:
            return NXRRSET
    return wire.NOERROR
