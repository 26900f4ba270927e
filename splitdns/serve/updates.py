"""RFC 2136 UPDATEs over UDP and TCP, signed with TSIG (RFC 8945), into the dynamic zones.

Who may change the LAN's names: a sender inside `dynamic.allow_update` (loopback by default)
with a key from `dynamic.keys_file`. Anything else is refused and counted: an unsigned update
(REFUSED), an unknown key (NOTAUTH, TSIG error BADKEY), a wrong signature (BADSIG), a clock
outside the fudge (BADTIME), a zone splitdns does not hold (NOTAUTH), a name outside it
(NOTZONE). Updates are judged and applied one at a time, in arrival order; each accepted one
is on disk (fsynced, in a thread so queries go on) before its signed answer leaves.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections import Counter

import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.tsig

from splitdns import wire
from splitdns.answer.views import is_allowed
from splitdns.config.dynamic import DynamicSettings
from splitdns.config.model import IPAddress
from splitdns.dynamic.store import Store
from splitdns.dynamic.update import NOTAUTH, judge

log = logging.getLogger(__name__)

OPCODE_UPDATE = 5
MAX_PENDING = 256  # updates waiting their turn; beyond, REFUSED at once (counted as busy)
SAY_EVERY = 60.0
TSIG_BADSIG, TSIG_BADKEY, TSIG_BADTIME = 16, 17, 18


def is_update(data: bytes) -> bool:
    return len(data) > 3 and (data[2] >> 3) & 0xF == OPCODE_UPDATE


class Updates:
    """The UPDATE handler of one server (made again when `dynamic:` changes)."""

    def __init__(self, settings: DynamicSettings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.keyring = {
            dns.name.from_text(k.name): dns.tsig.Key(k.name + ".", k.secret, k.algorithm)
            for k in settings.keys
        }
        self.counts: Counter[str] = Counter()  # by result, for /metrics and the dashboard
        self.pending = 0  # updates read and waiting for the lock (or on disk)
        self._said: dict[str, float] = {}
        self._lock = asyncio.Lock()

    def refusal(self, data: bytes, client: IPAddress, transport: str) -> bytes | None:
        """The answer to an UPDATE turned away before it is read (another transport, a
        sender outside allow_update, too many waiting), else None: it may be judged. Cheap,
        so a flood from the LAN costs no task and no parse."""
        if transport not in ("udp", "tcp"):
            return self._refuse(data, client, "refused", "over DoT/DoH", wire.NOTIMP)
        if not is_allowed(self.settings.allow_update, client):
            return self._refuse(data, client, "refused", "not in dynamic.allow_update")
        if self.pending >= MAX_PENDING:
            return self._refuse(data, client, "busy", f"{MAX_PENDING} updates already wait")
        return None

    def _refuse(
        self, data: bytes, client: IPAddress, result: str, why: str, rcode: int = wire.REFUSED
    ) -> bytes | None:
        self.counts[result] += 1
        self.say(f"UPDATE from {client} refused: {why}")
        return _header_reply(data, rcode)

    def say(self, line: str) -> None:
        """Log at INFO, each kind of refusal at most once a minute (a flood is counted, not
        logged line by line)."""
        kind = line.split(": ", 1)[-1]
        now = time.monotonic()
        if now - self._said.get(kind, -SAY_EVERY) >= SAY_EVERY:
            self._said[kind] = now
            log.info("%s", line)

    async def handle(self, data: bytes, client: IPAddress, transport: str) -> bytes | None:
        """The answer to one UPDATE message (None: dropped, it could not be read at all)."""
        early = self.refusal(data, client, transport)
        if early is not None or len(data) < wire.HEADER_LEN:
            return early
        self.pending += 1
        try:
            return await self._judged(data, client)
        finally:
            self.pending -= 1

    async def _judged(self, data: bytes, client: IPAddress) -> bytes | None:
        try:
            msg = dns.message.from_wire(data, keyring=self.keyring)
        except dns.message.UnknownTSIGKey:
            return self._tsig_failure(data, client, TSIG_BADKEY, "badkey")
        except dns.tsig.BadTime:
            return self._tsig_failure(data, client, TSIG_BADTIME, "badtime")
        except (dns.tsig.BadSignature, dns.tsig.BadKey, dns.tsig.BadAlgorithm):
            return self._tsig_failure(data, client, TSIG_BADSIG, "badsig")
        except (dns.exception.DNSException, ValueError, struct.error):
            self.counts["formerr"] += 1
            return _header_reply(data, wire.FORMERR)
        if not msg.had_tsig:
            self.counts["unsigned"] += 1
            self.say(f"UPDATE from {client} refused: unsigned (dynamic.keys_file)")
            return _reply(msg, wire.REFUSED)
        key = msg.keyname.to_text(omit_final_dot=True) if msg.keyname is not None else "?"
        source = f"update from {client} (key {key})"
        async with self._lock:  # one at a time: judged on what the last one left
            rcode, zone, ops = judge(msg, self.store)
            if rcode == wire.NOERROR and zone is not None and ops:
                line = self.store.apply_update(zone, ops, source)
                try:
                    await asyncio.to_thread(self.store.persist, line)
                except OSError as exc:
                    log.error("dynamic zones: the journal cannot be written: %s", exc)
                    self.counts["servfail"] += 1
                    return _reply(msg, wire.SERVFAIL)
        result = dns.rcode.to_text(dns.rcode.Rcode(rcode)).lower() if rcode else "ok"
        self.counts[result] += 1
        log.debug("UPDATE %s from %s: %s (%d changes)", msg.sections[0], client, result, len(ops))
        return _reply(msg, rcode)

    def _tsig_failure(self, data: bytes, client: IPAddress, error: int, why: str) -> bytes | None:
        """NOTAUTH with the TSIG error (RFC 8945 section 5.2): unsigned for BADKEY and BADSIG
        (the MAC cannot or must not be trusted), signed for BADTIME, with our time."""
        self.counts[why] += 1
        self.say(f"UPDATE from {client} refused: TSIG {why.upper()}")
        try:
            msg = dns.message.from_wire(data, keyring=False)
        except (dns.exception.DNSException, ValueError, struct.error):
            return _header_reply(data, wire.FORMERR)
        if error == TSIG_BADTIME and msg.keyname in self.keyring and msg.keyalgorithm:
            msg.keyring = self.keyring
            response = dns.message.make_response(msg)
            response.set_rcode(dns.rcode.Rcode(NOTAUTH))
            now = struct.pack("!Q", int(time.time()))[2:]
            response.use_tsig(self.keyring, msg.keyname, tsig_error=error, other_data=now,
                              algorithm=msg.keyalgorithm)  # fmt: skip
            response.request_mac = msg.mac or b""
            return response.to_wire()
        return _unsigned_tsig_error(data, msg, error)


def _reply(msg: dns.message.Message, rcode: int) -> bytes:
    """The answer to a readable UPDATE: its zone section echoed, signed when it was."""
    response = dns.message.make_response(msg)
    response.set_rcode(dns.rcode.Rcode(rcode))
    return response.to_wire()


def _header_reply(data: bytes, rcode: int) -> bytes | None:
    """The header alone, with the ID and opcode echoed (a message we will not read further)."""
    if len(data) < wire.HEADER_LEN:
        return None
    msg_id, flags = struct.unpack("!HH", data[:4])
    return wire.make_header_error(msg_id, flags, rcode)


def _unsigned_tsig_error(data: bytes, msg: dns.message.Message, error: int) -> bytes:
    """NOTAUTH, the zone section echoed, and a TSIG record with `error` and no MAC."""
    assert msg.tsig is not None and msg.keyname is not None
    rdata = msg.tsig[0]
    zones = msg.sections[0]
    zone = b"".join(
        wire.encode_name(z.name.to_text(omit_final_dot=True))
        + struct.pack("!HH", z.rdtype, z.rdclass)
        for z in zones
    )
    flags = 0x8000 | (OPCODE_UPDATE << 11) | NOTAUTH
    head = struct.pack("!HHHHHH", msg.id, flags, len(zones), 0, 0, 1)
    tsig = wire.encode_name(rdata.algorithm.to_text(omit_final_dot=True))
    tsig += struct.pack("!HI", (rdata.time_signed >> 32) & 0xFFFF, rdata.time_signed & 0xFFFFFFFF)
    tsig += struct.pack("!HH", rdata.fudge, 0) + struct.pack("!HHH", msg.id, error, 0)
    owner = wire.encode_name(msg.keyname.to_text(omit_final_dot=True))
    record = owner + struct.pack("!HHIH", 250, 255, 0, len(tsig)) + tsig
    return head + zone + record
