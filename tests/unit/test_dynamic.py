"""The dynamic zones' pure parts: the store and its journal, lease files, the `dynamic:` section,
and RFC 2136's judgement."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import dns.message
import dns.update
import pytest

from splitdns import wire
from splitdns.config import model as config
from splitdns.config.tree import ConfigError
from splitdns.dynamic import leases
from splitdns.dynamic.message import parse
from splitdns.dynamic.store import Store, StoreError
from splitdns.dynamic.update import NOTAUTH, NOTZONE, YXDOMAIN, judge

ZONE = "lan.test"
A = wire.TYPE_A


def add(store: Store, name: str, address: str) -> None:
    zone = store.zones[ZONE]
    store.commit(zone, [("add", name, A, 300, ipaddress.ip_address(address).packed)], "test")


def test_a_torn_last_journal_line_is_dropped_and_the_rest_kept(tmp_path: Path) -> None:
    store = Store((ZONE,), tmp_path)
    add(store, f"a.{ZONE}", "192.0.2.1")
    add(store, f"b.{ZONE}", "192.0.2.2")
    store.close()
    journal = tmp_path / "journal.jsonl"
    journal.write_bytes(journal.read_bytes() + b'{"zone":"lan.test","serial":9')  # cut mid-line
    again = Store((ZONE,), tmp_path)
    assert again.answer(f"b.{ZONE}", A)[2] == [(A, 300, bytes([192, 0, 2, 2]))]  # type: ignore[index]
    lines = journal.read_bytes().split(b"\n")
    journal.write_bytes(b"\n".join([lines[0], b"not json", lines[1]]))  # damage mid-file
    with pytest.raises(StoreError, match=r"journal\.jsonl:2"):
        Store((ZONE,), tmp_path)


def test_a_snapshot_and_the_journal_after_it_apply_each_update_once(tmp_path: Path) -> None:
    store = Store((ZONE,), tmp_path)
    add(store, f"a.{ZONE}", "192.0.2.1")
    journal_before = (tmp_path / "journal.jsonl").read_bytes()
    store.snapshot()  # a crash right after the rename, before the journal is emptied:
    (tmp_path / "journal.jsonl").write_bytes(journal_before)
    zone = store.zones[ZONE]
    store.commit(zone, [("del_rr", f"a.{ZONE}", A, 0, bytes([192, 0, 2, 1]))], "test")
    add(store, f"a.{ZONE}", "192.0.2.9")
    store.close()
    again = Store((ZONE,), tmp_path)
    found = again.answer(f"a.{ZONE}", A)
    assert found is not None and found[2] == [(A, 300, bytes([192, 0, 2, 9]))]
    assert again.zones[ZONE].serial == zone.serial


def test_negative_answers_and_the_apex() -> None:
    store = Store((ZONE,), None)
    add(store, f"a.{ZONE}", "192.0.2.1")
    assert store.answer("elsewhere.test", A) is None
    assert store.answer(f"nope.{ZONE}", A)[1] == wire.NXDOMAIN  # type: ignore[index]
    assert store.answer(f"a.{ZONE}", wire.TYPE_AAAA)[1:] == (wire.NOERROR, [])  # type: ignore[index]
    soa = store.answer(ZONE, wire.TYPE_SOA)
    assert soa is not None and soa[2][0][0] == wire.TYPE_SOA


def test_lease_names_are_one_safe_label_and_the_holder_keeps_its_name() -> None:
    text = (
        "2000000000 aa:00:00:00:00:01 192.0.2.31 Printer *\n"
        "2000000000 aa:00:00:00:00:02 192.0.2.32 a.b *\n"
        "2000000000 aa:00:00:00:00:03 192.0.2.33 *.evil *\n"
        "2000000000 aa:00:00:00:00:04 192.0.2.34 -dash *\n"
        "100 aa:00:00:00:00:05 192.0.2.35 old *\n"
        "0 aa:00:00:00:00:06 192.0.2.36 forever *\n"
        "2000000000 aa:00:00:00:00:07 192.0.2.37 printer *\n"
        "duid 00:01:00:01\n"
        "2000000000 1234 2001:db8::36 forever 00:01\n"
    )
    found = leases.read_dnsmasq(text, now=1_000_000_000)
    assert [(x.name, str(x.address)) for x in found] == [
        ("printer", "192.0.2.31"), ("forever", "192.0.2.36"), ("printer", "192.0.2.37"),
        ("forever", "2001:db8::36"),
    ]  # fmt: skip
    first = leases.assign(found, {})
    assert [str(x.address) for x in first["printer"]] == ["192.0.2.31"]
    # the second device held the name before: it keeps it
    kept = leases.assign(found, {"printer": "aa:00:00:00:00:07"})
    assert [str(x.address) for x in kept["printer"]] == ["192.0.2.37"]
    assert leases.clean_label("x" * 64) is None and leases.clean_label("ok-1") == "ok-1"


def keys(tmp_path: Path, mode: int = 0o600, text: str | None = None) -> Path:
    path = tmp_path / "k.key"
    path.write_text(
        text or 'key "k" {\n algorithm hmac-sha256;\n secret "c2VjcmV0c2VjcmV0c2VjcmV0MTI=";\n};\n'
    )
    path.chmod(mode)
    return path


def load(tmp_path: Path, section: str) -> config.Config:
    return config.loads(
        "views:\n  - name: lan\n    clients: [192.0.2.0/24]\ndynamic:\n" + section, "m.yaml"
    )


def test_the_section_names_file_line_and_key(tmp_path: Path) -> None:
    good = load(tmp_path, f"  zones: [lan.test]\n  keys_file: {keys(tmp_path)}\n")
    assert good.dynamic is not None and good.dynamic.keys[0].name == "k"
    cases = [
        (f"  zones: [lan.test]\n  keys_file: {keys(tmp_path, 0o644)}\n", "readable by others"),
        ("  zones: [lan.test]\n  keys_file: /nonexistent/k.key\n", "No such file"),
        ("  keys_file: x\n", "needs 'zones'"),
        ("  zones: [lan.test]\n  views: [guests]\n", "no view named 'guests'"),
        ("  zones: [lan.test, lan.test]\n", "listed twice"),
        ("  zones: ['bad zone']\n", "letters, digits"),
        ("  zones: [lan.test]\n  leases: [{file: /x, zone: other.test}]\n", "not one of"),
    ]
    for section, message in cases:
        with pytest.raises(ConfigError) as caught:
            load(tmp_path, section)
        assert message in str(caught.value) and "m.yaml:" in str(caught.value), caught.value
    bad = keys(tmp_path, text='key "k" { algorithm hmac-sha256; secret "short"; };\n')
    with pytest.raises(ConfigError, match=r"not base64|too short"):
        load(tmp_path, f"  zones: [lan.test]\n  keys_file: {bad}\n")


def test_judge_refuses_other_zones_names_outside_and_a_taken_name() -> None:
    store = Store((ZONE,), None)
    add(store, f"a.{ZONE}", "192.0.2.1")
    other = dns.update.UpdateMessage("other.test")
    other.add("x", 300, "A", "192.0.2.5")
    assert judge(parse(other.to_wire()), store)[0] == NOTAUTH
    outside = dns.update.UpdateMessage(ZONE)
    outside.add("x.elsewhere.test.", 300, "A", "192.0.2.5")
    assert judge(parse(outside.to_wire()), store)[0] == NOTZONE
    taken = dns.update.UpdateMessage(ZONE)
    taken.absent("a")
    taken.add("a", 300, "A", "192.0.2.6")
    assert judge(parse(taken.to_wire()), store)[0] == YXDOMAIN
    fine = dns.update.UpdateMessage(ZONE)
    fine.present("a")
    fine.replace("a", 300, "A", "192.0.2.7")
    rcode, _, ops = judge(parse(fine.to_wire()), store)
    assert rcode == wire.NOERROR and [k for k, *_ in ops] == ["del_rrset", "add"]


def test_check_warns_where_the_mapping_and_the_dynamic_zones_meet(tmp_path: Path) -> None:
    from splitdns.config.crosscheck import cross_check

    loaded = config.loads(
        "views:\n  - name: lan\n    clients: [192.0.2.0/24]\n"
        "    hosts: {nas.lan.home.arpa: 192.0.2.5}\n"
        "dynamic:\n  zones: [lan.home.arpa, corp.example.com]\n",
        "m.yaml",
    )
    said = cross_check(loaded)
    assert any("nas.lan.home.arpa is inside dynamic zone lan.home.arpa" in w for w in said)
    assert any("every RFC 2136 update is refused" in w for w in said)
    assert any("corp.example.com may also exist in public DNS" in w for w in said)
    assert not any("lan.home.arpa may also" in w for w in said)


def test_kea_memfile_csv_last_line_wins_and_released_ones_are_gone() -> None:
    v4 = (
        "address,hwaddr,client_id,valid_lifetime,expire,subnet_id,fqdn_fwd,fqdn_rev,hostname,"
        "state,user_context,pool_id\n"
        "192.0.2.10,02:00:00:00:00:01,,600,2000000000,1,1,1,laptop.lan.test.,0,,0\n"
        "192.0.2.11,02:00:00:00:00:02,,600,2000000000,1,1,1,nas.lan.test.,0,,0\n"
        "192.0.2.11,02:00:00:00:00:02,,0,2000000000,1,1,1,nas.lan.test.,0,,0\n"  # released
        "192.0.2.12,02:00:00:00:00:03,,600,2000000000,1,1,1,bad_name.lan.test.,0,,0\n"
        "192.0.2.13,02:00:00:00:00:04,,600,2000000000,1,1,1,tv.lan.test.,1,,0\n"  # declined
        "192.0.2.14,02:00:00:00:00:05,,600,100,1,1,1,old.lan.test.,0,,0\n"
    )
    found = leases.read_kea_csv(v4, now=1_000_000_000)
    assert [(x.name, str(x.address), x.client) for x in found] == [
        ("laptop", "192.0.2.10", "02:00:00:00:00:01")
    ]
    v6 = (
        "address,duid,valid_lifetime,expire,subnet_id,pref_lifetime,lease_type,iaid,prefix_len,"
        "fqdn_fwd,fqdn_rev,hostname,hwaddr,state,user_context,hwtype,hwaddr_source,pool_id\n"
        "2001:db8::10,00:01:00:01:aa,600,2000000000,1,300,0,1,128,1,1,phone.lan.test.,,0,,,,0\n"
    )
    (phone,) = leases.read_kea_csv(v6, now=1_000_000_000)
    assert (phone.name, str(phone.address), phone.client) == (
        "phone",
        "2001:db8::10",
        "00:01:00:01:aa",
    )


def test_isc_dhcpd_leases_active_ones_by_client_hostname() -> None:
    text = """
lease 192.0.2.20 {
  starts 1 2026/12/07 10:00:00;
  ends 1 2033/05/18 03:33:20;
  binding state active;
  hardware ethernet 02:00:00:00:00:20;
  client-hostname "Desktop";
}
lease 192.0.2.21 {
  ends 1 2033/05/18 03:33:20;
  binding state free;
  client-hostname "freed";
}
lease 192.0.2.22 {
  ends 1 2001/01/01 00:00:00;
  binding state active;
  client-hostname "expired";
}
lease 192.0.2.23 {
  ends 1 2033/05/18 03:33:20;
  binding state active;
  client-hostname "two.labels";
}
"""
    found = leases.read_dhcpd(text, now=1_800_000_000)
    assert [(x.name, str(x.address), x.client) for x in found] == [
        ("desktop", "192.0.2.20", "02:00:00:00:00:20")
    ]


def test_a_request_whose_id_differs_from_its_tsig_original_id_is_answered_verifiably() -> None:
    """kea-dhcp-ddns sends a header ID other than the TSIG's original ID; the answer's MAC
    must cover the original one (found by the Kea lab: D2 called the answer corrupt)."""
    import asyncio
    import struct

    import dns.name
    import dns.tsig

    from splitdns.config.dynamic import DynamicSettings, TsigKey
    from splitdns.serve.updates import Updates

    key = TsigKey("ddns-key", "hmac-sha256", b"splitdns-unit-key-32-bytes-long!")
    ring = {dns.name.from_text("ddns-key"): dns.tsig.Key("ddns-key", key.secret, "hmac-sha256")}
    update = dns.update.UpdateMessage(ZONE, keyring=ring, keyname="ddns-key")
    update.add(f"laptop.{ZONE}.", 300, "A", "192.0.2.10")
    data = bytearray(update.to_wire())
    struct.pack_into("!H", data, 0, (update.id + 1) & 0xFFFF)  # the header's ID changed
    settings = DynamicSettings(zones=(ZONE,), keys=(key,))
    updates = Updates(settings, Store(settings.zones, None))
    reply = asyncio.run(updates.handle(bytes(data), ipaddress.ip_address("127.0.0.1"), "udp"))
    assert reply is not None
    checked = dns.message.from_wire(reply, keyring=ring, request_mac=update.mac)
    assert checked.rcode() == 0 and checked.id == (update.id + 1) & 0xFFFF
