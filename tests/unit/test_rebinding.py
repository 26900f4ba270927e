"""The rebinding guard's pure parts: what counts as private, who is exempt, record removal."""

from __future__ import annotations

import ipaddress

import dns.message
import dns.rrset
import pytest

from splitdns import wire
from splitdns.answer.rebinding import Guard, is_private
from splitdns.config import model as config
from splitdns.config.model import ConfigError


@pytest.mark.parametrize(
    ("address", "private"),
    [
        ("10.1.2.3", True),
        ("172.16.0.1", True),
        ("172.32.0.1", False),
        ("192.168.1.1", True),
        ("127.0.0.1", True),
        ("169.254.1.1", True),
        ("100.64.0.1", True),
        ("0.0.0.0", True),
        ("198.51.100.7", False),
        ("203.0.113.1", False),
        ("::1", True),
        ("::", True),
        ("fd00::1", True),
        ("fe80::1", True),
        ("::ffff:192.168.1.1", True),
        ("::ffff:198.51.100.7", False),
        ("2001:db8::1", False),
    ],
)
def test_private_ranges(address: str, private: bool) -> None:
    assert is_private(ipaddress.ip_address(address).packed) is private


GUARDED = """\
upstreams:
  default: [198.51.100.1]
  domains:
    lan: [192.0.2.1]
rebinding_guard:
  allow: [home.example.test]
views:
  - name: lan
    clients: [192.0.2.0/24]
    hosts:
      nas.example.test: 192.0.2.20
    rewrite:
      - from: 203.0.113.1
        to: 192.0.2.2
        names: ["*.web.example.test"]
"""


def test_exempt_names() -> None:
    guard = Guard(config.loads(GUARDED, "t.yaml"))
    assert guard.enabled
    assert not guard.applies_to("printer.lan")  # routed to the LAN's own server
    assert not guard.applies_to("box.home.example.test")  # allow list
    assert not guard.applies_to("nas.example.test")  # a name the config owns
    assert not guard.applies_to("a.web.example.test")  # a rule's names
    assert guard.applies_to("evil.example.test")
    assert not Guard(config.loads("upstreams: [198.51.100.1]\n", "t.yaml")).enabled


def test_shorthand_and_errors() -> None:
    assert config.loads("rebinding_guard: true\n", "t.yaml").rebinding.enabled
    assert not config.loads("rebinding_guard: {enabled: false}\n", "t.yaml").rebinding.enabled
    with pytest.raises(ConfigError, match=r"t\.yaml:2: rebinding_guard\.allow\[0\]: '\*.x' is not"):
        config.loads("rebinding_guard:\n  allow: ['*.x']\n", "t.yaml")
    with pytest.raises(ConfigError, match=r"t\.yaml:1: rebinding_guard: must be true or false"):
        config.loads("rebinding_guard: maybe\n", "t.yaml")


def test_only_private_records_go() -> None:
    q = dns.message.make_query("evil.example.test", "A")
    r = dns.message.make_response(q)
    r.answer.append(dns.rrset.from_text("evil.example.test.", 60, "IN", "CNAME", "x.cdn.test."))
    r.answer.append(
        dns.rrset.from_text("x.cdn.test.", 60, "IN", "A", "192.168.1.1", "198.51.100.7", "10.9.9.9")
    )
    r.authority.append(dns.rrset.from_text("cdn.test.", 60, "IN", "NS", "ns.x.cdn.test."))
    data = r.to_wire()
    guard = Guard(config.loads("rebinding_guard: true\n", "t.yaml"))
    filtered = guard.filter(data, wire.walk(data))
    assert filtered is not None
    cleaned, removed = filtered
    assert removed == 2
    out = dns.message.from_wire(cleaned)
    assert [str(rr) for rrset in out.answer for rr in rrset] == ["x.cdn.test.", "198.51.100.7"]
    assert str(out.authority[0][0]) == "ns.x.cdn.test."
    clean = dns.message.make_response(q)
    clean.answer.append(dns.rrset.from_text("evil.example.test.", 60, "IN", "A", "198.51.100.7"))
    assert guard.filter(clean.to_wire(), wire.walk(clean.to_wire())) is None
