"""Coverage-guided fuzzing with atheris (libFuzzer), three harnesses and one per import format.

    .venv/bin/python -m tests.fuzz.coverage query|reply|differential [libFuzzer flags] [DIR...]

- query: client bytes -> wire.peek / wire.parse_query; peek may only accept what the parser
  accepts, and must agree with it on the ID and the question's end.
- reply: upstream reply bytes -> walk -> strip OPT -> forwarder flags -> rewrite for a LAN view
  -> cache store -> aged hit (0 s and 1000 s later) -> the bytes a client gets. Those bytes
  must parse with dnspython, say the same at every age but for TTLs, and hold no address a rule
  rewrites (in A, AAAA, ipv4hint, ipv6hint) in the answer or additional section.
- differential: whatever wire.walk accepts, dnspython parses, with the same records.
- http2: a DoH client's bytes fed to the HTTP/2 session (listen/h2session.py) in two reads:
  nothing may raise or be written after the close; held body bytes are all given back.
- update: an RFC 2136 UPDATE, signed with the harness's TSIG key or not, from an allowed
  sender: judged against a zone with names, answered. Nothing may raise; every answer parses
  with dnspython; the zone changes only on NOERROR.
- import-FORMAT: a file of that format for `splitdns import` (AdGuard, Pi-hole, dnsmasq,
  Unbound, Technitium, CoreDNS, Blocky, hosts): only ImportError_ may stop it, and the mapping
  it makes loads.

A failure raises and libFuzzer writes the input as crash-*; keep it in tests/fuzz/corpus/
as a regression (replayed by test_fuzz.py). tests/fuzz/test_coverage_guided.py runs each
harness briefly in CI; tests/fuzz/README.md has the long run's figures.
"""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Callable

import atheris

with atheris.instrument_imports():
    import asyncio

    import dns.message
    import dns.name
    import dns.rdata
    import dns.rdataclass
    import dns.rdatatype

    from splitdns import wire
    from splitdns.answer import rewrite
    from splitdns.answer.cache import Cache
    from splitdns.answer.svcb import TYPES as SVCB_TYPES
    from splitdns.config import model as config
    from splitdns.config.dynamic import DynamicSettings, TsigKey
    from splitdns.dynamic.store import Store
    from splitdns.limits.connections import Connection
    from splitdns.listen.doh import DohApp
    from splitdns.listen.h2session import H2Session
    from splitdns.migrate import render, sources, translate
    from splitdns.migrate.entries import ImportError_
    from splitdns.serve.updates import Updates
    from splitdns.upstream import packets

LAN_TEXT = """
views:
  - name: lan
    clients: [192.0.2.0/24]
    rewrite:
      - {from: 203.0.113.0/24, to: 192.0.2.0/24}
      - {from: "2001:db8:1::/64", to: "fd00:1::/64"}
"""
LAN = config.loads(LAN_TEXT, "fuzz.yaml").views[0]
PUBLIC = [ipaddress.ip_network("203.0.113.0/24"), ipaddress.ip_network("2001:db8:1::/64")]


def fuzz_query(data: bytes) -> None:
    peeked = wire.peek(data)
    try:
        query = wire.parse_query(data)
    except wire.WireError:
        assert peeked is None, "peek accepted what the parser refuses"
        return
    if peeked is not None:
        msg_id, _flags, _name_end, qend, *_ = peeked
        assert msg_id == query.msg_id
        assert qend == 12 + len(query.question.wire)


def _public_left(message: dns.message.Message) -> list[str]:
    left = []
    for rrset in [*message.answer, *message.additional]:
        for rdata in rrset:
            if rrset.rdclass != dns.rdataclass.IN:
                continue
            if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                addresses = [ipaddress.ip_address(rdata.address)]
            elif int(rrset.rdtype) in SVCB_TYPES:
                addresses = [
                    ipaddress.ip_address(a)
                    for key, param in rdata.params.items()
                    if int(key) in (4, 6)
                    for a in param.addresses
                ]
            else:
                continue
            left += [str(a) for a in addresses if any(a in net for net in PUBLIC)]
    return left


def _shape(message: dns.message.Message) -> list[tuple[str, int, int, list[str]]]:
    return [
        (r.name.to_text().lower(), int(r.rdtype), int(r.rdclass), sorted(x.to_text() for x in r))
        for section in (message.answer, message.authority, message.additional)
        for r in section
    ]


def fuzz_reply(data: bytes) -> None:
    try:
        message = wire.walk(data)
    except wire.WireError:
        return
    if len(message.questions) != 1:
        return
    question = message.questions[0]
    try:
        query = wire.parse_query(wire.make_query(question.name, question.qtype))
    except (wire.WireError, ValueError):
        return  # a name make_query cannot spell (it takes text): not a reply we could match
    if not packets.reply_matches(message, message.msg_id, query):
        return
    bare, walked = wire.strip_opt(data, message)
    bare = wire.as_forwarder(bare)
    result = rewrite.rewrite(bare, question.name, LAN, walked)
    cache = Cache(config.CacheSettings())
    key = ("lan", question.wire[:-4].lower(), question.wire[-4:], False, False)
    entry = cache.put(key, result.data, "rewritten", 0.0)
    outs = [result.data] if entry is None else [entry.aged(0.0), entry.aged(1000.0)]
    shapes = []
    for out in outs:
        final = wire.finalize(query, out, None)
        parsed = dns.message.from_wire(final)  # raises: a client could not read it
        left = _public_left(parsed)
        assert not left, f"public address left for the LAN view: {left}"
        shapes.append([(n, t, c, d) for n, t, c, d in _shape(parsed)])
    if len(shapes) == 2:  # aging changes TTLs and nothing else
        assert shapes[0] == shapes[1], "the answer changed as its cache entry aged"


def fuzz_differential(data: bytes) -> None:
    try:
        message = wire.walk(data)
    except wire.WireError:
        return
    # (a TSIG is data here, not checked; EDNS options are not records, and splitdns drops an
    # upstream's: blanked, as wire.strip_opt blanks them, since dnspython refuses some)
    parsed = dns.message.from_wire(wire.blank_options(data, message), keyring=False)
    ours = set()
    for record in message.records:
        if record.rtype in (wire.TYPE_OPT, wire.TYPE_TSIG):
            continue
        rdata = dns.rdata.from_wire(
            record.rclass, record.rtype, data, record.rdata_offset, record.rdlength
        )
        owner = dns.name.from_wire(data, record.start)[0].to_text(omit_final_dot=True).lower()
        ours.add((record.section, owner, record.rtype, record.rclass, rdata.to_text()))
    theirs = {
        (section, r.name.to_text(omit_final_dot=True).lower(), int(r.rdtype), int(r.rdclass),
         rdata.to_text())
        for section, rrsets in ((1, parsed.answer), (2, parsed.authority), (3, parsed.additional))
        for r in rrsets
        for rdata in r
    }  # fmt: skip
    assert ours == theirs, f"walk {sorted(ours - theirs)} vs dnspython {sorted(theirs - ours)}"


LAN_NETS = (ipaddress.ip_network("192.168.0.0/16"),)


def fuzz_import(fmt: str) -> Callable[[bytes], None]:
    """A file of `fmt` for `splitdns import`: read, planned offline, rendered. Anything it
    cannot take must be an ImportError_ (one line for the user), never another exception,
    and the mapping it makes must load."""

    def fuzz(data: bytes) -> None:
        text = data.decode("utf-8", "replace")
        try:
            source = sources.parse_text("fuzz", text, fmt)
        except ImportError_:
            return
        plan = translate.plan(source, LAN_NETS, None)
        config.loads(render.mapping(plan, [], "2026-01-01"), "import.yaml")
        render.report(plan)

    return fuzz


UPDATE_ZONE = "lan.home.test"
UPDATE_KEY = TsigKey("ddns-key", "hmac-sha256", b"splitdns-fuzz-key-32-bytes-long!")
_LOOP = asyncio.new_event_loop()


def update_seeds() -> list[bytes]:
    """Valid UPDATEs to start from: signed and not, adds, deletes, prerequisites."""
    import dns.tsig
    import dns.update

    ring = {dns.name.from_text("ddns-key"): dns.tsig.Key("ddns-key", UPDATE_KEY.secret)}
    made = []
    for signed in (True, False):
        kw = {"keyring": ring, "keyname": "ddns-key"} if signed else {}
        u = dns.update.UpdateMessage(UPDATE_ZONE, **kw)  # type: ignore[arg-type]
        u.absent("laptop")
        u.add("laptop", 300, "A", "192.0.2.10")
        u.add("laptop", 300, "DHCID", "AAIBY2/AuCccgoJbsaxcQc9TUapptP69lOjxfNuVAA2kjEA=")
        made.append(u.to_wire())
        u = dns.update.UpdateMessage(UPDATE_ZONE, **kw)  # type: ignore[arg-type]
        u.present("nas", "A")
        u.delete("nas", "A", "192.0.2.5")
        u.delete("old")
        made.append(u.to_wire())
    return made


def fuzz_update(data: bytes) -> None:
    """An UPDATE from an allowed sender, judged and answered against a fresh zone."""
    settings = DynamicSettings(zones=(UPDATE_ZONE,), keys=(UPDATE_KEY,))
    store = Store(settings.zones, None)
    store.commit(
        store.zones[UPDATE_ZONE],
        [("add", f"nas.{UPDATE_ZONE}", 1, 300, b"\xc0\x00\x02\x05")],
        "seed",
    )
    serial = store.zones[UPDATE_ZONE].serial
    updates = Updates(settings, store)
    client = ipaddress.ip_address("127.0.0.1")
    if len(data) > 3:  # the server hands only UPDATEs (opcode 5) here
        data = data[:2] + bytes([(data[2] & 0x87) | 0x28]) + data[3:]
    reply = _LOOP.run_until_complete(updates.handle(data, client, "udp"))
    if reply is None:
        assert len(data) < wire.HEADER_LEN
        return
    parsed = dns.message.from_wire(reply, keyring=False)
    if parsed.rcode() != 0:
        assert store.zones[UPDATE_ZONE].serial == serial, "a refused update changed the zone"


class _Answers:
    """The DoH listener's server, answering every message at once (no loop runs here)."""

    def __init__(self) -> None:
        self.config = config.loads("allow: [0.0.0.0/0]\n", "fuzz.yaml")

    def trusted(self, host: str, networks: object) -> bool:
        return False

    def over_limit(self, data: bytes, host: str) -> tuple[bool, bytes | None]:
        return False, None

    def fast_answer(self, data: bytes, host: str, transport: str = "udp") -> bytes | None:
        return wire.refuse_raw(data) or b"\0" * 12

    async def respond(self, data: bytes, host: str, transport: str) -> bytes | None:
        return None


class _Written(asyncio.Transport):
    """A transport that keeps what the session writes."""

    def __init__(self) -> None:
        super().__init__()
        self.out: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed or not data, "written after close"
        self.out.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default


H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def http2_seeds() -> list[bytes]:
    """A client's opening and DoH requests (GET and POST, a hit each), as h2 writes them."""
    import base64

    import h2.config
    import h2.connection

    made = []
    query = dns.message.make_query("www.example.test", "A").to_wire()
    for method in ("GET", "POST"):
        client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        client.initiate_connection()
        for _ in range(3):
            stream = client.get_next_available_stream_id()
            path = "/dns-query"
            if method == "GET":
                path += "?dns=" + base64.urlsafe_b64encode(query).rstrip(b"=").decode()
            headers = [(":method", method), (":scheme", "https"), (":authority", "x"),
                       (":path", path), ("content-type", "application/dns-message")]  # fmt: skip
            client.send_headers(stream, headers, end_stream=method == "GET")
            if method == "POST":
                client.send_data(stream, query, end_stream=True)
        made.append(client.data_to_send())
    return made


def fuzz_http2(data: bytes) -> None:
    """Bytes from a DoH client, fed to the HTTP/2 session in two reads: nothing may raise,
    nothing is written after the connection is closed, and the budget's byte count for the
    connection returns to zero once it is lost."""
    server = _Answers()
    app = DohApp(server, "/dns-query")  # type: ignore[arg-type]
    conn = Connection("192.0.2.7", "doh", True, 0.0)
    transport = _Written()

    async def run() -> None:
        session = H2Session(app, "192.0.2.7", conn, server.config, set())
        session.connection_made(transport)
        middle = len(data) // 2
        for part in (data[:middle], data[middle:]):
            if not transport.closed:
                session.data_received(part)
        session.connection_lost(None)

    _LOOP.run_until_complete(run())
    assert conn.buffered == 0, conn.buffered


HARNESSES: dict[str, Callable[[bytes], None]] = {
    "http2": fuzz_http2,
    "query": fuzz_query,
    "reply": fuzz_reply,
    "differential": fuzz_differential,
    "update": fuzz_update,
    **{f"import-{fmt}": fuzz_import(fmt) for fmt in sources.FORMATS},
}


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1] not in HARNESSES:
        raise SystemExit(f"usage: python -m tests.fuzz.coverage {'|'.join(HARNESSES)} [flags]")
    harness = HARNESSES[argv[1]]
    atheris.Setup([argv[0], *argv[2:]], harness)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
