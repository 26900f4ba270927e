"""Rewrite semantics on crafted messages: every rule of the README pinned here."""

from __future__ import annotations

import ipaddress

import dns.flags
import dns.message
import dns.rrset

from splitdns import wire
from splitdns.answer import rewrite
from splitdns.config import model as config


def view(text: str) -> config.View:
    return config.loads(text, "t.yaml").views[0]


LAN = view(
    """
views:
  - name: lan
    clients: [192.168.1.0/24]
    rewrite:
      - {from: 203.0.113.1, to: 192.168.1.2}
      - {from: 203.0.113.1, to: 192.168.1.3, names: [mail.example.com]}
      - {from: 203.0.113.0/29, to: 192.168.1.64/29}
      - {from: 203.0.113.1, to: 192.168.1.4, names: ["*.svc.example.com"]}
      - {from: "2001:db8:1::/64", to: "fd00:1::/64"}
"""
)


def response(qname: str, *rrsets: tuple[str, str, int, str, list[str]], qtype: str = "A") -> bytes:
    """A response with (section, owner, ttl, type, [rdata...]) RRsets."""
    q = dns.message.make_query(qname, qtype)
    r = dns.message.make_response(q)
    sections = {"an": r.answer, "ns": r.authority, "ar": r.additional}
    for section, owner, ttl, rtype, rdatas in rrsets:
        sections[section].append(dns.rrset.from_text_list(owner, ttl, "IN", rtype, rdatas))
    return bytes(r.to_wire())


def parsed(data: bytes) -> dns.message.Message:
    return dns.message.from_wire(data)


def texts(msg: dns.message.Message, section: str = "answer") -> list[str]:
    return [rrset.to_text() for rrset in getattr(msg, section)]


def test_a_record_is_rewritten_and_nothing_else_changes() -> None:
    data = response("www.example.com.", ("an", "www.example.com.", 123, "A", ["203.0.113.1"]))
    out = rewrite.rewrite(data, "www.example.com", LAN)
    assert texts(parsed(out.data)) == ["www.example.com. 123 IN A 192.168.1.2"]
    assert len(out.data) == len(data)
    # Only the four address bytes differ.
    assert sum(a != b for a, b in zip(out.data, data, strict=True)) <= 4
    assert out.changes == (
        rewrite.Change(
            "www.example.com",
            ipaddress.ip_address("203.0.113.1"),
            ipaddress.ip_address("192.168.1.2"),
            0,
        ),
    )


def test_no_match_returns_the_same_bytes() -> None:
    data = response("x.example.com.", ("an", "x.example.com.", 60, "A", ["198.51.100.1"]))
    out = rewrite.rewrite(data, "x.example.com", LAN)
    assert out.data is data and out.changes == ()


def test_no_view_or_no_rules_is_untouched() -> None:
    data = response("x.example.com.", ("an", "x.example.com.", 60, "A", ["203.0.113.1"]))
    assert rewrite.rewrite(data, "x.example.com", None).data is data
    exempt = view("views:\n  - {name: acme, clients: [192.168.1.10/32]}\n")
    assert rewrite.rewrite(data, "x.example.com", exempt).data is data


def test_cname_chain_followed_and_order_kept() -> None:
    data = response(
        "www.example.com.",
        ("an", "www.example.com.", 300, "CNAME", ["example.com."]),
        ("an", "example.com.", 60, "A", ["203.0.113.1", "198.51.100.9"]),
    )
    out = rewrite.rewrite(data, "www.example.com", LAN).data
    before, after = wire.walk(data).records, wire.walk(out).records
    assert [(r.name, r.rtype, r.start) for r in before] == [
        (r.name, r.rtype, r.start) for r in after
    ]
    addresses = {
        data[r.rdata_offset : r.rdata_offset + 4]: out[r.rdata_offset : r.rdata_offset + 4]
        for r in before
        if r.rtype == wire.TYPE_A
    }
    assert addresses == {
        bytes([203, 0, 113, 1]): bytes([192, 168, 1, 2]),
        bytes([198, 51, 100, 9]): bytes([198, 51, 100, 9]),
    }
    assert texts(parsed(out))[0] == "www.example.com. 300 IN CNAME example.com."


def test_names_rule_matches_any_name_in_the_chain() -> None:
    # mail.example.com is a CNAME to a host whose own name is not listed: the rule still applies.
    data = response(
        "mail.example.com.",
        ("an", "mail.example.com.", 300, "CNAME", ["box.example.net."]),
        ("an", "box.example.net.", 300, "A", ["203.0.113.1"]),
    )
    out = parsed(rewrite.rewrite(data, "mail.example.com", LAN).data)
    assert "192.168.1.3" in texts(out)[1]
    # And the CNAME target being listed is enough too.
    data2 = response(
        "alias.example.org.",
        ("an", "alias.example.org.", 300, "CNAME", ["mail.example.com."]),
        ("an", "mail.example.com.", 300, "A", ["203.0.113.1"]),
    )
    assert "192.168.1.3" in texts(parsed(rewrite.rewrite(data2, "alias.example.org", LAN).data))[1]


def test_wildcard_names_rule() -> None:
    data = response("a.svc.example.com.", ("an", "a.svc.example.com.", 5, "A", ["203.0.113.1"]))
    assert "192.168.1.4" in texts(parsed(rewrite.rewrite(data, "a.svc.example.com", LAN).data))[0]
    bare = response("svc.example.com.", ("an", "svc.example.com.", 5, "A", ["203.0.113.1"]))
    assert "192.168.1.2" in texts(parsed(rewrite.rewrite(bare, "svc.example.com", LAN).data))[0]


def test_longest_prefix_wins_then_cidr_maps_one_to_one() -> None:
    data = response(
        "n.example.com.", ("an", "n.example.com.", 5, "A", ["203.0.113.1", "203.0.113.7"])
    )
    out = texts(parsed(rewrite.rewrite(data, "n.example.com", LAN).data))[0]
    assert "192.168.1.2" in out and "192.168.1.71" in out


def test_aaaa_rewritten_by_ipv6_rules_only() -> None:
    data = response(
        "v6.example.com.",
        ("an", "v6.example.com.", 5, "AAAA", ["2001:db8:1::abcd", "2001:db8:2::1"]),
        qtype="AAAA",
    )
    out = texts(parsed(rewrite.rewrite(data, "v6.example.com", LAN).data))[0]
    assert "fd00:1::abcd" in out and "2001:db8:2::1" in out


def test_additional_rewritten_authority_untouched() -> None:
    data = response(
        "example.com.",
        ("an", "example.com.", 5, "MX", ["10 mx.example.com."]),
        ("ns", "example.com.", 5, "NS", ["ns.example.com."]),
        ("ns", "ns.example.com.", 5, "A", ["203.0.113.1"]),
        ("ar", "mx.example.com.", 5, "A", ["203.0.113.1"]),
        qtype="MX",
    )
    out = parsed(rewrite.rewrite(data, "example.com", LAN).data)
    assert texts(out, "additional") == ["mx.example.com. 5 IN A 192.168.1.2"]
    assert "203.0.113.1" in texts(out, "authority")[1]


def test_rrsigs_of_rewritten_sets_removed_and_ad_cleared() -> None:
    sig = "A 13 3 300 20300101000000 20200101000000 12345 example.com. AAAA"
    other_sig = "TXT 13 3 300 20300101000000 20200101000000 12345 example.com. AAAA"
    q = dns.message.make_query("www.example.com.", "A", want_dnssec=True)
    r = dns.message.make_response(q)
    r.flags |= dns.flags.AD
    r.answer.append(dns.rrset.from_text("www.example.com.", 300, "IN", "A", "203.0.113.1"))
    r.answer.append(dns.rrset.from_text("www.example.com.", 300, "IN", "RRSIG", sig))
    r.answer.append(dns.rrset.from_text("www.example.com.", 300, "IN", "TXT", '"x"'))
    r.answer.append(dns.rrset.from_text("www.example.com.", 300, "IN", "RRSIG", other_sig))
    r.use_edns(False)
    out = parsed(rewrite.rewrite(bytes(r.to_wire()), "www.example.com", LAN).data)
    assert not out.flags & dns.flags.AD
    kinds = [(rrset.rdtype, rrset.covers) for rrset in out.answer]
    assert (46, 1) not in kinds  # the RRSIG over the rewritten A is gone
    assert (46, 16) in kinds  # the one over TXT stays
    assert "192.168.1.2" in out.answer[0].to_text()


def test_ad_kept_when_nothing_rewritten() -> None:
    q = dns.message.make_query("x.example.com.", "A")
    r = dns.message.make_response(q)
    r.flags |= dns.flags.AD
    r.answer.append(dns.rrset.from_text("x.example.com.", 300, "IN", "A", "198.51.100.1"))
    out = parsed(rewrite.rewrite(bytes(r.to_wire()), "x.example.com", LAN).data)
    assert out.flags & dns.flags.AD


def test_specificity_order() -> None:
    order = [r.index for r in rewrite.ordered_rules(LAN) if r.source.version == 4]
    assert order == [1, 3, 0, 2]


def test_malformed_answer_raises_wire_error() -> None:
    data = response("www.example.com.", ("an", "www.example.com.", 5, "A", ["203.0.113.1"]))
    try:
        rewrite.rewrite(data[:-3], "www.example.com", LAN)
    except wire.WireError:
        return
    raise AssertionError("a truncated record must raise WireError")


HTTPS_RDATA = '1 . alpn="h2,h3" ipv4hint="203.0.113.1" ipv6hint="2001:db8:ff::1" key65000="abc"'


def test_https_hints_rewritten_with_the_rrsig_over_them_removed_and_ad_cleared() -> None:
    sig = "HTTPS 13 3 300 20300101000000 20200101000000 12345 example.com. AAAA"
    q = dns.message.make_query("www.example.com.", "HTTPS", want_dnssec=True)
    r = dns.message.make_response(q)
    r.flags |= dns.flags.AD
    r.answer.append(dns.rrset.from_text("www.example.com.", 300, "IN", "HTTPS", HTTPS_RDATA))
    r.answer.append(dns.rrset.from_text("www.example.com.", 300, "IN", "RRSIG", sig))
    r.use_edns(False)
    result = rewrite.rewrite(bytes(r.to_wire()), "www.example.com", LAN)
    out = parsed(result.data)
    assert not out.flags & dns.flags.AD
    assert [rrset.rdtype for rrset in out.answer] == [65]
    # 2001:db8:ff::1 is outside every IPv6 rule: it stays (only `aaaa: drop` removes it).
    assert out.answer[0][0].to_text() == (
        '1 . alpn="h2,h3" ipv4hint="192.168.1.2" ipv6hint="2001:db8:ff::1" key65000="abc"'
    )
    assert [(c.field, str(c.old), str(c.new)) for c in result.changes] == [
        ("ipv4hint", "203.0.113.1", "192.168.1.2")
    ]


def test_https_hints_of_a_v6_rule_and_names_through_the_target() -> None:
    data = response(
        "www.example.com",
        ("an", "www.example.com.", 300, "HTTPS",
         ['1 api.svc.example.com. ipv4hint="203.0.113.1" ipv6hint="2001:db8:1::5"']),
        qtype="HTTPS",
    )  # fmt: skip
    out = parsed(rewrite.rewrite(data, "www.example.com", LAN).data)
    # api.svc.example.com (the TargetName) matches the `*.svc.example.com` rule.
    assert out.answer[0][0].to_text() == (
        '1 api.svc.example.com. ipv4hint="192.168.1.4" ipv6hint="fd00:1::5"'
    )


def test_https_keep_leaves_hints_alone() -> None:
    keep = view(
        """
views:
  - name: lan
    clients: [192.168.1.0/24]
    https: keep
    rewrite: [{from: 203.0.113.1, to: 192.168.1.2}]
"""
    )
    data = response(
        "www.example.com", ("an", "www.example.com.", 300, "HTTPS", [HTTPS_RDATA]), qtype="HTTPS"
    )
    assert rewrite.rewrite(data, "www.example.com", keep).data == data


def test_removing_public_ipv6_hints_keeps_the_rest_and_mandatory_consistent() -> None:
    from splitdns.answer import svcb

    rdatas = [
        HTTPS_RDATA,
        '2 . mandatory="ipv6hint" ipv6hint="2001:db8:ff::2"',
        '3 . ipv6hint="2001:db8:ff::3,fd00:1::3"',
    ]
    data = response(
        "www.example.com", ("an", "www.example.com.", 300, "HTTPS", rdatas), qtype="HTTPS"
    )
    inside = ipaddress.ip_network("fd00:1::/64")
    out, removed, changed = svcb.remove_v6_hints(data, lambda a: a not in inside)
    assert sorted(str(a) for _, a in removed) == [
        "2001:db8:ff::1",
        "2001:db8:ff::2",
        "2001:db8:ff::3",
    ]
    assert changed == {(wire.ANSWER, "www.example.com", 65)}
    assert sorted(r.to_text() for r in parsed(out).answer[0]) == [
        '1 . alpn="h2,h3" ipv4hint="203.0.113.1" key65000="abc"',
        "2 .",
        '3 . ipv6hint="fd00:1::3"',
    ]


def test_malformed_svc_params_are_refused_by_the_walk() -> None:
    good = response(
        "www.example.com", ("an", "www.example.com.", 300, "HTTPS", [HTTPS_RDATA]), qtype="HTTPS"
    )
    at = good.index(bytes([0, 4, 0, 4]))  # ipv4hint, length 4
    bad = bytearray(good)
    bad[at + 3] = 3  # a hint 3 octets long: the rest of the params are now misaligned
    try:
        wire.walk(bytes(bad))
    except wire.WireError:
        return
    raise AssertionError("a malformed ipv4hint passed the walk")
